"""serving.cluster.ports: the free-port helpers every server start (Triton, Ray, Serve) shares."""

from __future__ import annotations

import socket

import pytest

from serving.cluster.ports import free_port, free_port_block


def test_a_block_is_consecutive_free_ports_in_its_range():
    base = free_port_block(24, start=42000, stop=60000)
    assert 42000 <= base and base + 24 <= 60000
    sockets = [socket.socket() for _ in range(24)]
    try:
        for offset, probe in enumerate(sockets):
            probe.bind(("127.0.0.1", base + offset))  # raises if any of them was not free
    finally:
        for probe in sockets:
            probe.close()


def test_a_range_with_no_room_says_so():
    held = socket.socket()
    held.bind(("127.0.0.1", free_port()))
    port = held.getsockname()[1]
    try:
        with pytest.raises(RuntimeError, match="no block of 1 free ports"):
            free_port_block(1, start=port, stop=port + 2)  # randrange(port, port + 1): only the held one
    finally:
        held.close()

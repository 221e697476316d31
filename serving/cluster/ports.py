"""Free TCP ports for the servers this project starts on one machine (Triton, Ray, Serve)."""

from __future__ import annotations

import random
import socket


def free_port(host: str = "127.0.0.1") -> int:
    """A port free on `host` now ("" for every interface); nothing holds it afterwards."""
    with socket.socket() as probe:
        probe.bind((host, 0))
        return probe.getsockname()[1]


def free_port_block(size: int, host: str = "127.0.0.1", start: int = 20000, stop: int = 60000) -> int:
    """The first port of `size` consecutive ports in [start, stop) that are free now on `host`."""
    for _ in range(200):
        base = random.randrange(start, stop - size)
        sockets = []
        try:
            for port in range(base, base + size):
                probe = socket.socket()
                sockets.append(probe)
                probe.bind((host, port))
            return base
        except OSError:
            continue
        finally:
            for probe in sockets:
                probe.close()
    raise RuntimeError(f"no block of {size} free ports in [{start}, {stop}) on {host!r}")

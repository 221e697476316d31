"""Fixtures of the online service's tests: user stores on both engines."""

from __future__ import annotations

import pytest

from tests.conftest import free_port
from tests.online.postgres_server import PostgresServer, find_pg_bin


@pytest.fixture(scope="session")
def postgres_server():
    pg_bin = find_pg_bin()
    if pg_bin is None:
        pytest.skip("PostgreSQL server binaries are absent (scripts/install.sh installs Debian's postgresql)")
    server = PostgresServer(free_port(), pg_bin)
    try:
        server.start()
        yield server
    finally:
        server.stop()


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def store_url(request, tmp_path):
    """A fresh, empty user store URL on each engine."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'users.db'}"
    else:
        server = request.getfixturevalue("postgres_server")
        server.drop_all()
        yield server.url

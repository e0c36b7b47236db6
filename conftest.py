"""Fixtures every package's tests share: a real redis-server process per test session.

Tests talk to a real Redis (never a fake). The server is started from the `redis-server`
binary on PATH (`.ci/run` installs it), on a free loopback port, without persistence.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest

from tests.redis_process import RedisProcess


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisProcess]:
    server = RedisProcess(tmp_path_factory.mktemp("redis"))
    server.start()
    yield server
    server.stop()


@pytest.fixture
def redis_url(redis_server: RedisProcess) -> Iterator[str]:
    """URL of the session's Redis, emptied before each test."""
    with socket.create_connection(("127.0.0.1", redis_server.port), timeout=2) as sock:
        sock.sendall(b"FLUSHALL\r\n")
        sock.recv(16)
    yield redis_server.url


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"

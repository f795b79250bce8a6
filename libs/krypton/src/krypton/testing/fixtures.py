"""pytest fixtures over the real servers; enabled by `pytest_plugins = ["krypton.testing.fixtures"]`."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import asyncpg
import pytest

from krypton.testing.servers import NatsServer, S3Server, start_nats, start_postgres, start_s3

__all__ = ["nats_server", "nats_url", "pg_dsn", "pg_pool", "s3_server"]


@pytest.fixture(scope="session")
def nats_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NatsServer]:
    """One nats-server with JetStream for the session."""
    server = start_nats(tmp_path_factory.mktemp("jetstream"))
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def nats_url(nats_server: NatsServer) -> str:
    """URL of the session's nats-server."""
    return nats_server.url


@pytest.fixture(scope="session")
def pg_dsn(tmp_path_factory: pytest.TempPathFactory) -> str:
    """DSN of a throwaway real PostgreSQL cluster for the session."""
    return start_postgres(Path(tmp_path_factory.mktemp("pg")))


@pytest.fixture
async def pg_pool(pg_dsn: str) -> AsyncIterator[asyncpg.Pool]:
    """A small pool on the session's PostgreSQL."""
    pool = await asyncpg.create_pool(pg_dsn, min_size=1, max_size=4)
    try:
        yield pool
    finally:
        await pool.close()


@pytest.fixture(scope="session")
def s3_server() -> Iterator[S3Server]:
    """One real S3-protocol server (moto) for the session."""
    server = start_s3()
    try:
        yield server
    finally:
        server.stop()

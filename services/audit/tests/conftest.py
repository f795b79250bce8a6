"""Fixtures for the audit tests: a migrated, emptied ``audit`` schema and writer pools."""

from __future__ import annotations

from collections.abc import AsyncIterator

import asyncpg
import pytest

from krypton.audit.schema import migrate, writer_pool

_TRUNCATE = "TRUNCATE audit.log, audit.checkpoints, audit.studies"


@pytest.fixture
async def owner_pool(pg_pool: asyncpg.Pool) -> AsyncIterator[asyncpg.Pool]:
    """The session database (superuser) with the audit schema migrated and empty."""
    await migrate(pg_pool)
    await pg_pool.execute(_TRUNCATE)
    yield pg_pool
    await pg_pool.execute(_TRUNCATE)


@pytest.fixture
async def writer(owner_pool: asyncpg.Pool, pg_dsn: str) -> AsyncIterator[asyncpg.Pool]:
    """A pool running as ``krypton_audit_writer``, as the service does."""
    pool = await writer_pool(pg_dsn)
    yield pool
    await pool.close()

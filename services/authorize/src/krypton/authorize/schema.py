"""The authorize service's PostgreSQL schema: its name and its migrations."""

from __future__ import annotations

from pathlib import Path
from typing import Final

import asyncpg

from krypton.db.migrations import Migration, apply_migrations

__all__ = ["MIGRATIONS_DIR", "SCHEMA", "migrate"]

SCHEMA: Final = "authz"
MIGRATIONS_DIR: Final = Path(__file__).parent / "migrations"


async def migrate(
    pool: asyncpg.Pool | asyncpg.Connection | asyncpg.pool.PoolConnectionProxy,
) -> list[Migration]:
    """Bring the ``authz`` schema up to date; safe to call from every replica at start-up."""
    return await apply_migrations(pool, SCHEMA, MIGRATIONS_DIR)

"""The audit service's PostgreSQL schema, its migrations, and the role it writes with."""

from __future__ import annotations

from pathlib import Path
from typing import Final

import asyncpg

from krypton.db.migrations import Migration, apply_migrations

__all__ = ["MIGRATIONS_DIR", "SCHEMA", "WRITER_ROLE", "migrate", "writer_pool"]

SCHEMA: Final = "audit"
MIGRATIONS_DIR: Final = Path(__file__).parent / "migrations"
#: May INSERT and SELECT the log and checkpoints, never UPDATE or DELETE them.
WRITER_ROLE: Final = "krypton_audit_writer"


async def migrate(
    pool: asyncpg.Pool | asyncpg.Connection | asyncpg.pool.PoolConnectionProxy,
) -> list[Migration]:
    """Bring the ``audit`` schema up to date (as the login role); safe from every replica."""
    return await apply_migrations(pool, SCHEMA, MIGRATIONS_DIR)


async def writer_pool(dsn: str, *, min_size: int = 1, max_size: int = 5) -> asyncpg.Pool:
    """A pool whose every session runs as `WRITER_ROLE`.

    The role is a startup parameter, not a ``SET ROLE`` statement: the pool's ``RESET ALL`` on
    release returns a session to its startup values, so a connection can never drift back to
    the login role's wider rights.
    """
    return await asyncpg.create_pool(
        dsn,
        min_size=min_size,
        max_size=max_size,
        server_settings={
            "role": WRITER_ROLE,
            "jit": "off",
            "application_name": "audit",
            "statement_timeout": "30000",
        },
    )

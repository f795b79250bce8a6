"""create_pool sets the server settings every service relies on."""

from __future__ import annotations

import asyncpg
import pytest

from krypton.db.pool import create_pool

pytestmark = pytest.mark.postgres


async def test_pool_turns_jit_off_and_names_the_application(pg_dsn: str) -> None:
    pool = await create_pool(pg_dsn, min_size=1, max_size=2, application_name="index")
    try:
        assert await pool.fetchval("SHOW jit") == "off"
        assert await pool.fetchval("SHOW application_name") == "index"
        assert await pool.fetchval("SHOW statement_timeout") == "30s"
    finally:
        await pool.close()


async def test_statement_timeout_cancels_a_long_statement(pg_dsn: str) -> None:
    pool = await create_pool(pg_dsn, min_size=1, max_size=1, statement_timeout=0.2)
    try:
        with pytest.raises(asyncpg.QueryCanceledError):
            await pool.execute("SELECT pg_sleep(5)")
    finally:
        await pool.close()


async def test_statement_timeout_can_be_disabled(pg_dsn: str) -> None:
    pool = await create_pool(pg_dsn, min_size=1, max_size=1, statement_timeout=None)
    try:
        assert await pool.fetchval("SHOW statement_timeout") == "0"
    finally:
        await pool.close()

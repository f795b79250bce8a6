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


async def _plan_after_repeats(pool: asyncpg.Pool) -> str:
    async with pool.acquire() as conn:
        await conn.execute("PREPARE probe(int) AS SELECT relname FROM pg_class WHERE relpages > $1")
        for _ in range(8):  # PostgreSQL considers the generic plan after the fifth run
            await conn.execute("EXECUTE probe(7)")
        plan = "\n".join(r[0] for r in await conn.fetch("EXPLAIN EXECUTE probe(7)"))
        await conn.execute("DEALLOCATE probe")
        return plan


async def test_custom_plans_keep_the_values_in_every_plan(pg_dsn: str) -> None:
    # The index's searches depend on it: a generic plan ignores the date range and modality.
    custom = await create_pool(pg_dsn, min_size=1, max_size=1, custom_plans=True)
    plain = await create_pool(pg_dsn, min_size=1, max_size=1)
    try:
        assert await custom.fetchval("SHOW plan_cache_mode") == "force_custom_plan"
        assert "> 7" in await _plan_after_repeats(custom)
        assert "> $1" in await _plan_after_repeats(plain)  # what the setting prevents
    finally:
        await custom.close()
        await plain.close()


async def test_release_sends_no_statement_but_rolls_back_a_forgotten_transaction(
    pg_dsn: str,
) -> None:
    # One PostgreSQL round trip per use saved: asyncpg's default release sends RESET ALL etc.
    pool = await create_pool(pg_dsn, min_size=1, max_size=1)
    try:
        async with pool.acquire() as conn:
            await conn.fetchval("SELECT 1")
            protocol = conn._con._protocol  # type: ignore[attr-defined]
            before = protocol.queries_count
        async with pool.acquire() as conn:
            assert conn._con._protocol is protocol  # type: ignore[attr-defined]
            assert protocol.queries_count == before  # the release sent nothing
            await conn.execute("CREATE TEMP TABLE IF NOT EXISTS leak (x int)")
            tx = conn.transaction()
            await tx.start()
            await conn.execute("INSERT INTO leak VALUES (1)")
            # released with the transaction open: asyncpg still rolls it back
        async with pool.acquire() as conn:
            assert await conn.fetchval("SELECT count(*) FROM leak") == 0
            assert not conn.is_in_transaction()
    finally:
        await pool.close()

"""apply_migrations against the real PostgreSQL: ordering, idempotence, concurrency, checksums."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import pytest

from krypton.db.errors import MigrationError
from krypton.db.migrations import apply_migrations, discover_migrations
from krypton.db.pool import create_pool

pytestmark = pytest.mark.postgres


@pytest.fixture
async def schema(pg_pool: asyncpg.Pool) -> AsyncIterator[str]:
    name = f"mig_{uuid.uuid4().hex[:12]}"
    yield name
    await pg_pool.execute(f'DROP SCHEMA IF EXISTS "{name}" CASCADE')


def _write(folder: Path, files: dict[str, str]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name, sql in files.items():
        (folder / name).write_text(sql)
    return folder


def _files(schema: str) -> dict[str, str]:
    return {
        "0001_initial.sql": f"CREATE TABLE {schema}.things (id int PRIMARY KEY);",
        "0002_more.sql": f"ALTER TABLE {schema}.things ADD COLUMN label text;"
        f" INSERT INTO {schema}.things VALUES (1, 'one');",
    }


async def test_migrations_are_applied_in_order_and_recorded(
    pg_pool: asyncpg.Pool, schema: str, tmp_path: Path
) -> None:
    folder = _write(tmp_path, _files(schema))
    applied = await apply_migrations(pg_pool, schema, folder)
    assert [m.version for m in applied] == [1, 2]
    assert await pg_pool.fetchval(f"SELECT label FROM {schema}.things WHERE id = 1") == "one"
    rows = await pg_pool.fetch(
        f"SELECT version, name, checksum FROM {schema}.schema_migrations ORDER BY version"
    )
    assert [(r["version"], r["name"]) for r in rows] == [(1, "initial"), (2, "more")]
    assert [r["checksum"] for r in rows] == [m.checksum for m in discover_migrations(folder)]


async def test_applying_twice_applies_nothing_the_second_time(
    pg_pool: asyncpg.Pool, schema: str, tmp_path: Path
) -> None:
    folder = _write(tmp_path, _files(schema))
    await apply_migrations(pg_pool, schema, folder)
    async with pg_pool.acquire() as conn:
        assert await apply_migrations(conn, schema, folder) == []


async def test_a_new_file_is_applied_after_the_old_ones(
    pg_pool: asyncpg.Pool, schema: str, tmp_path: Path
) -> None:
    files = _files(schema)
    folder = _write(tmp_path, {"0001_initial.sql": files["0001_initial.sql"]})
    await apply_migrations(pg_pool, schema, folder)
    _write(folder, {"0002_more.sql": files["0002_more.sql"]})
    applied = await apply_migrations(pg_pool, schema, folder)
    assert [m.name for m in applied] == ["more"]


async def test_replicas_starting_together_apply_each_file_once(
    pg_dsn: str, schema: str, tmp_path: Path
) -> None:
    folder = _write(tmp_path, _files(schema))
    pools = [await create_pool(pg_dsn, min_size=1, max_size=1) for _ in range(4)]
    try:
        results = await asyncio.gather(*(apply_migrations(p, schema, folder) for p in pools))
    finally:
        for p in pools:
            await p.close()
    assert sorted(len(r) for r in results) == [0, 0, 0, 2]


async def test_an_edited_applied_file_is_refused(
    pg_pool: asyncpg.Pool, schema: str, tmp_path: Path
) -> None:
    folder = _write(tmp_path, _files(schema))
    await apply_migrations(pg_pool, schema, folder)
    (folder / "0001_initial.sql").write_text(f"CREATE TABLE {schema}.other (id int);")
    with pytest.raises(MigrationError, match="changed after it was applied"):
        await apply_migrations(pg_pool, schema, folder)


async def test_a_failing_file_rolls_back_alone(
    pg_pool: asyncpg.Pool, schema: str, tmp_path: Path
) -> None:
    files = _files(schema) | {"0003_broken.sql": "CREATE TABLE nowhere.x (id int);"}
    folder = _write(tmp_path, files)
    with pytest.raises(asyncpg.InvalidSchemaNameError):
        await apply_migrations(pg_pool, schema, folder)
    versions = await pg_pool.fetch(f"SELECT version FROM {schema}.schema_migrations")
    assert sorted(r["version"] for r in versions) == [1, 2]


@pytest.mark.parametrize("name", ["1_short.sql", "0001-dash.sql", "0001_bad name.sql"])
def test_a_badly_named_file_is_refused(tmp_path: Path, name: str) -> None:
    (tmp_path / name).write_text("SELECT 1;")
    with pytest.raises(MigrationError, match=r"NNNN_name\.sql"):
        discover_migrations(tmp_path)


def test_two_files_with_one_version_are_refused(tmp_path: Path) -> None:
    _write(tmp_path, {"0001_a.sql": "SELECT 1;", "0001_b.sql": "SELECT 2;"})
    with pytest.raises(MigrationError, match="version 0001"):
        discover_migrations(tmp_path)


async def test_a_schema_name_that_needs_quoting_is_refused(
    pg_pool: asyncpg.Pool, tmp_path: Path
) -> None:
    with pytest.raises(MigrationError, match="schema name"):
        await apply_migrations(pg_pool, 'x"; DROP TABLE y; --', tmp_path)

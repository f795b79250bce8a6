"""Numbered SQL migrations, tracked per schema, safe when N replicas start together.

Files are named ``NNNN_name.sql`` (e.g. ``0001_initial.sql``) and applied in version order,
each in its own transaction, recorded in ``<schema>.schema_migrations``. Every transaction first
takes one cluster-wide advisory lock, so replicas (or services sharing a database) starting at
the same moment apply each file exactly once, one after the other; the lock is global rather than
per schema because migrations may create database-wide objects such as extensions. A file whose
content changed after it was applied is refused: fix forward with a new file instead.

Statements that cannot run inside a transaction (``CREATE INDEX CONCURRENTLY``) are not
supported by this runner.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path

import asyncpg

from krypton.db.errors import MigrationError

__all__ = ["MIGRATION_LOCK_KEY", "Migration", "apply_migrations", "discover_migrations"]

# Arbitrary constant shared by every Krypton service (64-bit advisory lock key).
MIGRATION_LOCK_KEY = 0x4B5259_4D494752  # "KRY" "MIGR"

_FILE_RE = re.compile(r"^(\d{4})_([A-Za-z0-9_]+)\.sql$")
_SCHEMA_RE = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")


@dataclass(frozen=True, slots=True)
class Migration:
    """One migration file."""

    version: int
    name: str
    sql: str
    checksum: str  # sha256 hex of the file bytes


def discover_migrations(migrations_dir: Path) -> list[Migration]:
    """Read the ``NNNN_name.sql`` files of `migrations_dir`, sorted by version.

    Raises:
        MigrationError: a ``.sql`` file has a bad name, or two files share a version.
    """
    found: dict[int, Migration] = {}
    for path in sorted(migrations_dir.glob("*.sql")):
        match = _FILE_RE.match(path.name)
        if match is None:
            msg = f"migration file {path.name!r} is not named NNNN_name.sql"
            raise MigrationError(msg)
        version = int(match.group(1))
        if version in found:
            msg = f"two migration files have version {version:04d}"
            raise MigrationError(msg)
        data = path.read_bytes()
        found[version] = Migration(
            version=version,
            name=match.group(2),
            sql=data.decode("utf-8"),
            checksum=hashlib.sha256(data).hexdigest(),
        )
    return [found[v] for v in sorted(found)]


async def apply_migrations(
    pool_or_conn: asyncpg.Pool | asyncpg.Connection | asyncpg.pool.PoolConnectionProxy,
    schema: str,
    migrations_dir: Path,
) -> list[Migration]:
    """Apply the migrations of `migrations_dir` that `schema` has not recorded yet.

    Args:
        pool_or_conn: where to run; a pool lends one connection for the whole run.
        schema: the owning service's schema; created if missing, holds ``schema_migrations``.
        migrations_dir: folder of ``NNNN_name.sql`` files.

    Returns:
        The migrations this call applied (empty when everything was already there).

    Raises:
        MigrationError: bad schema name or file name, or an applied file was edited.
    """
    if not _SCHEMA_RE.match(schema):
        msg = f"not a plain lower-case schema name: {schema!r}"
        raise MigrationError(msg)
    migrations = discover_migrations(migrations_dir)
    if isinstance(pool_or_conn, asyncpg.Pool):
        async with pool_or_conn.acquire() as conn:
            return await _apply(conn, schema, migrations)
    return await _apply(pool_or_conn, schema, migrations)


async def _apply(
    conn: asyncpg.Connection | asyncpg.pool.PoolConnectionProxy,
    schema: str,
    migrations: list[Migration],
) -> list[Migration]:
    table = f'"{schema}".schema_migrations'
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock($1)", MIGRATION_LOCK_KEY)
        await conn.execute(
            f'CREATE SCHEMA IF NOT EXISTS "{schema}";'
            f"CREATE TABLE IF NOT EXISTS {table} ("
            " version integer PRIMARY KEY,"
            " name text NOT NULL,"
            " applied_at timestamptz NOT NULL DEFAULT now(),"
            " checksum text NOT NULL)"
        )
    applied: list[Migration] = []
    for migration in migrations:
        # One transaction per file: a failing file rolls back alone and leaves earlier ones in.
        async with conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock($1)", MIGRATION_LOCK_KEY)
            checksum = await conn.fetchval(
                f"SELECT checksum FROM {table} WHERE version = $1", migration.version
            )
            if checksum is not None:
                if checksum != migration.checksum:
                    msg = (
                        f"migration {migration.version:04d}_{migration.name} of schema {schema!r}"
                        " changed after it was applied; add a new migration instead"
                    )
                    raise MigrationError(msg)
                continue
            await conn.execute(migration.sql)
            await conn.execute(
                f"INSERT INTO {table} (version, name, checksum) VALUES ($1, $2, $3)",
                migration.version,
                migration.name,
                migration.checksum,
            )
            applied.append(migration)
    return applied

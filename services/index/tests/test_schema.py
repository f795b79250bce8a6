"""The index schema migrates once, from any number of replicas, into the expected shape."""

from __future__ import annotations

import asyncio

import asyncpg
import pytest

from krypton.db.migrations import discover_migrations
from krypton.index.schema import MIGRATIONS_DIR, SCHEMA, migrate

pytestmark = pytest.mark.postgres


async def test_migrating_again_from_several_replicas_applies_nothing(
    index_pool: asyncpg.Pool,
) -> None:
    results = await asyncio.gather(*(migrate(index_pool) for _ in range(3)))
    assert results == [[], [], []]
    versions = await index_pool.fetch(f"SELECT version FROM {SCHEMA}.schema_migrations")
    assert sorted(r["version"] for r in versions) == [
        m.version for m in discover_migrations(MIGRATIONS_DIR)
    ]


async def test_the_query_indexes_exist(index_pool: asyncpg.Pool) -> None:
    rows = await index_pool.fetch("SELECT indexname FROM pg_indexes WHERE schemaname = $1", SCHEMA)
    assert {r["indexname"] for r in rows} >= {
        "studies_pkey",
        "studies_date_idx",
        "studies_structure_date_idx",
        "studies_patient_id_idx",
        "studies_patient_key_idx",
        "studies_patient_ins_idx",
        "studies_accession_idx",
        "studies_patient_name_trgm_idx",
        "studies_modalities_idx",
        "series_pkey",
        "series_study_idx",
        "instances_pkey",
        "instances_series_idx",
    }

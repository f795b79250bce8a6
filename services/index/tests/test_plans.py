"""The main QIDO shapes use the indexes designed for them (plans checked on 30k studies).

Only stable facts are asserted: which index a plan reads, and that list queries need no sort
of their own (the index already returns rows in result order).
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator
from typing import Any

import asyncpg
import pytest

from krypton.contracts.common.v1 import Actor, RoleValues
from krypton.contracts.index.v1 import QidoRequest
from krypton.dicom.qido import parse_qido
from krypton.index.qido_sql import build_qido_sql
from krypton.index.schema import migrate

pytestmark = [pytest.mark.postgres, pytest.mark.slow]

N = 30_000
ADMIN = Actor(sub="admin", role=RoleValues.ADMIN, issuer="test")
PRO = Actor(sub="dr", role=RoleValues.PROFESSIONAL, issuer="test", structure="330000007")
PATIENT = Actor(sub="p", role=RoleValues.PATIENT, issuer="test", ins="100000000000042")

_TRUNCATE = "TRUNCATE index.studies, index.series, index.instances"
_LOAD = f"""
INSERT INTO index.studies (study_uid, structure, patient_key, patient_id, patient_ins,
    patient_name, patient_name_search, study_date, study_time, accession_number, modalities,
    num_series, num_instances, size_bytes)
SELECT '9.' || g, '3300000' || lpad((g % 20)::text, 2, '0'), 'IPP:x:' || (g % 9000),
       'IPP' || (g % 9000),
       CASE WHEN g % 3 = 0 THEN (100000000000000 + g % 7000)::text END,
       n, n, date '2020-01-01' + (g % 1500), time '08:00' + (g % 600) * interval '1 minute',
       'ACC' || g, ARRAY[(ARRAY['CT', 'MR', 'US', 'CR', 'NM'])[1 + g % 5]], 1, 3, 3000
  FROM generate_series(1, {N}) AS g,
       LATERAL (SELECT CASE WHEN g % 5000 = 0 THEN 'DUPONT^JEAN'
                 ELSE upper(substr(md5(g::text), 1, 7)) || '^' ||
                      upper(substr(md5((g * 7)::text), 1, 5)) END AS n) AS names;
INSERT INTO index.series (series_uid, study_uid, structure, modality, series_number,
    num_instances, size_bytes)
SELECT study_uid || '.1', study_uid, structure, modalities[1], 1, 3, 3000 FROM index.studies;
INSERT INTO index.instances (sop_instance_uid, series_uid, study_uid, structure, sop_class_uid,
    transfer_syntax_uid, instance_number, object_key, sha256, size, stored_at)
SELECT se.series_uid || '.' || k, se.series_uid, se.study_uid, se.structure,
       '1.2.840.10008.5.1.4.1.1.2', '1.2.840.10008.1.2.1', k, 'k', 'h', 1000, now()
  FROM index.series se, generate_series(1, 3) AS k;
ANALYZE index.studies, index.series, index.instances;
"""


@pytest.fixture(scope="module")
async def loaded(pg_dsn: str) -> AsyncIterator[asyncpg.Pool]:
    """One load for the whole module (its own pool: `index_pool` is per test)."""
    pool = await asyncpg.create_pool(pg_dsn, min_size=1, max_size=2)
    try:
        await migrate(pool)
        await pool.execute(_TRUNCATE)
        await pool.execute(_LOAD)
        yield pool
        await pool.execute(_TRUNCATE)
    finally:
        await pool.close()


def _walk(node: dict[str, Any]) -> Iterator[dict[str, Any]]:
    yield node
    for child in node.get("Plans", []):
        yield from _walk(child)


async def _plan(
    pool: asyncpg.Pool,
    level: str,
    params: list[tuple[str, str]],
    actor: Actor = ADMIN,
    study_uid: str | None = None,
    series_uid: str | None = None,
) -> tuple[set[str], set[str]]:
    """Return (index names, node types) of the plan of a QIDO query."""
    query = parse_qido(level, params, study_uid=study_uid, series_uid=series_uid)
    request = QidoRequest(query=query, actor=actor)
    sql, args = build_qido_sql(request)
    raw = await pool.fetchval(f"EXPLAIN (FORMAT JSON) {sql}", *args)
    nodes = list(_walk(json.loads(raw)[0]["Plan"]))
    return {n["Index Name"] for n in nodes if "Index Name" in n}, {n["Node Type"] for n in nodes}


@pytest.mark.parametrize(
    ("params", "actor", "index"),
    [
        ([("PatientID", "IPP42")], ADMIN, "studies_patient_id_idx"),
        ([("AccessionNumber", "ACC4242")], ADMIN, "studies_accession_idx"),
        ([("StudyInstanceUID", "9.4242")], ADMIN, "studies_pkey"),
        ([("StudyInstanceUID", "9.1,9.2,9.3")], ADMIN, "studies_pkey"),
        ([("PatientName", "dupont^jean")], ADMIN, "studies_patient_name_trgm_idx"),
        ([("PatientName", "dupon*")], ADMIN, "studies_patient_name_trgm_idx"),
        ([("PatientName", "dupont jean"), ("fuzzymatching", "true")], ADMIN,
         "studies_name_keys_idx"),
        ([], PATIENT, "studies_patient_ins_idx"),
    ],
)  # fmt: skip
async def test_selective_study_searches_use_their_index(
    loaded: asyncpg.Pool, params: list[tuple[str, str]], actor: Actor, index: str
) -> None:
    indexes, nodes = await _plan(loaded, "study", params, actor)
    assert index in indexes
    assert "Seq Scan" not in nodes


@pytest.mark.parametrize(
    ("actor", "index"),
    [(ADMIN, "studies_date_idx"), (PRO, "studies_structure_date_idx")],
)
async def test_study_listings_read_an_index_in_result_order(
    loaded: asyncpg.Pool, actor: Actor, index: str
) -> None:
    indexes, nodes = await _plan(loaded, "study", [("limit", "50")], actor)
    assert index in indexes
    assert not nodes & {"Seq Scan", "Sort"}


async def test_date_range_listing_reads_the_date_index(loaded: asyncpg.Pool) -> None:
    indexes, nodes = await _plan(loaded, "study", [("StudyDate", "20230101-20230131")])
    assert "studies_date_idx" in indexes
    assert "Seq Scan" not in nodes


async def test_series_of_a_study_read_the_series_index(loaded: asyncpg.Pool) -> None:
    indexes, nodes = await _plan(loaded, "series", [], study_uid="9.4242")
    assert "series_study_idx" in indexes
    assert "Seq Scan" not in nodes


@pytest.mark.parametrize(
    "path",
    [{"study_uid": "9.4242", "series_uid": "9.4242.1"}, {"study_uid": "9.4242"}],
    ids=["series-scoped", "study-scoped"],
)
async def test_instances_are_reached_through_their_series(
    loaded: asyncpg.Pool, path: dict[str, str]
) -> None:
    indexes, nodes = await _plan(loaded, "instance", [], ADMIN, **path)
    assert "instances_series_idx" in indexes
    assert "Seq Scan" not in nodes

"""`index.name_keys` (migration 0004) never hides a name that the fuzzy rule matches.

The fuzzy PatientName rule (krypton.index.qido_sql): every query word is the prefix of a word
of the normalised name. The SQL narrows rows with ``name_keys(structure, name) @> keys`` (the query's word prefixes,
region-wide or behind the structure) before the per-word regular expressions decide, so that
condition must hold for every matching name.
"""

from __future__ import annotations

import random
import re

import asyncpg
import pytest

from krypton.contracts.common.v1 import Actor, RoleValues
from krypton.contracts.index.v1 import QidoRequest
from krypton.dicom.qido import parse_qido
from krypton.index.qido_sql import _PREFIX_MAX, _PREFIX_MIN, build_qido_sql
from krypton.index.store import normalise_pn

pytestmark = [pytest.mark.postgres]

_WORDS = ["JEAN", "JEANNE", "MARTIN", "MARTINEAU", "LE", "GALL", "D", "DE", "LA",
          "CONSTANTINOPOLITAIN", "ELOISE", "2", "OE", "É"]  # fmt: skip


def _rule(name: str, words: list[str]) -> bool:
    return all(re.search("(^|[ ^])" + re.escape(w), name) for w in words)


def _prefixes(words: list[str]) -> list[str]:
    return sorted({w[:_PREFIX_MAX] for w in words if len(w) >= _PREFIX_MIN})


async def test_keys_of_a_name(index_pool: asyncpg.Pool) -> None:
    got = await index_pool.fetchval(
        "SELECT index.name_keys('330000007', $1)", "LE GALL^JEAN CONSTANTINOPOLITAIN"
    )
    prefixes = {
        "LE", "GA", "GAL", "GALL", "JE", "JEA", "JEAN",
        *("CONSTANTINOPOLITAIN"[:n] for n in range(2, 13)),
    }  # fmt: skip
    assert set(got) == prefixes | {f"330000007:{p}" for p in prefixes}
    assert await index_pool.fetchval("SELECT index.name_keys('1', NULL)") == []
    assert await index_pool.fetchval("SELECT index.name_keys('1', '^A')") == []


async def test_the_prefix_condition_holds_for_every_matching_name(
    index_pool: asyncpg.Pool,
) -> None:
    rng = random.Random(8)
    cases: list[tuple[str, list[str]]] = []
    for _ in range(5000):
        family = " ".join(rng.choice(_WORDS) for _ in range(rng.randint(1, 3)))
        given = " ".join(rng.choice(_WORDS) for _ in range(rng.randint(0, 2)))
        name = normalise_pn(f"{family}^{given}")
        assert name is not None
        query = normalise_pn(" ".join(rng.choice(_WORDS)[: rng.randint(1, 20)] for _ in "ab"))
        cases.append((name, re.findall(r"\w+", query or "")))
    matching = [(n, w) for n, w in cases if _rule(n, w)]
    assert len(matching) > 200  # the draw exercises the rule
    held = await index_pool.fetch(
        "SELECT index.name_keys('330000007', n) @> p::text[] AS region,"
        " index.name_keys('330000007', n) @> s::text[] AS structure"
        " FROM unnest($1::text[], $2::text[], $3::text[]) AS t(n, p, s)",
        [n for n, _ in matching],
        ["{" + ",".join(_prefixes(w)) + "}" for _, w in matching],
        ["{" + ",".join(f"330000007:{p}" for p in _prefixes(w)) + "}" for _, w in matching],
    )
    assert all(r["region"] and r["structure"] for r in held)


_FAMILIES = ["MARTIN", "BERNARD", "THOMAS", "PETIT", "ROBERT", "RICHARD", "DURAND", "DUBOIS",
             "MOREAU", "LAURENT", "SIMON", "MICHEL", "LEFEBVRE", "LEROY", "ROUX", "DAVID",
             "BERTRAND", "MOREL", "FOURNIER", "GIRARD", "MARTINEZ", "MARTINEAU"]  # fmt: skip
_GIVENS = ["JEAN", "JEANNE", "MARIE", "PIERRE", "LOUIS", "ANNE", "PAUL", "JACQUES", "MICHEL",
           "CLAIRE", "JEAN PIERRE", "MARIE CLAIRE"]  # fmt: skip


@pytest.fixture
async def common_names(index_pool: asyncpg.Pool) -> asyncpg.Pool:
    """60,000 studies of 20 structures whose patients carry a few common French names."""
    await index_pool.execute(
        """
        INSERT INTO index.studies (study_uid, structure, patient_key, patient_id,
            patient_name, patient_name_search, study_date, num_series, num_instances)
        SELECT '9.' || g, '3300000' || lpad((g % 20)::text, 2, '0'), 'IPP:x:' || g, 'IPP' || g,
               n, n, date '2016-01-01' + (g % 3650), 1, 1
          FROM generate_series(1, 60000) AS g,
               LATERAL (SELECT ($1::text[])[1 + abs(hashtext('f' || g)) % cardinality($1::text[])]
                               || (CASE WHEN g % 11 = 0 THEN '-' || ($1::text[])[1 + g % 5]
                                   ELSE '' END)
                               || '^' || ($2::text[])[1 + abs(hashtext('g' || g)) % cardinality($2::text[])]
                               AS n) AS names
        """,
        _FAMILIES,
        _GIVENS,
    )
    await index_pool.execute("ANALYZE index.studies")
    return index_pool


@pytest.mark.parametrize(
    ("actor", "grants"), [("admin", False), ("producer", False), ("professional", True)]
)
async def test_common_short_prefixes_read_the_name_keys_index(
    common_names: asyncpg.Pool, actor: str, grants: bool
) -> None:
    who = {
        "admin": Actor(sub="admin", role=RoleValues.ADMIN, issuer="t"),
        "producer": Actor(sub="ris", role=RoleValues.PRODUCER, issuer="t", structure="330000007"),
        "professional": Actor(sub="810000000001", role=RoleValues.PROFESSIONAL, issuer="t",
                              structure="330000007"),
    }[actor]  # fmt: skip
    params = [("PatientName", "marti jea"), ("fuzzymatching", "true"), ("limit", "1000")]
    request = QidoRequest(query=parse_qido("study", params), actor=who)
    sql, args = build_qido_sql(request, grants=grants)
    # Region-wide keys for the admin, the structure's own for a structure's studies.
    assert (["JEA", "MARTI"] in args) is (actor == "admin")
    assert (["330000007:JEA", "330000007:MARTI"] in args) is (actor != "admin")
    plan = await common_names.fetchval(f"EXPLAIN (FORMAT JSON) {sql}", *args)
    assert "studies_name_keys_idx" in plan
    assert "studies_patient_name_trgm_idx" not in plan
    # And the answer is the rule's, in result order.
    got = [r["StudyInstanceUID"] for r in await common_names.fetch(sql, *args)]
    every = await common_names.fetch(
        "SELECT study_uid, structure, patient_name_search FROM index.studies"
        " ORDER BY study_date DESC NULLS LAST, study_time DESC NULLS LAST, study_uid"
    )
    want = [
        r["study_uid"]
        for r in every
        if _rule(r["patient_name_search"], ["MARTI", "JEA"])
        and (who.structure is None or r["structure"] == who.structure)
    ]
    assert want
    assert len(got) == min(len(want), 1001)  # the page and the row that says more follow
    assert got == want[: len(got)]

"""upsert_batch against the real PostgreSQL: idempotence, concurrency, aggregates, merging."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable
from datetime import date, time

import asyncpg
import pytest

from krypton.contracts.ingest.v1 import InstanceStored
from krypton.index.store import normalise_pn, parse_da, parse_tm, upsert_batch

MakeEvent = Callable[..., InstanceStored]

pytestmark = pytest.mark.postgres


async def _study(pool: asyncpg.Pool, study_uid: str) -> asyncpg.Record:
    row = await pool.fetchrow("SELECT * FROM index.studies WHERE study_uid = $1", study_uid)
    assert row is not None
    return row


async def test_a_batch_is_indexed_at_all_three_levels(
    index_pool: asyncpg.Pool, make_event: MakeEvent
) -> None:
    events = [
        make_event(study_uid="1.1", series_uid="1.1.1", series_modality="CT", size=100),
        make_event(study_uid="1.1", series_uid="1.1.1", series_modality="CT", size=200),
        make_event(study_uid="1.1", series_uid="1.1.2", series_modality="SR", size=50),
    ]
    assert await upsert_batch(index_pool, events) == 3
    study = await _study(index_pool, "1.1")
    assert (study["num_series"], study["num_instances"], study["size_bytes"]) == (2, 3, 350)
    assert study["modalities"] == ["CT", "SR"]
    series = await index_pool.fetch(
        "SELECT series_uid, num_instances, size_bytes FROM index.series ORDER BY series_uid"
    )
    assert [tuple(r) for r in series] == [("1.1.1", 2, 300), ("1.1.2", 1, 50)]
    instance = await index_pool.fetchrow(
        "SELECT * FROM index.instances WHERE sop_instance_uid = $1",
        events[0].instance.sop_instance_uid,
    )
    assert instance is not None
    assert instance["object_key"] == events[0].object_key
    assert instance["series_uid"] == "1.1.1"
    assert instance["study_uid"] == "1.1"


async def test_the_same_batch_twice_changes_nothing_the_second_time(
    index_pool: asyncpg.Pool,
    make_event: MakeEvent,
) -> None:
    events = [make_event(study_uid="1.2", size=10) for _ in range(5)]
    assert await upsert_batch(index_pool, events) == 5
    before = await _study(index_pool, "1.2")
    assert await upsert_batch(index_pool, events) == 0
    after = await _study(index_pool, "1.2")
    assert (after["num_instances"], after["size_bytes"]) == (5, 50)
    # Nothing to fill and no new instance: the row was not even rewritten.
    assert after["updated_at"] == before["updated_at"]


async def test_a_duplicate_inside_one_batch_counts_once(
    index_pool: asyncpg.Pool, make_event: MakeEvent
) -> None:
    event = make_event(study_uid="1.3")
    assert await upsert_batch(index_pool, [event, event, event]) == 1
    assert (await _study(index_pool, "1.3"))["num_instances"] == 1


async def test_an_empty_batch_does_nothing(index_pool: asyncpg.Pool) -> None:
    assert await upsert_batch(index_pool, []) == 0


async def test_overlapping_batches_from_concurrent_replicas_count_exactly(
    index_pool: asyncpg.Pool,
    make_event: MakeEvent,
) -> None:
    rng = random.Random(7)
    events = [
        make_event(
            study_uid=f"2.{s}",
            series_uid=f"2.{s}.{se}",
            series_modality=("CT", "MR", "PT")[se],
            size=s * 10 + se,
        )
        for s in range(6)
        for se in range(3)
        for _ in range(4)
    ]
    # Four "replicas" each receive an overlapping, differently ordered slice, twice over.
    batches = []
    for _ in range(8):
        batch = rng.sample(events, k=40)
        rng.shuffle(batch)
        batches.append(batch)
    batches.append(list(events))  # and someone eventually sees everything
    added = await asyncio.gather(*(upsert_batch(index_pool, b) for b in batches))
    assert sum(added) == len(events)
    rows = await index_pool.fetch(
        "SELECT study_uid, num_series, num_instances, size_bytes, modalities"
        " FROM index.studies ORDER BY study_uid"
    )
    assert len(rows) == 6
    for row in rows:
        s = int(row["study_uid"].split(".")[1])
        assert row["num_series"] == 3
        assert row["num_instances"] == 12
        assert row["size_bytes"] == sum(4 * (s * 10 + se) for se in range(3))
        assert row["modalities"] == ["CT", "MR", "PT"]
    assert await index_pool.fetchval("SELECT count(*) FROM index.instances") == len(events)
    assert await index_pool.fetchval("SELECT sum(num_instances) FROM index.series") == len(events)


async def test_first_non_null_attribute_wins_and_later_ones_fill_gaps(
    index_pool: asyncpg.Pool,
    make_event: MakeEvent,
) -> None:
    first = make_event(
        study_uid="1.4",
        stored_at="2024-05-01T10:00:00Z",
        study_accession_number="ACC1",
        series_modality=None,
    )
    later = make_event(
        study_uid="1.4",
        stored_at="2024-05-01T10:00:01Z",
        study_accession_number="ACC2",
        study_study_description="Thorax",
        series_modality="CT",
    )
    await upsert_batch(index_pool, [first])
    await upsert_batch(index_pool, [later])
    study = await _study(index_pool, "1.4")
    assert study["accession_number"] == "ACC1"
    assert study["study_description"] == "Thorax"
    assert study["modalities"] == ["CT"]


async def test_within_a_batch_the_earliest_stored_event_wins(
    index_pool: asyncpg.Pool, make_event: MakeEvent
) -> None:
    late = make_event(study_uid="1.5", stored_at="2024-05-02T00:00:00Z", study_study_id="LATE")
    early = make_event(study_uid="1.5", stored_at="2024-05-01T00:00:00Z", study_study_id="EARLY")
    await upsert_batch(index_pool, [late, early])
    assert (await _study(index_pool, "1.5"))["study_id"] == "EARLY"


async def test_attributes_are_stored_typed_and_normalised(
    index_pool: asyncpg.Pool, make_event: MakeEvent
) -> None:
    event = make_event(
        study_uid="1.6",
        ins="123456789012345",
        study_patient_name="Hélène^Lefèvre-Martin",
        study_patient_birth_date="19800131",
        study_study_date="20240501",
        study_study_time="101530.25",
        study_accession_number="  ACC9 ",
        study_referring_physician_name="Dr Ünal^Zoé",
        series_performed_procedure_step_start_date="20240501",
        instance_content_time="1015",
        pixel_data_offset=1234,
    )
    await upsert_batch(index_pool, [event])
    study = await _study(index_pool, "1.6")
    assert study["patient_ins"] == "123456789012345"
    assert study["patient_key"] == "INS:123456789012345"
    assert study["patient_name"] == "Hélène^Lefèvre-Martin"
    assert study["patient_name_search"] == "HELENE^LEFEVRE MARTIN"
    assert study["referring_physician_search"] == "DR UNAL^ZOE"
    assert study["patient_birth_date"] == date(1980, 1, 31)
    assert study["study_time"] == time(10, 15, 30, 250000)
    assert study["accession_number"] == "ACC9"
    series = await index_pool.fetchrow("SELECT * FROM index.series WHERE study_uid = '1.6'")
    assert series is not None
    assert series["pps_start_date"] == date(2024, 5, 1)
    instance = await index_pool.fetchrow("SELECT * FROM index.instances WHERE study_uid = '1.6'")
    assert instance is not None
    assert instance["content_time"] == time(10, 15)
    assert instance["pixel_data_offset"] == 1234


async def test_values_postgresql_cannot_hold_are_dropped_not_fatal(
    index_pool: asyncpg.Pool, make_event: MakeEvent
) -> None:
    event = make_event(
        study_uid="1.7",
        series_series_number=2**40,
        instance_instance_number=-(2**33),
        study_study_description="Tho\x00rax\x00",
        study_study_date="2024-13-45",
    )
    assert await upsert_batch(index_pool, [event]) == 1
    study = await _study(index_pool, "1.7")
    assert study["study_description"] == "Thorax"
    assert study["study_date"] is None
    assert await index_pool.fetchval("SELECT series_number FROM index.series") is None


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("Hélène^Dupont", "HELENE^DUPONT"),
        ("dupont^jean^^^", "DUPONT^JEAN"),
        ("DUPONT ^ JEAN", "DUPONT^JEAN"),
        ("Lefèvre-Martin^Jean  Pierre", "LEFEVRE MARTIN^JEAN PIERRE"),
        ("Œuvre^Æsa^Straße", "OEUVRE^AESA^STRASSE"),
        ("Yamada^Tarou=山田^太郎=やまだ^たろう", "YAMADA^TAROU"),
        ("^Jean", "^JEAN"),
        ("", None),
        ("^^", None),
    ],
)
def test_person_names_normalise_for_search(raw: str, expected: str | None) -> None:
    assert normalise_pn(raw) == expected


def test_wildcards_survive_normalisation_on_the_query_side() -> None:
    assert normalise_pn("hél*^?ean", keep_wildcards=True) == "HEL*^?EAN"
    assert normalise_pn("hél*", keep_wildcards=False) == "HEL"


@pytest.mark.parametrize(
    ("raw", "expected"),
    [("20240131", date(2024, 1, 31)), ("2024.01.31", date(2024, 1, 31)), ("20240231", None),
     ("2024", None), ("", None), (None, None)],
)  # fmt: skip
def test_dates_parse_leniently(raw: str | None, expected: date | None) -> None:
    assert parse_da(raw) == expected


@pytest.mark.parametrize(
    ("raw", "expected"),
    [("10", time(10)), ("1015", time(10, 15)), ("101530", time(10, 15, 30)),
     ("101530.5", time(10, 15, 30, 500000)), ("10:15:30", time(10, 15, 30)),
     ("235960", time(23, 59, 59)), ("2500", None), ("abc", None), (None, None)],
)  # fmt: skip
def test_times_parse_leniently(raw: str | None, expected: time | None) -> None:
    assert parse_tm(raw) == expected

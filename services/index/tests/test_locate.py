"""svc.index.locate: where a study's instances are, with the access rule in the same statement."""

from __future__ import annotations

import asyncpg
import pytest

from krypton.contracts.common.v1 import Actor, RoleValues
from krypton.contracts.index.v1 import LocateRequest
from krypton.index.locate import run_locate
from krypton.index.store import upsert_batch

pytestmark = pytest.mark.postgres

OWNER = "330000001"
OTHER = "330000002"


def _actor(structure: str) -> Actor:
    return Actor(sub="ris", role=RoleValues.PRODUCER, issuer="test", structure=structure)


async def test_locate_returns_a_visible_study_and_narrows_to_series_and_instance(
    index_pool: asyncpg.Pool, make_event
) -> None:
    events = [
        make_event(
            study_uid="1.2.9",
            series_uid="1.2.9.1",
            sop_uid=f"1.2.9.1.{n}",
            structure=OWNER,
            pixel_data_offset=1000 + n,
            instance_instance_number=n,
        )
        for n in (2, 1)
    ] + [make_event(study_uid="1.2.9", series_uid="1.2.9.2", sop_uid="1.2.9.2.1", structure=OWNER)]
    await upsert_batch(index_pool, events)

    study = await run_locate(index_pool, LocateRequest(actor=_actor(OWNER), study_uid="1.2.9"))
    assert study.status == 200
    assert [i.sop_instance_uid for i in study.instances][:2] == ["1.2.9.1.1", "1.2.9.1.2"]
    assert len(study.instances) == 3
    assert study.instances[0].pixel_data_offset == 1001

    series = await run_locate(
        index_pool, LocateRequest(actor=_actor(OWNER), study_uid="1.2.9", series_uid="1.2.9.2")
    )
    assert [i.sop_instance_uid for i in series.instances] == ["1.2.9.2.1"]

    one = await run_locate(
        index_pool,
        LocateRequest(
            actor=_actor(OWNER),
            study_uid="1.2.9",
            series_uid="1.2.9.1",
            sop_instance_uid="1.2.9.1.2",
        ),
    )
    assert [i.object_key for i in one.instances] == ["objects/1.2.9.1.2"]


async def test_a_hidden_study_is_answered_like_a_missing_one(
    index_pool: asyncpg.Pool, make_event
) -> None:
    await upsert_batch(index_pool, [make_event(study_uid="1.2.10", structure=OWNER)])
    hidden = await run_locate(index_pool, LocateRequest(actor=_actor(OTHER), study_uid="1.2.10"))
    missing = await run_locate(index_pool, LocateRequest(actor=_actor(OTHER), study_uid="1.2.11"))
    assert hidden == missing
    assert hidden.status == 404


async def test_an_instance_outside_the_named_study_is_not_found(
    index_pool: asyncpg.Pool, make_event
) -> None:
    await upsert_batch(index_pool, [make_event(study_uid="1.2.12", sop_uid="1.2.12.1.1")])
    admin = Actor(sub="a", role=RoleValues.ADMIN, issuer="test")
    wrong = await run_locate(
        index_pool, LocateRequest(actor=admin, study_uid="1.2.13", sop_instance_uid="1.2.12.1.1")
    )
    assert wrong.status == 404

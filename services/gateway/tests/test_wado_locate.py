"""The gateway's locate over a real nats-server: shared requests, series filled in the background.

A responder on ``svc.index.locate`` plays the index (the real one is exercised end to end in
tests/e2e): it answers from a table and counts what it was asked.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import cast

import nats
import pytest
from nats.aio.client import Client
from nats.aio.msg import Msg

from krypton.bus.codec import decode, encode
from krypton.contracts import subjects
from krypton.contracts.common.v1 import Actor, RoleValues
from krypton.contracts.index.v1 import LocatedInstance, LocateRequest, LocateResponse
from krypton.gateway.context import GatewayContext
from krypton.gateway.wado_cache import LocateCache
from krypton.gateway.wado_services import WadoError, locate

DOCTOR = Actor(sub="810000000011", role=RoleValues.PROFESSIONAL, issuer="https://idp")
STUDY, SERIES = "1.2", "1.2.3"


def _instance(sop: str) -> LocatedInstance:
    return LocatedInstance(
        study_uid=STUDY,
        series_uid=SERIES,
        sop_instance_uid=sop,
        sop_class_uid="1.2.840.10008.5.1.4.1.1.2",
        transfer_syntax_uid="1.2.840.10008.1.2.1",
        object_key=f"originals/{sop}.dcm",
        sha256="0" * 64,
        size=10,
    )


@dataclass
class FakeIndex:
    """Answers locates from `series` (the instances the caller sees); counts the requests."""

    series: list[LocatedInstance]
    delay: float = 0.0
    gate: asyncio.Event | None = None  # answers wait until it is set
    asked: Counter[str] = field(default_factory=Counter)

    async def on_locate(self, msg: Msg) -> None:
        request = decode(msg.data, LocateRequest)
        level = (
            "instance" if request.sop_instance_uid else "series" if request.series_uid else "study"
        )
        self.asked[level] += 1
        await asyncio.sleep(self.delay)
        if self.gate is not None:
            await self.gate.wait()
        found = [
            i
            for i in self.series
            if request.sop_instance_uid in (None, i.sop_instance_uid)
            and request.series_uid in (None, i.series_uid)
        ]
        status = 200 if found else 404
        await msg.respond(encode(LocateResponse(status=status, instances=found)))


@dataclass
class Context:
    """What `locate` uses of the gateway's context."""

    nc: Client
    locates: LocateCache


@pytest.fixture
async def nc(nats_url: str) -> AsyncIterator[Client]:
    client = await nats.connect(nats_url)
    yield client
    await client.close()


async def _serve(nc: Client, index: FakeIndex) -> None:
    await nc.subscribe(subjects.SVC_INDEX_LOCATE, cb=index.on_locate)
    await nc.flush()


async def _until(condition: Callable[[], bool], what: str) -> None:
    deadline = asyncio.get_running_loop().time() + 10.0
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, what
        await asyncio.sleep(0.01)


async def test_concurrent_identical_locates_share_one_index_request(nc: Client) -> None:
    index = FakeIndex([_instance("1.2.3.4"), _instance("1.2.3.5")], delay=0.2)
    await _serve(nc, index)
    ctx = cast(GatewayContext, Context(nc, LocateCache()))
    answers = await asyncio.gather(*(locate(ctx, DOCTOR, STUDY) for _ in range(8)))
    assert all(a == index.series for a in answers)
    assert index.asked["study"] == 1
    # Once answered, the next one asks again (study-level answers are not kept).
    await locate(ctx, DOCTOR, STUDY)
    assert index.asked["study"] == 2


async def test_a_read_instance_fills_its_series_and_a_gone_one_is_forgotten(nc: Client) -> None:
    index = FakeIndex([_instance(f"1.2.3.{n}") for n in range(4, 8)])
    await _serve(nc, index)
    cache = LocateCache(refresh_after=0.0)  # every read answer has its series asked again
    ctx = cast(GatewayContext, Context(nc, cache))
    assert await locate(ctx, DOCTOR, STUDY, SERIES, "1.2.3.4") == [index.series[0]]
    assert index.asked["instance"] == 1
    # The series is asked in the background: its other instances are then known.
    await _until(lambda: len(cache) == 4, "series not filled")
    assert await locate(ctx, DOCTOR, STUDY, SERIES, "1.2.3.5") == [index.series[1]]
    assert index.asked["instance"] == 1
    # The caller no longer sees the study: the next refresh forgets every entry of it, and
    # the read after that asks the index, which refuses.
    index.series = []
    await _until(lambda: len(cache) == 0, "entries of a hidden series kept")
    with pytest.raises(WadoError) as refused:
        await locate(ctx, DOCTOR, STUDY, SERIES, "1.2.3.5")
    assert refused.value.status == 404


async def test_a_policy_change_during_a_series_request_keeps_nothing(nc: Client) -> None:
    index = FakeIndex([_instance("1.2.3.4"), _instance("1.2.3.5")], gate=asyncio.Event())
    await _serve(nc, index)
    cache = LocateCache()
    ctx = cast(GatewayContext, Context(nc, cache))
    reading = asyncio.create_task(locate(ctx, DOCTOR, STUDY, SERIES))
    await _until(lambda: index.asked["series"] == 1, "series not asked")
    await nc.publish(subjects.policy_changed("grant"), b"{}")
    await _until(lambda: cache.generation == 1, "policy change not seen")
    assert index.gate is not None
    index.gate.set()
    assert await reading == index.series  # this answer is served (asked before the change)...
    assert len(cache) == 0  # ...but not kept

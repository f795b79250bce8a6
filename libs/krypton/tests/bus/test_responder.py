"""`Responder`: bounded concurrency, an answer to every request, metrics (real nats-server)."""

from __future__ import annotations

import asyncio
import uuid

import pytest
from nats.aio.msg import Msg
from prometheus_client import REGISTRY

from krypton.bus.connect import connect
from krypton.bus.responder import Reply, Responder

pytestmark = pytest.mark.nats


def _served(subject: str, status: str) -> float:
    value = REGISTRY.get_sample_value(
        "krypton_nats_served_total", {"service": "testsvc", "subject": subject, "status": status}
    )
    return value or 0.0


async def test_requests_run_side_by_side_up_to_the_worker_bound(nats_url: str) -> None:
    nc = await connect(nats_url, "testsvc")
    subject = f"test.{uuid.uuid4().hex[:8]}.slow"
    responder = Responder(nc, "testsvc", workers=2)
    release = asyncio.Event()
    running = 0
    most = 0

    async def slow(msg: Msg) -> Reply:
        nonlocal running, most
        running += 1
        most = max(most, running)
        await release.wait()
        running -= 1
        return msg.data, {"Krypton-Status": "200"}

    await responder.serve(subject, "q", slow)
    try:
        asks = [
            asyncio.create_task(nc.request(subject, str(i).encode(), timeout=10)) for i in range(5)
        ]
        for _ in range(100):
            if running == 2:
                break
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.1)
        assert (running, most) == (2, 2)  # two at a time, not one, not five
        release.set()
        replies = await asyncio.gather(*asks)
        assert sorted(r.data for r in replies) == [str(i).encode() for i in range(5)]
        assert most == 2
    finally:
        await responder.stop()
        await nc.close()


async def test_a_failing_handler_still_answers_and_is_counted(nats_url: str) -> None:
    nc = await connect(nats_url, "testsvc")
    subject = f"test.{uuid.uuid4().hex[:8]}.boom"
    family = subject  # no producing structure or UID in it: the family is the subject
    responder = Responder(nc, "testsvc", workers=1)

    async def boom(msg: Msg) -> Reply:
        if msg.data == b"fail":
            msg_ = "handler bug"
            raise RuntimeError(msg_)
        return b"fine", {}

    await responder.serve(subject, "q", boom)
    try:
        before_500, before_200 = _served(family, "500"), _served(family, "200")
        failed = await nc.request(subject, b"fail", timeout=5)
        assert (failed.headers or {}).get("Krypton-Status") == "500"
        ok = await nc.request(subject, b"ok", timeout=5)  # the worker slot was given back
        assert ok.data == b"fine"
        assert _served(family, "500") == before_500 + 1
        assert _served(family, "200") == before_200 + 1
    finally:
        await responder.stop()
        await nc.close()


async def test_stop_lets_the_requests_in_flight_finish(nats_url: str) -> None:
    nc = await connect(nats_url, "testsvc")
    subject = f"test.{uuid.uuid4().hex[:8]}.drain"
    responder = Responder(nc, "testsvc", workers=4)
    started = asyncio.Event()

    async def slow(msg: Msg) -> Reply:
        started.set()
        await asyncio.sleep(0.3)
        return b"done", {}

    await responder.serve(subject, "q", slow)
    ask = asyncio.create_task(nc.request(subject, b"?", timeout=5))
    await started.wait()
    await responder.stop()
    assert (await ask).data == b"done"
    await nc.close()

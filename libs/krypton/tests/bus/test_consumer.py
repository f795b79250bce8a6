"""BatchConsumer against a real nats-server: batches, redelivery, poison isolation."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Sequence

import msgspec
import nats
from nats.js.api import StreamConfig

from krypton.bus.consumer import BatchConsumer, TransientError


class Event(msgspec.Struct, frozen=True):
    n: int


async def _setup(nats_url: str) -> tuple[nats.aio.client.Client, str, str]:
    nc = await nats.connect(nats_url)
    name = f"T{uuid.uuid4().hex[:8]}"
    subject = f"test.{name}.>"
    await nc.jetstream().add_stream(StreamConfig(name=name, subjects=[subject]))
    return nc, name, subject


async def test_a_poison_message_is_isolated_and_the_others_are_handled(nats_url: str) -> None:
    nc, stream, subject = await _setup(nats_url)
    js = nc.jetstream()
    handled: list[int] = []
    attempts_of_poison = 0
    done = asyncio.Event()

    async def handler(events: Sequence[Event]) -> None:
        nonlocal attempts_of_poison
        if any(e.n == 3 for e in events):
            attempts_of_poison += len(events) == 1
            msg = "cannot handle 3"
            raise ValueError(msg)
        handled.extend(e.n for e in events)
        if sorted(handled) == [0, 1, 2, 4, 5]:
            done.set()

    for n in range(6):
        await js.publish(subject.replace(">", "x"), msgspec.json.encode(Event(n)))
    consumer = BatchConsumer(
        js=js, stream=stream, subject=subject, durable="t", type_=Event, handler=handler,
        batch=10, retry_delay=0.05, max_attempts=2,
    )  # fmt: skip
    await consumer.start()
    await asyncio.wait_for(done.wait(), 10)
    for _ in range(100):  # the poison message comes back once, then it is terminated
        info = await js.consumer_info(stream, "t")
        if info.num_ack_pending == 0 and info.num_pending == 0:
            break
        await asyncio.sleep(0.05)
    await consumer.stop()
    await nc.close()
    assert sorted(handled) == [0, 1, 2, 4, 5]
    assert attempts_of_poison == 2
    assert info.num_ack_pending == 0


async def test_a_transient_failure_redelivers_the_whole_batch(nats_url: str) -> None:
    nc, stream, subject = await _setup(nats_url)
    js = nc.jetstream()
    calls = 0
    seen: set[int] = set()
    done = asyncio.Event()

    async def handler(events: Sequence[Event]) -> None:
        nonlocal calls
        calls += 1
        if calls == 1:
            msg = "database restarting"
            raise TransientError(msg)
        seen.update(e.n for e in events)
        if len(seen) == 4:
            done.set()

    for n in range(4):
        await js.publish(subject.replace(">", "y"), msgspec.json.encode(Event(n)))
    consumer = BatchConsumer(
        js=js, stream=stream, subject=subject, durable="t2", type_=Event, handler=handler,
        batch=10, retry_delay=0.05,
    )  # fmt: skip
    await consumer.start()
    await asyncio.wait_for(done.wait(), 10)
    await consumer.stop()
    await nc.close()
    assert seen == {0, 1, 2, 3}
    assert calls >= 2


async def test_a_linger_gathers_messages_that_arrive_just_after_the_first(nats_url: str) -> None:
    nc, stream, subject = await _setup(nats_url)
    js = nc.jetstream()
    batches: list[list[int]] = []
    done = asyncio.Event()

    async def handler(events: Sequence[Event]) -> None:
        batches.append([e.n for e in events])
        if sum(map(len, batches)) == 5:
            done.set()

    consumer = BatchConsumer(
        js=js, stream=stream, subject=subject, durable="t3", type_=Event, handler=handler,
        batch=10, linger=0.5,
    )  # fmt: skip
    await consumer.start()
    for n in range(5):  # one at a time, as requests come: without a linger, five batches
        await js.publish(subject.replace(">", "z"), msgspec.json.encode(Event(n)))
        await asyncio.sleep(0.02)
    await asyncio.wait_for(done.wait(), 10)
    for _ in range(100):
        info = await js.consumer_info(stream, "t3")
        if info.num_ack_pending == 0:
            break
        await asyncio.sleep(0.02)
    await consumer.stop()
    await nc.close()
    assert batches == [[0, 1, 2, 3, 4]]
    assert info.num_ack_pending == 0

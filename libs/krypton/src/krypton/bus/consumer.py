"""A durable JetStream batch consumer on nats-py.

FastStream's batch pull loop (0.7) loses the batch it is collecting when a fetch times out: the
fetched messages are neither handled nor nacked and only come back after `ack_wait`. Batch
consumers that need every message handled promptly use this loop instead: fetch up to N, hand the
decoded batch to the handler, ack each message only after the handler returned (its effect is
durable), nak with a delay on a transient failure, terminate a message that cannot be decoded.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

import msgspec
import nats.errors
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from krypton.bus.tracing import consumer_span
from krypton.core.logging import get_logger
from krypton.telemetry.metrics import MESSAGE_BATCH_DURATION, MESSAGES, LagPoller

__all__ = ["BatchConsumer", "TransientError"]

T = TypeVar("T")
_log = get_logger("krypton.bus.consumer")


class TransientError(Exception):
    """Raised by a handler when the batch should be retried after a pause."""


@dataclass
class BatchConsumer(Generic[T]):
    """Consumes `subject` from `stream` with the durable `durable`, `batch` messages at a time."""

    js: JetStreamContext
    stream: str
    subject: str
    durable: str
    type_: type[T]
    handler: Callable[[Sequence[T]], Awaitable[object]]
    batch: int = 256
    ack_wait: float = 15.0  # a crashed replica's batch is redelivered this soon
    retry_delay: float = 2.0
    max_attempts: int = 10  # deliveries before a message that always fails is terminated
    # Seconds between "still working" signals for a batch in hand (None: none), so that a
    # short `ack_wait` redelivers a crashed replica's batch soon without redelivering a slow one.
    heartbeat: float | None = None
    # Seconds to wait, once a batch has started, for more messages before handling it (0:
    # handle what is there at once). For work that nobody waits on (the audit log's append:
    # the event is durable in JetStream already), a short linger turns a transaction and a
    # commit per request into one per batch, off the critical path of the requests.
    linger: float = 0.0
    _task: asyncio.Task[None] | None = None
    _stopping: bool = False
    _lag: LagPoller | None = None

    async def start(self) -> None:
        """Bind (creating the durable consumer if needed) and start consuming in the background."""
        config = ConsumerConfig(
            durable_name=self.durable,
            ack_policy=AckPolicy.EXPLICIT,
            deliver_policy=DeliverPolicy.ALL,
            ack_wait=self.ack_wait,
            max_ack_pending=self.batch * 4,
            filter_subject=self.subject,
        )
        sub = await self.js.pull_subscribe(
            self.subject, durable=self.durable, stream=self.stream, config=config
        )
        self._task = asyncio.create_task(self._run(sub))
        self._lag = LagPoller(self.js, [(self.stream, self.durable)])
        self._lag.start()

    async def stop(self) -> None:
        """Finish the batch in hand, then stop."""
        self._stopping = True
        if self._lag is not None:
            await self._lag.stop()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _run(self, sub: JetStreamContext.PullSubscription) -> None:
        decoder = msgspec.json.Decoder(self.type_)
        while not self._stopping:
            try:
                msgs = await sub.fetch(self.batch, timeout=1.0)
            except (nats.errors.TimeoutError, TimeoutError):  # nothing to fetch right now
                continue
            except (nats.errors.ConnectionClosedError, nats.errors.ConnectionReconnectingError,
                    nats.errors.NoRespondersError, OSError) as exc:  # fmt: skip
                _log.warning("fetch failed; retrying", durable=self.durable, error=repr(exc))
                await asyncio.sleep(self.retry_delay)
                continue
            if self.linger > 0 and len(msgs) < self.batch:
                msgs += await self._more(sub, self.batch - len(msgs))
            beat = asyncio.create_task(self._heartbeat(msgs)) if self.heartbeat else None
            try:
                await asyncio.shield(self._handle_traced(msgs, decoder))
            finally:
                if beat is not None:
                    beat.cancel()

    async def _more(self, sub: JetStreamContext.PullSubscription, needed: int) -> list[Msg]:
        """What arrives within `linger` (up to `needed` messages); nothing on a fetch error."""
        await asyncio.sleep(self.linger)
        try:
            return await sub.fetch(needed, timeout=0.05)
        except (nats.errors.Error, TimeoutError, OSError):
            return []  # the batch in hand is handled; the next fetch reports a lasting fault

    async def _handle_traced(self, msgs: list[Msg], decoder: msgspec.json.Decoder[T]) -> None:
        started = time.perf_counter()
        with consumer_span(
            f"{self.durable} process", msgs, **{"messaging.consumer.group.name": self.durable}
        ):
            await self._handle(msgs, decoder)
        MESSAGE_BATCH_DURATION.labels(self.durable).observe(time.perf_counter() - started)

    async def _heartbeat(self, msgs: list[Msg]) -> None:
        assert self.heartbeat is not None
        while True:
            await asyncio.sleep(self.heartbeat)
            for msg in msgs:
                with contextlib.suppress(nats.errors.Error):
                    await msg.in_progress()

    async def _handle(self, msgs: list[Msg], decoder: msgspec.json.Decoder[T]) -> None:
        good: list[tuple[Msg, T]] = []
        for msg in msgs:
            try:
                good.append((msg, decoder.decode(msg.data)))
            except msgspec.DecodeError as exc:
                # A message that can never be decoded must not block the stream: terminate it.
                _log.error("undecodable message dropped", subject=msg.subject, error=str(exc))
                await msg.term()
                MESSAGES.labels(self.durable, "term").inc()
        if not good:
            return
        if len(good) == 1:
            await self._handle_one(*good[0])
            return
        try:
            await self.handler([event for _, event in good])
        except TransientError as exc:
            _log.warning("batch failed; retrying later", durable=self.durable, error=repr(exc))
            for msg, _ in good:
                await msg.nak(delay=self.retry_delay)
            MESSAGES.labels(self.durable, "nak").inc(len(good))
            return
        except Exception:
            # Not transient: one bad message must not block the others. Handle them one by one;
            # the ones that keep failing are set aside after `max_attempts` deliveries.
            _log.exception("batch failed; isolating", durable=self.durable, size=len(good))
            for msg, event in good:
                await self._handle_one(msg, event)
            return
        for msg, _ in good:
            await msg.ack()
        MESSAGES.labels(self.durable, "ack").inc(len(good))

    async def _handle_one(self, msg: Msg, event: T) -> None:
        try:
            await self.handler([event])
        except TransientError:
            await msg.nak(delay=self.retry_delay)
            MESSAGES.labels(self.durable, "nak").inc()
        except Exception:
            attempts = msg.metadata.num_delivered or 1
            if attempts >= self.max_attempts:
                _log.exception(
                    "poison message terminated after repeated failures",
                    durable=self.durable,
                    subject=msg.subject,
                    stream_seq=msg.metadata.sequence.stream,
                    attempts=attempts,
                )
                await msg.term()
                MESSAGES.labels(self.durable, "term").inc()
            else:
                _log.exception("message failed", durable=self.durable, attempts=attempts)
                await msg.nak(delay=self.retry_delay * attempts)
                MESSAGES.labels(self.durable, "nak").inc()
        else:
            await msg.ack()
            MESSAGES.labels(self.durable, "ack").inc()

"""The ingest work loop: nats-py pull consumers handing batches of uploads to the pipeline.

Why not a FastStream subscriber: FastStream's pull subscriber handles one message per call
(a select, a transaction and an awaited publish per upload) and logs a TimeoutError traceback on
every empty fetch; its batch mode loses the batch it is collecting when a fetch times out (see
`krypton.bus.consumer`). `krypton.bus.consumer.BatchConsumer` acks or naks a whole batch, while
an upload needs its own verdict. So this loop fetches up to `batch` uploads, has
`IngestPipeline.process_many` decide each, then per upload sends the verdict to the waiting
gateway and acks — or naks it alone when it met a transient failure. `workers` loops, each with
its own pull subscription on the shared durable, keep several batches in flight so that one
batch's fsyncs and commits overlap another's parsing.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass, field

import msgspec
import nats.errors
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from krypton.bus.tracing import consumer_span
from krypton.contracts import subjects
from krypton.contracts.ingest.v1 import IngestReceived
from krypton.core.logging import get_logger
from krypton.db.errors import TRANSIENT_DB_ERRORS
from krypton.ingest.pipeline import IngestPipeline, Outcome, result_payload
from krypton.storage.errors import StorageUnavailable
from krypton.telemetry.metrics import (
    INGEST_INSTANCES,
    MESSAGE_BATCH_DURATION,
    MESSAGES,
    LagPoller,
)

__all__ = ["DURABLE", "UploadConsumer"]

DURABLE = "ingest"
_log = get_logger("krypton.ingest")

# Failures that a later attempt may not meet: retried after a short pause.
_TRANSIENT = (*TRANSIENT_DB_ERRORS, nats.errors.Error, StorageUnavailable)
_TRANSIENT_DELAY = 2.0
# A bug, not bad input (bad input is quarantined): retried slowly and kept visible; after
# `max_deliver` attempts JetStream stops redelivering and the upload waits in the stream for an
# operator (it is never lost).
_BUG_DELAY = 30.0
_TOP_UP = 0.02  # seconds a batch waits for more uploads once it has one
_HEARTBEAT = 10.0  # in-progress signal while a batch is worked on (ack_wait is 30 s)


@dataclass
class UploadConsumer:
    """Consumes `ingest.received.*` with the durable pull consumer `ingest`."""

    nc: Client
    js: JetStreamContext
    pipeline: IngestPipeline
    batch: int = 16
    workers: int = 3
    _tasks: list[asyncio.Task[None]] = field(default_factory=list)
    _subs: list[JetStreamContext.PullSubscription] = field(default_factory=list)
    _stopping: bool = False
    _lag: LagPoller | None = None

    async def start(self) -> None:
        """Bind (creating the durable consumer if needed) and start the worker loops."""
        subject = f"{subjects.INGEST_RECEIVED}.*"
        # A crashed replica's uploads come back after 30 s; long batches keep their claim
        # alive with in-progress heartbeats.
        config = ConsumerConfig(
            durable_name=DURABLE,
            ack_policy=AckPolicy.EXPLICIT,
            deliver_policy=DeliverPolicy.ALL,
            ack_wait=30,
            max_ack_pending=4 * self.batch * self.workers,
            max_deliver=50,
            filter_subject=subject,
        )
        subs = [
            await self.js.pull_subscribe(
                subject, durable=DURABLE, stream=subjects.INGEST_STREAM, config=config
            )
        ]
        for _ in range(self.workers - 1):
            subs.append(
                await self.js.pull_subscribe_bind(durable=DURABLE, stream=subjects.INGEST_STREAM)
            )
        self._subs = subs
        self._tasks = [asyncio.create_task(self._run(sub)) for sub in subs]
        self._lag = LagPoller(self.js, [(subjects.INGEST_STREAM, DURABLE)])
        self._lag.start()

    async def stop(self) -> None:
        """Let every loop finish the batch in hand (its fetch ends within a second), then stop."""
        self._stopping = True
        if self._lag is not None:
            await self._lag.stop()
        if self._tasks:
            _, pending = await asyncio.wait(self._tasks, timeout=30.0)
            for task in pending:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        # Unsubscribed here, not by the connection's drain: a pull subscription's queue may
        # hold status replies nobody reads, which would hold a drain for its whole timeout.
        for sub in self._subs:
            with contextlib.suppress(nats.errors.Error):
                await sub.unsubscribe()

    async def _run(self, sub: JetStreamContext.PullSubscription) -> None:
        while not self._stopping:
            try:
                msgs = await self._fetch(sub)
            except (nats.errors.TimeoutError, TimeoutError):  # nothing to fetch right now
                continue
            except (nats.errors.ConnectionClosedError, nats.errors.ConnectionReconnectingError,
                    nats.errors.NoRespondersError, OSError) as exc:  # fmt: skip
                _log.warning("fetch failed; retrying", error=repr(exc))
                await asyncio.sleep(_TRANSIENT_DELAY)
                continue
            try:
                # One span per batch, continuing the STOW request's trace (krypton.bus.tracing).
                with (
                    consumer_span(f"{DURABLE} process", msgs),
                    MESSAGE_BATCH_DURATION.labels(DURABLE).time(),
                ):
                    await self._handle(msgs)
            except Exception:  # the loop must survive anything; unanswered uploads come back
                _log.exception("ingest batch failed")

    async def _fetch(self, sub: JetStreamContext.PullSubscription) -> list[Msg]:
        """Wait for one upload, then take whatever else is already waiting, up to `batch`.

        Not `fetch(batch, timeout)` alone: once its first message has come, nats-py waits for
        the rest of the batch until the timeout, so an upload arriving at an idle consumer
        would wait up to a second for company.
        """
        msgs = await sub.fetch(1, timeout=1.0)
        if self.batch > 1:
            with contextlib.suppress(nats.errors.TimeoutError, TimeoutError):
                # Returns at once with what is there; lingers at most `_TOP_UP` when nothing is.
                msgs += await sub.fetch(self.batch - 1, timeout=_TOP_UP)
        return msgs

    async def _handle(self, msgs: list[Msg]) -> None:
        events: list[IngestReceived] = []
        taken: list[Msg] = []
        for msg in msgs:
            try:
                events.append(_DECODER.decode(msg.data))
                taken.append(msg)
            except msgspec.DecodeError as exc:
                # A message that can never be decoded must not block the stream: terminate it.
                _log.error("undecodable upload event dropped", subject=msg.subject, error=str(exc))
                await msg.term()
                MESSAGES.labels(DURABLE, "term").inc()
        if not events:
            return
        heartbeat = asyncio.create_task(_heartbeat(taken))
        try:
            results = await self._decide(events)
        finally:
            heartbeat.cancel()
        for msg, event, result in zip(taken, events, results, strict=True):
            await self._settle(msg, event, result)

    async def _decide(self, events: list[IngestReceived]) -> list[Outcome | Exception]:
        """Verdicts for the batch; a batch-wide failure is narrowed down to its uploads."""
        try:
            return await self.pipeline.process_many(events)
        except Exception as exc:
            if len(events) == 1:
                return [exc]
            if isinstance(exc, _TRANSIENT):
                return [exc] * len(events)
            # Not transient: one upload must not fail the others. Decide them one by one.
            _log.warning("ingest batch failed; isolating", size=len(events), error=repr(exc))
            results: list[Outcome | Exception] = []
            for event in events:
                try:
                    results.extend(await self.pipeline.process_many([event]))
                except Exception as alone:
                    results.append(alone)
            return results

    async def _settle(self, msg: Msg, event: IngestReceived, result: Outcome | Exception) -> None:
        """Answer the gateway and ack, or nak the upload to try it again later."""
        if isinstance(result, Outcome):
            if event.reply_to:
                await self.nc.publish(event.reply_to, result_payload(result.result))
            await msg.ack()
            INGEST_INSTANCES.labels("stored" if result.result.ok else "rejected").inc()
            MESSAGES.labels(DURABLE, "ack").inc()
            return
        INGEST_INSTANCES.labels("failed").inc()
        MESSAGES.labels(DURABLE, "nak").inc()
        if isinstance(result, _TRANSIENT):
            _log.warning("ingest retry later", error=repr(result), staging_key=event.staging_key)
            await msg.nak(delay=_TRANSIENT_DELAY)
            return
        _log.error(
            "ingest failed",
            staging_key=event.staging_key,
            exc_info=(type(result), result, result.__traceback__),
        )
        await msg.nak(delay=_BUG_DELAY)


_DECODER = msgspec.json.Decoder(IngestReceived)


async def _heartbeat(msgs: list[Msg]) -> None:
    """Tell JetStream the uploads are still being worked on (large objects, slow stores)."""
    while True:
        await asyncio.sleep(_HEARTBEAT)
        for msg in msgs:
            await msg.in_progress()

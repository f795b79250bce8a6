"""The ingest service: turns staged uploads into canonical instances or quarantined rejects.

Consumes `ingest.received.*` with the durable pull consumer `ingest` (N replicas share the work),
and publishes `instance.stored.*` / `instance.rejected.*`. Run it with `krypton run ingest` or
`python -m krypton.ingest`.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import asyncpg
from faststream import FastStream
from faststream.exceptions import NackMessage
from faststream.middlewares import AckPolicy
from faststream.nats import JStream, NatsBroker, NatsMessage, PullSub
from nats.aio.client import Client
from nats.js.api import ConsumerConfig

from krypton.bus import streams
from krypton.bus.connect import connect, make_broker
from krypton.bus.service import run_service
from krypton.contracts import subjects
from krypton.contracts.ingest.v1 import IngestReceived
from krypton.core.logging import get_logger
from krypton.core.settings import KryptonSettings
from krypton.db.migrations import apply_migrations
from krypton.db.pool import create_pool
from krypton.ingest.pipeline import IngestPipeline, result_payload
from krypton.storage.base import ObjectStore
from krypton.storage.errors import StorageUnavailable
from krypton.storage.factory import open_store

__all__ = ["build_app", "main"]

SCHEMA = "ingest"
MIGRATIONS = Path(__file__).parent / "migrations"
_log = get_logger("krypton.ingest")

# Failures that a later attempt may not meet: retried with a pause instead of a hot loop.
_TRANSIENT = (
    OSError,
    asyncio.TimeoutError,
    asyncpg.PostgresConnectionError,
    asyncpg.InterfaceError,
    asyncpg.exceptions.SerializationError,
    asyncpg.exceptions.DeadlockDetectedError,
    asyncpg.exceptions.CannotConnectNowError,
    StorageUnavailable,
)


async def _heartbeat(message: NatsMessage, every: float = 10.0) -> None:
    """Tell JetStream the upload is still being worked on (large objects, slow stores)."""
    while True:
        await asyncio.sleep(every)
        await message.raw_message.in_progress()


def build_app(settings: KryptonSettings) -> tuple[FastStream, NatsBroker]:
    """Build the FastStream app; resources are made in its lifespan."""
    broker = make_broker(settings.nats_url, "ingest")
    state: dict[str, object] = {}

    @asynccontextmanager
    async def lifespan() -> AsyncIterator[None]:
        pool = await create_pool(
            settings.pg_dsn.get_secret_value(), min_size=1, max_size=8, application_name="ingest"
        )
        await apply_migrations(pool, SCHEMA, MIGRATIONS)
        store: ObjectStore = await open_store(settings.storage)
        nc: Client = await connect(settings.nats_url, "ingest-publisher")
        js = nc.jetstream()
        await streams.provision(js)
        state["pipeline"] = IngestPipeline(pool, store, js)
        state["nc"] = nc
        _log.info("ingest ready", concurrency=settings.ingest_concurrency)
        try:
            yield
        finally:
            await nc.drain()
            await store.close()
            await pool.close()

    @broker.subscriber(
        f"{subjects.INGEST_RECEIVED}.*",
        stream=JStream(name=subjects.INGEST_STREAM, declare=False),
        durable="ingest",
        # A crashed replica's uploads come back after 30 s; long work keeps its claim alive with
        # in-progress heartbeats (see `_heartbeat`).
        config=ConsumerConfig(
            ack_wait=30, max_ack_pending=4 * settings.ingest_concurrency, max_deliver=50
        ),
        pull_sub=PullSub(batch_size=settings.ingest_concurrency, timeout=1.0),
        max_workers=settings.ingest_concurrency,
        ack_policy=AckPolicy.NACK_ON_ERROR,
    )
    async def on_received(event: IngestReceived, message: NatsMessage) -> None:
        pipeline = state["pipeline"]
        assert isinstance(pipeline, IngestPipeline)
        heartbeat = asyncio.create_task(_heartbeat(message))
        try:
            outcome = await pipeline.process(event)
        except _TRANSIENT as exc:
            _log.warning("ingest retry later", error=repr(exc), staging_key=event.staging_key)
            raise NackMessage(delay=2.0) from exc
        except Exception as exc:
            # A bug, not bad input (bad input is quarantined): retry slowly, keep it visible;
            # after max_deliver attempts JetStream stops redelivering and the upload waits in
            # the stream for an operator (it is never lost).
            _log.exception("ingest failed", staging_key=event.staging_key)
            raise NackMessage(delay=30.0) from exc
        finally:
            heartbeat.cancel()
        if event.reply_to:
            nc = state["nc"]
            assert isinstance(nc, Client)
            await nc.publish(event.reply_to, result_payload(outcome.result))

    app = FastStream(broker, lifespan=lifespan)
    return app, broker


def main() -> None:
    """Entry point: `python -m krypton.ingest`."""
    run_service("ingest", build_app)


if __name__ == "__main__":
    main()

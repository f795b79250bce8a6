"""The ingest service: turns staged uploads into canonical instances or quarantined rejects.

Consumes `ingest.received.*` with the durable pull consumer `ingest` (N replicas share the work)
in batches (`krypton.ingest.consumer`), and publishes `instance.stored.*` /
`instance.rejected.*`. Run it with `krypton run ingest` or `python -m krypton.ingest`.
FastStream only hosts the process (lifespan, signals); the work loop is plain nats-py.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from faststream import FastStream
from faststream.nats import NatsBroker

from krypton.bus import streams
from krypton.bus.connect import connect, make_broker
from krypton.bus.service import run_service
from krypton.core.logging import get_logger
from krypton.core.settings import KryptonSettings
from krypton.db.migrations import apply_migrations
from krypton.db.pool import create_pool
from krypton.ingest.consumer import UploadConsumer
from krypton.ingest.pipeline import IngestPipeline
from krypton.storage.factory import open_store

__all__ = ["build_app", "main"]

SCHEMA = "ingest"
MIGRATIONS = Path(__file__).parent / "migrations"
# Batches in flight per replica: while one waits on fsyncs or a commit, another is parsed.
WORKERS = 3
_log = get_logger("krypton.ingest")


def build_app(settings: KryptonSettings) -> tuple[FastStream, NatsBroker]:
    """Build the FastStream app; resources are made in its lifespan."""
    broker = make_broker(settings.nats_url, "ingest")

    @asynccontextmanager
    async def lifespan() -> AsyncIterator[None]:
        pool = await create_pool(
            settings.pg_dsn.get_secret_value(),
            min_size=1,
            max_size=WORKERS + 2,
            application_name="ingest",
        )
        await apply_migrations(pool, SCHEMA, MIGRATIONS)
        store = await open_store(settings.storage)
        nc = await connect(settings.nats_url, "ingest-publisher")
        js = nc.jetstream()
        await streams.provision(js, replicas=settings.stream_replicas)
        consumer = UploadConsumer(
            nc,
            js,
            IngestPipeline(pool, store, js, max_frames=settings.max_frames),
            batch=settings.ingest_concurrency,
            workers=WORKERS,
        )
        await consumer.start()
        _log.info("ingest ready", batch=settings.ingest_concurrency, workers=WORKERS)
        try:
            yield
        finally:
            await consumer.stop()
            await nc.drain()
            await store.close()
            await pool.close()

    app = FastStream(broker, lifespan=lifespan)
    return app, broker


def main() -> None:
    """Entry point: `python -m krypton.ingest`."""
    run_service("ingest", build_app)


if __name__ == "__main__":
    main()

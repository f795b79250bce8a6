"""The index service: the searchable read model of every stored instance, and QIDO-RS answers.

Consumes `instance.stored.*` in batches with the durable pull consumer `index` (nats-py batch
loop, see `krypton.bus.consumer`; idempotent upserts: redelivery never double-counts), and answers `svc.index.qido` and `svc.index.locate` in
the queue group `index` so N replicas share searches, each process `KRYPTON_INDEX_REQUEST_WORKERS`
requests at a time. Run it with `krypton run index`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager

import asyncpg
import msgspec
from faststream import FastStream
from faststream.nats import NatsBroker, NatsResponse
from nats.aio.client import Client

from krypton.bus import streams
from krypton.bus.codec import encode
from krypton.bus.connect import connect, make_broker
from krypton.bus.consumer import BatchConsumer, TransientError
from krypton.bus.service import run_service
from krypton.contracts import subjects
from krypton.contracts.index.v1 import LocateRequest, LocateResponse, QidoRequest, QidoResponse
from krypton.contracts.ingest.v1 import InstanceStored
from krypton.core.logging import get_logger
from krypton.core.settings import KryptonSettings
from krypton.db.errors import TRANSIENT_DB_ERRORS
from krypton.db.pool import create_pool, ping
from krypton.index.locate import handle_locate
from krypton.index.policy_consumer import start_policy_consumer
from krypton.index.qido_sql import run_qido
from krypton.index.schema import migrate
from krypton.index.store import upsert_batch

__all__ = ["build_app", "main"]

_log = get_logger("krypton.index")


def build_app(settings: KryptonSettings) -> tuple[FastStream, NatsBroker]:
    """Build the FastStream app; the pool is made in its lifespan."""
    broker = make_broker(settings.nats_url, "index")
    state: dict[str, asyncpg.Pool] = {}

    @asynccontextmanager
    async def lifespan() -> AsyncIterator[None]:
        pool = await create_pool(
            settings.pg_dsn.get_secret_value(),
            min_size=2,
            max_size=max(10, settings.index_request_workers + 2),
            application_name="index",
            custom_plans=True,
        )
        await migrate(pool)
        nc: Client = await connect(settings.nats_url, "index-consumer")
        js = nc.jetstream()
        await streams.provision(js, replicas=settings.stream_replicas)
        state["pool"] = pool

        async def index_batch(events: Sequence[InstanceStored]) -> None:
            try:
                added = await upsert_batch(pool, events)
            except TRANSIENT_DB_ERRORS as exc:
                raise TransientError(repr(exc)) from exc
            _log.debug("indexed", batch=len(events), added=added)

        consumer = BatchConsumer(
            js=js,
            stream=subjects.INSTANCES_STREAM,
            subject=f"{subjects.INSTANCE_STORED}.*",
            durable="index",
            type_=InstanceStored,
            handler=index_batch,
            batch=settings.index_batch_size,
        )
        await consumer.start()
        policy_consumer = await start_policy_consumer(js, pool)
        _log.info("index ready")
        try:
            yield
        finally:
            await consumer.stop()
            await policy_consumer.stop()
            # close, not drain: acks went out inline, and draining a pull subscription waits
            # for its drain timeout (30 s) on the fetch inbox.
            await nc.close()
            await pool.close()

    workers = settings.index_request_workers

    @broker.subscriber(subjects.SVC_INDEX_QIDO, queue="index", max_workers=workers)
    async def on_qido(request: QidoRequest) -> NatsResponse:
        # The DICOM JSON body travels as raw bytes (no base64 inside another JSON document);
        # status, count and reason ride in headers.
        try:
            response: QidoResponse = await run_qido(state["pool"], request)
        except TRANSIENT_DB_ERRORS as exc:
            # Always answer (issue 9): without a reply the gateway waits out its timeout.
            _log.warning("qido failed; database unavailable", error=repr(exc))
            response = QidoResponse(status=503, reason="search unavailable; retry later")
        except asyncpg.DataError as exc:
            # A value PostgreSQL cannot take (an encoding it refuses, an out-of-range number).
            _log.info("qido refused by the database", error=type(exc).__name__)
            response = QidoResponse(status=400, reason="the search values cannot be used")
        except Exception:
            _log.exception("qido failed")
            response = QidoResponse(status=500, reason="search failed")
        headers = {"Krypton-Status": str(response.status), "Krypton-Count": str(response.count)}
        if response.reason:
            headers["Krypton-Reason"] = response.reason
        if response.access:
            # Per-study access basis of a professional's grants, for the gateway's audit event.
            headers["Krypton-Access"] = msgspec.json.encode(response.access).decode()
        return NatsResponse(response.body, headers=headers)

    @broker.subscriber(subjects.SVC_INDEX_LOCATE, queue="index", max_workers=workers)
    async def on_locate(request: LocateRequest) -> bytes:
        try:
            return await handle_locate(state["pool"], request)
        except TRANSIENT_DB_ERRORS as exc:
            # Always answer (issue 9): the gateway then says 503 + Retry-After at once.
            _log.warning("locate failed; database unavailable", error=repr(exc))
            return encode(LocateResponse(status=503, reason="index unavailable"))

    @broker.subscriber(subjects.SVC_INDEX_PING, queue="index")
    async def on_ping() -> bytes:
        return await ping(state["pool"])

    app = FastStream(broker, lifespan=lifespan)
    return app, broker


def main() -> None:
    """Entry point: `python -m krypton.index`."""
    run_service("index", build_app)


if __name__ == "__main__":
    main()

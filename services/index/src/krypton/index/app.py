"""The index service: the searchable read model of every stored instance, and QIDO-RS answers.

Consumes `instance.stored.*` in batches with the durable pull consumer `index` (nats-py batch
loop, see `krypton.bus.consumer`; idempotent upserts: redelivery never double-counts), and
answers `svc.index.qido` and `svc.index.locate` in the queue group `index` so N replicas share
searches, each process `KRYPTON_INDEX_REQUEST_WORKERS` requests at a time (plain nats-py
handlers, `krypton.bus.responder`: FastStream's subscriber stack cost as much CPU as a search).
Run it with `krypton run index`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager

import asyncpg
import msgspec
from faststream import FastStream
from faststream.nats import NatsBroker
from nats.aio.client import Client
from nats.aio.msg import Msg

from krypton.bus import streams
from krypton.bus.codec import encode
from krypton.bus.connect import connect, make_broker
from krypton.bus.consumer import BatchConsumer, TransientError
from krypton.bus.responder import Reply, Responder
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
from krypton.index.qido_sql import GrantHolders, run_qido
from krypton.index.schema import migrate
from krypton.index.store import upsert_batch

__all__ = ["RequestHandlers", "build_app", "main"]

_log = get_logger("krypton.index")


QUEUE = "index"
_qido_request = msgspec.json.Decoder(QidoRequest)
_locate_request = msgspec.json.Decoder(LocateRequest)


class RequestHandlers:
    """`svc.index.qido` and `svc.index.locate`, served by a `Responder` (no FastStream stack)."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        """Answer from `pool`."""
        self.pool = pool
        self.holders = GrantHolders()

    async def qido(self, msg: Msg) -> Reply:
        """A QIDO-RS search: the DICOM JSON body, status, count and reason in headers.

        The body travels as raw bytes, not base64 inside another JSON document.
        """
        try:
            request = _qido_request.decode(msg.data)
        except (msgspec.ValidationError, msgspec.DecodeError) as exc:
            response = QidoResponse(status=400, reason=f"malformed search request: {exc}")
        else:
            response = await self._search(request)
        headers = {"Krypton-Status": str(response.status), "Krypton-Count": str(response.count)}
        if response.reason:
            headers["Krypton-Reason"] = response.reason
        if response.access:
            # Per-study access basis of a professional's grants, for the gateway's audit event.
            headers["Krypton-Access"] = msgspec.json.encode(response.access).decode()
        return response.body, headers

    async def _search(self, request: QidoRequest) -> QidoResponse:
        try:
            return await run_qido(self.pool, request, self.holders)
        except TRANSIENT_DB_ERRORS as exc:
            # Always answer (issue 9): without a reply the gateway waits out its timeout.
            _log.warning("qido failed; database unavailable", error=repr(exc))
            return QidoResponse(status=503, reason="search unavailable; retry later")
        except asyncpg.DataError as exc:
            # A value PostgreSQL cannot take (an encoding it refuses, an out-of-range number).
            _log.info("qido refused by the database", error=type(exc).__name__)
            return QidoResponse(status=400, reason="the search values cannot be used")
        except Exception:
            _log.exception("qido failed")
            return QidoResponse(status=500, reason="search failed")

    async def locate(self, msg: Msg) -> Reply:
        """Where a study's, series' or instance's objects are, for WADO-RS."""
        try:
            request = _locate_request.decode(msg.data)
        except (msgspec.ValidationError, msgspec.DecodeError) as exc:
            return _locate_failure(400, f"malformed locate request: {exc}")
        try:
            return await handle_locate(self.pool, request), {}
        except TRANSIENT_DB_ERRORS as exc:
            # Always answer (issue 9): the gateway then says 503 + Retry-After at once.
            _log.warning("locate failed; database unavailable", error=repr(exc))
            return _locate_failure(503, "index unavailable")
        except Exception:
            _log.exception("locate failed")
            return _locate_failure(500, "locate failed")


def _locate_failure(status: int, reason: str) -> Reply:
    """A locate answer without instances; its status also labels the responder's metric."""
    return encode(LocateResponse(status=status, reason=reason)), {"Krypton-Status": str(status)}


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
        responder = Responder(nc, "index", settings.index_request_workers)
        handlers = RequestHandlers(pool)
        await responder.serve(subjects.SVC_INDEX_QIDO, QUEUE, handlers.qido)
        await responder.serve(subjects.SVC_INDEX_LOCATE, QUEUE, handlers.locate)
        _log.info("index ready")
        try:
            yield
        finally:
            await responder.stop()
            await consumer.stop()
            await policy_consumer.stop()
            # close, not drain: acks went out inline, and draining a pull subscription waits
            # for its drain timeout (30 s) on the fetch inbox.
            await nc.close()
            await pool.close()

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

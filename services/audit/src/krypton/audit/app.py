"""The audit service: appends every audit event to the hash-chained log and answers queries.

Consumes ``audit.event.>`` from the AUDIT stream in batches with the durable pull consumer
``audit`` (acked only once appended; a redelivery is skipped by event id), keeps the study →
patient projection from ``instance.stored.*`` (durable ``audit-studies``), checkpoints the chain
head every ``KRYPTON_AUDIT_CHECKPOINT_INTERVAL`` seconds (kept in ``audit.checkpoints`` and
published on ``audit.checkpoint``), and answers ``svc.audit.query`` in the queue group ``audit``.
Every database session runs as ``krypton_audit_writer`` (INSERT/SELECT only on the log).
Run it with ``krypton run audit``.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager

import asyncpg
from faststream import FastStream
from faststream.nats import NatsBroker, NatsResponse
from nats.aio.client import Client
from nats.js import JetStreamContext

from krypton.audit import chain
from krypton.audit.export import to_dicom_xml, to_fhir, to_json
from krypton.audit.query import run_query
from krypton.audit.schema import migrate, writer_pool
from krypton.audit.settings import AuditSettings
from krypton.audit.studies import upsert_studies
from krypton.bus import streams
from krypton.bus.codec import encode
from krypton.bus.connect import connect, make_broker
from krypton.bus.consumer import BatchConsumer, TransientError
from krypton.bus.service import run_service
from krypton.contracts import subjects
from krypton.contracts.audit.v1 import AuditEvent, AuditFormatValues, AuditQueryRequest
from krypton.contracts.ingest.v1 import InstanceStored
from krypton.core.errors import ValidationError
from krypton.core.logging import get_logger
from krypton.core.settings import KryptonSettings
from krypton.db.errors import TRANSIENT_DB_ERRORS
from krypton.db.pool import create_pool, ping

__all__ = ["build_app", "main"]

_log = get_logger("krypton.audit")
_MEDIA = {
    AuditFormatValues.JSON: "application/json",
    AuditFormatValues.FHIR: "application/fhir+json",
    AuditFormatValues.DICOM: "application/xml",
}


async def _checkpoint_loop(pool: asyncpg.Pool, js: JetStreamContext, every: float) -> None:
    """Checkpoint the head periodically; publish each new checkpoint to the AUDIT stream."""
    while True:
        await asyncio.sleep(every)
        try:
            async with pool.acquire() as conn:
                point = await chain.checkpoint(conn)
            if point is not None:
                await js.publish(
                    subjects.AUDIT_CHECKPOINT,
                    encode(point),
                    stream=subjects.AUDIT_STREAM,
                    headers={"Nats-Msg-Id": f"audit-checkpoint-{point.seq}"},
                )
                _log.info("audit checkpoint", seq=point.seq, hash=point.hash)
        except Exception as exc:  # the next round retries; a checkpoint is never urgent
            _log.warning("audit checkpoint failed", error=repr(exc))


def build_app(
    settings: KryptonSettings, audit_settings: AuditSettings | None = None
) -> tuple[FastStream, NatsBroker]:
    """Build the FastStream app; pools, consumers and the checkpoint task start in its lifespan."""
    audit = audit_settings or AuditSettings()
    broker = make_broker(settings.nats_url, "audit")
    state: dict[str, asyncpg.Pool] = {}

    @asynccontextmanager
    async def lifespan() -> AsyncIterator[None]:
        dsn = settings.pg_dsn.get_secret_value()
        owner = await create_pool(dsn, min_size=1, max_size=1, application_name="audit-migrate")
        try:
            await migrate(owner)
        finally:
            await owner.close()
        pool = await writer_pool(dsn, min_size=2, max_size=10)
        state["pool"] = pool
        nc: Client = await connect(settings.nats_url, "audit-consumer")
        js = nc.jetstream()
        await streams.provision(js, replicas=settings.stream_replicas)

        async def record(events: Sequence[AuditEvent]) -> None:
            try:
                async with pool.acquire() as conn:
                    added = await chain.append(conn, events)
            except TRANSIENT_DB_ERRORS as exc:
                raise TransientError(repr(exc)) from exc
            _log.debug("audit events recorded", batch=len(events), added=added)

        async def project(events: Sequence[InstanceStored]) -> None:
            try:
                await upsert_studies(pool, events)
            except TRANSIENT_DB_ERRORS as exc:
                raise TransientError(repr(exc)) from exc

        consumers: list[BatchConsumer[AuditEvent] | BatchConsumer[InstanceStored]] = [
            BatchConsumer(
                js=js,
                stream=subjects.AUDIT_STREAM,
                subject=f"{subjects.AUDIT_EVENT}.>",
                durable="audit",
                type_=AuditEvent,
                handler=record,
                batch=audit.batch_size,
                linger=audit.batch_linger,
            ),
            BatchConsumer(
                js=js,
                stream=subjects.INSTANCES_STREAM,
                subject=f"{subjects.INSTANCE_STORED}.*",
                durable="audit-studies",
                type_=InstanceStored,
                handler=project,
                batch=audit.batch_size,
                linger=audit.batch_linger,
            ),
        ]
        for consumer in consumers:
            await consumer.start()
        checkpoints = asyncio.create_task(_checkpoint_loop(pool, js, audit.checkpoint_interval))
        _log.info("audit ready")
        try:
            yield
        finally:
            checkpoints.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await checkpoints
            for consumer in consumers:
                await consumer.stop()
            await nc.close()
            await pool.close()

    @broker.subscriber(subjects.SVC_AUDIT_QUERY, queue="audit")
    async def on_query(request: AuditQueryRequest) -> NatsResponse:
        try:
            records = await run_query(state["pool"], request)
        except ValidationError as exc:
            return NatsResponse(
                b"", headers={"Krypton-Status": "400", "Krypton-Reason": exc.reason}
            )
        if request.format is AuditFormatValues.FHIR:
            body = to_fhir(records)
        elif request.format is AuditFormatValues.DICOM:
            body = to_dicom_xml(records)
        else:
            body = to_json(records)
        return NatsResponse(
            body,
            headers={
                "Krypton-Status": "200",
                "Krypton-Count": str(len(records)),
                "Content-Type": _MEDIA[request.format],
            },
        )

    @broker.subscriber(subjects.SVC_AUDIT_PING, queue="audit")
    async def on_ping() -> bytes:
        return await ping(state["pool"])

    app = FastStream(broker, lifespan=lifespan)
    return app, broker


def main() -> None:
    """Entry point: `python -m krypton.audit`."""
    run_service("audit", build_app)


if __name__ == "__main__":
    main()

"""The region's side of the edge boxes: take their instances across the leaf link into ingest.

For each configured box, a durable pull consumer (`region`) lives on the box's own EDGE stream
and is reached through the box's JetStream domain (`$JS.edge-<finess>.API`), over the leaf
connection. Chunks are reassembled per instance (`<sop>:<sha256>`), the bytes are written to the
regional object store's staging area, and `IngestReceived` is published on the ordinary ingest
subject with the box's structure, so the instance follows the STOW path from there (ingest
validates, de-duplicates by SOP Instance UID + SHA-256, the index makes it searchable). Only
then are the chunks acked, which removes them from the box (work-queue stream).

The structure is the one this forwarder is configured with for that box's domain, never a value
carried by the message: a box can only produce for its own structure.

While the link is down the fetches fail and are retried; the consumer's position is kept on the
box, so when the link returns the forwarder resumes where it stopped, in stream order. A chunk
whose ack was lost is redelivered: the IngestReceived publish carries
`Nats-Msg-Id = edge:<finess>:<sop>:<sha256>` and ingest treats an identical instance as a
duplicate, so an instance is stored once.

Run it in the region: `python -m krypton.edge.region` with `KRYPTON_EDGE_REGION_BOXES`.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import uuid
from dataclasses import dataclass, field

import msgspec
import nats.errors
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy, KeyValueConfig, StorageType
from nats.js.errors import APIError, BucketNotFoundError, KeyNotFoundError
from nats.js.kv import KeyValue
from opentelemetry import trace

from krypton.bus import streams
from krypton.bus.audit import AuditPublisher, AuditUnavailableError
from krypton.bus.codec import encode
from krypton.bus.connect import connect
from krypton.bus.permissions import edge_leaf_durable
from krypton.contracts import subjects
from krypton.contracts.audit.v1 import AuditEvent, AuditEventTypeValues, new_event
from krypton.contracts.common.v1 import Actor, RoleValues
from krypton.contracts.edge.v1 import EdgeChunkHeaders
from krypton.contracts.ingest.v1 import IngestReceived
from krypton.core.clock import utc_now_iso
from krypton.core.logging import configure_logging, get_logger
from krypton.core.settings import KryptonSettings
from krypton.edge.settings import RegionEdgeSettings
from krypton.storage.base import ObjectStore
from krypton.storage.errors import StorageUnavailable
from krypton.storage.factory import open_store
from krypton.storage.keys import staging_key
from krypton.telemetry.setup import setup_telemetry

__all__ = ["BoxForwarder", "durable_name", "forwarded_bucket", "main"]
ISSUER = "krypton-edge"  # the Actor.issuer of what boxes produce: the leaf link, not a token
_log = get_logger("krypton.edge.region")
_tracer = trace.get_tracer("krypton.edge.region")
_RETRY = 1.0
_AUDIT_NAMESPACE = uuid.UUID("6b0f5a3e-8d0c-4a57-9d0e-4c1e2d7a9e10")  # edge store event ids


def durable_name(structure: str) -> str:
    """The region's consumer on the box of `structure`.

    Every box's stream has the same name and acks travel as `$JS.ACK.<stream>.<durable>.…`,
    without the domain: with one durable name for all, the region's ack of box A's message
    also reaches box B, which would remove its own message of the same stream sequence. A
    durable per box keeps each box's acks to that box (and its leaf permissions can say so).
    """
    return edge_leaf_durable(structure)


@dataclass
class _Instance:
    """Chunks of one instance gathered so far."""

    count: int
    chunks: dict[int, Msg] = field(default_factory=dict)
    extra: list[Msg] = field(default_factory=list)  # redelivered copies, acked with the rest


class BoxForwarder:
    """Moves one box's instances into the regional ingest path.

    Args:
        nc: Connection to the regional nats-server (the leaf link's hub).
        store: The regional object store.
        structure: The box's FINESS.
        batch: Chunks per fetch.
        ack_wait: Seconds before an unacked chunk is redelivered.
    """

    def __init__(
        self,
        nc: Client,
        store: ObjectStore,
        structure: str,
        *,
        batch: int = 64,
        ack_wait: float = 30.0,
    ) -> None:
        self.structure = subjects.safe_token(structure)
        self.store = store
        self.hub = nc.jetstream()
        self.audit = AuditPublisher(self.hub, timeout=10.0)
        self.box: JetStreamContext = nc.jetstream(domain=subjects.edge_domain(structure))
        self.batch = batch
        self.ack_wait = ack_wait
        self.forwarded_total = 0
        self._pending: dict[str, _Instance] = {}
        self.forwarded: KeyValue  # bound in `run`
        self.actor = Actor(
            sub=subjects.edge_domain(structure),
            role=RoleValues.PRODUCER,
            issuer=ISSUER,
            structure=self.structure,
        )

    async def run(self) -> None:
        """Forward until cancelled, riding out link failures."""
        await streams.provision(self.hub, (streams.INGEST, streams.AUDIT))
        self.forwarded = await forwarded_bucket(self.hub)
        sub: JetStreamContext.PullSubscription | None = None
        down = False
        while True:
            try:
                if sub is None:
                    sub = await self._bind()
                    _log.info("bound to edge box", structure=self.structure)
                try:
                    msgs = await sub.fetch(self.batch, timeout=1.0)
                except nats.errors.TimeoutError:
                    continue
                if down:
                    _log.info("edge box reachable again", structure=self.structure)
                    down = False
                await self._handle(msgs)
            except asyncio.CancelledError:
                raise
            except (
                nats.errors.Error,
                APIError,
                StorageUnavailable,
                AuditUnavailableError,
                OSError,
            ) as exc:
                if not down:
                    _log.warning(
                        "edge box unreachable; retrying",
                        structure=self.structure,
                        # No traceback: its frames' locals would put DICOM bytes in the log.
                        error=repr(exc),
                    )
                    down = True
                if isinstance(exc, APIError | nats.errors.NoRespondersError):
                    sub = None  # bind again: the box or its stream may have restarted
                await asyncio.sleep(_RETRY)

    async def _bind(self) -> JetStreamContext.PullSubscription:
        subject = subjects.edge_instance(self.structure)
        durable = durable_name(self.structure)
        config = ConsumerConfig(
            durable_name=durable,
            ack_policy=AckPolicy.EXPLICIT,
            deliver_policy=DeliverPolicy.ALL,
            ack_wait=self.ack_wait,
            max_ack_pending=4 * self.batch,
            max_deliver=-1,
            filter_subject=subject,
        )
        return await self.box.pull_subscribe(
            subject, durable=durable, stream=subjects.EDGE_STREAM, config=config
        )

    async def _handle(self, msgs: list[Msg]) -> None:
        complete: list[_Instance] = []
        for msg in msgs:
            headers = msg.headers or {}
            try:
                key = headers[EdgeChunkHeaders.INSTANCE]
                index = int(headers[EdgeChunkHeaders.INDEX])
                count = int(headers[EdgeChunkHeaders.COUNT])
                if not 0 <= index < count:
                    raise ValueError(index)
            except (KeyError, ValueError):
                # Not something a box publishes: kept out of the way, never retried.
                _log.error("malformed edge chunk dropped", structure=self.structure)
                await msg.term()
                continue
            instance = self._pending.setdefault(key, _Instance(count=count))
            if index in instance.chunks:
                instance.extra.append(msg)
            else:
                instance.chunks[index] = msg
            if len(instance.chunks) == instance.count:
                del self._pending[key]
                complete.append(instance)
            elif msg.metadata.num_delivered > 1 and await self._already_forwarded(headers):
                # A redelivered chunk of an instance forwarded earlier (its ack was lost with
                # the link): its siblings are gone from the box and will never come.
                del self._pending[key]
                stale = [*instance.chunks.values(), *instance.extra]
                with contextlib.suppress(nats.errors.Error):
                    await asyncio.gather(*(m.ack_sync(timeout=10.0) for m in stale))
        if not complete:
            return
        try:
            await self._forward(complete)
        except BaseException:
            # Back to the box at once rather than after ack_wait; if the link is down this
            # fails too, and the box redelivers them after ack_wait anyway.
            msgs = [m for i in complete for m in (*i.chunks.values(), *i.extra)]
            with contextlib.suppress(Exception):
                await asyncio.gather(*(m.nak(delay=1.0) for m in msgs))
            raise

    async def _forward(self, instances: list[_Instance]) -> None:
        """Stage, announce, audit, then ack the batch's complete instances.

        Each step runs for the whole batch at once (one round trip, not one per instance). The
        announcements are published in stream order: nats-py writes each publish to the
        connection before awaiting its ack, and `gather` starts them in list order.
        """
        with _tracer.start_as_current_span(
            "edge.forward",
            attributes={"krypton.structure": self.structure, "krypton.instances": len(instances)},
        ):
            await self._forward_traced(instances)

    async def _forward_traced(self, instances: list[_Instance]) -> None:
        staged = [self._staged(instance) for instance in instances]
        await asyncio.gather(*(self.store.put_bytes(key, data) for key, data, _, _ in staged))
        await asyncio.gather(
            *(
                self.hub.publish(
                    subjects.ingest_received(self.structure),
                    encode(event),
                    stream=subjects.INGEST_STREAM,
                    headers={"Nats-Msg-Id": f"edge:{self.structure}:{sop}:{event.sha256}"},
                    timeout=10.0,
                )
                for _, _, event, sop in staged
            )
        )
        await asyncio.gather(*(self.audit.publish(self._record(e, sop)) for _, _, e, sop in staged))
        await asyncio.gather(
            *(self.forwarded.put(f"{self.structure}.{e.sha256}", b"1") for _, _, e, _ in staged)
        )
        msgs = [m for i in instances for m in (*i.chunks.values(), *i.extra)]
        # A lost ack only means a redelivery, which ends as a duplicate: not worth failing for.
        with contextlib.suppress(nats.errors.Error):
            await asyncio.gather(*(m.ack_sync(timeout=10.0) for m in msgs))
        self.forwarded_total += len(instances)

    async def _already_forwarded(self, headers: dict[str, str]) -> bool:
        sha = headers.get(EdgeChunkHeaders.SHA256, "")
        if len(sha) != 64 or not all(c in "0123456789abcdef" for c in sha):
            return False
        try:
            await self.forwarded.get(f"{self.structure}.{sha}")
        except KeyNotFoundError:
            return False
        return True

    def _staged(self, instance: _Instance) -> tuple[str, bytes, IngestReceived, str]:
        """Staging key, bytes, ingest announcement and SOP Instance UID of an instance."""
        headers = instance.chunks[0].headers or {}
        sha = headers[EdgeChunkHeaders.SHA256]
        data = b"".join(instance.chunks[i].data for i in range(instance.count))
        key = staging_key(f"edge-{self.structure}-{sha}")
        event = IngestReceived(
            staging_key=key,
            structure=self.structure,
            sha256=sha,  # as the box computed it: ingest checks the staged bytes against it
            size=len(data),
            received_at=headers.get(EdgeChunkHeaders.RECEIVED_AT) or utc_now_iso(),
            actor=self.actor,
            request_id=f"edge-{self.structure}",
        )
        return key, data, event, headers[EdgeChunkHeaders.SOP_INSTANCE_UID]

    def _record(self, event: IngestReceived, sop: str) -> AuditEvent:
        """The store audit event of an instance, as the gateway records a STOW's.

        Its id is derived from the instance, so that a redelivered instance is recorded once.
        """
        record = new_event(
            AuditEventTypeValues.STORE,
            self.actor,
            instances=1,
            resource=f"dimse:{subjects.edge_domain(self.structure)}",
            detail={"sop_instance_uid": sop, "sha256": event.sha256},
            service="edge-region",
        )
        event_id = uuid.uuid5(_AUDIT_NAMESPACE, f"{self.structure}:{sop}:{event.sha256}")
        return msgspec.structs.replace(record, event_id=str(event_id))


async def forwarded_bucket(js: JetStreamContext) -> KeyValue:
    """The bucket of forwarded instances, created on first use.

    Entries expire after 30 days: far longer than any redelivery takes to come back.
    """
    try:
        return await js.key_value(subjects.EDGE_FORWARDED_BUCKET)
    except BucketNotFoundError:
        return await js.create_key_value(
            KeyValueConfig(
                bucket=subjects.EDGE_FORWARDED_BUCKET,
                ttl=30 * 86_400.0,
                storage=StorageType.FILE,
            )
        )


async def run(settings: KryptonSettings, region: RegionEdgeSettings) -> None:
    """Forward every configured box until SIGTERM or SIGINT."""
    store = await open_store(settings.storage)
    nc = await connect(settings.nats_url, "edge-region")
    forwarders = [
        BoxForwarder(nc, store, box, batch=region.batch, ack_wait=region.ack_wait)
        for box in region.boxes
    ]
    tasks = [asyncio.create_task(f.run(), name=f"edge-{f.structure}") for f in forwarders]
    _log.info("edge forwarder started", boxes=list(region.boxes))
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await nc.close()
        await store.close()


def main() -> None:
    """`python -m krypton.edge.region`."""
    settings = KryptonSettings()
    configure_logging("edge-region", settings.log_level, settings.log_json)
    setup_telemetry("edge-region")
    asyncio.run(run(settings, RegionEdgeSettings()))


if __name__ == "__main__":
    main()

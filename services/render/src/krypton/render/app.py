"""The render service: rendered frames (``svc.render.frame``) and transcoding (``svc.transcode.*``).

One process serves both for now: both decode the same pixels with the same codecs, so they
share the decoding threads and the code; the subjects and queue groups are already separate
(``render``, ``transcode``), so splitting them into two deployments later changes no caller.
Run it with ``krypton run render`` (``python -m krypton.render``).

A durable consumer (``render``) of ``instance.stored`` precomputes each new instance's
thumbnail and HTJ2K lossless copy (`RenderSettings` policy); replicas share its messages.
Precompute waits while ingest has uploads in hand (`krypton.render.ingest_gate`).
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager

from faststream import FastStream
from faststream.nats import NatsBroker, NatsResponse

from krypton.bus import streams
from krypton.bus.codec import encode
from krypton.bus.connect import connect, make_broker
from krypton.bus.consumer import BatchConsumer
from krypton.bus.service import run_service
from krypton.contracts import subjects
from krypton.contracts.ingest.v1 import InstanceStored
from krypton.contracts.render.v1 import RenderRequest
from krypton.contracts.transcode.v1 import INLINE_HEADER, INLINE_MAX_BYTES, TranscodeRequest
from krypton.core.logging import get_logger
from krypton.core.settings import KryptonSettings
from krypton.render.ingest_gate import IngestGate, ingest_depth
from krypton.render.settings import RenderSettings
from krypton.render.worker import Worker
from krypton.storage.factory import open_store
from krypton.telemetry.metrics import register_cache

__all__ = ["build_app", "main"]

_log = get_logger("krypton.render")


def build_app(
    settings: KryptonSettings, render_settings: RenderSettings | None = None
) -> tuple[FastStream, NatsBroker]:
    """Build the FastStream app; the object store and the consumer start in its lifespan."""
    policy = render_settings or RenderSettings()
    broker = make_broker(settings.nats_url, "render")
    state: dict[str, Worker] = {}

    @asynccontextmanager
    async def lifespan() -> AsyncIterator[None]:
        store = await open_store(settings.storage)
        worker = Worker(
            store,
            cache_bytes=policy.cache_bytes,
            precompute_htj2k=policy.precompute_htj2k,
            precompute_thumbnail=policy.precompute_thumbnail,
            precompute_metadata=policy.precompute_metadata,
            precompute_nice=policy.precompute_nice,
        )
        state["worker"] = worker
        register_cache("render_image", lambda: (worker.cache.hits, worker.cache.misses))
        nc = await connect(settings.nats_url, "render-consumer")
        js = nc.jetstream()
        await streams.provision(js, replicas=settings.stream_replicas)

        gate = (
            IngestGate(ingest_depth(js), quiet=policy.precompute_ingest_quiet)
            if policy.precompute_waits_for_ingest
            else None
        )

        async def precompute(events: Sequence[InstanceStored]) -> None:
            # One at a time: the decoding threads are shared with live requests, which the
            # worker's semaphore lets in between two instances. Each waits while ingest has
            # uploads in hand (the consumer's heartbeats keep the batch claimed meanwhile).
            for event in events:
                if gate is not None:
                    await gate.wait()
                await worker.precompute(event)

        consumer = BatchConsumer(
            js=js,
            stream=subjects.INSTANCES_STREAM,
            subject=f"{subjects.INSTANCE_STORED}.*",
            durable="render",
            type_=InstanceStored,
            handler=precompute,
            batch=policy.precompute_batch,
            # A batch of large instances takes a while to transcode: heartbeats keep it
            # claimed, and a crashed replica's batch comes back after 30 s, not minutes.
            ack_wait=30.0,
            heartbeat=10.0,
        )
        if policy.precompute_htj2k or policy.precompute_thumbnail or policy.precompute_metadata:
            await consumer.start()
        _log.info("render ready")
        try:
            yield
        finally:
            await consumer.stop()
            await nc.close()
            worker.close()
            await store.close()

    @broker.subscriber(subjects.SVC_RENDER_FRAME, queue="render")
    async def on_render(request: RenderRequest) -> NatsResponse:
        result = await state["worker"].render(request)
        headers = {"Krypton-Status": str(result.status)}
        if result.media_type:
            headers["Content-Type"] = result.media_type
        if result.reason:
            headers["Krypton-Reason"] = result.reason[:200]
        return NatsResponse(result.body, headers=headers)

    @broker.subscriber(subjects.SVC_TRANSCODE_INSTANCE, queue="transcode")
    async def on_transcode(request: TranscodeRequest) -> NatsResponse:
        # One return type (FastStream refuses a union with a custom type): the JSON response
        # as the body, or the bytes as the body and the response in a header.
        worker = state["worker"]
        if not request.inline:
            return NatsResponse(encode(await worker.transcode(request)))
        response, data = await worker.transcode_inline(request)
        if data is None or len(data) > INLINE_MAX_BYTES:
            if data is not None:  # too big to ride the reply: answer once it is stored
                response = await worker.transcode(request)
            return NatsResponse(encode(response))
        return NatsResponse(data, headers={INLINE_HEADER: encode(response).decode()})

    return FastStream(broker, lifespan=lifespan), broker


def main() -> None:
    """Entry point: `python -m krypton.render`."""
    # pydicom logs every failed decoder plugin at ERROR with a traceback before it raises; the
    # worker already turns that failure into one clear line (e.g. "no HTJ2K copy", a 422), so
    # the duplicate tracebacks of corrupt test files only drown the log.
    logging.getLogger("pydicom.pixels.decoders.base").setLevel(logging.CRITICAL)
    run_service("render", build_app)


if __name__ == "__main__":
    main()

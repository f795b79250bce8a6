"""Trace context across NATS, SQL and object store spans, exporter selection (real servers)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Sequence
from pathlib import Path

import msgspec
import pytest
from nats.aio.msg import Msg
from nats.js.api import StreamConfig
from opentelemetry import trace
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from prometheus_client import REGISTRY

from krypton.bus.connect import connect, make_broker
from krypton.bus.consumer import BatchConsumer
from krypton.bus.responder import Reply, Responder
from krypton.core.errors import ConfigurationError
from krypton.core.settings import StorageSettings
from krypton.db.pool import create_pool
from krypton.storage.factory import make_store
from krypton.storage.fs import FileSystemStore
from krypton.telemetry.setup import exporters_from_env

tracer = trace.get_tracer("test")


class Event(msgspec.Struct, frozen=True):
    n: int


def _named(spans: InMemorySpanExporter, prefix: str) -> list[ReadableSpan]:
    return [s for s in spans.get_finished_spans() if s.name.startswith(prefix)]


def _trace_id(span: ReadableSpan) -> int:
    assert span.context is not None
    return span.context.trace_id


async def test_a_request_carries_the_trace_to_the_subscriber(
    nats_url: str, spans: InMemorySpanExporter
) -> None:
    nc = await connect(nats_url, "testsvc")
    subject = f"test.{uuid.uuid4().hex[:8]}.ask"

    async def answer(msg: Msg) -> None:
        with tracer.start_as_current_span("handler work"):
            await msg.respond(b"ok")

    await nc.subscribe(subject, cb=answer)
    with tracer.start_as_current_span("caller") as caller:
        reply = await nc.request(subject, b"?", timeout=5.0)
    assert reply.data == b"ok"
    await nc.close()
    (work,) = _named(spans, "handler work")
    (request,) = _named(spans, f"{subject} request")
    (process,) = _named(spans, f"{subject} process")
    assert _trace_id(work) == caller.get_span_context().trace_id
    assert work.parent is not None
    assert process.context is not None
    assert work.parent.span_id == process.context.span_id
    assert process.parent is not None
    assert request.context is not None
    assert process.parent.span_id == request.context.span_id
    assert process.kind is trace.SpanKind.CONSUMER


async def test_a_batch_consumer_continues_the_publishers_trace(
    nats_url: str, spans: InMemorySpanExporter
) -> None:
    nc = await connect(nats_url, "testsvc")
    js = nc.jetstream()
    name = f"T{uuid.uuid4().hex[:8]}"
    await js.add_stream(StreamConfig(name=name, subjects=[f"{name}.>"]))
    done = asyncio.Event()

    async def handler(events: Sequence[Event]) -> None:
        with tracer.start_as_current_span("consumer work"):
            done.set()

    with tracer.start_as_current_span("publisher") as publisher:
        await js.publish(f"{name}.a", msgspec.json.encode(Event(1)))
    consumer = BatchConsumer(js, name, f"{name}.>", "durable", Event, handler, batch=8)
    await consumer.start()
    await asyncio.wait_for(done.wait(), 30)
    await consumer.stop()
    await nc.close()
    (work,) = _named(spans, "consumer work")
    assert _trace_id(work) == publisher.get_span_context().trace_id


async def test_sql_statements_get_spans_inside_a_trace_only(
    pg_dsn: str, spans: InMemorySpanExporter
) -> None:
    pool = await create_pool(pg_dsn, max_size=2)
    try:
        await pool.fetchval("select 1")  # outside any trace: no span
        with tracer.start_as_current_span("request"):
            await pool.fetchval("select $1::text", "SECRET-PATIENT-VALUE")
    finally:
        await pool.close()
    (sql,) = _named(spans, "postgresql")
    assert sql.name == "postgresql SELECT"
    assert sql.attributes is not None
    assert sql.attributes["db.query.text"] == "select $1::text"
    assert "SECRET-PATIENT-VALUE" not in str(dict(sql.attributes))


async def test_object_store_operations_get_spans_and_keep_their_backend_type(
    tmp_path: Path, spans: InMemorySpanExporter
) -> None:
    store = make_store(StorageSettings(backend="fs", root=tmp_path))
    assert isinstance(store, FileSystemStore)  # callers' filesystem fast paths still apply
    with tracer.start_as_current_span("request"):
        await store.put_bytes("a/b", b"x" * 10)
        assert await store.read("a/b") == b"x" * 10
        assert b"".join([c async for c in store.stream("a/b")]) == b"x" * 10
    names = sorted(s.name for s in _named(spans, "object_store"))
    assert names == ["object_store put", "object_store read", "object_store stream"]
    await store.close()


def test_exporters_follow_the_standard_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OTEL_TRACES_EXPORTER", raising=False)
    assert exporters_from_env() == []
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "otlp")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4318")
    (exporter,) = exporters_from_env()
    assert isinstance(exporter, OTLPSpanExporter)
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")
    with pytest.raises(ConfigurationError, match="http/protobuf"):
        exporters_from_env()
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "zipkin")
    with pytest.raises(ConfigurationError, match="zipkin"):
        exporters_from_env()


async def test_a_faststream_handler_continues_the_trace_with_bounded_names(
    nats_url: str, spans: InMemorySpanExporter
) -> None:
    broker = make_broker(nats_url, "probe")
    subject = f"test.{uuid.uuid4().hex[:8]}.ask"

    @broker.subscriber(subject)
    async def answer(body: bytes) -> bytes:
        with tracer.start_as_current_span("handler work"):
            return b"ok"

    async with broker:
        await broker.start()
        nc = await connect(nats_url, "probe")
        with tracer.start_as_current_span("caller") as caller:
            reply = await nc.request(subject, b"?", timeout=10.0)
        await nc.close()
    assert reply.data == b"ok"
    (work,) = _named(spans, "handler work")
    assert _trace_id(work) == caller.get_span_context().trace_id
    # The reply goes to a one-off inbox: neither span names nor metric labels may name it.
    assert not [s.name for s in spans.get_finished_spans() if "_INBOX." in s.name]
    destinations = {
        sample.labels.get("destination")
        for family in REGISTRY.collect()
        if family.name == "faststream_published_messages"
        for sample in family.samples
    }
    assert not any(d and d.startswith("_INBOX.") for d in destinations), destinations


async def test_a_responder_handles_each_request_in_a_span_of_the_callers_trace(
    nats_url: str, spans: InMemorySpanExporter
) -> None:
    nc = await connect(nats_url, "testsvc")
    subject = f"test.{uuid.uuid4().hex[:8]}.serve"
    responder = Responder(nc, "testsvc", workers=2)

    async def answer(msg: Msg) -> Reply:
        with tracer.start_as_current_span("handler work"):
            await asyncio.sleep(0.01)  # the span must cover the work, not the task's start
        return b"ok", {}

    await responder.serve(subject, "q", answer)
    with tracer.start_as_current_span("caller") as caller:
        reply = await nc.request(subject, b"?", timeout=5.0)
    assert reply.data == b"ok"
    await responder.stop()
    await nc.close()
    (work,) = _named(spans, "handler work")
    (process,) = _named(spans, f"{subject} process")  # one: no second span from the client
    assert _trace_id(process) == caller.get_span_context().trace_id
    assert process.context is not None
    assert work.parent is not None
    assert work.parent.span_id == process.context.span_id
    assert process.kind is trace.SpanKind.CONSUMER

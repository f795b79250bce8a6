"""Prometheus metrics: bounded labels, the lag poller against a real JetStream, the endpoint."""

from __future__ import annotations

import uuid

import httpx
from nats.js.api import ConsumerConfig, StreamConfig
from prometheus_client import REGISTRY

from krypton.bus.connect import connect
from krypton.contracts import subjects
from krypton.telemetry.metrics import (
    DEFAULT_PORTS,
    LagPoller,
    metrics_port,
    register_cache,
    start_metrics_server,
    subject_family,
)
from krypton.testing.servers import free_port


def test_subject_families_hide_partitions_and_inboxes() -> None:
    assert subject_family(subjects.ingest_received("330781196")) == (
        f"{subjects.INGEST_RECEIVED}.*"
    )
    assert subject_family(subjects.instance_stored("640780417")) == (
        f"{subjects.INSTANCE_STORED}.*"
    )
    assert subject_family(subjects.SVC_INDEX_QIDO) == subjects.SVC_INDEX_QIDO
    assert subject_family("_INBOX.abc.def") == "_INBOX"
    assert subject_family("$JS.API.CONSUMER.INFO.X.Y") == "$JS.API"


def test_every_service_has_its_own_default_port_and_zero_turns_it_off() -> None:
    assert len(set(DEFAULT_PORTS.values())) == len(DEFAULT_PORTS)
    assert metrics_port("index", None) == DEFAULT_PORTS["index"]
    assert metrics_port("index", 0) == 0
    assert start_metrics_server("index", 0) == 0


async def test_the_lag_poller_exports_a_durables_pending_count(nats_url: str) -> None:
    nc = await connect(nats_url, "testsvc")
    js = nc.jetstream()
    stream = f"L{uuid.uuid4().hex[:8]}"
    await js.add_stream(StreamConfig(name=stream, subjects=[f"{stream}.>"]))
    await js.add_consumer(stream, ConsumerConfig(durable_name="lagging"))
    for n in range(3):
        await js.publish(f"{stream}.x", str(n).encode())
    await LagPoller(js, [(stream, "lagging"), (stream, "missing")]).poll_once()
    await nc.close()
    labels = {"stream": stream, "consumer": "lagging"}
    assert REGISTRY.get_sample_value("krypton_jetstream_consumer_pending", labels) == 3


async def test_the_endpoint_serves_registered_caches() -> None:
    register_cache("test_cache", lambda: (7, 3))
    port = start_metrics_server("test", free_port())
    assert port > 0
    async with httpx.AsyncClient() as http:
        text = (await http.get(f"http://127.0.0.1:{port}/metrics")).text
    assert 'krypton_cache_lookups_total{cache="test_cache",result="hit"} 7.0' in text

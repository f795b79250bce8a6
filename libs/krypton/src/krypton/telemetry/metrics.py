"""Prometheus metrics: every metric a Krypton process exports, and the endpoint serving them.

All metrics live in prometheus-client's default registry and are scraped from a separate port
(`KRYPTON_METRICS_PORT`, path `/metrics`), never from the gateway's public HTTP port: the
metrics carry no patient data but describe traffic per producing structure family and must not
be readable from the internet. In Kubernetes a NetworkPolicy admits only Prometheus to that
port. Every process also exports prometheus-client's default `process_*` and `python_*`
collectors, and FastStream subscribers add `faststream_*` (see `krypton.bus.connect`).

Label values are bounded: subjects are reduced to their family (`subject_family`), HTTP paths
to their route template, caches and consumers are fixed names.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Final

from nats.js import JetStreamContext
from prometheus_client import REGISTRY, Counter, Gauge, Histogram, start_http_server
from prometheus_client.core import CounterMetricFamily
from prometheus_client.registry import Collector

from krypton.contracts import subjects
from krypton.core.logging import get_logger

__all__ = [
    "DEFAULT_PORTS",
    "HTTP_REQUESTS",
    "HTTP_REQUEST_DURATION",
    "INGEST_INSTANCES",
    "JETSTREAM_ACK_PENDING",
    "JETSTREAM_PENDING",
    "JETSTREAM_REDELIVERED",
    "MESSAGES",
    "MESSAGE_BATCH_DURATION",
    "NATS_REQUESTS",
    "NATS_REQUEST_DURATION",
    "LagPoller",
    "metrics_port",
    "register_cache",
    "start_metrics_server",
    "subject_family",
]

_log = get_logger("krypton.telemetry.metrics")

#: Where each service serves `/metrics` unless `KRYPTON_METRICS_PORT` says otherwise (0 = off).
DEFAULT_PORTS: Final = {
    "gateway": 9101,
    "ingest": 9102,
    "index": 9103,
    "authorize": 9104,
    "render": 9105,
    "audit": 9106,
}

# Seconds: from a cached decision (sub-millisecond) to a large STOW or a slow render.
_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)

HTTP_REQUESTS = Counter(
    "krypton_http_requests",
    "HTTP requests answered, by route template, method and status code.",
    ["service", "method", "route", "status"],
)
HTTP_REQUEST_DURATION = Histogram(
    "krypton_http_request_duration_seconds",
    "Time from request start to the end of the response body, by route template.",
    ["service", "method", "route"],
    buckets=_LATENCY_BUCKETS,
)
NATS_REQUESTS = Counter(
    "krypton_nats_requests",
    "NATS requests sent (request/reply and JetStream publishes), by subject family and outcome.",
    ["service", "subject", "outcome"],
)
NATS_REQUEST_DURATION = Histogram(
    "krypton_nats_request_duration_seconds",
    "Time until the reply (or the JetStream ack) arrived, by subject family.",
    ["service", "subject"],
    buckets=_LATENCY_BUCKETS,
)
NATS_SERVED = Counter(
    "krypton_nats_served",
    "NATS requests answered by a `krypton.bus.responder` handler, by subject family and status.",
    ["service", "subject", "status"],
)
NATS_SERVE_DURATION = Histogram(
    "krypton_nats_serve_duration_seconds",
    "Time from a request's arrival in the handler to its reply, by subject family.",
    ["service", "subject"],
    buckets=_LATENCY_BUCKETS,
)
MESSAGES = Counter(
    "krypton_messages",
    "JetStream messages handled by a durable consumer, by outcome (ack, nak, term).",
    ["consumer", "outcome"],
)
MESSAGE_BATCH_DURATION = Histogram(
    "krypton_message_batch_duration_seconds",
    "Time a durable consumer spent on one fetched batch.",
    ["consumer"],
    buckets=_LATENCY_BUCKETS,
)
JETSTREAM_PENDING = Gauge(
    "krypton_jetstream_consumer_pending",
    "Messages in the stream not yet delivered to the durable consumer (its lag).",
    ["stream", "consumer"],
)
JETSTREAM_ACK_PENDING = Gauge(
    "krypton_jetstream_consumer_ack_pending",
    "Messages delivered to the durable consumer and not yet acknowledged.",
    ["stream", "consumer"],
)
JETSTREAM_REDELIVERED = Gauge(
    "krypton_jetstream_consumer_redelivered",
    "Messages of the durable consumer delivered more than once and still unacknowledged.",
    ["stream", "consumer"],
)
INGEST_INSTANCES = Counter(
    "krypton_ingest_instances",
    "Uploads decided by ingest: stored, rejected (quarantined) or failed (retried later).",
    ["outcome"],
)

_PARTITIONED = (
    subjects.INGEST_RECEIVED,
    subjects.INSTANCE_STORED,
    subjects.INSTANCE_REJECTED,
    subjects.POLICY_CHANGED,
)


def subject_family(subject: str) -> str:
    """A subject with its partition token (the producing structure, ...) replaced by `*`.

    Keeps metric labels bounded: `krypton.v1.ingest.received.330781196` counts as
    `krypton.v1.ingest.received.*`; inboxes and JetStream API subjects collapse to one value.
    """
    if subject.startswith("_INBOX."):
        return "_INBOX"
    if subject.startswith("$JS."):
        return "$JS.API" if subject.startswith("$JS.API.") else "$JS"
    for prefix in _PARTITIONED:
        if subject.startswith(prefix + "."):
            return f"{prefix}.*"
    return subject


class _CacheCollector(Collector):
    """Reports caches that count their own hits and misses (no code in their hot path)."""

    def __init__(self) -> None:
        self.sources: dict[str, Callable[[], tuple[int, int]]] = {}

    def collect(self) -> Iterator[CounterMetricFamily]:
        family = CounterMetricFamily(
            "krypton_cache_lookups",
            "Look-ups in a cache that counts them itself, by cache and result (hit, miss).",
            labels=["cache", "result"],
        )
        for name, source in sorted(self.sources.items()):
            hits, misses = source()
            family.add_metric([name, "hit"], hits)
            family.add_metric([name, "miss"], misses)
        yield family


_caches = _CacheCollector()
REGISTRY.register(_caches)


def register_cache(name: str, counts: Callable[[], tuple[int, int]]) -> None:
    """Export a cache's `(hits, misses)` as `krypton_cache_lookups_total{cache=name}`.

    Args:
        name: Fixed cache name (`authorize_decision`, `render_image`, ...).
        counts: Returns the cache's running totals; called at each scrape.
    """
    _caches.sources[name] = counts


def metrics_port(service: str, configured: int | None) -> int:
    """The port `service` serves metrics on: the configured one, else its default (0 = off)."""
    if configured is not None:
        return configured
    return DEFAULT_PORTS.get(service, 0)


def start_metrics_server(service: str, configured: int | None, host: str = "127.0.0.1") -> int:
    """Serve `/metrics` from a background thread; return the port, 0 when off.

    A port already taken (a second replica on one host) is logged, not fatal: metrics are an
    aid, never a reason for a service not to run.
    """
    port = metrics_port(service, configured)
    if port <= 0:
        return 0
    try:
        start_http_server(port, addr=host)
    except OSError as exc:
        _log.warning("metrics endpoint not started", port=port, error=str(exc))
        return 0
    _log.info("metrics endpoint started", port=port)
    return port


@dataclass
class LagPoller:
    """Polls JetStream consumer info for the durables a service owns and exports their lag.

    Every replica polls (the values are the server's, so dashboards take `max` over instances);
    one request per consumer every `interval` seconds is negligible for the server.
    """

    js: JetStreamContext
    consumers: Iterable[tuple[str, str]]  # (stream, durable)
    interval: float = 10.0
    _task: asyncio.Task[None] | None = field(default=None, init=False)

    def start(self) -> None:
        """Start polling in the background."""
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        """Stop polling."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def poll_once(self) -> None:
        """Read each consumer's info once and update the gauges."""
        for stream, durable in self.consumers:
            try:
                info = await self.js.consumer_info(stream, durable, timeout=5.0)
            except Exception as exc:  # NATS down, consumer not created yet: try next time
                _log.debug("consumer info unavailable", consumer=durable, error=repr(exc))
                continue
            JETSTREAM_PENDING.labels(stream, durable).set(info.num_pending or 0)
            JETSTREAM_ACK_PENDING.labels(stream, durable).set(info.num_ack_pending or 0)
            JETSTREAM_REDELIVERED.labels(stream, durable).set(info.num_redelivered or 0)

    async def _run(self) -> None:
        while True:
            await self.poll_once()
            await asyncio.sleep(self.interval)

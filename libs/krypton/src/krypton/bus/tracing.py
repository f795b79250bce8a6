"""Trace context across NATS: W3C `traceparent` in message headers, spans on both sides.

`TracedClient` is the nats-py client every Krypton connection uses (`krypton.bus.connect`):
each publish, request and JetStream publish (a request to the stream) runs in a PRODUCER or
CLIENT span and carries the span's context in its headers; each subscription callback runs in
a CONSUMER span whose parent is the context the message carries. Durable pull consumers, which
receive batches, open their span with `consumer_span`. FastStream subscribers get the same
through FastStream's `NatsTelemetryMiddleware`, which reads and writes the same headers
(the global propagator, W3C trace context by default).

Protocol traffic is not traced: JetStream API calls and acks (`$JS.`), replies to inboxes
(`_INBOX.`), and pull requests. NATS request latency by subject family is also measured here
(`krypton_nats_request_duration_seconds`).
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from opentelemetry import context as otel_context, propagate, trace
from opentelemetry.trace import Link, Span, SpanKind, Status, StatusCode

from krypton.telemetry.metrics import NATS_REQUEST_DURATION, NATS_REQUESTS, subject_family

__all__ = ["TracedClient", "consumer_span", "message_context", "process_span"]

_tracer = trace.get_tracer("krypton.bus")
# Set while `request` publishes, so the inner publish injects the request span's context
# instead of opening a second span.
_in_request: ContextVar[bool] = ContextVar("krypton_nats_in_request", default=False)


def _traced(subject: str) -> bool:
    return not (subject.startswith("$") or subject.startswith("_INBOX."))


def _attributes(subject: str, operation: str) -> dict[str, str]:
    return {
        "messaging.system": "nats",
        "messaging.destination.name": subject_family(subject),
        "messaging.operation.type": operation,
    }


def message_context(msg: Msg) -> otel_context.Context:
    """The trace context a message carries in its headers (empty when it carries none)."""
    return propagate.extract(msg.headers or {})


@contextmanager
def consumer_span(name: str, msgs: Sequence[Msg], **attributes: str | int) -> Iterator[Span]:
    """Open the CONSUMER span in which a fetched batch is processed.

    When every message belongs to one trace (one STOW request, or a batch of one), the span is
    a child of the first message's context, so the trace reads gateway → consumer → database.
    A batch mixing traces starts its own trace and links to each message's span (OpenTelemetry
    messaging conventions for batch processing), so each publisher's trace still leads here.
    """
    contexts = [trace.get_current_span(message_context(m)).get_span_context() for m in msgs]
    valid = [c for c in contexts if c.is_valid]
    parent: otel_context.Context | None = None
    links: list[Link] = []
    if valid and len({c.trace_id for c in valid}) == 1:
        parent = trace.set_span_in_context(trace.NonRecordingSpan(valid[0]))
        links = [Link(c) for c in valid[1:]]
    else:
        parent = otel_context.Context()  # a new root, not the caller's loop context
        links = [Link(c) for c in valid]
    attrs: dict[str, str | int] = {
        "messaging.system": "nats",
        "messaging.operation.type": "process",
        "messaging.batch.message_count": len(msgs),
        **attributes,
    }
    with _tracer.start_as_current_span(
        name, context=parent, kind=SpanKind.CONSUMER, links=links, attributes=attrs
    ) as span:
        yield span


class TracedClient(Client):
    """A nats-py client that propagates trace context and measures requests."""

    service: str = "krypton"

    async def publish(
        self,
        subject: str,
        payload: bytes = b"",
        reply: str = "",
        headers: dict[str, str] | None = None,
    ) -> None:
        """Publish, carrying the current trace context (in a PRODUCER span of its own)."""
        if not _traced(subject):
            await super().publish(subject, payload, reply, headers)
            return
        carrier = dict(headers or {})
        if _in_request.get():
            propagate.inject(carrier)
            await super().publish(subject, payload, reply, carrier)
            return
        with _tracer.start_as_current_span(
            f"{subject_family(subject)} publish",
            kind=SpanKind.PRODUCER,
            attributes=_attributes(subject, "send"),
        ):
            propagate.inject(carrier)
            await super().publish(subject, payload, reply, carrier)

    async def request(
        self,
        subject: str,
        payload: bytes = b"",
        timeout: float = 0.5,
        old_style: bool = False,
        headers: dict[str, Any] | None = None,
    ) -> Msg:
        """Send a request (or a JetStream publish) in a CLIENT span; measure its latency."""
        if not _traced(subject):
            return await super().request(subject, payload, timeout, old_style, headers)
        family = subject_family(subject)
        started = time.perf_counter()
        outcome = "error"
        with _tracer.start_as_current_span(
            f"{family} request", kind=SpanKind.CLIENT, attributes=_attributes(subject, "send")
        ) as span:
            token = _in_request.set(True)
            try:
                reply = await super().request(subject, payload, timeout, old_style, headers)
                outcome = "ok"
                return reply
            except TimeoutError:
                outcome = "timeout"
                raise
            except Exception as exc:
                outcome = type(exc).__name__
                raise
            finally:
                _in_request.reset(token)
                if outcome != "ok":
                    span.set_status(Status(StatusCode.ERROR, outcome))
                NATS_REQUESTS.labels(self.service, family, outcome).inc()
                NATS_REQUEST_DURATION.labels(self.service, family).observe(
                    time.perf_counter() - started
                )

    async def subscribe(
        self,
        subject: str,
        queue: str = "",
        cb: Callable[[Msg], Awaitable[None]] | None = None,
        *args: Any,
        **kwargs: Any,
    ) -> Subscription:
        """Subscribe; a callback runs in a CONSUMER span, child of the message's context."""
        if cb is not None and _traced(subject):
            cb = _traced_callback(cb)
        return await super().subscribe(subject, queue, cb, *args, **kwargs)


@contextmanager
def process_span(msg: Msg) -> Iterator[Span]:
    """The CONSUMER span in which one received message is handled, child of its context."""
    with _tracer.start_as_current_span(
        f"{subject_family(msg.subject)} process",
        context=message_context(msg),
        kind=SpanKind.CONSUMER,
        attributes=_attributes(msg.subject, "process"),
    ) as span:
        yield span


def _traced_callback(cb: Callable[[Msg], Awaitable[None]]) -> Callable[[Msg], Awaitable[None]]:
    async def traced(msg: Msg) -> None:
        with process_span(msg):
            await cb(msg)

    return traced

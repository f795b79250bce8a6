"""HTTP server spans and metrics for an ASGI app (the gateway), in one middleware.

`ServerTelemetryMiddleware` continues a caller's `traceparent` in a SERVER span named after
the route template (`GET /dicomweb/studies/{study}`, never a UID), and counts and times each
request by that template in Prometheus.

Written by hand in place of OpenTelemetry's `OpenTelemetryMiddleware`: on the gateway's
cached reads (~0.5 ms of server work) that middleware cost ~55 µs a request, idle sampler
included, for attributes and metrics of its own we did not use; this one costs ~12 µs
(`benchmarks/README.md`, "The gateway's ASGI stack"). It also never records a query string:
QIDO parameters hold patient names and identifiers, which must not reach the trace store.
Health probes are neither traced nor counted: orchestrators call them every few seconds.

FastAPI's own telemetry must stay off on the app (`FastAPI(telemetry=...)`): it
would open a second server span and record `url.query` verbatim.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import Any

from opentelemetry import propagate, trace
from opentelemetry.propagators.textmap import Getter
from opentelemetry.trace import SpanKind, Status, StatusCode
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from krypton.telemetry.metrics import HTTP_REQUEST_DURATION, HTTP_REQUESTS

__all__ = ["ServerTelemetryMiddleware", "instrument_asgi"]

_PROBES = frozenset({"/healthz", "/readyz"})
_tracer = trace.get_tracer("krypton.http")  # a proxy until the provider is installed


class _AsgiHeaders(Getter[list[tuple[bytes, bytes]]]):
    """Reads propagation headers (`traceparent`, `tracestate`, `baggage`) off an ASGI scope."""

    def get(self, carrier: list[tuple[bytes, bytes]], key: str) -> list[str] | None:
        name = key.lower().encode("latin-1")
        values = [v.decode("latin-1") for k, v in carrier if k.lower() == name]
        return values or None

    def keys(self, carrier: list[tuple[bytes, bytes]]) -> list[str]:
        return [k.decode("latin-1") for k, _ in carrier]


_GETTER = _AsgiHeaders()


def _route_template(scope: Scope) -> str:
    route = scope.get("route")
    return getattr(route, "path", None) or "unmatched"


class ServerTelemetryMiddleware:
    """One SERVER span and the HTTP request metrics per request, by route template."""

    def __init__(self, app: ASGIApp, service: str) -> None:
        """Wrap `app`; `service` labels the metrics."""
        self.app = app
        self.service = service

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """ASGI entry point."""
        if scope["type"] != "http" or scope["path"] in _PROBES:
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        method: str = scope["method"]
        parent = propagate.extract(scope["headers"], getter=_GETTER)
        span = _tracer.start_span(method, context=parent, kind=SpanKind.SERVER)
        recording = span.is_recording()
        if recording:
            span.set_attributes(_request_attributes(scope))
        status = 500  # an exception before the response started is a server error

        async def send_wrapper(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            with trace.use_span(span, record_exception=False, set_status_on_exception=False):
                await self.app(scope, receive, send_wrapper)
        except BaseException as exc:
            if recording:
                span.record_exception(exc)
            raise
        finally:
            template = _route_template(scope)
            if recording:
                span.update_name(f"{method} {template}")
                span.set_attribute("http.route", template)
                span.set_attribute("http.response.status_code", status)
                if status >= 500:
                    span.set_status(Status(StatusCode.ERROR))
            span.end()
            HTTP_REQUESTS.labels(self.service, method, template, str(status)).inc()
            HTTP_REQUEST_DURATION.labels(self.service, method, template).observe(
                time.perf_counter() - started
            )


def _request_attributes(scope: Scope) -> dict[str, Any]:
    """The span's request attributes (stable HTTP conventions); never the query string."""
    attributes: dict[str, Any] = {
        "http.request.method": scope["method"],
        "url.scheme": scope.get("scheme", "http"),
        "url.path": scope["path"],
        "network.protocol.version": scope.get("http_version", "1.1"),
    }
    client = scope.get("client")
    if client:
        attributes["client.address"] = client[0]
    server = scope.get("server")
    if server and server[1] is not None:
        attributes["server.port"] = server[1]
    agent = _header(scope["headers"], b"user-agent")
    if agent is not None:
        attributes["user_agent.original"] = agent
    return attributes


def _header(headers: Iterable[tuple[bytes, bytes]], name: bytes) -> str | None:
    for key, value in headers:
        if key.lower() == name:
            return value.decode("latin-1")
    return None


def instrument_asgi(app: Any, service: str) -> None:
    """Add the server span and metrics middleware to a Starlette/FastAPI `app`."""
    app.add_middleware(ServerTelemetryMiddleware, service=service)

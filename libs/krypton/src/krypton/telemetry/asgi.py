"""HTTP server spans and metrics for an ASGI app (the gateway).

OpenTelemetry's `OpenTelemetryMiddleware` opens the SERVER span and continues a caller's
`traceparent`; `HttpMetricsMiddleware`, inside it, counts requests and measures their latency
by route template, and renames the span after the template (`GET /dicomweb/studies/{study}`)
so span names and labels never carry UIDs.

Query strings are scrubbed from span attributes: QIDO parameters hold patient names and
identifiers, which must not reach the trace store. Health probes are neither traced nor
counted: orchestrators call them every few seconds.
"""

from __future__ import annotations

import time
from typing import Any

from opentelemetry import trace
from opentelemetry.instrumentation.asgi import OpenTelemetryMiddleware
from opentelemetry.trace import Span
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from krypton.telemetry.metrics import HTTP_REQUEST_DURATION, HTTP_REQUESTS

__all__ = ["HttpMetricsMiddleware", "instrument_asgi"]

_PROBES = frozenset({"/healthz", "/readyz"})
# Attributes the ASGI instrumentation may fill with the full URL or its query, across the old
# and the stable HTTP semantic conventions.
_URL_ATTRIBUTES = ("http.url", "url.full", "http.target")


def _scrub_query(span: Span, scope: dict[str, Any]) -> None:
    """`server_request_hook`: drop the query string from the span's URL attributes."""
    if not span.is_recording():
        return
    attributes = getattr(span, "attributes", None) or {}
    for name in _URL_ATTRIBUTES:
        value = attributes.get(name)
        if isinstance(value, str) and "?" in value:
            span.set_attribute(name, value.split("?", 1)[0])
    if "url.query" in attributes:
        span.set_attribute("url.query", "[REDACTED]")


class HttpMetricsMiddleware:
    """Counts and times HTTP requests by route template; names the server span after it."""

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
        status = 500  # an exception before the response started is a server error
        span = trace.get_current_span()

        async def send_wrapper(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            route = scope.get("route")
            template = getattr(route, "path", None) or "unmatched"
            method = scope["method"]
            if span.is_recording():
                span.update_name(f"{method} {template}")
                span.set_attribute("http.route", template)
            HTTP_REQUESTS.labels(self.service, method, template, str(status)).inc()
            HTTP_REQUEST_DURATION.labels(self.service, method, template).observe(
                time.perf_counter() - started
            )


def instrument_asgi(app: Any, service: str) -> None:
    """Add the tracing and metrics middlewares to a Starlette/FastAPI `app`."""
    # Starlette puts the middleware added last outermost: the span must exist before metrics.
    app.add_middleware(HttpMetricsMiddleware, service=service)
    app.add_middleware(
        OpenTelemetryMiddleware,
        excluded_urls=",".join(p.lstrip("/") for p in sorted(_PROBES)),
        server_request_hook=_scrub_query,
        # One span per body chunk of a multi-gigabyte STOW would drown the trace.
        exclude_spans=["receive", "send"],
    )

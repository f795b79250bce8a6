"""OpenTelemetry bootstrap: one tracer provider per process, named after the service.

Exporting is off unless configured: with `OTEL_TRACES_EXPORTER=console` spans go to stderr; the
OTLP exporter (issue: observability) plugs in here through the standard `OTEL_*` variables.
"""

from __future__ import annotations

import os

from opentelemetry import trace
from opentelemetry.sdk.resources import SERVICE_NAME, Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter, SpanExporter

__all__ = ["setup_telemetry"]

_configured: TracerProvider | None = None


def setup_telemetry(service: str, exporter: SpanExporter | None = None) -> TracerProvider:
    """Install (once) and return the process's tracer provider.

    Args:
        service: `service.name` of every span of this process.
        exporter: Where spans go; by default chosen by `OTEL_TRACES_EXPORTER` (`console` or
            `none`, the default).
    """
    global _configured
    if _configured is not None:
        return _configured
    provider = TracerProvider(resource=Resource.create({SERVICE_NAME: f"krypton-{service}"}))
    chosen = exporter
    if chosen is None and os.environ.get("OTEL_TRACES_EXPORTER", "none") == "console":
        chosen = ConsoleSpanExporter()
    if chosen is not None:
        provider.add_span_processor(BatchSpanProcessor(chosen))
    trace.set_tracer_provider(provider)
    _configured = provider
    return provider

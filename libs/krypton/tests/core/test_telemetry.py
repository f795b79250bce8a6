"""The telemetry bootstrap installs a provider that records spans with the service name."""

from __future__ import annotations

from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from krypton.telemetry.setup import setup_telemetry


def test_spans_carry_the_service_name() -> None:
    provider = setup_telemetry("testsvc")
    exporter = InMemorySpanExporter()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    with provider.get_tracer("t").start_as_current_span("work"):
        pass
    (span,) = exporter.get_finished_spans()
    assert span.resource.attributes["service.name"] == "krypton-testsvc"
    assert setup_telemetry("other") is provider

"""The telemetry bootstrap installs a provider that records spans with the service name."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
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


_PROBE = """
from opentelemetry import trace
from krypton.telemetry.setup import setup_telemetry
setup_telemetry("probe", idle_without_exporter=True)
with trace.get_tracer("t").start_as_current_span("work") as span:
    print(span.is_recording(), span.get_span_context().is_valid)
"""


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({}, "False True"),  # nothing exports: spans cost nothing, ids still flow
        ({"OTEL_TRACES_EXPORTER": "console"}, "True True"),
        ({"OTEL_TRACES_SAMPLER": "always_on"}, "True True"),  # an explicit choice wins
    ],
)
def test_services_record_spans_only_when_something_exports_them(
    env: dict[str, str], expected: str
) -> None:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    done = subprocess.run(
        [sys.executable, "-c", _PROBE],
        env={**clean, **env},
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    assert done.stdout.splitlines()[0] == expected

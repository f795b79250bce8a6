"""OpenTelemetry bootstrap: one tracer provider per process, named after the service.

Exporting is off unless configured, through the standard OpenTelemetry variables:

- `OTEL_TRACES_EXPORTER`: `none` (default), `otlp` (OTLP over HTTP/protobuf), `console`, or a
  comma-separated list of them.
- `OTEL_EXPORTER_OTLP_ENDPOINT` (e.g. `http://otel-collector:4318`; `/v1/traces` is appended)
  or `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` (used as is), `OTEL_EXPORTER_OTLP_HEADERS`,
  `OTEL_EXPORTER_OTLP_TIMEOUT`, ... read by the OTLP exporter itself. Only the HTTP/protobuf
  protocol is installed; `OTEL_EXPORTER_OTLP_PROTOCOL=grpc` is refused with a clear error.
- `OTEL_TRACES_SAMPLER` / `OTEL_TRACES_SAMPLER_ARG` (default: parent-based, always on),
  `OTEL_BSP_SCHEDULE_DELAY`, `OTEL_RESOURCE_ATTRIBUTES`, `OTEL_PROPAGATORS`: read by the SDK.

`service.name` is always `krypton-<service>`.
"""

from __future__ import annotations

import os

from opentelemetry import trace
from opentelemetry.sdk.resources import SERVICE_NAME, Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter, SpanExporter
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF

from krypton.core.errors import ConfigurationError
from krypton.core.settings import KryptonSettings
from krypton.telemetry.metrics import start_metrics_server

__all__ = ["exporters_from_env", "setup_observability", "setup_telemetry"]

_configured: TracerProvider | None = None


def exporters_from_env() -> list[SpanExporter]:
    """The span exporters `OTEL_TRACES_EXPORTER` names (none by default).

    Raises:
        ConfigurationError: An unknown exporter, or the gRPC protocol (not installed).
    """
    names = [n.strip() for n in os.environ.get("OTEL_TRACES_EXPORTER", "none").split(",")]
    chosen: list[SpanExporter] = []
    for name in names:
        if name in ("", "none"):
            continue
        if name == "console":
            chosen.append(ConsoleSpanExporter())
        elif name == "otlp":
            protocol = os.environ.get(
                "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
                os.environ.get("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"),
            )
            if protocol != "http/protobuf":
                msg = f"OTLP protocol {protocol!r} is not supported; use http/protobuf (port 4318)"
                raise ConfigurationError(msg)
            # Imported here: a process that exports nothing does not pay for the exporter.
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

            chosen.append(OTLPSpanExporter())
        else:
            msg = f"unknown OTEL_TRACES_EXPORTER {name!r}; use otlp, console or none"
            raise ConfigurationError(msg)
    return chosen


def setup_telemetry(
    service: str, exporter: SpanExporter | None = None, *, idle_without_exporter: bool = False
) -> TracerProvider:
    """Install (once) and return the process's tracer provider.

    Args:
        service: `service.name` of every span of this process (prefixed `krypton-`).
        exporter: Where spans go; by default those `OTEL_TRACES_EXPORTER` names.
        idle_without_exporter: when no exporter is configured (and no `OTEL_TRACES_SAMPLER`
            chosen), sample nothing: spans are then non-recording, which costs almost
            nothing, instead of being built, timed and dropped on every request, message
            and statement (the default `make up` exports nothing). Trace ids still flow
            through `traceparent` and the logs.
    """
    global _configured
    if _configured is not None:
        return _configured
    chosen = [exporter] if exporter is not None else exporters_from_env()
    idle = idle_without_exporter and not chosen and not os.environ.get("OTEL_TRACES_SAMPLER")
    provider = TracerProvider(
        resource=Resource.create({SERVICE_NAME: f"krypton-{service}"}),
        sampler=ALWAYS_OFF if idle else None,
    )
    for one in chosen:
        provider.add_span_processor(BatchSpanProcessor(one))
    trace.set_tracer_provider(provider)
    _configured = provider
    return provider


def setup_observability(service: str, settings: KryptonSettings) -> int:
    """Tracing from the `OTEL_*` variables, and the Prometheus endpoint of `service`.

    Returns:
        The port `/metrics` is served on, 0 when off (`KRYPTON_METRICS_PORT=0`).
    """
    setup_telemetry(service, idle_without_exporter=True)
    return start_metrics_server(service, settings.metrics_port, settings.metrics_host)

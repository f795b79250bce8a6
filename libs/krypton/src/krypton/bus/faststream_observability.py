"""FastStream's NATS telemetry and Prometheus middlewares, with bounded destination names.

FastStream names spans and labels metrics after the exact subject, which for a reply is a
one-off inbox (`_INBOX.krypton.gateway.<nuid>.<token>`) and for an event carries the producing
structure: every reply would create a new Prometheus series and a new span name. These
providers report the subject family instead (`krypton.telemetry.metrics.subject_family`), like
the rest of Krypton's telemetry; everything else is FastStream's own.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from faststream.message import StreamMessage
from faststream.nats.opentelemetry.provider import (
    NatsTelemetrySettingsProvider,
    telemetry_attributes_provider_factory,
)
from faststream.nats.prometheus.provider import (
    NatsMetricsSettingsProvider,
    settings_provider_factory,
)
from faststream.opentelemetry.middleware import TelemetryMiddleware
from faststream.prometheus import ConsumeAttrs
from faststream.prometheus.middleware import PrometheusMiddleware
from faststream.response import PublishCommand
from nats.aio.msg import Msg
from opentelemetry.semconv.trace import SpanAttributes
from prometheus_client import REGISTRY

from krypton.telemetry.metrics import subject_family

__all__ = ["prometheus_middleware", "telemetry_middleware"]


class _TelemetrySettings(NatsTelemetrySettingsProvider):
    def get_publish_attrs_from_cmd(self, cmd: PublishCommand) -> dict[str, Any]:
        attributes = super().get_publish_attrs_from_cmd(cmd)
        attributes[SpanAttributes.MESSAGING_DESTINATION_NAME] = subject_family(cmd.destination)
        return attributes

    def get_publish_destination_name(self, cmd: PublishCommand) -> str:
        return subject_family(cmd.destination)

    def get_consume_destination_name(self, msg: StreamMessage[Msg]) -> str:
        return subject_family(msg.raw_message.subject)


def _telemetry_settings(msg: Msg | Sequence[Msg] | None) -> Any:
    if isinstance(msg, Msg) or msg is None:
        return _TelemetrySettings()
    return telemetry_attributes_provider_factory(msg)


class _MetricsSettings(NatsMetricsSettingsProvider):
    def get_publish_destination_name_from_cmd(self, cmd: PublishCommand) -> str:
        return subject_family(cmd.destination)

    def get_consume_attrs_from_message(self, msg: StreamMessage[Msg]) -> ConsumeAttrs:
        attributes = super().get_consume_attrs_from_message(msg)
        attributes["destination_name"] = subject_family(attributes["destination_name"])
        return attributes


def _metrics_settings(msg: Msg | Sequence[Msg] | None) -> Any:
    if isinstance(msg, Msg) or msg is None:
        return _MetricsSettings()
    return settings_provider_factory(msg)


def telemetry_middleware() -> TelemetryMiddleware[Any]:
    """Spans continuing the publisher's trace, on the global tracer provider."""
    return TelemetryMiddleware(settings_provider_factory=_telemetry_settings)


def prometheus_middleware(app_name: str) -> PrometheusMiddleware[Any, Any]:
    """The `faststream_*` metrics in the default registry, `app_name` the service."""
    return PrometheusMiddleware(
        settings_provider_factory=_metrics_settings, registry=REGISTRY, app_name=app_name
    )

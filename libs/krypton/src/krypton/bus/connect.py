"""Connections to NATS: nats-py clients and FastStream brokers built from settings."""

from __future__ import annotations

import logging

from fast_depends.msgspec import MsgSpecSerializer
from faststream.nats import NatsBroker
from nats.aio.client import Client

from krypton.bus.faststream_observability import prometheus_middleware, telemetry_middleware
from krypton.bus.permissions import inbox_prefix
from krypton.bus.tracing import TracedClient
from krypton.core.logging import get_logger

__all__ = ["connect", "make_broker"]

_log = get_logger("krypton.bus")


async def _on_error(exc: Exception) -> None:
    _log.warning("nats connection error", error=str(exc))


async def _on_disconnect() -> None:
    _log.warning("nats disconnected")


async def _on_reconnect() -> None:
    _log.info("nats reconnected")


async def connect(url: str, name: str) -> Client:
    """Connect with reconnection forever (a restart of nats-server is not fatal).

    The client propagates trace context and measures requests (`krypton.bus.tracing`); its
    metrics are labelled with the service, the part of `name` before any `-`, whose own inbox
    prefix it uses (the per-service permissions of `krypton.bus.permissions` allow no other).
    Credentials, when the server wants them, ride in the URL (`nats://user:password@host`).
    """
    client = TracedClient()
    client.service = name.split("-", 1)[0]
    await client.connect(
        url,
        name=name,
        inbox_prefix=inbox_prefix(client.service),
        max_reconnect_attempts=-1,
        # Seconds; nats-py annotates it `int` but sleeps on it as a float.
        reconnect_time_wait=0.5,  # type: ignore[arg-type]
        error_cb=_on_error,
        disconnected_cb=_on_disconnect,
        reconnected_cb=_on_reconnect,
    )
    return client


def make_broker(url: str, name: str) -> NatsBroker:
    """A FastStream broker whose handlers take msgspec Structs directly.

    Its subscribers run in spans that continue the publisher's trace (FastStream's telemetry
    middleware, on the global tracer provider) and are counted in the `faststream_*`
    Prometheus metrics, with `app_name` the service (`krypton.bus.faststream_observability`).
    """
    return NatsBroker(
        url,
        name=name,
        inbox_prefix=inbox_prefix(name.split("-", 1)[0]),
        serializer=MsgSpecSerializer(),
        max_reconnect_attempts=-1,
        reconnect_time_wait=1,
        logger=get_logger(f"krypton.{name}.broker"),
        # One "Received"/"Processed" pair per message is debugging detail, not an operator's log.
        log_level=logging.DEBUG,
        middlewares=(telemetry_middleware(), prometheus_middleware(name)),
    )

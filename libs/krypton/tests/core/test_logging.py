"""Logging renders structlog events and stdlib records as the same JSON lines."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator
from datetime import datetime
from typing import Any

import pytest
import structlog
from opentelemetry.sdk.trace import TracerProvider

from krypton.core.logging import REDACTED, configure_logging, get_logger


@pytest.fixture
def stream() -> Iterator[io.StringIO]:
    """A stream to log into; the previous logging setup is restored afterwards."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    out = io.StringIO()
    try:
        yield out
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)
        structlog.reset_defaults()


def lines(stream: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_a_structlog_event_becomes_one_json_line_with_service_and_level(
    stream: io.StringIO,
) -> None:
    configure_logging("ingest", stream=stream)

    get_logger("krypton.ingest.handlers").info("instance stored", study_uid="1.2.3")

    [line] = lines(stream)
    assert line["event"] == "instance stored"
    assert line["service"] == "ingest"
    assert line["level"] == "info"
    assert line["logger"] == "krypton.ingest.handlers"
    assert line["study_uid"] == "1.2.3"
    timestamp = datetime.fromisoformat(line["timestamp"])
    assert timestamp.utcoffset() is not None
    assert timestamp.utcoffset().total_seconds() == 0  # type: ignore[union-attr]


def test_a_stdlib_record_is_rendered_through_the_same_formatter(stream: io.StringIO) -> None:
    configure_logging("gateway", stream=stream)

    logging.getLogger("uvicorn.error").warning("Started server process [%d]", 42)

    [line] = lines(stream)
    assert line["event"] == "Started server process [42]"
    assert line["logger"] == "uvicorn.error"
    assert line["level"] == "warning"
    assert line["service"] == "gateway"
    assert "timestamp" in line


def test_records_below_the_level_are_dropped(stream: io.StringIO) -> None:
    configure_logging("index", level="warning", stream=stream)

    get_logger("a").info("hidden")
    logging.getLogger("asyncpg").debug("hidden too")
    get_logger("a").error("shown")

    assert [line["event"] for line in lines(stream)] == ["shown"]


def test_secret_values_are_redacted(stream: io.StringIO) -> None:
    configure_logging("gateway", stream=stream)

    get_logger("a").info(
        "request",
        authorization="Bearer abc.def",
        access_token="t0k3n",
        pg_dsn="postgresql://u:p@h/db",
        headers={"Authorization": "Bearer x", "Accept": "application/dicom"},
        url="postgresql://krypton:hunter2@db:5432/krypton",
        study_uid="1.2.3",
    )
    logging.getLogger("asyncpg").info("connect %s", "nats://user:pw@host:4222")

    first, second = lines(stream)
    assert first["authorization"] == REDACTED
    assert first["access_token"] == REDACTED
    assert first["pg_dsn"] == REDACTED
    assert first["headers"] == {"Authorization": REDACTED, "Accept": "application/dicom"}
    assert first["url"] == f"postgresql://krypton:{REDACTED}@db:5432/krypton"
    assert first["study_uid"] == "1.2.3"
    assert "hunter2" not in stream.getvalue()
    assert second["event"] == f"connect nats://user:{REDACTED}@host:4222"


def test_trace_and_span_ids_come_from_the_current_span(stream: io.StringIO) -> None:
    configure_logging("render", stream=stream)
    tracer = TracerProvider().get_tracer("test")

    with tracer.start_as_current_span("render") as span:
        get_logger("a").info("inside")
        logging.getLogger("b").info("inside too")
        context = span.get_span_context()
    get_logger("a").info("outside")

    inside, inside_too, outside = lines(stream)
    assert inside["trace_id"] == format(context.trace_id, "032x")
    assert inside["span_id"] == format(context.span_id, "016x")
    assert inside_too["trace_id"] == inside["trace_id"]
    assert "trace_id" not in outside


def test_exceptions_are_rendered_as_structured_tracebacks(stream: io.StringIO) -> None:
    configure_logging("ingest", stream=stream)

    try:
        1 / 0  # noqa: B018
    except ZeroDivisionError:
        get_logger("a").exception("failed")

    [line] = lines(stream)
    assert line["level"] == "error"
    assert line["exception"][0]["exc_type"] == "ZeroDivisionError"


def test_console_rendering_is_used_when_json_is_off(stream: io.StringIO) -> None:
    configure_logging("ingest", json=False, stream=stream)

    get_logger("a").info("hello", study_uid="1.2.3")

    text = stream.getvalue()
    assert "hello" in text
    assert "study_uid" in text
    with pytest.raises(json.JSONDecodeError):
        json.loads(text)


def test_configuring_again_replaces_the_handler(stream: io.StringIO) -> None:
    configure_logging("one", stream=io.StringIO())
    configure_logging("two", stream=stream)

    logging.getLogger("x").warning("once")

    [line] = lines(stream)
    assert line["service"] == "two"


def test_an_unknown_level_is_refused(stream: io.StringIO) -> None:
    with pytest.raises(ValueError, match="unknown log level"):
        configure_logging("x", level="LOUD", stream=stream)

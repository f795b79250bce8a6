"""Structured logging for every Krypton process: structlog in front, stdlib `logging` behind.

`configure_logging` installs one handler on the root logger whose formatter renders both
structlog events and plain stdlib records (uvicorn, FastStream, asyncpg, ...) the same way:
JSON lines when stderr is not a terminal, a coloured console otherwise. Every line carries an
ISO-8601 UTC timestamp, the level, the logger name, the service and, inside an OpenTelemetry
span, its `trace_id` and `span_id`. Values of secret-looking keys are redacted.

Never log patient-identifying attributes; bind UIDs and subjects instead.
"""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import Mapping
from typing import Any, Final, TextIO

import structlog
from opentelemetry import trace
from structlog.typing import EventDict, Processor, WrappedLogger

__all__ = ["REDACTED", "configure_logging", "get_logger", "redact_secrets"]

REDACTED: Final = "[REDACTED]"

# Matched anywhere in a key, case-insensitively: "Authorization", "access_token", "pg_dsn"...
_SECRET_KEY = re.compile(
    r"authorization|token|passw(?:or)?d|secret|dsn|cookie|credential|api_?key", re.IGNORECASE
)
# The password in "scheme://user:password@host" inside any logged string.
_URL_PASSWORD = re.compile(r"(?P<head>[a-z][a-z0-9+.-]*://[^:/@\s]*:)[^@\s]*(?P<tail>@)", re.I)

# Libraries that install their own handlers (and stop propagation) when imported; we take
# their records back so that they go through our formatter once.
_LIBRARY_LOGGERS = ("uvicorn", "uvicorn.error", "uvicorn.access", "faststream", "faststream.access")


def _redact(value: Any, depth: int = 0) -> Any:
    if isinstance(value, str):
        return _URL_PASSWORD.sub(rf"\g<head>{REDACTED}\g<tail>", value)
    if depth > 4:
        return value
    if isinstance(value, Mapping):
        return {
            k: REDACTED if isinstance(k, str) and _SECRET_KEY.search(k) else _redact(v, depth + 1)
            for k, v in value.items()
        }
    if isinstance(value, list | tuple):
        return type(value)(_redact(v, depth + 1) for v in value)
    return value


def redact_secrets(_logger: WrappedLogger, _method: str, event_dict: EventDict) -> EventDict:
    """Structlog processor: hide values of secret-looking keys and passwords in URLs.

    Keys containing `authorization`, `token`, `password`, `secret`, `dsn`, `cookie`,
    `credential` or `api_key` (any case) get `REDACTED`, also in nested dicts (e.g. headers).
    """
    for key, value in event_dict.items():
        if _SECRET_KEY.search(key):
            event_dict[key] = REDACTED
        else:
            event_dict[key] = _redact(value)
    return event_dict


def _add_trace_context(_logger: WrappedLogger, _method: str, event_dict: EventDict) -> EventDict:
    """Structlog processor: add the current OpenTelemetry span's ids, when there is one."""
    context = trace.get_current_span().get_span_context()
    if context.is_valid:
        event_dict["trace_id"] = format(context.trace_id, "032x")
        event_dict["span_id"] = format(context.span_id, "016x")
    return event_dict


def _add_service(service: str) -> Processor:
    def add_service(_logger: WrappedLogger, _method: str, event_dict: EventDict) -> EventDict:
        event_dict.setdefault("service", service)
        return event_dict

    return add_service


class _KryptonHandler(logging.StreamHandler[TextIO]):
    """Marks the handler we install, so reconfiguring replaces it and nothing else."""


def configure_logging(
    service: str,
    level: str = "INFO",
    json: bool | None = None,
    *,
    stream: TextIO | None = None,
) -> None:
    """Route structlog and stdlib logging through one formatter on `stream` (stderr).

    Call once at process start; calling again replaces the previous configuration.

    Args:
        service: Name put on every line as `service`.
        level: Minimum level, by name (`"DEBUG"`, `"info"`, ...).
        json: JSON lines if true, console rendering if false; by default JSON unless the
            stream is a terminal.
        stream: Where lines go; `sys.stderr` by default.
    """
    out = stream if stream is not None else sys.stderr
    if json is None:
        json = not (hasattr(out, "isatty") and out.isatty())
    numeric_level = logging.getLevelNamesMapping().get(level.upper())
    if numeric_level is None:
        msg = f"unknown log level {level!r}"
        raise ValueError(msg)

    # Run for structlog events and stdlib records alike.
    shared: list[Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        _add_service(service),
        _add_trace_context,
        redact_secrets,
    ]
    renderer: Processor
    if json:
        final: list[Processor] = [
            structlog.processors.StackInfoRenderer(),
            structlog.processors.dict_tracebacks,
        ]
        renderer = structlog.processors.JSONRenderer()
    else:
        final = [structlog.processors.StackInfoRenderer()]
        renderer = structlog.dev.ConsoleRenderer()

    structlog.configure(
        processors=[
            structlog.stdlib.filter_by_level,
            structlog.stdlib.PositionalArgumentsFormatter(),
            *shared,
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        # Not cached, so that configuring again (tests, CLI) reaches loggers made earlier.
        cache_logger_on_first_use=False,
    )
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=[structlog.stdlib.ExtraAdder(), *shared],
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            *final,
            renderer,
        ],
    )
    handler = _KryptonHandler(out)
    handler.setFormatter(formatter)

    root = logging.getLogger()
    for old in [h for h in root.handlers if isinstance(h, _KryptonHandler)]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(numeric_level)
    for name in _LIBRARY_LOGGERS:
        library = logging.getLogger(name)
        library.handlers.clear()
        library.propagate = True


def get_logger(name: str) -> structlog.stdlib.BoundLogger:
    """Return a structlog logger named `name` (usually `__name__`).

    Safe to call at import time: the logger follows whatever `configure_logging` sets later.
    """
    return structlog.stdlib.get_logger(name)

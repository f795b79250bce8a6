"""Per-request stage timings, answered as a ``Server-Timing`` header (W3C Server Timing).

A WADO-RS request opens a timing record (`begin`); the code it runs adds named stages to it
(`stage`, `add`), also from the tasks it starts (they inherit the record through the context).
The header is only set on answers that disclose data anyway (2xx, 304): a refusal carries no
timing, so timings cannot tell a hidden study from a missing one.

Stages for the request up to the first body byte; a streamed body's own time is not included.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Final

from starlette.responses import Response

__all__ = ["Timings", "add", "begin", "stage"]

_current: ContextVar[Timings | None] = ContextVar("krypton_gateway_timings", default=None)
_HEADER: Final = "Server-Timing"


class Timings:
    """Named stage durations of one request, in milliseconds, in the order first seen."""

    __slots__ = ("stages", "started")

    def __init__(self) -> None:
        """Start the clock of the whole request."""
        self.started = time.perf_counter()
        self.stages: dict[str, float] = {}

    def add(self, name: str, seconds: float) -> None:
        """Add `seconds` to stage `name`."""
        self.stages[name] = self.stages.get(name, 0.0) + seconds * 1000

    def header(self) -> str:
        """The ``Server-Timing`` value: each stage, then ``total`` up to now."""
        total = (time.perf_counter() - self.started) * 1000
        parts = [f"{name};dur={ms:.2f}" for name, ms in self.stages.items()]
        parts.append(f"total;dur={total:.2f}")
        return ", ".join(parts)

    def apply(self, response: Response) -> None:
        """Set the header on `response` when its status discloses data anyway."""
        status = response.status_code
        if 200 <= status < 300 or status == 304:
            response.headers[_HEADER] = self.header()


def begin() -> Timings:
    """Open the record of the current request (its tasks inherit it)."""
    timings = Timings()
    _current.set(timings)
    return timings


def add(name: str, seconds: float) -> None:
    """Add to stage `name` of the current request, if one is being timed."""
    timings = _current.get()
    if timings is not None:
        timings.add(name, seconds)


@contextmanager
def stage(name: str) -> Iterator[None]:
    """Time the enclosed block as stage `name` of the current request."""
    started = time.perf_counter()
    try:
        yield
    finally:
        add(name, time.perf_counter() - started)

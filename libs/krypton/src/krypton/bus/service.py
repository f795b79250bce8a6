"""The entry point every FastStream service shares: settings, logging, telemetry, run."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from faststream import FastStream

from krypton.core.gc_tuning import tune_gc
from krypton.core.logging import configure_logging
from krypton.core.settings import KryptonSettings
from krypton.telemetry.setup import setup_observability

__all__ = ["run_service"]


def run_service(name: str, build_app: Callable[[KryptonSettings], tuple[FastStream, Any]]) -> None:
    """Configure the process for service `name` and run its app until SIGTERM/SIGINT."""
    settings = KryptonSettings()
    configure_logging(name, settings.log_level, settings.log_json)
    setup_observability(name, settings)
    app, _ = build_app(settings)
    tune_gc()
    with asyncio.Runner(loop_factory=_loop_factory()) as runner:
        runner.run(app.run())


def _loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """Uvloop's event loop when installed (less overhead per callback, socket and thread hop)."""
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop

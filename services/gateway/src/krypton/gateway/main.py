"""Entry point: `python -m krypton.gateway` serves the gateway with uvicorn."""

from __future__ import annotations

import uvicorn

from krypton.core.gc_tuning import tune_gc
from krypton.core.logging import configure_logging
from krypton.core.settings import KryptonSettings
from krypton.gateway.app import create_app
from krypton.gateway.http_protocol import ProblemHttpToolsProtocol
from krypton.telemetry.setup import setup_observability

__all__ = ["main"]


def main() -> None:
    """Serve on KRYPTON_HTTP_HOST:KRYPTON_HTTP_PORT."""
    settings = KryptonSettings()
    configure_logging("gateway", settings.log_level, settings.log_json)
    setup_observability("gateway", settings)
    app = create_app(settings)
    tune_gc()
    uvicorn.run(
        app,
        host=settings.http_host,
        port=settings.http_port,
        log_config=None,
        access_log=False,
        loop="uvloop",
        http=ProblemHttpToolsProtocol,  # parser-level 400s are problem+json too
        timeout_graceful_shutdown=10,
    )

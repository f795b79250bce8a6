"""Entry point: `python -m krypton.gateway` serves the gateway with uvicorn.

Python runs one request's Python code at a time per process: on a host with several cores,
N gateway processes share one port (`KRYPTON_HTTP_REUSE_PORT`, SO_REUSEPORT), and the kernel
spreads the connections over them. `krypton up --replicas gateway=2` does that.
"""

from __future__ import annotations

import socket

import uvicorn

from krypton.core.gc_tuning import tune_gc
from krypton.core.logging import configure_logging
from krypton.core.settings import KryptonSettings
from krypton.gateway.app import create_app
from krypton.gateway.http_protocol import ProblemHttpToolsProtocol
from krypton.telemetry.setup import setup_observability

__all__ = ["listen", "main"]


def main() -> None:
    """Serve on KRYPTON_HTTP_HOST:KRYPTON_HTTP_PORT."""
    settings = KryptonSettings()
    configure_logging("gateway", settings.log_level, settings.log_json)
    setup_observability("gateway", settings)
    app = create_app(settings)
    tune_gc()
    config = uvicorn.Config(
        app,
        host=settings.http_host,
        port=settings.http_port,
        log_config=None,
        access_log=False,
        loop="uvloop",
        http=ProblemHttpToolsProtocol,  # parser-level 400s are problem+json too
        timeout_graceful_shutdown=10,
    )
    if settings.http_reuse_port:
        _SharedPortServer(config, settings.http_host, settings.http_port).run()
    else:
        uvicorn.Server(config).run()


class _SharedPortServer(uvicorn.Server):
    """Binds its SO_REUSEPORT socket only once the app has started.

    A socket bound earlier would take its share of new connections while this process is still
    connecting to NATS: they would wait there although another replica could answer them.
    """

    def __init__(self, config: uvicorn.Config, host: str, port: int) -> None:
        super().__init__(config)
        self._address = (host, port)

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await self.lifespan.startup()
        if self.lifespan.should_exit:
            raise SystemExit(3)  # uvicorn's own exit status for a failed startup

        async def started() -> None:
            return None

        # uvicorn's startup runs the lifespan first: it has run, so that step is made a no-op.
        self.lifespan.startup = started
        await super().startup(sockets=[listen(*self._address)])


def listen(host: str, port: int) -> socket.socket:
    """A listening TCP socket that other processes of this user may bind too (SO_REUSEPORT)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock

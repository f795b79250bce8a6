"""`krypton edge`: the producer edge box as one process.

Starts the box's leaf nats-server, the DIMSE listener, the spool → stream publisher, the status
loop and the HTTP side; runs until SIGTERM/SIGINT. Works without the region: C-STORE only needs
the local disk, the publisher only the local nats-server.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import signal
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime

import httpx
import nats
import uvicorn
from nats.aio.client import Client
from nats.js import JetStreamContext
from nats.js.api import DiscardPolicy
from nats.js.errors import BadRequestError
from prometheus_client import Counter, Gauge

from krypton.bus import streams
from krypton.contracts import subjects
from krypton.contracts.edge.v1 import EdgeStatus, LinkStateValues
from krypton.core.logging import configure_logging, get_logger
from krypton.edge.dimse import DimseServer
from krypton.edge.forward import Publisher
from krypton.edge.http import create_app
from krypton.edge.leaf import LeafServer
from krypton.edge.region_client import RegionClient
from krypton.edge.settings import EdgeSettings
from krypton.edge.spool import Spool
from krypton.telemetry.setup import setup_telemetry

__all__ = ["EdgeBox", "main"]

_log = get_logger("krypton.edge")
_STATUS_EVERY = 1.0

_SPOOL_BYTES = Gauge("krypton_edge_spool_bytes", "Bytes received, not yet in the region")
_SPOOL_INSTANCES = Gauge("krypton_edge_spool_instances", "Instances waiting in the spool")
_QUEUED = Gauge("krypton_edge_queued_messages", "Chunks in the box's stream")
_LINK_UP = Gauge("krypton_edge_link_up", "1 while the leaf link to the region is up")
_ALARM = Gauge("krypton_edge_spool_alarm", "1 while the spool is above its alarm threshold")
_FORWARDED = Counter("krypton_edge_forwarded_chunks", "Chunks the region took from the box")


class _HttpServer(uvicorn.Server):
    """uvicorn without its signal handling: the process's signals are `run`'s."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def _call_soon(loop: asyncio.AbstractEventLoop, callback: Callable[[], None]) -> None:
    loop.call_soon_threadsafe(callback)


def _iso(ns: float | None) -> str | None:
    return None if ns is None else datetime.fromtimestamp(ns, UTC).isoformat()


class EdgeBox:
    """Everything the box runs, started and stopped together."""

    def __init__(self, settings: EdgeSettings) -> None:
        """Prepare (nothing runs until `start`)."""
        self.settings = settings
        state = settings.state_dir.resolve()
        self.spool = Spool(state / "spool", settings.spool_limit_bytes, settings.spool_alarm_ratio)
        self.leaf = LeafServer(
            store_dir=state / "nats",
            structure=settings.structure,
            hub_leaf_url=settings.hub_leaf_url,
            port=settings.nats_port,
            monitor_port=settings.nats_monitor_port,
            credentials=settings.hub_credentials,
            password=settings.hub_password.get_secret_value() or None,
        )
        self.region = RegionClient(
            settings.region_dicomweb_url, self.region_token, settings.region_timeout
        )
        self.nc: Client | None = None
        self.js: JetStreamContext | None = None
        self.publisher: Publisher | None = None
        self.dimse: DimseServer | None = None
        self.link = LinkStateValues.UNKNOWN
        self.link_since: float | None = None
        self.last_forward: float | None = None
        self.queued_messages = 0
        self._first_seq: int | None = None
        self._alarm = False
        self._tasks: list[asyncio.Task[None]] = []
        self._http: uvicorn.Server | None = None

    async def start(self) -> None:
        """Start the leaf server, the publisher, the DIMSE listener and the HTTP side."""
        await asyncio.to_thread(self.leaf.start)
        self.nc = await nats.connect(
            self.leaf.url, name="edge", max_reconnect_attempts=-1, reconnect_time_wait=0.5
        )
        self.js = self.nc.jetstream()
        await self._provision()
        loop = asyncio.get_running_loop()
        self.publisher = Publisher(
            self.spool, self.js, self.settings.structure, self.settings.chunk_bytes
        )
        self.publisher.start()
        publisher = self.publisher
        self.dimse = DimseServer(
            self.settings,
            self.spool,
            self.region,
            on_spooled=lambda: _call_soon(loop, publisher.notify),
        )
        self.dimse.start()
        self._tasks.append(asyncio.create_task(self._status_loop(), name="edge-status"))
        app = create_app(
            self.status,
            self.settings.region_dicomweb_url,
            self.region_token,
            self.settings.region_timeout,
        )
        config = uvicorn.Config(
            app,
            host=self.settings.http_host,
            port=self.settings.http_port,
            log_config=None,
            access_log=False,
            lifespan="on",
        )
        self._http = _HttpServer(config)
        self._tasks.append(asyncio.create_task(self._http.serve(), name="edge-http"))
        _log.info(
            "edge box started",
            structure=self.settings.structure,
            domain=subjects.edge_domain(self.settings.structure),
            nats=self.leaf.url,
            http_port=self.settings.http_port,
        )

    def region_token(self) -> str:
        """The box's token at the region: the token file's content if set, else the setting."""
        if self.settings.region_token_file is not None:
            return self.settings.region_token_file.read_text().strip()
        return self.settings.region_token.get_secret_value()

    async def _provision(self) -> None:
        assert self.js is not None
        config = dataclasses.replace(
            streams.EDGE.config(),
            max_bytes=self.settings.spool_limit_bytes,
            discard=DiscardPolicy.NEW,
        )
        try:
            await self.js.add_stream(config)
        except BadRequestError:
            await self.js.update_stream(config)

    async def stop(self) -> None:
        """Stop accepting, then stop everything else; spooled data stays for next start."""
        if self.dimse is not None:
            await asyncio.to_thread(self.dimse.stop)
        if self._http is not None:
            self._http.should_exit = True
        if self.publisher is not None:
            await self.publisher.stop()
        for task in self._tasks:
            if task.get_name() == "edge-status":
                task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self.nc is not None:
            await self.nc.close()
        await asyncio.to_thread(self.leaf.stop)

    def status(self) -> EdgeStatus:
        """The box's state right now."""
        dimse = self.dimse
        return EdgeStatus(
            structure=self.settings.structure,
            ae_title=self.settings.ae_title,
            link=self.link,
            spool_instances=self.spool.count,
            spool_bytes=self.spool.size,
            queued_messages=self.queued_messages,
            queued_bytes=self.spool.queued_bytes,
            limit_bytes=self.spool.limit_bytes,
            alarm=self.spool.alarm,
            quarantined=self.spool.quarantined,
            received_total=dimse.received_total if dimse else 0,
            last_received_at=_iso(dimse.last_received_ns / 1e9)
            if dimse and dimse.last_received_ns
            else None,
            last_forward_at=_iso(self.last_forward),
            link_since=_iso(self.link_since),
        )

    async def _status_loop(self) -> None:
        async with httpx.AsyncClient(timeout=2.0) as http:
            while True:
                await self._refresh(http)
                await asyncio.sleep(_STATUS_EVERY)

    async def _refresh(self, http: httpx.AsyncClient) -> None:
        assert self.js is not None
        if not self.leaf.running:
            # The box's own nats-server died: C-STORE goes on into the spool meanwhile, and
            # the publisher resumes once it is back (same store, same stream, same position).
            _log.error("box nats-server exited; restarting it")
            await asyncio.to_thread(self.leaf.start)
        with contextlib.suppress(Exception):  # the local server restarting: keep last values
            info = await self.js.stream_info(subjects.EDGE_STREAM)
            state = info.state
            self.spool.queued_bytes = state.bytes
            self.queued_messages = state.messages
            if self._first_seq is not None and state.first_seq > self._first_seq:
                # Work queue: the region acked (took) everything below first_seq.
                self.last_forward = time.time()
                _FORWARDED.inc(state.first_seq - self._first_seq)
            self._first_seq = state.first_seq
        link = LinkStateValues.UNKNOWN
        try:
            response = await http.get(f"{self.leaf.monitor_url}/leafz")
            link = LinkStateValues.UP if response.json().get("leafnodes") else LinkStateValues.DOWN
        except (httpx.HTTPError, ValueError):
            pass
        if link != self.link:
            self.link, self.link_since = link, time.time()
            log = _log.info if link == LinkStateValues.UP else _log.warning
            log("link to the region", state=link, **self._depth())
        alarm = self.spool.alarm
        if alarm != self._alarm:
            self._alarm = alarm
            if alarm:
                _log.error("spool above its alarm threshold", **self._depth())
            else:
                _log.info("spool back below its alarm threshold", **self._depth())
        _SPOOL_BYTES.set(self.spool.used)
        _SPOOL_INSTANCES.set(self.spool.count)
        _QUEUED.set(self.queued_messages)
        _LINK_UP.set(1 if link == LinkStateValues.UP else 0)
        _ALARM.set(1 if alarm else 0)

    def _depth(self) -> dict[str, int]:
        return {
            "spool_instances": self.spool.count,
            "spool_bytes": self.spool.size,
            "queued_messages": self.queued_messages,
            "queued_bytes": self.spool.queued_bytes,
            "limit_bytes": self.spool.limit_bytes,
        }


async def run(settings: EdgeSettings) -> None:
    """Run the box until SIGTERM or SIGINT."""
    box = EdgeBox(settings)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await box.start()
    try:
        await stop.wait()
    finally:
        await box.stop()


def main() -> None:
    """`python -m krypton.edge` / `krypton edge`."""
    settings = EdgeSettings()  # structure: from the environment (KRYPTON_EDGE_STRUCTURE)
    configure_logging("edge", settings.log_level, settings.log_json)
    setup_telemetry("edge")
    if settings.log_level.upper() != "DEBUG":
        # One line per C-STORE and per status poll is debugging detail, not an operator's log.
        for name in ("pynetdicom", "httpx"):
            logging.getLogger(name).setLevel(logging.WARNING)
    asyncio.run(run(settings))

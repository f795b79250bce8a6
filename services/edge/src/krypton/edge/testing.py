"""Helpers for the edge box's tests and benchmarks: a cuttable WAN and a box process.

`LinkRelay` is a TCP relay standing for the WAN between a box's leaf nats-server and the
region's leaf node listener: `cut` drops every connection and stops listening, `restore`
listens again, without touching either server. `start_box` runs `python -m krypton.edge` with
its settings in the environment, as an institution would run `krypton edge`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from krypton.testing.servers import free_port, wait_port

__all__ = ["BoxProcess", "LinkRelay", "start_box", "start_region_forwarder"]


class LinkRelay:
    """A TCP relay to `127.0.0.1:target_port` that a test can cut and restore."""

    def __init__(self, target_port: int) -> None:
        """Prepare on a free port (nothing listens until `start`)."""
        self.target_port = target_port
        self.port = free_port()
        self.server: asyncio.Server | None = None
        self._writers: list[asyncio.StreamWriter] = []

    async def start(self) -> None:
        """Listen and relay."""
        self.server = await asyncio.start_server(self._connect, "127.0.0.1", self.port)

    async def _connect(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:
            writer.transport.abort()
            return
        self._writers += [writer, up_writer]

        async def pump(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            try:
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            except OSError:
                pass
            finally:
                dst.transport.abort()

        # Still relaying when the caller's loop closes: that ends the relay, not an error.
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.gather(pump(reader, up_writer), pump(up_reader, writer))

    async def cut(self) -> None:
        """Drop every relayed connection and stop listening (the WAN is down)."""
        if self.server is not None:
            self.server.close()
            self.server = None
        for writer in self._writers:
            writer.transport.abort()
        self._writers.clear()

    async def restore(self) -> None:
        """Listen again (the WAN is back); the leaf server reconnects on its own."""
        await self.start()


@dataclass
class BoxProcess:
    """A running edge box."""

    dimse_port: int
    http_port: int
    env: dict[str, str]
    log: Path
    proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        """Start the box; return once it listens for DIMSE and HTTP."""
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "krypton.edge"], env=self.env, stdout=out, stderr=out
            )
        try:
            wait_port(self.dimse_port, 60)
            wait_port(self.http_port, 60)
        except TimeoutError:
            self.stop()
            raise

    def kill(self) -> None:
        """SIGKILL: a power cut as far as the box's own process is concerned."""
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait(10)
        self.proc = None

    @property
    def url(self) -> str:
        """The box's HTTP root (`/status`, `/metrics`, `/dicomweb`)."""
        return f"http://127.0.0.1:{self.http_port}"

    def stop(self) -> None:
        """SIGTERM, then wait."""
        if self.proc is None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)
        self.proc = None


def start_box(
    state_dir: Path,
    structure: str,
    hub_leaf_url: str,
    region_dicomweb_url: str,
    region_token: str,
    **settings: object,
) -> BoxProcess:
    """Start `python -m krypton.edge`; return once it listens for DIMSE and HTTP.

    Args:
        state_dir: The box's state (spool, its nats-server's store, logs in `edge.log`).
        structure: The box's FINESS.
        hub_leaf_url: The region's leaf node listener (or a relay to it).
        region_dicomweb_url: The region's DICOMweb root.
        region_token: The box's token at the region.
        **settings: Any other `EdgeSettings` field (lists are passed as JSON). The spool is
            1 GiB unless given: the box's stream reserves its limit in JetStream, and the
            production default (20 GiB) fails on a machine with less free disk than that.
    """
    settings.setdefault("spool_limit_bytes", 1024**3)
    state_dir.mkdir(parents=True, exist_ok=True)
    dimse_port, http_port = free_port(), free_port()
    env = {
        **os.environ,
        "KRYPTON_EDGE_STRUCTURE": structure,
        "KRYPTON_EDGE_STATE_DIR": str(state_dir),
        "KRYPTON_EDGE_DIMSE_HOST": "127.0.0.1",
        "KRYPTON_EDGE_DIMSE_PORT": str(dimse_port),
        "KRYPTON_EDGE_HTTP_PORT": str(http_port),
        "KRYPTON_EDGE_HUB_LEAF_URL": hub_leaf_url,
        "KRYPTON_EDGE_REGION_DICOMWEB_URL": region_dicomweb_url,
        "KRYPTON_EDGE_REGION_TOKEN": region_token,
        "KRYPTON_EDGE_LOG_JSON": "true",
    }
    for key, value in settings.items():
        text = json.dumps(value) if isinstance(value, list | dict) else str(value)
        env[f"KRYPTON_EDGE_{key.upper()}"] = text
    box = BoxProcess(dimse_port, http_port, env, state_dir / "edge.log")
    box.start()
    return box


def start_region_forwarder(
    env: dict[str, str], boxes: list[str], log: Path
) -> subprocess.Popen[bytes]:
    """Start `python -m krypton.edge.region` for `boxes` with a platform's service `env`."""
    full = {**os.environ, **env, "KRYPTON_EDGE_REGION_BOXES": json.dumps(boxes)}
    with log.open("ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "krypton.edge.region"], env=full, stdout=out, stderr=out
        )

"""The box's own nats-server: JetStream in domain `edge-<finess>`, leaf node of the region.

Local clients (the box itself) use it whether or not the region is reachable; the leaf
connection to the region's leaf node listener comes and goes with the WAN, and nats-server
reconnects it on its own. `sync_interval: always` makes every JetStream write fsynced before
its ack, so that a chunk the box has published (and removed from its spool) survives a power
cut.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote

from krypton.bus.permissions import edge_leaf_user
from krypton.contracts import subjects
from krypton.testing.servers import free_port, venv_binary, wait_port

__all__ = ["LeafServer"]


@dataclass
class LeafServer:
    """A nats-server process configured as the box's leaf node."""

    store_dir: Path
    structure: str
    hub_leaf_url: str
    port: int = 0
    monitor_port: int = 0
    credentials: Path | None = None
    # The box's password on the region's leaf node listener (user `edge-<structure>`).
    password: str | None = field(default=None, repr=False)
    proc: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        self.port = self.port or free_port()
        self.monitor_port = self.monitor_port or free_port()

    @property
    def url(self) -> str:
        """Client URL of the local server."""
        return f"nats://127.0.0.1:{self.port}"

    @property
    def monitor_url(self) -> str:
        """The server's HTTP monitoring root (`/leafz` tells the link state)."""
        return f"http://127.0.0.1:{self.monitor_port}"

    def config_text(self) -> str:
        """The server's configuration file (JSON is valid nats-server configuration)."""
        url = self.hub_leaf_url
        if self.password:
            scheme, _, rest = url.partition("://")
            user = edge_leaf_user(self.structure)
            url = f"{scheme}://{user}:{quote(self.password, safe='')}@{rest}"
        remote: dict[str, object] = {"url": url}
        if self.credentials is not None:
            remote["credentials"] = str(self.credentials)
        jetstream: dict[str, object] = {
            "store_dir": str(self.store_dir),
            "domain": subjects.edge_domain(self.structure),
            "sync_interval": "always",
        }
        config = {
            "pid_file": str(self.pid_file),
            "host": "127.0.0.1",
            "port": self.port,
            "http": f"127.0.0.1:{self.monitor_port}",
            "server_name": f"edge-{self.structure}",
            "jetstream": jetstream,
            "leafnodes": {"reconnect": "1s", "remotes": [remote]},
        }
        return json.dumps(config, indent=2)

    @property
    def pid_file(self) -> Path:
        """Where the server writes its process id."""
        return self.store_dir / "nats-server.pid"

    def _stop_orphan(self) -> None:
        """Stop a server a crashed box left running on this store (it would hold the store)."""
        try:
            pid = int(self.pid_file.read_text().strip())
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except (OSError, ValueError):
            return
        if b"nats-server" not in cmdline or str(self.store_dir).encode() not in cmdline:
            return  # the pid was reused by something else: not ours to stop
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and Path(f"/proc/{pid}").exists():
            time.sleep(0.05)

    def start(self) -> None:
        """Write the configuration and start the server; return when it accepts clients."""
        self.store_dir.mkdir(parents=True, exist_ok=True)
        self._stop_orphan()
        config = self.store_dir / "leaf.conf"
        # It may hold the box's password: readable by the box's user only.
        config.touch(mode=0o600)
        config.chmod(0o600)
        config.write_text(self.config_text())
        self.proc = subprocess.Popen(
            [venv_binary("nats-server"), "-c", str(config)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_port(self.port, 30)

    @property
    def running(self) -> bool:
        """Whether the server process is alive."""
        return self.proc is not None and self.proc.poll() is None

    def stop(self) -> None:
        """Stop the server (SIGTERM: it flushes its store)."""
        if self.proc is None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)
        self.proc = None

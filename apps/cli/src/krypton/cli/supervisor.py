"""A small process supervisor: start children, prefix their logs, restart the ones that die.

Used by `krypton up` for the embedded platform. Production runs each service under its own
orchestrator (systemd, Kubernetes) instead.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
import signal
import sys
import time
from dataclasses import dataclass, field

__all__ = ["Child", "Supervisor"]

_COLOURS = ["36", "33", "35", "32", "34", "31", "96", "93"]


@dataclass
class Child:
    """One supervised process."""

    name: str
    argv: list[str]
    env: dict[str, str] = field(default_factory=dict)
    proc: asyncio.subprocess.Process | None = None
    restarts: int = 0
    started_at: float = 0.0
    running: asyncio.Event = field(default_factory=asyncio.Event)  # set while a process lives
    exited: asyncio.Event = field(default_factory=asyncio.Event)  # set from exit to respawn


class Supervisor:
    """Runs children until stopped; a child that exits is restarted with a growing delay."""

    def __init__(self, *, colour: bool | None = None) -> None:
        """Create an empty supervisor."""
        self.children: dict[str, Child] = {}
        self._stopping = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._colour = sys.stdout.isatty() if colour is None else colour
        self._width = 8

    def add(self, name: str, argv: list[str], env: dict[str, str] | None = None) -> Child:
        """Register a child; started by `start`."""
        child = Child(name=name, argv=argv, env=env or {})
        self.children[name] = child
        self._width = max(self._width, len(name))
        return child

    def _prefix(self, name: str) -> str:
        names = list(self.children)
        index = (names.index(name) if name in names else len(names)) % len(_COLOURS)
        label = f"{name:<{self._width}} |"
        return f"\x1b[{_COLOURS[index]}m{label}\x1b[0m " if self._colour else f"{label} "

    def echo(self, name: str, line: str) -> None:
        """Print one line under a child's prefix."""
        sys.stdout.write(self._prefix(name) + line.rstrip("\n") + "\n")
        sys.stdout.flush()

    async def start(self) -> None:
        """Start every child under supervision."""
        for child in self.children.values():
            self._tasks.append(asyncio.create_task(self._keep_running(child)))

    async def _spawn(self, child: Child) -> asyncio.subprocess.Process:
        env = {**os.environ, **child.env, "PYTHONUNBUFFERED": "1"}
        proc = await asyncio.create_subprocess_exec(
            *child.argv,
            env=env,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            start_new_session=True,  # Ctrl-C reaches the supervisor only; it stops children
            # A supervisor killed without its cleanup (SIGKILL, an unhandled SIGTERM) must not
            # leave services running on its ports: the kernel ends them with it.
            preexec_fn=_die_with_parent if sys.platform == "linux" else None,
        )
        child.proc = proc
        child.started_at = time.monotonic()
        child.exited.clear()
        child.running.set()
        return proc

    async def _pump(self, child: Child, proc: asyncio.subprocess.Process) -> None:
        assert proc.stdout is not None
        while line := await proc.stdout.readline():
            self.echo(child.name, line.decode("utf-8", "replace"))

    async def _keep_running(self, child: Child) -> None:
        delay = 0.5
        while not self._stopping.is_set():
            proc = await self._spawn(child)
            await self._pump(child, proc)
            code = await proc.wait()
            child.running.clear()
            if self._stopping.is_set():
                return
            if time.monotonic() - child.started_at > 30:
                delay = 0.5  # it ran a while: a fresh failure, not a crash loop
            self.echo(child.name, f"exited with {code}; restarting in {delay:.1f} s")
            child.restarts += 1
            child.exited.set()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), delay)
            delay = min(delay * 2, 10.0)

    def kill(self, name: str, sig: int = signal.SIGKILL) -> None:
        """Send a signal to a child (tests use it to simulate a crash)."""
        proc = self.children[name].proc
        if proc is not None and proc.returncode is None:
            proc.send_signal(sig)

    async def wait_restarted(self, name: str, restarts: int, timeout: float = 60.0) -> None:
        """Wait until child `name` has been restarted `restarts` times and runs again."""
        child = self.children[name]
        async with asyncio.timeout(timeout):
            while child.restarts < restarts:
                await child.exited.wait()
                if child.restarts < restarts:
                    child.exited.clear()
            await child.running.wait()

    async def stop(self, timeout: float = 15.0) -> None:
        """Stop children in reverse order of registration: SIGTERM, then SIGKILL."""
        self._stopping.set()
        for child in reversed(list(self.children.values())):
            proc = child.proc
            if proc is None or proc.returncode is not None:
                continue
            proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(proc.wait(), timeout)
            except TimeoutError:
                proc.kill()
                await proc.wait()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)


_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:  # pragma: no cover - runs in the forked child
    """In the child, before exec: receive SIGTERM when the supervisor's process dies (Linux)."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)

"""Precompute waits while ingest has uploads in hand: the CPU and the disk go to ingest first.

The precompute thread already runs at nice 19, but much of precompute's cost is not in that
thread: reading the original, writing and fsyncing three or four derived objects per instance
(creating a file costs the kernel 0.4-1 ms on the benchmark host's ext4), the event loop and
NATS traffic all run at normal priority and compete with the gateway and ingest, and its
fsyncs queue on the same disk as ingest's. So before each instance the precompute loop asks
`IngestGate.wait` to hold it while the INGEST work-queue stream holds uploads (waiting or being
worked on); it goes on once the stream has been seen empty for `quiet` seconds. The events
stay in the render consumer's stream (their claim kept alive by its heartbeats) and are caught
up afterwards, at full speed on an idle machine.

The stream's depth is asked of JetStream at most every `poll` seconds (one small request).
Unknown depth (NATS unreachable, no stream yet) counts as idle: precompute never waits on an
ingest it cannot see.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import nats.errors
from nats.js import JetStreamContext
from nats.js.errors import Error as JetStreamError

from krypton.contracts import subjects
from krypton.core.logging import get_logger

__all__ = ["IngestGate", "ingest_depth"]

_log = get_logger("krypton.render")


def ingest_depth(js: JetStreamContext) -> Callable[[], Awaitable[int]]:
    """A probe of the uploads in the INGEST work-queue stream (waiting or unacknowledged)."""

    async def depth() -> int:
        info = await asyncio.wait_for(js.stream_info(subjects.INGEST_STREAM), 2.0)
        return int(info.state.messages)

    return depth


@dataclass
class IngestGate:
    """Holds precompute back while ingest is busy.

    Args:
        depth: Returns how many uploads the INGEST stream holds.
        quiet: Seconds the stream must have been seen empty before precompute goes on.
        poll: Seconds between two looks at the stream.
        clock: Monotonic time (tests replace it).
    """

    depth: Callable[[], Awaitable[int]]
    quiet: float = 0.5
    poll: float = 0.1
    clock: Callable[[], float] = time.monotonic
    _asked: float = -math.inf
    _busy: bool = False
    _last_busy: float = -math.inf
    _warned: bool = False
    waited: float = 0.0  # seconds spent waiting in all, for logs and tests

    async def _look(self) -> None:
        now = self.clock()
        if now - self._asked < self.poll:
            return
        self._asked = now
        try:
            self._busy = await self.depth() > 0
        except (nats.errors.Error, JetStreamError, TimeoutError, OSError) as exc:
            if not self._warned:
                _log.warning("ingest backlog unknown; precompute does not wait", error=repr(exc))
                self._warned = True
            self._busy = False
        if self._busy:
            self._last_busy = now

    async def wait(self) -> None:
        """Return once ingest has held no upload for `quiet` seconds (at once when idle)."""
        started = self.clock()
        await self._look()
        while self.clock() - self._last_busy < self.quiet:
            await asyncio.sleep(self.poll)
            await self._look()
        self.waited += self.clock() - started

"""Spool → the box's stream: each accepted instance is published in chunks, in arrival order.

One task publishes the oldest spooled instance first, chunk by chunk, and removes the spool file
only once the box's JetStream acked every chunk (durably: the leaf server fsyncs each write).
Each chunk carries `Nats-Msg-Id = <sop>:<sha256>:<index>`, so a republish after a crash (file
still in the spool, some chunks already in the stream) is de-duplicated by JetStream, and an
instance a modality sends twice travels once within the stream's duplicate window. What happens
after, across the leaf link, is the region's side (`krypton.edge.region`).
"""

from __future__ import annotations

import asyncio
import contextlib
from datetime import UTC, datetime

import nats.errors
from nats.js import JetStreamContext
from nats.js.errors import APIError

from krypton.contracts import subjects
from krypton.contracts.edge.v1 import EdgeChunkHeaders
from krypton.core.logging import get_logger
from krypton.edge.spool import Spool, SpoolEntry

__all__ = ["Publisher", "chunk_headers"]

_log = get_logger("krypton.edge.forward")
_RETRY = 1.0  # seconds between attempts while the box's own nats-server is unavailable


def chunk_headers(entry: SpoolEntry, index: int, count: int) -> dict[str, str]:
    """Headers of chunk `index` of `count` of a spooled instance."""
    received = datetime.fromtimestamp(entry.received_ns / 1e9, UTC).isoformat()
    return {
        "Nats-Msg-Id": f"{entry.sop_instance_uid}:{entry.sha256}:{index}",
        EdgeChunkHeaders.INSTANCE: f"{entry.sop_instance_uid}:{entry.sha256}",
        EdgeChunkHeaders.INDEX: str(index),
        EdgeChunkHeaders.COUNT: str(count),
        EdgeChunkHeaders.SIZE: str(entry.size),
        EdgeChunkHeaders.SHA256: entry.sha256,
        EdgeChunkHeaders.SOP_INSTANCE_UID: entry.sop_instance_uid,
        EdgeChunkHeaders.RECEIVED_AT: received,
    }


class Publisher:
    """Moves spooled instances into the box's stream.

    Args:
        spool: The spool to drain.
        js: JetStream of the box's own nats-server.
        structure: The box's FINESS (the subject's partition).
        chunk_bytes: Largest chunk body.
    """

    def __init__(self, spool: Spool, js: JetStreamContext, structure: str, chunk_bytes: int):
        self.spool = spool
        self.js = js
        self.subject = subjects.edge_instance(structure)
        self.chunk_bytes = chunk_bytes
        self.wakeup = asyncio.Event()
        self.published_total = 0
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Start draining in the background."""
        self._task = asyncio.create_task(self._run(), name="edge-publisher")

    async def stop(self) -> None:
        """Stop after the chunk in flight."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    def notify(self) -> None:
        """Something was spooled (called on the loop, see `notify_threadsafe` in the app)."""
        self.wakeup.set()

    async def _run(self) -> None:
        while True:
            self.wakeup.clear()
            entries = await asyncio.to_thread(self.spool.pending)
            for entry in entries:
                while True:
                    try:
                        await self._publish(entry)
                        break
                    except FileNotFoundError:
                        break  # gone (an operator's hand): nothing left to publish
                    except (nats.errors.Error, APIError, OSError) as exc:
                        # The local server restarting, or its stream full: the file stays in
                        # the spool and the C-STORE side keeps accepting while there is room.
                        _log.warning("publish to the box's stream failed", error=repr(exc))
                        await asyncio.sleep(_RETRY)
                await asyncio.to_thread(self.spool.release, entry)
                self.published_total += 1
            if not entries:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.wakeup.wait(), timeout=5.0)

    async def _publish(self, entry: SpoolEntry) -> None:
        data = await asyncio.to_thread(entry.path.read_bytes)
        count = max(1, -(-len(data) // self.chunk_bytes))
        for index in range(count):
            body = data[index * self.chunk_bytes : (index + 1) * self.chunk_bytes]
            await self.js.publish(
                self.subject,
                body,
                stream=subjects.EDGE_STREAM,
                headers=chunk_headers(entry, index, count),
                timeout=10.0,
            )

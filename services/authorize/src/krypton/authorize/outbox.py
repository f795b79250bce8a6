"""The transactional outbox: policy events written with the change, published from the table.

`append` runs inside the transaction that makes the change and reserves the event's outbox id
first, so the event carries it as its ``version``: callers lock the row (or the patient) they
change before appending, which makes versions grow in commit order for one grant or one
patient. `OutboxPublisher` publishes unpublished rows in id order on JetStream with
``Nats-Msg-Id: authz-outbox-<id>`` (a republish after a crash is dropped by JetStream's
de-duplication, and consumers ignore versions they already have), then marks them.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from typing import Final

import asyncpg
import nats.errors
from nats.js import JetStreamContext

from krypton.bus.codec import encode
from krypton.contracts import subjects
from krypton.contracts.audit.v1 import AuditEvent
from krypton.contracts.authorize.v1 import PolicyEvent
from krypton.core.logging import get_logger

__all__ = ["Conn", "OutboxPublisher", "append", "append_audit", "msg_id"]

_log = get_logger("krypton.authorize.outbox")
_BATCH: Final = 256
_KIND: Final = {
    "GrantChanged": "grant",
    "OppositionChanged": "opposition",
    "BreakGlassOpened": "break_glass",
    "ShareCodeChanged": "share_code",
    "DirectoryChanged": "directory",
    "CommunityMemberChanged": "community",
}


Conn = asyncpg.Connection | asyncpg.pool.PoolConnectionProxy


def msg_id(outbox_id: int) -> str:
    """The JetStream de-duplication id of an outbox row."""
    return f"authz-outbox-{outbox_id}"


async def append(conn: Conn, make: Callable[[int], PolicyEvent]) -> PolicyEvent:
    """Write one event in the caller's transaction; `make(version)` builds it.

    Returns:
        The event as written.
    """
    version: int = await conn.fetchval("SELECT nextval('authz.outbox_id_seq')")
    event = make(version)
    subject = subjects.policy_changed(_KIND[type(event).__name__])
    await conn.execute(
        "INSERT INTO authz.outbox (id, subject, payload) VALUES ($1, $2, $3)",
        version,
        subject,
        encode(event),
    )
    return event


async def append_audit(conn: Conn, event: AuditEvent) -> None:
    """Write one audit event in the caller's transaction (published on ``audit.event.<type>``).

    Audit rows share the outbox and its order with policy events: the audit trail of a change
    is committed with the change and published with it.
    """
    await conn.execute(
        "INSERT INTO authz.outbox (subject, payload) VALUES ($1, $2)",
        subjects.audit_event(event.type.value),
        encode(event),
    )


class OutboxPublisher:
    """Publishes the outbox: at once when poked after a commit, and every `interval` seconds."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        js: JetStreamContext,
        *,
        interval: float = 1.0,
        on_published: Callable[[str, bytes], None] | None = None,
    ) -> None:
        """Prepare; `start` launches the background loop.

        Args:
            pool: Connections to the ``authz`` schema.
            js: Where to publish.
            interval: Seconds between two looks at the table when nobody pokes.
            on_published: Called with (subject, payload) of each row once published (the
                decision cache forgets what the change touched before the command answers).
        """
        self._pool = pool
        self._js = js
        self._interval = interval
        self._on_published = on_published
        self._lock = asyncio.Lock()
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Start the background loop (it publishes what a crashed replica left behind)."""
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        """Stop the loop; unpublished rows wait for the next start."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    def poke(self) -> None:
        """Ask the loop to publish now (after a commit)."""
        self._wake.set()

    async def flush(self) -> int:
        """Publish every pending row now; returns how many were published.

        Command handlers call it before answering, so a caller who got a 2xx knows the change
        is on the bus. Rows another replica holds are skipped (it publishes them).
        """
        total = 0
        async with self._lock:
            while True:
                published = await self._publish_batch()
                total += published
                if published < _BATCH:
                    return total

    async def _publish_batch(self) -> int:
        async with self._pool.acquire() as conn, conn.transaction():
            rows = await conn.fetch(
                "SELECT id, subject, payload FROM authz.outbox WHERE published_at IS NULL"
                " ORDER BY id LIMIT $1 FOR UPDATE SKIP LOCKED",
                _BATCH,
            )
            done: list[int] = []
            failure: Exception | None = None
            for row in rows:
                try:
                    await self._js.publish(
                        row["subject"],
                        bytes(row["payload"]),
                        headers={"Nats-Msg-Id": msg_id(row["id"])},
                    )
                except (nats.errors.Error, TimeoutError, OSError) as exc:
                    failure = exc  # keep order: stop here, mark what went out
                    break
                done.append(row["id"])
                if self._on_published is not None:
                    self._on_published(row["subject"], bytes(row["payload"]))
            if done:
                await conn.execute(
                    "UPDATE authz.outbox SET published_at = now() WHERE id = ANY($1::bigint[])",
                    done,
                )
        if failure is not None:
            raise failure
        return len(rows)

    async def _run(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self._interval)
            self._wake.clear()
            try:
                await self.flush()
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError,
                    nats.errors.Error, TimeoutError) as exc:  # fmt: skip
                _log.warning("outbox publish failed; retrying", error=repr(exc))

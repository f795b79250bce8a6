"""The gateway's read caches for WADO-RS: located instances and small immutable bodies.

`LocateCache` remembers the index's answer to an *instance-level* locate (one SOP Instance UID
under a study and series) for one caller, so a viewer reading the same instance's metadata,
frames and rendered images does not ask the index each time. Only instance-level answers are
kept: a study or series gains instances as they are ingested, an instance's location never
changes. A study- or series-level answer is kept as one instance-level answer per instance
(a viewer reads a series' metadata, then each instance's frames; access is per study). What can change is whether the caller may still see it (a share revoked, a care
relationship ended, a grant expiring), so:

- an entry lives at most `LocateCache.ttl` seconds (2 s);
- every ``policy.changed.*`` event (published by authorize for each grant change, the ones the
  index applies to its access projection) empties the cache and stops it from keeping anything
  for `LocateCache.grace` seconds (5 s), the time the index takes to apply the event;

so a revoked access stops at most 2 s after the index applied the change (within 5 s of the
event, as the index's consumer promises), and within the 2 s TTL when an event is missed (a NATS
reconnection). The key is the whole verified caller (role, structure, INS, issuer, subject,
token id) except the client address, and the path: two callers never share an entry. Nothing
is kept for a refusal: a 404 is always asked again.

`BodyCache` is a bounded LRU of immutable bodies by key (rendered images by their render
request, which names the content hash; per-instance metadata JSON by content hash), so a
repeated read does not leave the process. The access check and the audit of every read still
happen before a cached body is served.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Final

import msgspec
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from krypton.contracts import subjects
from krypton.contracts.common.v1 import Actor
from krypton.contracts.index.v1 import LocatedInstance
from krypton.core.logging import get_logger

__all__ = ["BodyCache", "LocateCache", "LocateKey"]

_log = get_logger("krypton.gateway.wado")
LocateKey = tuple[bytes, str, str | None, str | None]
_ENCODER: Final = msgspec.json.Encoder()


class LocateCache:
    """Short-lived instance-level locate answers per caller, emptied on every policy change.

    Args:
        ttl: Seconds an answer is reused.
        grace: Seconds after a policy change during which nothing is kept (the index applies
            the change to its access projection in that time).
        size: Most answers kept; the least recently used go first.
        clock: Monotonic clock (tests pass their own).
    """

    def __init__(
        self,
        *,
        ttl: float = 2.0,
        grace: float = 5.0,
        size: int = 20_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.ttl = ttl
        self.grace = grace
        self.size = size
        self._clock = clock
        self._items: OrderedDict[LocateKey, tuple[float, list[LocatedInstance]]] = OrderedDict()
        self._paused_until = 0.0
        self.generation = 0  # bumped by every policy change
        self._subscription: Subscription | None = None
        self._subscribing = False

    @staticmethod
    def key(actor: Actor, study: str, series: str | None, sop: str | None) -> LocateKey | None:
        """The cache key of a locate, or None when the answer must not be kept (not one instance)."""
        if series is None or sop is None:
            return None
        caller = _ENCODER.encode(msgspec.structs.replace(actor, client_address=None))
        return caller, study, series, sop

    async def listen(self, nc: Client) -> None:
        """Subscribe to policy changes once (idempotent); nothing is kept until subscribed."""
        if self._subscription is not None or self._subscribing:
            return
        self._subscribing = True
        try:
            self._subscription = await nc.subscribe(
                f"{subjects.POLICY_CHANGED}.>", cb=self._on_policy_changed
            )
        finally:
            self._subscribing = False

    async def _on_policy_changed(self, msg: Msg) -> None:
        self.invalidate()

    def invalidate(self) -> None:
        """Forget everything and keep nothing for `grace` seconds (a policy changed)."""
        self._items.clear()
        self.generation += 1
        self._paused_until = self._clock() + self.grace

    def get(self, key: LocateKey) -> list[LocatedInstance] | None:
        """The remembered answer, if still fresh."""
        item = self._items.get(key)
        if item is None:
            return None
        deadline, instances = item
        if self._clock() >= deadline:
            del self._items[key]
            return None
        self._items.move_to_end(key)
        return instances

    def put(self, key: LocateKey, instances: list[LocatedInstance], generation: int) -> None:
        """Remember a found answer asked at `generation` (read before asking the index).

        Nothing is kept when not listening to policy changes, during the grace period, or
        when a policy changed while the index was being asked.
        """
        now = self._clock()
        if self._subscription is None or now < self._paused_until or generation != self.generation:
            return
        self._items[key] = (now + self.ttl, instances)
        self._items.move_to_end(key)
        while len(self._items) > self.size:
            self._items.popitem(last=False)

    def __len__(self) -> int:
        """Number of answers kept (fresh or not yet found stale)."""
        return len(self._items)


class BodyCache:
    """Least-recently-used immutable bodies (with their media type), bounded in bytes."""

    def __init__(self, max_bytes: int) -> None:
        """Keep at most `max_bytes` of bodies; a bigger body is never kept."""
        self.max_bytes = max_bytes
        self.used = 0
        self._items: OrderedDict[Hashable, tuple[bytes, str]] = OrderedDict()

    def get(self, key: Hashable) -> tuple[bytes, str] | None:
        """The body and media type under `key`, refreshed as most recently used."""
        item = self._items.get(key)
        if item is not None:
            self._items.move_to_end(key)
        return item

    def put(self, key: Hashable, body: bytes, media_type: str) -> None:
        """Remember `body`, evicting the least recently used beyond the bound."""
        if len(body) > self.max_bytes // 16:
            return
        old = self._items.pop(key, None)
        if old is not None:
            self.used -= len(old[0])
        self._items[key] = (body, media_type)
        self.used += len(body)
        while self.used > self.max_bytes:
            _, (evicted, _) = self._items.popitem(last=False)
            self.used -= len(evicted)

    def __len__(self) -> int:
        """Number of bodies kept."""
        return len(self._items)

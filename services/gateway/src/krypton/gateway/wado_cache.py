"""The gateway's read caches for WADO-RS: located instances and small immutable bodies.

`LocateCache` remembers the index's answer to an *instance-level* locate (one SOP Instance UID
under a study and series) for one caller, so a viewer reading the same instance's metadata,
frames and rendered images does not ask the index each time. Only instance-level answers are
kept: a study or series gains instances as they are ingested, an instance's location never
changes. Entries are filled per series: the first instance read in a series is answered from
its own locate, and the whole series is then asked in the background (`scope`), one entry per
instance it holds for this caller (a viewer reads a series' instances one after the other;
access is granted per study, so the answer is the same for each). What can change is whether
the caller may still see it (a share revoked, a care relationship ended, a grant expiring), so:

- an entry is served at most `LocateCache.ttl` seconds (2 s) after the index answered it;
- an entry read after `LocateCache.refresh_after` seconds (1 s) has its series asked again in
  the background (at most one such request per caller and series at a time): a series being
  read stays cached without its entries ever being older than the TTL, and an instance the
  new answer no longer holds (hidden, or the whole series: 404) is forgotten at once;
- every ``policy.changed.*`` event (published by authorize for each grant change, the ones the
  index applies to its access projection) empties the cache and stops it from keeping anything
  for `LocateCache.grace` seconds (5 s), the time the index takes to apply the event; an answer
  asked before the event (a refresh in flight) is never kept;

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
from dataclasses import dataclass
from typing import Final

import msgspec
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from krypton.contracts import subjects
from krypton.contracts.common.v1 import Actor
from krypton.contracts.index.v1 import LocatedInstance
from krypton.core.logging import get_logger

__all__ = ["BodyCache", "LocateCache", "LocateKey", "ScopeKey"]

_log = get_logger("krypton.gateway.wado")
LocateKey = tuple[bytes, str, str | None, str | None]
#: A caller's series: what a background locate asks to fill (or refresh) its instances' entries.
ScopeKey = tuple[bytes, str, str]
_ENCODER: Final = msgspec.json.Encoder()


@dataclass(slots=True)
class _Entry:
    expires: float  # served until then (the index answered it `ttl` seconds before)
    refresh: float  # read after this, its series is asked again in the background
    instances: list[LocatedInstance]
    scope: ScopeKey


class LocateCache:
    """Short-lived instance-level locate answers per caller, emptied on every policy change.

    Args:
        ttl: Seconds an answer is served after the index gave it.
        refresh_after: Age in seconds after which a read answer has its series asked again.
        grace: Seconds after a policy change during which nothing is kept (the index applies
            the change to its access projection in that time).
        size: Most answers kept; the least recently used go first.
        clock: Monotonic clock (tests pass their own).
    """

    def __init__(
        self,
        *,
        ttl: float = 2.0,
        refresh_after: float = 1.0,
        grace: float = 5.0,
        size: int = 20_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.ttl = ttl
        self.refresh_after = refresh_after
        self.grace = grace
        self.size = size
        self._clock = clock
        self._items: OrderedDict[LocateKey, _Entry] = OrderedDict()
        # Per scope: when it was last asked (a seed or a refresh) and the keys it filled.
        self._scopes: OrderedDict[ScopeKey, tuple[float, set[LocateKey]]] = OrderedDict()
        self._asking: set[ScopeKey] = set()  # scopes being asked in the background
        self._paused_until = 0.0
        self.generation = 0  # bumped by every policy change
        self._subscription: Subscription | None = None
        self._subscribing = False

    @staticmethod
    def caller(actor: Actor) -> bytes:
        """Who asks, as a key: the whole verified caller except the client address."""
        return _ENCODER.encode(msgspec.structs.replace(actor, client_address=None))

    @staticmethod
    def key(actor: Actor, study: str, series: str | None, sop: str | None) -> LocateKey | None:
        """The cache key of a locate, or None when the answer must not be kept (not one instance)."""
        if series is None or sop is None:
            return None
        return LocateCache.caller(actor), study, series, sop

    @staticmethod
    def scope_of(key: LocateKey) -> ScopeKey:
        """The caller's series an instance-level key belongs to."""
        caller, study, series, _ = key
        assert series is not None
        return caller, study, series

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
        self._scopes.clear()
        self.generation += 1
        self._paused_until = self._clock() + self.grace

    def get(self, key: LocateKey) -> list[LocatedInstance] | None:
        """The remembered answer, if still fresh."""
        found = self.lookup(key)
        return None if found is None else found[0]

    def lookup(self, key: LocateKey) -> tuple[list[LocatedInstance], ScopeKey | None] | None:
        """The remembered answer if still fresh, and the scope to ask again now, if any.

        A scope is handed out at most once until `asked` says it was answered: the caller
        then asks the index for it in the background and gives the answer to `fill`.
        """
        entry = self._items.get(key)
        if entry is None:
            return None
        now = self._clock()
        if now >= entry.expires:
            del self._items[key]
            return None
        self._items.move_to_end(key)
        due = None
        if now >= entry.refresh and entry.scope not in self._asking:
            due = entry.scope
            self._asking.add(due)
        return entry.instances, due

    def should_fill(self, scope: ScopeKey) -> bool:
        """Whether to ask `scope` in the background after one of its instances was asked.

        True (and the scope counts as being asked) unless it is being asked or was answered
        less than `refresh_after` seconds ago.
        """
        if scope in self._asking:
            return False
        known = self._scopes.get(scope)
        if known is not None and self._clock() - known[0] < self.refresh_after:
            return False
        self._asking.add(scope)
        return True

    def asked(self, scope: ScopeKey) -> None:
        """The background request for `scope` ended (answered or not)."""
        self._asking.discard(scope)

    def _keeping(self, generation: int) -> bool:
        return (
            self._subscription is not None
            and self._clock() >= self._paused_until
            and generation == self.generation
        )

    def put(self, key: LocateKey, instances: list[LocatedInstance], generation: int) -> None:
        """Remember a found answer asked at `generation` (read before asking the index).

        Nothing is kept when not listening to policy changes, during the grace period, or
        when a policy changed while the index was being asked.
        """
        if self._keeping(generation):
            scope = self.scope_of(key)
            self._store(key, instances, scope, self._clock())
            # Known to the scope, so that its next answer forgets it if it is no longer there;
            # a scope never filled counts as never asked.
            self._scopes.setdefault(scope, (float("-inf"), set()))[1].add(key)
            while len(self._scopes) > self.size:
                self._scopes.popitem(last=False)

    def fill(
        self, scope: ScopeKey, instances: list[LocatedInstance] | None, generation: int
    ) -> None:
        """Replace `scope`'s entries by the index's answer for the whole series.

        `instances` None means the series is not found (or no longer visible): its entries
        are forgotten. The answer is kept under the same conditions as `put`'s; entries the
        answer no longer holds are forgotten in any case.
        """
        now = self._clock()
        previous = self._scopes.pop(scope, None)
        keys: set[LocateKey] = set()
        if instances and self._keeping(generation):
            caller, study, _ = scope
            for instance in instances:
                key = (caller, study, instance.series_uid, instance.sop_instance_uid)
                self._store(key, [instance], scope, now)
                keys.add(key)
            self._scopes[scope] = (now, keys)
            while len(self._scopes) > self.size:
                self._scopes.popitem(last=False)
        if previous is not None:
            for gone in previous[1] - keys:
                self._items.pop(gone, None)

    def _store(
        self, key: LocateKey, instances: list[LocatedInstance], scope: ScopeKey, now: float
    ) -> None:
        self._items[key] = _Entry(now + self.ttl, now + self.refresh_after, instances, scope)
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

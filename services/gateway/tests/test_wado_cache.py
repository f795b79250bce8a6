"""The gateway's WADO-RS read caches: instance-level locates per caller, bounded bodies."""

from __future__ import annotations

import asyncio

import nats

from krypton.contracts import subjects
from krypton.contracts.common.v1 import Actor, RoleValues
from krypton.contracts.index.v1 import LocatedInstance
from krypton.gateway.wado_cache import BodyCache, LocateCache

DOCTOR = Actor(sub="810000000011", role=RoleValues.PROFESSIONAL, issuer="https://idp")
OTHER = Actor(sub="810000000012", role=RoleValues.PROFESSIONAL, issuer="https://idp")
FOUND = [
    LocatedInstance(
        study_uid="1.2",
        series_uid="1.2.3",
        sop_instance_uid="1.2.3.4",
        sop_class_uid="1.2.840.10008.5.1.4.1.1.2",
        transfer_syntax_uid="1.2.840.10008.1.2.1",
        object_key="originals/x.dcm",
        sha256="0" * 64,
        size=10,
    )
]


class Clock:
    """A monotonic clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def _listening(cache: LocateCache) -> LocateCache:
    cache._subscription = object()  # type: ignore[assignment]  # as if subscribed
    return cache


def test_only_instance_level_locates_are_kept() -> None:
    assert LocateCache.key(DOCTOR, "1.2", None, None) is None
    assert LocateCache.key(DOCTOR, "1.2", "1.2.3", None) is None
    assert LocateCache.key(DOCTOR, "1.2", "1.2.3", "1.2.3.4") is not None


def test_an_answer_is_kept_per_caller_until_its_ttl() -> None:
    clock = Clock()
    cache = _listening(LocateCache(ttl=2.0, clock=clock))
    key = LocateCache.key(DOCTOR, "1.2", "1.2.3", "1.2.3.4")
    assert key is not None
    cache.put(key, FOUND, cache.generation)
    assert cache.get(key) == FOUND
    assert cache.get(LocateCache.key(OTHER, "1.2", "1.2.3", "1.2.3.4")) is None  # type: ignore[arg-type]
    # The client address is not part of who the caller is.
    moved = Actor(**{**{f: getattr(DOCTOR, f) for f in DOCTOR.__struct_fields__},
                     "client_address": "10.0.0.9"})  # fmt: skip
    assert cache.get(LocateCache.key(moved, "1.2", "1.2.3", "1.2.3.4")) == FOUND  # type: ignore[arg-type]
    clock.now += 2.0
    assert cache.get(key) is None


def test_a_policy_change_empties_the_cache_and_pauses_it() -> None:
    clock = Clock()
    cache = _listening(LocateCache(ttl=2.0, grace=5.0, clock=clock))
    key = LocateCache.key(DOCTOR, "1.2", "1.2.3", "1.2.3.4")
    assert key is not None
    asked_at = cache.generation
    cache.put(key, FOUND, asked_at)
    cache.invalidate()
    assert cache.get(key) is None
    # An answer asked before the change is never kept, nor any during the grace period.
    clock.now += 6.0
    cache.put(key, FOUND, asked_at)
    assert cache.get(key) is None
    clock.now -= 3.0
    cache.put(key, FOUND, cache.generation)
    assert cache.get(key) is None
    clock.now += 3.0
    cache.put(key, FOUND, cache.generation)
    assert cache.get(key) == FOUND


def test_nothing_is_kept_before_listening_to_policy_changes() -> None:
    cache = LocateCache()
    key = LocateCache.key(DOCTOR, "1.2", "1.2.3", "1.2.3.4")
    assert key is not None
    cache.put(key, FOUND, cache.generation)
    assert cache.get(key) is None


async def test_a_published_policy_change_invalidates(nats_url: str) -> None:
    nc = await nats.connect(nats_url)
    try:
        cache = LocateCache()
        await cache.listen(nc)
        await cache.listen(nc)  # idempotent
        key = LocateCache.key(DOCTOR, "1.2", "1.2.3", "1.2.3.4")
        assert key is not None
        cache.put(key, FOUND, cache.generation)
        assert cache.get(key) == FOUND
        await nc.publish(subjects.policy_changed("sharecode_revoked"), b"{}")
        await nc.flush()
        deadline = asyncio.get_running_loop().time() + 10.0
        while cache.get(key) is not None:
            assert asyncio.get_running_loop().time() < deadline, "not invalidated"
            await asyncio.sleep(0.01)
        assert cache.generation == 1
    finally:
        await nc.close()


def test_body_cache_is_bounded_by_bytes_least_recently_used_first() -> None:
    cache = BodyCache(max_bytes=1600)
    for n in range(3):
        cache.put(n, bytes(90), "image/jpeg")
    assert cache.get(0) == (bytes(90), "image/jpeg")  # 0 is now the most recent
    for n in range(3, 20):
        cache.put(n, bytes(90), "image/jpeg")
    assert cache.used <= 1600
    assert cache.get(1) is None
    cache.put("big", bytes(200), "image/png")  # more than 1/16 of the bound: never kept
    assert cache.get("big") is None


def _instance(sop: str, series: str = "1.2.3") -> LocatedInstance:
    return LocatedInstance(**{**{f: getattr(FOUND[0], f) for f in FOUND[0].__struct_fields__},
                              "series_uid": series, "sop_instance_uid": sop})  # fmt: skip


def test_a_read_answer_has_its_series_asked_again_once_when_due() -> None:
    clock = Clock()
    cache = _listening(LocateCache(ttl=2.0, refresh_after=1.0, clock=clock))
    key = LocateCache.key(DOCTOR, "1.2", "1.2.3", "1.2.3.4")
    assert key is not None
    scope = LocateCache.scope_of(key)
    cache.put(key, FOUND, cache.generation)
    assert cache.lookup(key) == (FOUND, None)  # fresh: nothing to ask
    clock.now += 1.5
    assert cache.lookup(key) == (FOUND, scope)  # due: handed out once...
    assert cache.lookup(key) == (FOUND, None)  # ...until the request ends
    cache.fill(scope, FOUND, cache.generation)
    cache.asked(scope)
    clock.now += 1.5  # 3 s after the first answer, 1.5 s after the refresh: still served
    assert cache.lookup(key) == (FOUND, scope)
    clock.now += 0.5
    assert cache.lookup(key) is None  # never older than the TTL without a refresh


def test_a_series_answer_fills_each_instance_and_forgets_the_ones_gone() -> None:
    cache = _listening(LocateCache())
    one, two = _instance("1.2.3.4"), _instance("1.2.3.5")
    key_one = LocateCache.key(DOCTOR, "1.2", "1.2.3", "1.2.3.4")
    key_two = LocateCache.key(DOCTOR, "1.2", "1.2.3", "1.2.3.5")
    assert key_one is not None
    assert key_two is not None
    scope = LocateCache.scope_of(key_one)
    cache.put(key_one, [one], cache.generation)
    assert cache.should_fill(scope)
    assert not cache.should_fill(scope)  # already being asked
    cache.fill(scope, [one, two], cache.generation)
    cache.asked(scope)
    assert cache.get(key_two) == [two]
    assert not cache.should_fill(scope)  # answered a moment ago
    # The series answered again without `one` (hidden now): it is forgotten at once.
    cache.fill(scope, [two], cache.generation)
    assert cache.get(key_one) is None
    assert cache.get(key_two) == [two]
    # Not found at all (the study hidden): everything of the series goes.
    cache.fill(scope, None, cache.generation)
    assert cache.get(key_two) is None
    # Another caller's series is another scope.
    other = LocateCache.key(OTHER, "1.2", "1.2.3", "1.2.3.4")
    assert other is not None
    assert LocateCache.scope_of(other) != scope


def test_a_series_answer_asked_before_a_policy_change_is_not_kept() -> None:
    clock = Clock()
    cache = _listening(LocateCache(grace=5.0, clock=clock))
    key = LocateCache.key(DOCTOR, "1.2", "1.2.3", "1.2.3.4")
    assert key is not None
    scope = LocateCache.scope_of(key)
    asked_at = cache.generation
    cache.invalidate()
    clock.now += 6.0
    cache.fill(scope, FOUND, asked_at)
    assert cache.get(key) is None
    cache.fill(scope, FOUND, cache.generation)
    assert cache.get(key) == FOUND

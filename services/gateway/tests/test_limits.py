"""The gateway's per-actor token bucket (issue 9)."""

from __future__ import annotations

import msgspec

from krypton.gateway.limits import RateLimiter


def test_a_bucket_allows_its_burst_then_refuses_with_retry_after() -> None:
    limiter = RateLimiter(rate=2.0, burst=3)
    assert [limiter.refuse("a", now=10.0) for _ in range(3)] == [None, None, None]
    refused = limiter.refuse("a", now=10.0)
    assert refused is not None
    assert refused.status_code == 429
    assert refused.headers["retry-after"] == "1"
    assert refused.media_type == "application/problem+json"
    assert msgspec.json.decode(bytes(refused.body))["status"] == 429


def test_a_bucket_refills_at_its_rate_and_actors_are_independent() -> None:
    limiter = RateLimiter(rate=2.0, burst=1)
    assert limiter.refuse("a", now=0.0) is None
    assert limiter.refuse("a", now=0.1) is not None
    assert limiter.refuse("b", now=0.1) is None
    assert limiter.refuse("a", now=0.6) is None  # 0.5 s at 2 per second: one token back


def test_a_zero_rate_turns_limiting_off() -> None:
    limiter = RateLimiter(rate=0.0, burst=0)
    assert all(limiter.refuse("a", now=0.0) is None for _ in range(1000))

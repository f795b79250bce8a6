"""Request limits of the gateway: per-actor rate limits and ingest backpressure (issue 9).

- **Rate limit**: a token bucket per authenticated actor (`sub`), refilled at
  `rate_limit_per_second` up to `rate_limit_burst`; an empty bucket answers 429 problem+json
  with `Retry-After`. Per gateway process (N replicas allow N times the rate): it protects the
  services behind one gateway from one runaway client, it is not a quota.
- **Backpressure**: STOW-RS is refused with 503 + `Retry-After` while more than
  `ingest_backlog_limit` uploads wait in the INGEST work-queue stream (ingest fell behind or is
  down), instead of staging ever more bytes on disk for a consumer that cannot keep up. The
  stream's depth is asked of JetStream at most every `_BACKLOG_TTL` seconds.

Written by hand: the bucket is a dozen lines and needs no shared state (no library here keeps
per-key buckets in process without a store).
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import OrderedDict
from dataclasses import dataclass, field

import nats.errors
from nats.js import JetStreamContext
from nats.js.errors import Error as JetStreamError
from starlette.responses import Response

from krypton.contracts import subjects
from krypton.core.logging import get_logger
from krypton.gateway.problems import problem

__all__ = ["IngestBacklog", "RateLimiter"]

_log = get_logger("krypton.gateway.limits")
_BACKLOG_TTL = 0.5
_MAX_ACTORS = 100_000  # buckets kept; the least recently seen go first (a full bucket is no loss)


@dataclass
class RateLimiter:
    """Token buckets per actor; `rate` <= 0 turns limiting off."""

    rate: float
    burst: int
    _buckets: OrderedDict[str, tuple[float, float]] = field(default_factory=OrderedDict)

    def refuse(self, actor: str, now: float | None = None) -> Response | None:
        """Take one token for `actor`; a 429 answer when there is none."""
        if self.rate <= 0:
            return None
        now = time.monotonic() if now is None else now
        tokens, seen = self._buckets.pop(actor, (float(self.burst), now))
        tokens = min(float(self.burst), tokens + (now - seen) * self.rate)
        if tokens >= 1.0:
            self._remember(actor, tokens - 1.0, now)
            return None
        self._remember(actor, tokens, now)
        wait = math.ceil((1.0 - tokens) / self.rate)
        return problem(
            429,
            f"too many requests: at most {self.rate:g} per second (burst {self.burst})",
            headers={"Retry-After": str(max(wait, 1))},
        )

    def _remember(self, actor: str, tokens: float, now: float) -> None:
        self._buckets[actor] = (tokens, now)
        while len(self._buckets) > _MAX_ACTORS:
            self._buckets.popitem(last=False)


@dataclass
class IngestBacklog:
    """The INGEST stream's depth, cached briefly; `limit` <= 0 turns the check off."""

    limit: int
    _depth: int = 0
    _asked: float = -math.inf

    async def refuse(self, js: JetStreamContext) -> Response | None:
        """A 503 answer while the stream holds more than `limit` uploads, else None."""
        if self.limit <= 0:
            return None
        now = time.monotonic()
        if now - self._asked > _BACKLOG_TTL:
            self._asked = now
            try:
                info = await asyncio.wait_for(js.stream_info(subjects.INGEST_STREAM), 2.0)
                self._depth = int(info.state.messages)
            except (nats.errors.Error, JetStreamError, TimeoutError, OSError) as exc:
                # Unknown depth: let the upload try; its publish answers 503 if NATS is down.
                _log.warning("ingest backlog unknown", error=repr(exc))
                self._depth = 0
        if self._depth > self.limit:
            return problem(
                503,
                f"ingest is behind ({self._depth} uploads waiting); retry later",
                headers={"Retry-After": "2"},
            )
        return None

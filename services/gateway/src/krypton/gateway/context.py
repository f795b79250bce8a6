"""What the gateway holds for its lifetime: connections, store, verifier, pending STOW verdicts."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.js import JetStreamContext

from krypton.auth.verify import TokenVerifier
from krypton.bus.codec import decode
from krypton.contracts.ingest.v1 import IngestResult
from krypton.core.settings import KryptonSettings
from krypton.gateway.limits import IngestBacklog, RateLimiter
from krypton.gateway.wado_cache import BodyCache, LocateCache
from krypton.gateway.wado_transcode import LocalTranscoder
from krypton.storage.base import ObjectStore

__all__ = ["GatewayContext", "VerdictWaiter"]


@dataclass
class VerdictWaiter:
    """Receives ingest's verdicts on one wildcard inbox and resolves the matching futures."""

    prefix: str
    pending: dict[str, asyncio.Future[IngestResult]] = field(default_factory=dict)
    subscription: Subscription | None = None

    async def start(self, nc: Client) -> None:
        """Subscribe to `<prefix>.*`."""
        self.subscription = await nc.subscribe(f"{self.prefix}.*", cb=self._on_message)

    def reply_to(self, upload_id: str) -> str:
        """The subject ingest should answer to for this upload."""
        return f"{self.prefix}.{upload_id}"

    def expect(self, upload_id: str) -> asyncio.Future[IngestResult]:
        """Register interest before publishing, so a fast verdict is never missed."""
        fut: asyncio.Future[IngestResult] = asyncio.get_running_loop().create_future()
        self.pending[upload_id] = fut
        return fut

    def forget(self, upload_id: str) -> None:
        """Stop waiting for this upload (answered, timed out or failed)."""
        self.pending.pop(upload_id, None)

    async def _on_message(self, msg: Msg) -> None:
        upload_id = msg.subject.rsplit(".", 1)[-1]
        fut = self.pending.get(upload_id)
        if fut is None or fut.done():
            return
        try:
            fut.set_result(decode(msg.data, IngestResult))
        except Exception as exc:  # a malformed verdict must not kill the subscription
            fut.set_exception(exc)


@dataclass
class GatewayContext:
    """Resources built in the app lifespan, reachable from every request."""

    settings: KryptonSettings
    nc: Client
    js: JetStreamContext
    store: ObjectStore
    verifier: TokenVerifier
    waiter: VerdictWaiter
    # WADO-RS read caches (wado_cache): instance-level locates, rendered images, metadata.
    locates: LocateCache = field(default_factory=LocateCache)
    rendered: BodyCache = field(default_factory=lambda: BodyCache(64 * 1024**2))
    metadata: BodyCache = field(default_factory=lambda: BodyCache(32 * 1024**2))
    # Transcoding of the fast codecs in this process (wado_transcode).
    transcoder: LocalTranscoder = field(default_factory=LocalTranscoder)
    # Limits (issue 9), built from the settings when not given.
    rate_limiter: RateLimiter | None = None
    ingest_backlog: IngestBacklog | None = None

    def __post_init__(self) -> None:
        if self.rate_limiter is None:
            self.rate_limiter = RateLimiter(
                self.settings.rate_limit_per_second, self.settings.rate_limit_burst
            )
        if self.ingest_backlog is None:
            self.ingest_backlog = IngestBacklog(self.settings.ingest_backlog_limit)

"""The authorize service: owner of the access policy, answering decisions and commands.

Subscribes (nats-py, queue group ``authorize`` so N replicas share the load) to
``svc.authz.decide``, ``svc.authz.decide_batch``, ``svc.authz.ping`` and the policy commands
``svc.authz.<op>`` forwarded by the gateway; publishes every policy change from its outbox on
``policy.changed.<kind>``. Run it with `krypton run authorize` or ``python -m krypton.authorize``.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
from dataclasses import dataclass

import asyncpg
import msgspec
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from krypton.authorize.cache import DecisionCache, decode_event
from krypton.authorize.handlers import OPERATIONS, handle_command
from krypton.authorize.outbox import OutboxPublisher
from krypton.authorize.policy import Policy
from krypton.authorize.schema import migrate
from krypton.authorize.settings import AuthorizeSettings
from krypton.bus import streams
from krypton.bus.codec import encode
from krypton.bus.connect import connect
from krypton.contracts import subjects
from krypton.contracts.authorize.v1 import (
    DecideBatchRequest,
    DecideBatchResponse,
    DecideRequest,
    DecideResponse,
)
from krypton.core.logging import configure_logging, get_logger
from krypton.core.settings import KryptonSettings
from krypton.db.pool import create_pool
from krypton.telemetry.metrics import register_cache
from krypton.telemetry.setup import setup_observability

__all__ = ["AuthorizeService", "main"]

_log = get_logger("krypton.authorize")
QUEUE = "authorize"


@dataclass
class AuthorizeService:
    """The running service: connections, policy, publisher and subscriptions."""

    nc: Client
    pool: asyncpg.Pool
    policy: Policy
    publisher: OutboxPublisher
    subscriptions: list[Subscription]
    cache: DecisionCache

    @classmethod
    async def start(
        cls, settings: KryptonSettings, authz: AuthorizeSettings | None = None
    ) -> AuthorizeService:
        """Connect, migrate, start publishing the outbox and answering requests."""
        authz = authz or AuthorizeSettings(environment=settings.environment)
        pool = await create_pool(
            settings.pg_dsn.get_secret_value(),
            min_size=2,
            max_size=10,
            application_name="authorize",
        )
        await migrate(pool)
        nc = await connect(settings.nats_url, "authorize")
        js = nc.jetstream()
        # AUDIT too: the outbox also publishes the audit events of policy commands.
        await streams.provision(
            js, (streams.POLICY, streams.AUDIT), replicas=settings.stream_replicas
        )
        policy = Policy(pool, authz)
        cache = DecisionCache(ttl=authz.decision_cache_seconds)
        register_cache("authorize_decision", lambda: (cache.hits, cache.misses))

        def forget(subject: str, payload: bytes) -> None:
            if subject.startswith(subjects.POLICY_CHANGED):
                event = decode_event(payload)
                if event is not None:
                    cache.invalidate(event)

        publisher = OutboxPublisher(pool, js, on_published=forget)
        await publisher.start()
        service = cls(
            nc=nc, pool=pool, policy=policy, publisher=publisher, subscriptions=[], cache=cache
        )
        # Every replica (no queue group) hears every change, its own and the others'.
        service.subscriptions.append(
            await nc.subscribe(f"{subjects.POLICY_CHANGED}.>", cb=service._on_policy_changed)
        )
        # Command subjects by family (care.>, code.>, ...), never one ``svc.authz.>``: two
        # subscriptions of one queue group that both match a subject share its messages, so a
        # wildcard would take (and drop) half of the decisions.
        families = sorted({op.split(".", 1)[0] for op in OPERATIONS})
        for subject, cb in (
            (subjects.SVC_AUTHZ_DECIDE, service._on_decide),
            (subjects.SVC_AUTHZ_DECIDE_BATCH, service._on_decide_batch),
            (subjects.SVC_AUTHZ_PING, service._on_ping),
            *((f"{subjects.SVC_AUTHZ}.{family}.>", service._on_command) for family in families),
        ):
            service.subscriptions.append(await nc.subscribe(subject, queue=QUEUE, cb=cb))
        _log.info("authorize ready")
        return service

    async def stop(self) -> None:
        """Stop answering, publish what is pending, close connections."""
        for sub in self.subscriptions:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()
        with contextlib.suppress(Exception):
            await self.publisher.flush()
        await self.publisher.stop()
        await self.nc.close()
        await self.pool.close()

    async def _respond(self, msg: Msg, status: int, body: bytes, headers: dict[str, str]) -> None:
        if msg.reply:
            await self.nc.publish(
                msg.reply, body, headers={"Krypton-Status": str(status), **headers}
            )

    async def _on_decide(self, msg: Msg) -> None:
        try:
            request = msgspec.json.decode(msg.data, type=DecideRequest)
        except (msgspec.ValidationError, msgspec.DecodeError):
            await self._respond(msg, 400, encode({"detail": "malformed decide request"}), {})
            return
        try:
            decision = await self._decide(request)
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            _log.warning("decision failed", error=repr(exc))
            await self._respond(
                msg, 503, encode({"detail": "policy store unavailable"}), {"Retry-After": "2"}
            )
            return
        await self._respond(msg, 200, encode(decision), {})

    async def _decide(self, request: DecideRequest) -> DecideResponse:
        """A decision, from the cache when a fresh one is there."""
        cached = self.cache.get(request)
        if cached is not None:
            return cached
        decision = await self.policy.decide(request)
        self.cache.put(request, decision)
        return decision

    async def _on_policy_changed(self, msg: Msg) -> None:
        event = decode_event(msg.data)
        if event is not None:
            self.cache.invalidate(event)

    async def _on_decide_batch(self, msg: Msg) -> None:
        try:
            batch = msgspec.json.decode(msg.data, type=DecideBatchRequest)
        except (msgspec.ValidationError, msgspec.DecodeError):
            await self._respond(msg, 400, encode({"detail": "malformed decide request"}), {})
            return
        try:
            decisions = [await self._decide(r) for r in batch.requests]
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            _log.warning("decision failed", error=repr(exc))
            await self._respond(
                msg, 503, encode({"detail": "policy store unavailable"}), {"Retry-After": "2"}
            )
            return
        await self._respond(msg, 200, encode(DecideBatchResponse(decisions=decisions)), {})

    async def _on_ping(self, msg: Msg) -> None:
        try:
            await self.pool.fetchval("SELECT 1", timeout=2.0)
        except (TimeoutError, OSError, asyncpg.PostgresError, asyncpg.InterfaceError):
            await self._respond(msg, 503, b"down: postgres unreachable", {})
            return
        await self._respond(msg, 200, b"ok", {})

    async def _on_command(self, msg: Msg) -> None:
        op = msg.subject.removeprefix(f"{subjects.SVC_AUTHZ}.")
        try:
            status, body, headers = await handle_command(self.policy, self.publisher, op, msg.data)
        except asyncpg.DataError as exc:
            # A value PostgreSQL refuses (a NUL byte, an out-of-range number): the caller's
            # input, not an outage, so a 400 and no retry.
            _log.info("command refused: invalid value", op=op, error=type(exc).__name__)
            status, body, headers = 400, encode({"detail": "a value in the request is invalid"}), {}
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            _log.warning("command failed", op=op, error=repr(exc))
            status, body = 503, encode({"detail": "policy store unavailable"})
            headers = {"Retry-After": "2"}
        await self._respond(msg, status, body, headers)


async def run(settings: KryptonSettings) -> None:
    """Run until SIGINT/SIGTERM."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    service = await AuthorizeService.start(settings)
    try:
        await stop.wait()
    finally:
        await service.stop()


def main() -> None:
    """Entry point: `python -m krypton.authorize`."""
    settings = KryptonSettings()
    configure_logging("authorize", settings.log_level, settings.log_json)
    setup_observability("authorize", settings)
    asyncio.run(run(settings))


if __name__ == "__main__":
    main()

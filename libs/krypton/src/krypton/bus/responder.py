"""Request/reply handlers on plain nats-py subscriptions, for the hot request subjects.

FastStream's subscriber stack (its acknowledgement, logging, telemetry and Prometheus
middlewares, then fast_depends) took about as much CPU as the index's search handler itself
(py-spy on the index under one QIDO client: 23 % of its busy samples in that stack, 25 % in
the handler), and a search at one client waits for every microsecond of it. A `Responder`
keeps what Krypton uses of it, by hand:

- each request is handled in a CONSUMER span continuing the caller's trace
  (`krypton.bus.tracing.process_span`);
- up to `workers` requests of a process are handled at a time (a search waiting on PostgreSQL
  does not hold up the others); past that, the subscription stops taking messages until a
  slot frees (nats-server then holds them, and other replicas of the queue group take theirs);
- every request is answered: an unexpected error is logged and answered
  ``Krypton-Status: 500``, so the caller does not wait out its timeout;
- `krypton_nats_served_total` (by subject family and status) and
  `krypton_nats_serve_duration_seconds` (by subject family) measure them.

The event consumers and the cold request subjects (ping) stay on FastStream.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from krypton.bus.tracing import process_span
from krypton.core.logging import get_logger
from krypton.telemetry.metrics import NATS_SERVE_DURATION, NATS_SERVED, subject_family

__all__ = ["Handler", "Reply", "Responder"]

_log = get_logger("krypton.bus.responder")

# The reply body and its headers; ``Krypton-Status`` (default 200) labels the metric.
Reply = tuple[bytes, dict[str, str]]
Handler = Callable[[Msg], Awaitable[Reply]]


class Responder:
    """Answers request subjects of one service, `workers` requests at a time per process."""

    def __init__(self, nc: Client, service: str, workers: int = 8) -> None:
        """Serve on `nc`; `service` labels the metrics."""
        self.nc = nc
        self.service = service
        self._slots = asyncio.Semaphore(max(1, workers))
        self._subscriptions: list[Subscription] = []
        self._tasks: set[asyncio.Task[None]] = set()

    async def serve(self, subject: str, queue: str, handler: Handler) -> None:
        """Answer `subject` in queue group `queue` with `handler` until `stop`."""

        async def on_message(msg: Msg) -> None:
            # nats-py awaits this callback before the next message of the subscription: the
            # slot taken here is the bound on requests in flight.
            await self._slots.acquire()
            task = asyncio.create_task(self._answer(msg, handler))
            self._tasks.add(task)
            task.add_done_callback(self._done)

        # The base client's subscribe: `TracedClient` would open a span around the callback,
        # which only starts the task; `_answer` opens the span around the work instead.
        self._subscriptions.append(
            await Client.subscribe(self.nc, subject, queue=queue, cb=on_message)
        )

    def _done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        self._slots.release()

    async def _answer(self, msg: Msg, handler: Handler) -> None:
        family = subject_family(msg.subject)
        started = time.perf_counter()
        with process_span(msg):
            try:
                body, headers = await handler(msg)
            except Exception:
                _log.exception("request handler failed", subject=family)
                body, headers = b"", {"Krypton-Status": "500", "Krypton-Reason": "internal error"}
            status = headers.get("Krypton-Status", "200")
            if msg.reply:
                try:
                    await self.nc.publish(msg.reply, body, headers=headers or None)
                except Exception as exc:  # the caller is gone or NATS is down: nothing to answer
                    _log.warning("reply not sent", subject=family, error=repr(exc))
                    status = "unsent"
        NATS_SERVED.labels(self.service, family, status).inc()
        NATS_SERVE_DURATION.labels(self.service, family).observe(time.perf_counter() - started)

    async def stop(self, timeout: float = 10.0) -> None:
        """Stop taking requests, then let those in flight finish (up to `timeout` s)."""
        for sub in self._subscriptions:
            try:
                await sub.unsubscribe()
            except Exception as exc:  # closed connection: nothing more arrives anyway
                _log.debug("unsubscribe failed", error=repr(exc))
        self._subscriptions.clear()
        if self._tasks:
            _, pending = await asyncio.wait(set(self._tasks), timeout=timeout)
            for task in pending:
                task.cancel()

"""The index's consumer of policy events: the durable ``index-policy`` on the POLICY stream.

Wire it from the index app's lifespan, after the pool, migrations and stream provisioning::

    policy_consumer = await start_policy_consumer(js, pool)
    ...
    await policy_consumer.stop()
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, cast

import asyncpg
from nats.js import JetStreamContext

from krypton.bus.consumer import BatchConsumer, TransientError
from krypton.contracts import subjects
from krypton.contracts.authorize.v1 import PolicyEvent
from krypton.core.logging import get_logger
from krypton.db.errors import TRANSIENT_DB_ERRORS
from krypton.index.access import apply_policy_events

__all__ = ["DURABLE", "start_policy_consumer"]

DURABLE = "index-policy"
_log = get_logger("krypton.index.policy")


async def start_policy_consumer(
    js: JetStreamContext, pool: asyncpg.Pool, *, batch: int = 256
) -> BatchConsumer[Any]:
    """Start applying ``policy.changed.*`` to the access projection; returns the consumer."""

    async def apply(events: Sequence[PolicyEvent]) -> None:
        try:
            applied = await apply_policy_events(pool, events)
        except TRANSIENT_DB_ERRORS as exc:
            raise TransientError(repr(exc)) from exc
        _log.debug("policy applied", batch=len(events), applied=applied)

    consumer: BatchConsumer[Any] = BatchConsumer(
        js=js,
        stream=subjects.POLICY_STREAM,
        subject=f"{subjects.POLICY_CHANGED}.>",
        durable=DURABLE,
        # A tagged union of event structs: msgspec decodes each message to its kind.
        type_=cast("type[Any]", PolicyEvent),
        handler=apply,
        batch=batch,
        # Policy changes must reach the projection within a second: no long ack waits.
        ack_wait=10.0,
        retry_delay=0.5,
    )
    await consumer.start()
    return consumer

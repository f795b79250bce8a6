"""Durable, fail-closed publication of audit events.

Every read the platform answers is described by an `AuditEvent` published to the AUDIT stream
before the answer leaves: `AuditPublisher.publish` returns only once JetStream has acknowledged
the event (it is on disk), and raises `AuditUnavailableError` otherwise, so the caller refuses the
request (503) rather than disclose data nobody will be able to trace. ``Nats-Msg-Id`` is the
event id: a retried publish is stored once, and the audit log deduplicates on the same id.
"""

from __future__ import annotations

from dataclasses import dataclass

from nats.js import JetStreamContext

from krypton.bus.codec import encode
from krypton.contracts import subjects
from krypton.contracts.audit.v1 import AuditEvent
from krypton.core.errors import KryptonError

__all__ = ["AuditPublisher", "AuditUnavailableError"]


class AuditUnavailableError(KryptonError):
    """JetStream did not acknowledge an audit event: the request it describes must be refused."""

    def __init__(self, event_id: str, cause: str) -> None:
        self.event_id = event_id
        self.cause = cause
        super().__init__(f"audit event {event_id} not recorded: {cause}")


@dataclass(frozen=True, slots=True)
class AuditPublisher:
    """Publishes audit events to the AUDIT stream and waits for JetStream's ack."""

    js: JetStreamContext
    timeout: float = 2.0

    async def publish(self, event: AuditEvent) -> None:
        """Publish `event` durably.

        Raises:
            AuditUnavailableError: no acknowledgement (stream missing or full, NATS down, timeout).
        """
        try:
            await self.js.publish(
                subjects.audit_event(event.type.value),
                encode(event),
                stream=subjects.AUDIT_STREAM,
                headers={"Nats-Msg-Id": event.event_id},
                timeout=self.timeout,
            )
        except Exception as exc:  # any failure means "not durable": fail closed
            raise AuditUnavailableError(event.event_id, repr(exc)) from exc

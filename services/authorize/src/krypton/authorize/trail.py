"""Audit events of policy commands, written to the outbox in the command's own transaction.

Authorize, not the gateway, emits them: it knows the outcome and the patient (a share code's
patient is only known once the code is matched, a break-the-glass refusal only once the
opposition is read), and it writes the audit event in the same transaction as the change,
through its outbox. So a committed change always has its audit record — durable in PostgreSQL
before the reply, and on the AUDIT stream before the reply too unless the bus is down (then the
outbox publishes it as soon as the bus is back) — and a change that rolled back has none. Had
the gateway published after authorize's reply, a failed publish would leave a committed change
without a trail (refusing the answer cannot undo it).

Refusals (403 not allowed, 429 throttled) are recorded as the event of the operation with
outcome ``denied`` (a refused redemption is a ``sharecode.used`` that was denied), in the
transaction that counts the failure when there is one, else in a transaction of their own.

The call's trace id and path come from the gateway's `AuthzCommand`; `bind` makes them the
context of the events built while the command runs.
"""

from __future__ import annotations

import contextvars
from dataclasses import dataclass
from typing import Final

from krypton.authorize import outbox
from krypton.contracts.audit.v1 import (
    AccessBasisValues,
    AuditEvent,
    AuditEventTypeValues as T,
    AuditOutcomeValues,
    AuditPatient,
    new_event,
)
from krypton.contracts.common.v1 import Actor

__all__ = ["CallContext", "bind", "event", "patient", "record", "type_of", "unbind"]

SERVICE: Final = "authorize"


@dataclass(frozen=True, slots=True)
class CallContext:
    """Where a command came from: the gateway's trace id and the HTTP path."""

    trace_id: str | None = None
    resource: str | None = None


_NO_CONTEXT: Final = CallContext()
_context: contextvars.ContextVar[CallContext | None] = contextvars.ContextVar(
    "krypton_authorize_call", default=None
)

#: Policy operation → the audit event type of its success or refusal.
_TYPES: Final = {
    "care.declare": T.CARE_CHANGED,
    "care.attest": T.CARE_CHANGED,
    "care.end": T.CARE_CHANGED,
    "code.create": T.SHARECODE_CREATED,
    "code.revoke": T.SHARECODE_REVOKED,
    "code.redeem": T.SHARECODE_USED,
    "opposition.set": T.OPPOSITION_SET,
    "opposition.lift": T.OPPOSITION_LIFTED,
    "btg.open": T.BTG_OPENED,
    "btg.review": T.ADMIN_CHANGE,
    "admin.structure.put": T.ADMIN_CHANGE,
    "admin.professional.put": T.ADMIN_CHANGE,
    "admin.patient.put": T.ADMIN_CHANGE,
    "admin.community.put": T.ADMIN_CHANGE,
    "admin.community.member.add": T.ADMIN_CHANGE,
    "admin.community.member.remove": T.ADMIN_CHANGE,
    "community.share": T.CARE_CHANGED,
    "community.share.end": T.CARE_CHANGED,
}


def bind(context: CallContext) -> contextvars.Token[CallContext | None]:
    """Make `context` the one of the events built until `unbind`."""
    return _context.set(context)


def unbind(token: contextvars.Token[CallContext | None]) -> None:
    """Restore the previous context."""
    _context.reset(token)


def type_of(op: str) -> T:
    """The audit event type of operation `op` (reads and unknown ones: ``access.denied``)."""
    return _TYPES.get(op, T.ACCESS_DENIED)


def patient(key: str) -> AuditPatient:
    """The audit identity of the patient with platform key `key`."""
    return AuditPatient(key=key, ins=key[4:] if key.startswith("INS:") else None)


def event(
    type_: T,
    actor: Actor,
    *,
    patient_key: str | None = None,
    study_uid: str | None = None,
    outcome: AuditOutcomeValues = AuditOutcomeValues.SUCCESS,
    basis: AccessBasisValues = AccessBasisValues.NONE,
    reason: str | None = None,
    justification: str | None = None,
    detail: dict[str, str] | None = None,
) -> AuditEvent:
    """An audit event of the running command, with its trace id and path."""
    context = _context.get() or _NO_CONTEXT
    return new_event(
        type_,
        actor,
        outcome=outcome,
        basis=basis,
        reason=reason,
        justification=justification,
        patients=[patient(patient_key)] if patient_key else [],
        study_uids=[study_uid] if study_uid else [],
        detail=detail or {},
        trace_id=context.trace_id,
        resource=context.resource,
        service=SERVICE,
    )


async def record(conn: outbox.Conn, audit_event: AuditEvent) -> None:
    """Write `audit_event` to the outbox in the caller's transaction."""
    await outbox.append_audit(conn, audit_event)

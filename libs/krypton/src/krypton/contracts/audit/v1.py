"""Audit contracts, v1. Additive changes only: new fields get defaults, never retype a field.

An `AuditEvent` is published on ``audit.event.<type>`` (``subjects.audit_event``) in the AUDIT
stream with ``Nats-Msg-Id`` = `event_id`, durably and before the answer it describes leaves the
gateway (``krypton.bus.audit.AuditPublisher``). The audit service appends it to its hash-chained
log and answers `AuditQueryRequest` on ``SVC_AUDIT_QUERY``.
"""

from __future__ import annotations

import enum
import uuid

import msgspec

from krypton.contracts.common.v1 import Actor, RoleValues
from krypton.core.clock import utc_now_iso

__all__ = [
    "AccessBasisValues",
    "AuditActor",
    "AuditCheckpoint",
    "AuditEvent",
    "AuditEventTypeValues",
    "AuditFormatValues",
    "AuditOutcomeValues",
    "AuditPatient",
    "AuditQueryRequest",
    "AuditScopeValues",
    "new_event",
]


class AuditEventTypeValues(enum.StrEnum):
    """What happened. The subject token after ``audit.event.`` is this value."""

    AUTH_SUCCESS = "auth.success"
    AUTH_FAILURE = "auth.failure"
    SEARCH = "search"
    RETRIEVE_METADATA = "retrieve.metadata"
    RETRIEVE_INSTANCE = "retrieve.instance"
    RETRIEVE_RENDERED = "retrieve.rendered"
    RETRIEVE_REPORT = "retrieve.report"
    STORE = "store"
    ACCESS_DENIED = "access.denied"
    SHARECODE_CREATED = "sharecode.created"
    SHARECODE_USED = "sharecode.used"
    SHARECODE_REVOKED = "sharecode.revoked"
    OPPOSITION_SET = "opposition.set"
    OPPOSITION_LIFTED = "opposition.lifted"
    CARE_CHANGED = "care.changed"
    BTG_OPENED = "btg.opened"
    ADMIN_CHANGE = "admin.change"
    AUDIT_VIEWED = "audit.viewed"  # someone read the audit log itself (DCM 110101)


class AccessBasisValues(enum.StrEnum):
    """Why the actor was allowed to see the data (domain §3.4)."""

    PRODUCING_STRUCTURE = "producing_structure"
    CARE_RELATIONSHIP = "care_relationship"
    SHARE_CODE = "share_code"
    BREAK_THE_GLASS = "break_the_glass"
    TELERADIOLOGY = "teleradiology"
    ADMIN = "admin"
    COMMUNITY = "community"  # the patient's file is shared with a community of the actor
    PATIENT_SELF = "patient_self"
    NONE = "none"  # nothing was disclosed (authentication, denial, store)


class AuditOutcomeValues(enum.StrEnum):
    """How it ended: DICOM EventOutcomeIndicator 0 (success), 4 (denied), 8 (failure)."""

    SUCCESS = "success"
    DENIED = "denied"
    FAILURE = "failure"


class AuditActor(msgspec.Struct, frozen=True, kw_only=True):
    """Who acted, as the gateway established it from a verified token (or what was claimed)."""

    sub: str | None = None  # None when authentication failed before a subject was known
    role: str | None = None
    issuer: str | None = None
    name: str | None = None
    profession: str | None = None
    structure: str | None = None  # FINESS the actor acts for


class AuditPatient(msgspec.Struct, frozen=True, kw_only=True):
    """A patient whose data the event touched, as far as the emitter knows them."""

    key: str | None = None  # platform key: INS:<ins> or IPP:<structure>:<id>
    ins: str | None = None
    patient_id: str | None = None
    issuer: str | None = None


class AuditEvent(msgspec.Struct, frozen=True, kw_only=True):
    """One auditable fact. Build it with `new_event` so id, time and actor are filled."""

    event_id: str  # UUID, also the Nats-Msg-Id and the log's unique key
    time: str  # ISO 8601 UTC, when it happened
    type: AuditEventTypeValues
    actor: AuditActor
    outcome: AuditOutcomeValues = AuditOutcomeValues.SUCCESS
    reason: str | None = None  # why it was denied or failed; safe to show
    basis: AccessBasisValues = AccessBasisValues.NONE
    client_address: str | None = None
    patients: list[AuditPatient] = msgspec.field(default_factory=list)
    study_uids: list[str] = msgspec.field(default_factory=list)
    instances: int | None = None  # number of instances disclosed or stored
    query: str | None = None  # the search's query string, as received
    resource: str | None = None  # the request path
    justification: str | None = None  # break-the-glass free text
    detail: dict[str, str] = msgspec.field(default_factory=dict)  # event-specific extras
    trace_id: str | None = None
    service: str = "gateway"


class AuditCheckpoint(msgspec.Struct, frozen=True, kw_only=True):
    """The head of the audit chain at one moment: published on ``AUDIT_CHECKPOINT`` and kept."""

    seq: int
    hash: str  # hex SHA-256 of record `seq`
    time: str  # ISO 8601 UTC
    kind: str = "periodic"  # or "purge": the last record a purge removed


class AuditScopeValues(enum.StrEnum):
    """Whose events an audit query may return; the gateway sets it from the caller's rights."""

    PATIENT = "patient"  # accesses to the exams of `actor.ins`
    STRUCTURE = "structure"  # events on the studies of `actor.structure`, or by its staff
    ALL = "all"  # platform administrator


class AuditFormatValues(enum.StrEnum):
    """Answer formats of audit queries."""

    JSON = "json"
    FHIR = "fhir"  # FHIR R4 Bundle of AuditEvent
    DICOM = "dicom"  # DICOM PS3.15 A.5 AuditMessage XML


class AuditQueryRequest(msgspec.Struct, frozen=True, kw_only=True):
    """A query of the audit log on behalf of `actor`, limited to `scope`.

    Filters: `actor_sub` (who acted), `patient` (an INS or a patient key), `start`/`end`
    (ISO 8601, inclusive start, exclusive end), `types`. Newest first, `limit`/`offset` pages.
    """

    actor: Actor
    scope: AuditScopeValues
    actor_sub: str | None = None
    patient: str | None = None
    start: str | None = None
    end: str | None = None
    types: list[str] = msgspec.field(default_factory=list)
    limit: int = 100
    offset: int = 0
    format: AuditFormatValues = AuditFormatValues.JSON


def new_event(
    type_: AuditEventTypeValues,
    actor: Actor | None,
    **fields: object,
) -> AuditEvent:
    """An event with a fresh id, the current UTC time and the actor's audit identity.

    Args:
        type_: what happened.
        actor: the verified caller, or None when none was established.
        **fields: any other `AuditEvent` field (``client_address`` defaults to the actor's).
    """
    audit_actor = (
        AuditActor(
            sub=actor.sub,
            role=RoleValues(actor.role).value,
            issuer=actor.issuer,
            name=actor.name,
            profession=actor.profession,
            structure=actor.structure,
        )
        if actor is not None
        else AuditActor()
    )
    if actor is not None and "client_address" not in fields:
        fields["client_address"] = actor.client_address
    return msgspec.convert(
        {
            "event_id": str(uuid.uuid4()),
            "time": utc_now_iso(),
            "type": type_,
            "actor": audit_actor,
            **fields,
        },
        AuditEvent,
        from_attributes=True,
    )

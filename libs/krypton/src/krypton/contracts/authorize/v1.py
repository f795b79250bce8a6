"""Authorize contracts, v1. Additive changes only: new fields get defaults.

Three families:

- **Policy events** (`PolicyEvent`), published by authorize from its outbox on
  ``krypton.v1.policy.changed.<kind>`` (stream ``KRYPTON_POLICY``), tagged by ``kind``. The
  index keeps its access projection from `GrantChanged`, `OppositionChanged` and
  `CommunityMemberChanged`; the others feed notification and review. Every event carries ``version``, the outbox sequence number,
  which grows for successive changes of one grant or one patient's opposition, so consumers
  apply the newest and ignore late redeliveries.
- **Decisions**: `DecideRequest` → `DecideResponse` on ``svc.authz.decide`` (queue group
  ``authorize``), and the batch pair on ``svc.authz.decide_batch``.
- **Commands**: the gateway forwards each policy API call as an `AuthzCommand` (verified actor,
  raw JSON body, path and query parameters) on ``svc.authz.<op>``; authorize validates the
  body against the API body type of that operation (the structs below), applies it and
  answers JSON with the status in the ``Krypton-Status`` header (problem details on errors).
"""

from __future__ import annotations

import enum
from datetime import datetime
from typing import Final

import msgspec

from krypton.contracts.common.v1 import Actor

__all__ = [
    "PHYSICIAN_PROFESSION",
    "AccessBasisValues",
    "AuthzCommand",
    "BreakGlassOpen",
    "BreakGlassOpened",
    "BreakGlassReview",
    "BreakGlassSession",
    "CareBasisValues",
    "CareDeclaration",
    "CareRelationship",
    "Community",
    "CommunityMember",
    "CommunityMemberAdd",
    "CommunityMemberChanged",
    "CommunityRecord",
    "CommunityShare",
    "CommunityShareCreate",
    "DecideBatchRequest",
    "DecideBatchResponse",
    "DecideRequest",
    "DecideResponse",
    "DirectoryChanged",
    "GrantChanged",
    "Opposition",
    "OppositionChange",
    "OppositionChanged",
    "OppositionStatus",
    "PatientIpp",
    "PatientRecord",
    "PolicyEvent",
    "PolicyKindValues",
    "ProfessionalRecord",
    "SelfAttestation",
    "ShareCode",
    "ShareCodeChanged",
    "ShareCodeCreate",
    "ShareCodeCreated",
    "ShareCodeEventValues",
    "ShareCodeRedeem",
    "ShareCodeRedeemed",
    "ShareScopeValues",
    "StructureRecord",
]

#: TRE_G15 profession code of a physician (médecin): the only profession that may break the glass.
PHYSICIAN_PROFESSION: Final = "10"


class PolicyKindValues(enum.StrEnum):
    """The ``<kind>`` token of ``policy.changed.<kind>`` and the ``kind`` tag of the event."""

    GRANT = "grant"
    OPPOSITION = "opposition"
    BREAK_GLASS = "break_glass"
    SHARE_CODE = "share_code"
    DIRECTORY = "directory"
    COMMUNITY = "community"  # a community's membership changed


class CareBasisValues(enum.StrEnum):
    """Why a professional takes care of a patient (prise en charge)."""

    DECLARED_BY_STRUCTURE = "declared_by_structure"  # the structure's RIS/EHR declared it
    SELF_ATTESTED = "self_attested"  # the professional attested it themself
    DERIVED_REQUESTER = "derived_requester"  # requesting physician of an exam
    DERIVED_TELERAD = "derived_telerad"  # teleradiologist assigned to an exam


class AccessBasisValues(enum.StrEnum):
    """Why a decision allowed access (also the basis of a projected grant)."""

    ADMIN = "admin"
    PATIENT = "patient"
    PRODUCER = "producer"
    CARE = "care"
    SHARE_CODE = "share_code"
    BREAK_GLASS = "break_glass"
    COMMUNITY = "community"  # the patient's file is shared with a community of the actor


class ShareScopeValues(enum.StrEnum):
    """What a share code opens: one study, or every study of the patient."""

    STUDY = "study"
    PATIENT = "patient"


class ShareCodeEventValues(enum.StrEnum):
    """What happened to a share code."""

    CREATED = "created"
    REDEEMED = "redeemed"
    REVOKED = "revoked"
    LOCKED = "locked"


# --- policy events ---------------------------------------------------------------------


class GrantChanged(msgspec.Struct, frozen=True, kw_only=True, tag="grant", tag_field="kind"):
    """The current state of one access grant: the index projection's input.

    A grant is a care relationship, a redeemed share code, a break-the-glass session or a
    patient's file shared with a community. It lets `actor_sub` (or, for a community grant,
    every current member of `community_id`, see `CommunityMemberChanged`) see the studies of
    `patient_key` (only `study_uid` when set) while ``valid_from <= now < valid_until`` and
    `active`. Ending or revoking a grant sends it again with ``active=False``.
    """

    grant_id: str  # "care:<uuid>", "code:<uuid>", "btg:<uuid>", "community:<uuid>"
    version: int
    actor_sub: str  # empty for a community grant (its holder is `community_id`)
    patient_key: str
    study_uid: str | None = None
    valid_from: datetime
    valid_until: datetime | None = None
    basis: AccessBasisValues
    active: bool = True
    community_id: str | None = None  # added with communities: the grant is the community's


class OppositionChanged(
    msgspec.Struct, frozen=True, kw_only=True, tag="opposition", tag_field="kind"
):
    """A patient's opposition to sharing was set or lifted.

    `patient_keys` lists every key the patient's studies may carry (``INS:<ins>`` and the
    ``IPP:<structure>:<id>`` aliases authorize knows); the opposition covers all of them.
    """

    opposition_id: str
    version: int
    patient_key: str
    patient_keys: list[str]
    active: bool
    set_at: datetime
    set_by: str
    structure: str | None = None  # structure that collected it (None: the patient online)
    lifted_at: datetime | None = None
    lifted_by: str | None = None


class BreakGlassOpened(
    msgspec.Struct, frozen=True, kw_only=True, tag="break_glass", tag_field="kind"
):
    """A physician broke the glass: notify the patient and the producers, queue for review."""

    session_id: str
    version: int
    actor_sub: str
    actor_structure: str | None = None
    patient_key: str
    study_uid: str | None = None
    justification: str
    opened_at: datetime
    expires_at: datetime


class ShareCodeChanged(
    msgspec.Struct, frozen=True, kw_only=True, tag="share_code", tag_field="kind"
):
    """A share code was created, redeemed, revoked or locked (never carries the code)."""

    code_id: str
    version: int
    event: ShareCodeEventValues
    patient_key: str
    scope: ShareScopeValues
    study_uid: str | None = None
    actor_sub: str
    at: datetime


class DirectoryChanged(
    msgspec.Struct, frozen=True, kw_only=True, tag="directory", tag_field="kind"
):
    """A structure, professional or patient record was created or changed by an admin."""

    entity: str  # "structure" | "professional" | "patient"
    key: str
    version: int
    actor_sub: str
    at: datetime


class CommunityMemberChanged(
    msgspec.Struct, frozen=True, kw_only=True, tag="community", tag_field="kind"
):
    """A professional joined (`active`) or left a community: its grants follow them.

    `version` grows for successive changes of one (community, professional) pair.
    """

    community_id: str
    actor_sub: str
    version: int
    active: bool
    changed_by: str
    at: datetime


PolicyEvent = (
    GrantChanged
    | OppositionChanged
    | BreakGlassOpened
    | ShareCodeChanged
    | DirectoryChanged
    | CommunityMemberChanged
)


# --- decisions -------------------------------------------------------------------------


class DecideRequest(msgspec.Struct, frozen=True, kw_only=True):
    """May `actor` see study `study_uid` of patient `patient_key`, produced by `structure`?"""

    actor: Actor
    patient_key: str
    study_uid: str
    structure: str


class DecideResponse(msgspec.Struct, frozen=True, kw_only=True):
    """A decision: allow with its basis, or deny with a reason (for audit, not for the caller)."""

    allow: bool
    basis: AccessBasisValues | None = None
    reason: str | None = None


class DecideBatchRequest(msgspec.Struct, frozen=True, kw_only=True):
    """Several decisions in one round trip."""

    requests: list[DecideRequest]


class DecideBatchResponse(msgspec.Struct, frozen=True, kw_only=True):
    """Decisions in the order of the requests."""

    decisions: list[DecideResponse]


# --- commands (gateway → authorize) ------------------------------------------------------


class AuthzCommand(msgspec.Struct, frozen=True, kw_only=True):
    """One policy API call, forwarded by the gateway on ``svc.authz.<op>``."""

    actor: Actor
    body: msgspec.Raw = msgspec.Raw(b"{}")
    params: dict[str, str] = msgspec.field(default_factory=dict)
    # For the audit events authorize writes about the call (added with issue 6).
    trace_id: str | None = None
    resource: str | None = None  # the HTTP path of the call


# --- API bodies (requests) -------------------------------------------------------------


class CareDeclaration(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """A structure declares that one of its professionals takes care of a patient.

    The patient is named by INS, or by the structure's local identifier (IPP) which authorize
    maps to the INS when it knows the link.
    """

    professional: str  # IDNPS (8 + RPPS) — the professional's token subject
    patient_ins: str | None = None
    patient_ipp: str | None = None
    basis: CareBasisValues = CareBasisValues.DECLARED_BY_STRUCTURE
    study_uid: str | None = None  # the exam it derives from (requester, teleradiologist)
    starts_at: datetime | None = None  # default: now
    ends_at: datetime | None = None  # default: a year after the start
    structure: str | None = None  # admins only: the declaring structure


class SelfAttestation(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """A professional attests that they take care of a patient."""

    patient_ins: str
    attestation: str  # what the professional attests (consultation, admission, ...)
    ends_at: datetime | None = None  # default and maximum: 30 days


class ShareCodeCreate(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Create a share code (by the patient, or by a structure on the patient's behalf)."""

    scope: ShareScopeValues = ShareScopeValues.PATIENT
    study_uid: str | None = None  # required when scope is "study"
    patient_ins: str | None = None  # required unless the caller is the patient
    valid_from: datetime | None = None  # default: now
    valid_until: datetime | None = None  # default 30 days, at most 90 days after valid_from


class ShareCodeRedeem(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """A professional presents a share code."""

    code: str


class OppositionChange(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Set or lift an opposition (patient: their own; structure: the patient named here)."""

    patient_ins: str | None = None
    patient_ipp: str | None = None
    note: str | None = None  # e.g. where the signed form is archived


class BreakGlassOpen(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """A physician opens emergency access to a patient."""

    patient_ins: str
    justification: str
    study_uid: str | None = None


class BreakGlassReview(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """An admin (or the DPO) reviewed a break-the-glass session."""

    note: str | None = None


class StructureRecord(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """A member structure (FINESS)."""

    finess: str | None = None  # taken from the path when absent
    name: str
    active: bool = True


class ProfessionalRecord(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """A health professional and the structures they act for."""

    sub: str | None = None  # IDNPS; taken from the path when absent
    rpps: str | None = None
    name: str | None = None
    profession: str | None = None  # TRE_G15 code, e.g. "10" physician
    structures: list[str] = msgspec.field(default_factory=list)


class CommunityRecord(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """A community of professionals (e.g. a tumour board) and the structure that runs it."""

    id: str | None = None  # taken from the path when absent
    name: str
    structure: str | None = None  # owning structure (FINESS): its systems manage the members


class CommunityMemberAdd(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Add a professional to a community."""

    sub: str  # IDNPS (8 + RPPS) — the professional's token subject


class CommunityShareCreate(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """A structure (or an admin) shares a patient's file with a community."""

    patient_ins: str | None = None
    patient_ipp: str | None = None  # the structure's local identifier, mapped to the INS
    valid_from: datetime | None = None  # default: now
    valid_until: datetime | None = None  # default: a year after the start


class PatientIpp(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """A structure's local identifier (IPP) of a patient."""

    structure: str
    ipp: str


class PatientRecord(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """A patient: their INS and the local identifiers structures know them by."""

    ins: str | None = None  # taken from the path when absent
    ipps: list[PatientIpp] = msgspec.field(default_factory=list)


# --- API bodies (responses) ------------------------------------------------------------


class CareRelationship(msgspec.Struct, frozen=True, kw_only=True):
    """A care relationship as stored."""

    id: str
    professional: str
    patient_key: str
    basis: CareBasisValues
    starts_at: datetime
    ends_at: datetime
    declared_by: str
    structure: str | None = None
    study_uid: str | None = None
    attestation: str | None = None
    ended_at: datetime | None = None
    ended_by: str | None = None
    active: bool


class CommunityMember(msgspec.Struct, frozen=True, kw_only=True):
    """A current member of a community."""

    sub: str
    added_at: datetime
    added_by: str


class CommunityShare(msgspec.Struct, frozen=True, kw_only=True):
    """A patient's file shared with a community, as stored."""

    id: str
    community_id: str
    patient_key: str
    valid_from: datetime
    valid_until: datetime
    shared_by: str
    structure: str | None = None  # sharing structure (FINESS)
    created_at: datetime
    ended_at: datetime | None = None
    ended_by: str | None = None
    active: bool


class Community(msgspec.Struct, frozen=True, kw_only=True):
    """A community with its current members and its live shares."""

    id: str
    name: str
    structure: str | None = None
    created_at: datetime
    updated_at: datetime
    members: list[CommunityMember] = msgspec.field(default_factory=list)
    shares: list[CommunityShare] = msgspec.field(default_factory=list)


class ShareCode(msgspec.Struct, frozen=True, kw_only=True):
    """A share code as listed (never the code itself: only its hash is kept)."""

    id: str
    patient_key: str
    scope: ShareScopeValues
    study_uid: str | None = None
    valid_from: datetime
    valid_until: datetime
    created_by: str
    created_at: datetime
    bound_to: str | None = None
    bound_at: datetime | None = None
    revoked_at: datetime | None = None
    locked: bool = False


class ShareCodeCreated(msgspec.Struct, frozen=True, kw_only=True):
    """A new share code: `code` is shown once and never stored in clear."""

    code: str
    share_code: ShareCode


class ShareCodeRedeemed(msgspec.Struct, frozen=True, kw_only=True):
    """What a redeemed code opens to the professional who presented it."""

    id: str
    patient_key: str
    patient_ins: str | None = None
    scope: ShareScopeValues
    study_uid: str | None = None
    valid_until: datetime


class Opposition(msgspec.Struct, frozen=True, kw_only=True):
    """One opposition (versioned: lifting keeps the record)."""

    id: str
    patient_key: str
    set_at: datetime
    set_by: str
    structure: str | None = None
    note: str | None = None
    lifted_at: datetime | None = None
    lifted_by: str | None = None


class OppositionStatus(msgspec.Struct, frozen=True, kw_only=True):
    """Whether a patient currently opposes sharing, with the history."""

    patient_key: str
    active: bool
    history: list[Opposition]


class BreakGlassSession(msgspec.Struct, frozen=True, kw_only=True):
    """A break-the-glass session."""

    id: str
    actor_sub: str
    actor_structure: str | None = None
    patient_key: str
    study_uid: str | None = None
    justification: str
    opened_at: datetime
    expires_at: datetime
    reviewed_at: datetime | None = None
    reviewed_by: str | None = None
    review_note: str | None = None

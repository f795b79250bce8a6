"""The access policy's commands and decisions, over the ``authz`` schema.

Rules (decision for one actor, one patient, one study — see `Policy.decide`):

1. admin: allowed (platform operations; every access is audited);
   patient: allowed for the studies of their own INS.
2. The producing structure (its systems and professionals) always sees its own studies.
3. Anyone else must be a professional, and the patient must have no active opposition
   (no exception: break-the-glass included).
4. Then one live grant of the professional on the patient suffices: a care relationship, the
   patient's file shared with a community they currently belong to (`communities`), a share
   code they redeemed (covering that study, or all the patient's studies), or a
   break-the-glass session they opened. Otherwise: deny.

"Live" is evaluated against the database clock, here and in the index projection, so expiry
needs no event. Every change writes its policy event to the outbox in the same transaction.
"""

from __future__ import annotations

import functools
import hmac
import re
import uuid
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any, Final

import asyncpg

from krypton.auth.claims import FINESS_PATTERN, INS_PATTERN
from krypton.authorize import codes, outbox, trail
from krypton.authorize.errors import PolicyError
from krypton.authorize.settings import AuthorizeSettings
from krypton.contracts.audit.v1 import (
    AccessBasisValues as AuditBasis,
    AuditEvent,
    AuditEventTypeValues as AuditType,
    AuditOutcomeValues,
)
from krypton.contracts.authorize.v1 import (
    PHYSICIAN_PROFESSION,
    AccessBasisValues,
    BreakGlassOpen,
    BreakGlassOpened,
    BreakGlassReview,
    BreakGlassSession,
    CareBasisValues,
    CareDeclaration,
    CareRelationship,
    DecideRequest,
    DecideResponse,
    DirectoryChanged,
    GrantChanged,
    Opposition,
    OppositionChange,
    OppositionChanged,
    OppositionStatus,
    PatientRecord,
    ProfessionalRecord,
    SelfAttestation,
    ShareCode,
    ShareCodeChanged,
    ShareCodeCreate,
    ShareCodeCreated,
    ShareCodeEventValues,
    ShareCodeRedeem,
    ShareCodeRedeemed,
    ShareScopeValues,
    StructureRecord,
)
from krypton.contracts.common.v1 import Actor, RoleValues

__all__ = ["Policy", "patient_key_of_ins"]

Conn = asyncpg.Connection | asyncpg.pool.PoolConnectionProxy

_UID: Final = re.compile(r"^[0-9]+(\.[0-9]+)*$")
_LIST_LIMIT: Final = 500
_MAX_TEXT: Final = 2000
_NOT_VALID: Final = "share code not valid"
_OPPOSED: Final = "the patient opposes sharing"


def patient_key_of_ins(ins: str) -> str:
    """The platform key of a patient identified by INS."""
    return f"INS:{ins}"


def _uuid(value: str) -> uuid.UUID:
    try:
        return uuid.UUID(value)
    except ValueError:
        raise PolicyError(404, "not found") from None


def _check_ins(ins: str | None) -> str:
    if ins is None or not INS_PATTERN.fullmatch(ins):
        raise PolicyError(400, "patient_ins must be a 15-character INS")
    return ins


def _check_uid(uid: str | None, name: str) -> None:
    if uid is not None and (len(uid) > 64 or not _UID.match(uid)):
        raise PolicyError(400, f"{name} is not a valid DICOM UID")


def _text(value: str | None, name: str, *, minimum: int = 0) -> str | None:
    if value is None:
        if minimum:
            raise PolicyError(400, f"{name} is required")
        return None
    value = value.strip()
    if len(value) < minimum:
        raise PolicyError(400, f"{name} must be at least {minimum} characters")
    if len(value) > _MAX_TEXT:
        raise PolicyError(400, f"{name} is too long")
    return value or None


def _require(actor: Actor, *roles: RoleValues) -> None:
    if actor.role not in roles:
        raise PolicyError(403, "not allowed for this role")


def _care(row: asyncpg.Record, now: datetime) -> CareRelationship:
    return CareRelationship(
        id=str(row["id"]),
        professional=row["actor_sub"],
        patient_key=row["patient_key"],
        basis=CareBasisValues(row["basis"]),
        starts_at=row["starts_at"],
        ends_at=row["ends_at"],
        declared_by=row["declared_by"],
        structure=row["structure"],
        study_uid=row["study_uid"],
        attestation=row["attestation"],
        ended_at=row["ended_at"],
        ended_by=row["ended_by"],
        active=row["ended_at"] is None and row["starts_at"] <= now < row["ends_at"],
    )


def _code(row: asyncpg.Record) -> ShareCode:
    return ShareCode(
        id=str(row["id"]),
        patient_key=row["patient_key"],
        scope=ShareScopeValues(row["scope"]),
        study_uid=row["study_uid"],
        valid_from=row["valid_from"],
        valid_until=row["valid_until"],
        created_by=row["created_by"],
        created_at=row["created_at"],
        bound_to=row["bound_to"],
        bound_at=row["bound_at"],
        revoked_at=row["revoked_at"],
        locked=row["locked_at"] is not None,
    )


def _opposition(row: asyncpg.Record) -> Opposition:
    return Opposition(
        id=str(row["id"]),
        patient_key=row["patient_key"],
        set_at=row["set_at"],
        set_by=row["set_by"],
        structure=row["structure"],
        note=row["note"],
        lifted_at=row["lifted_at"],
        lifted_by=row["lifted_by"],
    )


def _session(row: asyncpg.Record) -> BreakGlassSession:
    return BreakGlassSession(
        id=str(row["id"]),
        actor_sub=row["actor_sub"],
        actor_structure=row["actor_structure"],
        patient_key=row["patient_key"],
        study_uid=row["study_uid"],
        justification=row["justification"],
        opened_at=row["opened_at"],
        expires_at=row["expires_at"],
        reviewed_at=row["reviewed_at"],
        reviewed_by=row["reviewed_by"],
        review_note=row["review_note"],
    )


async def _one(conn: Conn, sql: str, *args: object) -> asyncpg.Record:
    """The one row an INSERT/UPDATE ... RETURNING of a known row gives."""
    row = await conn.fetchrow(sql, *args)
    assert row is not None
    return row


async def _close_once(
    conn: Conn, table: str, closing: str, row: asyncpg.Record, now: datetime, by: str
) -> asyncpg.Record | None:
    """Set ``<closing>_at``/``<closing>_by`` on a locked row not closed yet.

    Returns the updated row, or None when it was closed already (ending twice is a no-op that
    publishes nothing). `table` and `closing` are constants of the callers, never input.
    """
    if row[f"{closing}_at"] is not None:
        return None
    return await _one(
        conn,
        f"UPDATE authz.{table} SET {closing}_at = $2, {closing}_by = $3 WHERE id = $1 RETURNING *",
        row["id"], now, by,
    )  # fmt: skip


async def _lock_patient(conn: Conn, key: str) -> None:
    """Serialise changes of one patient's opposition and break-the-glass sessions."""
    await conn.execute("SELECT pg_advisory_xact_lock(hashtext('authz.patient:' || $1))", key)


async def _aliases(conn: Conn, key: str) -> list[str]:
    """Every key the patient's studies may carry: the INS key and the known IPP keys."""
    if not key.startswith("INS:"):
        return [key]
    rows = await conn.fetch(
        "SELECT structure, ipp FROM authz.patient_ipps WHERE ins = $1 ORDER BY structure, ipp",
        key[4:],
    )
    return [key, *(f"IPP:{r['structure']}:{r['ipp']}" for r in rows)]


class Policy:
    """The policy state and rules; every method is one transaction.

    Args:
        pool: Connections to the database holding the ``authz`` schema.
        settings: Durations, throttles and the share-code pepper.
    """

    def __init__(self, pool: asyncpg.Pool, settings: AuthorizeSettings) -> None:
        """Keep the pool and the settings."""
        self.pool = pool
        self.settings = settings
        self._pepper = settings.code_pepper.get_secret_value().encode()

    # --- patients ----------------------------------------------------------------------

    async def _patient_key(
        self, conn: Conn, actor: Actor, ins: str | None, ipp: str | None, structure: str | None
    ) -> str:
        """The key of the patient a command names (a patient always names themself)."""
        if actor.role is RoleValues.PATIENT:
            return patient_key_of_ins(_check_ins(actor.ins))
        if ins is not None:
            return patient_key_of_ins(_check_ins(ins))
        if ipp is not None and structure is not None:
            ipp = _text(ipp, "patient_ipp", minimum=1)
            found = await conn.fetchval(
                "SELECT ins FROM authz.patient_ipps WHERE structure = $1 AND ipp = $2",
                structure,
                ipp,
            )
            return patient_key_of_ins(found) if found else f"IPP:{structure}:{ipp}"
        raise PolicyError(400, "name the patient with patient_ins (or patient_ipp)")

    # --- decisions ---------------------------------------------------------------------

    async def decide(self, request: DecideRequest) -> DecideResponse:
        """Decide whether `request.actor` may see the study (rules in the module docstring)."""
        actor = request.actor
        if actor.role is RoleValues.ADMIN:
            return DecideResponse(allow=True, basis=AccessBasisValues.ADMIN)
        if actor.role is RoleValues.PATIENT:
            if actor.ins and request.patient_key == patient_key_of_ins(actor.ins):
                return DecideResponse(allow=True, basis=AccessBasisValues.PATIENT)
            return DecideResponse(allow=False, reason="not the patient")
        if actor.structure and actor.structure == request.structure:
            return DecideResponse(allow=True, basis=AccessBasisValues.PRODUCER)
        if actor.role is not RoleValues.PROFESSIONAL:
            return DecideResponse(allow=False, reason="not a professional")
        async with self.pool.acquire() as conn:
            row = await conn.fetchrow(
                _DECIDE_SQL, actor.sub, request.patient_key, request.study_uid
            )
        assert row is not None
        if row["opposed"]:
            return DecideResponse(allow=False, reason="opposition")
        for column, basis in (
            ("care", AccessBasisValues.CARE),
            ("community", AccessBasisValues.COMMUNITY),
            ("code", AccessBasisValues.SHARE_CODE),
            ("btg", AccessBasisValues.BREAK_GLASS),
        ):
            if row[column]:
                return DecideResponse(allow=True, basis=basis)
        return DecideResponse(
            allow=False, reason="no care relationship, share code or emergency access"
        )

    async def decide_many(self, requests: Sequence[DecideRequest]) -> list[DecideResponse]:
        """`decide` for each request, in order."""
        return [await self.decide(r) for r in requests]

    # --- audit of refusals -------------------------------------------------------------

    async def record_refusal(self, actor: Actor, op: str, error: PolicyError) -> None:
        """Write the audit event of a refused command whose rule did not write one itself.

        The event is the operation's own type (`trail.type_of`) with outcome ``denied``, in a
        transaction of its own: the refused command's transaction rolled back.
        """
        async with self.pool.acquire() as conn, conn.transaction():
            await trail.record(
                conn,
                trail.event(
                    trail.type_of(op),
                    actor,
                    patient_key=error.patient_key,
                    outcome=AuditOutcomeValues.DENIED,
                    reason=error.reason,
                    detail={"operation": op, "status": str(error.status)},
                ),
            )

    # --- care relationships ------------------------------------------------------------

    async def declare_care(self, actor: Actor, body: CareDeclaration) -> CareRelationship:
        """A structure (or an admin for one) declares a care relationship."""
        _require(actor, RoleValues.PRODUCER, RoleValues.ADMIN)
        structure = actor.structure if actor.role is RoleValues.PRODUCER else body.structure
        if structure is not None and not FINESS_PATTERN.fullmatch(structure):
            raise PolicyError(400, "structure must be a 9-character FINESS")
        if body.basis is CareBasisValues.SELF_ATTESTED:
            raise PolicyError(400, "self-attested relationships are declared by the professional")
        professional = _text(body.professional, "professional", minimum=1)
        assert professional is not None
        _check_uid(body.study_uid, "study_uid")
        return await self._insert_care(
            actor, professional, body.patient_ins, body.patient_ipp, structure, body.basis,
            body.study_uid, None, body.starts_at, body.ends_at,
            default_days=self.settings.care_default_days, max_days=self.settings.care_max_days,
        )  # fmt: skip

    async def attest_care(self, actor: Actor, body: SelfAttestation) -> CareRelationship:
        """A professional attests a care relationship themself (short, flagged by its basis)."""
        _require(actor, RoleValues.PROFESSIONAL)
        attestation = _text(
            body.attestation, "attestation", minimum=self.settings.justification_min_chars
        )
        days = self.settings.self_attested_max_days
        return await self._insert_care(
            actor, actor.sub, body.patient_ins, None, actor.structure,
            CareBasisValues.SELF_ATTESTED, None, attestation, None, body.ends_at,
            default_days=days, max_days=days,
        )  # fmt: skip

    async def _insert_care(
        self,
        actor: Actor,
        professional: str,
        ins: str | None,
        ipp: str | None,
        structure: str | None,
        basis: CareBasisValues,
        study_uid: str | None,
        attestation: str | None,
        starts_at: datetime | None,
        ends_at: datetime | None,
        *,
        default_days: int,
        max_days: int,
    ) -> CareRelationship:
        async with self.pool.acquire() as conn, conn.transaction():
            now: datetime = await conn.fetchval("SELECT now()")
            key = await self._patient_key(conn, actor, ins, ipp, structure)
            start = starts_at or now
            end = ends_at or start + timedelta(days=default_days)
            if end <= start:
                raise PolicyError(400, "ends_at must be after starts_at")
            if end <= now:
                raise PolicyError(400, "ends_at is in the past")
            if end - start > timedelta(days=max_days):
                raise PolicyError(400, f"a care relationship lasts at most {max_days} days")
            care_id = uuid.uuid4()
            row = await _one(
                conn,
                "INSERT INTO authz.care_relationships (id, actor_sub, patient_key, basis,"
                " starts_at, ends_at, declared_by, structure, study_uid, attestation)"
                " VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) RETURNING *",
                care_id, professional, key, basis.value, start, end, actor.sub, structure,
                study_uid, attestation,
            )  # fmt: skip
            await outbox.append(conn, lambda v: _care_grant(row, v, active=True))
            action = "attested" if basis is CareBasisValues.SELF_ATTESTED else "declared"
            await trail.record(conn, _care_audit(actor, row, action))
        return _care(row, now)

    async def end_care(self, actor: Actor, care_id: str) -> CareRelationship:
        """End a care relationship (its structure, its professional, or an admin)."""
        _require(actor, RoleValues.PRODUCER, RoleValues.PROFESSIONAL, RoleValues.ADMIN)
        async with self.pool.acquire() as conn, conn.transaction():
            now: datetime = await conn.fetchval("SELECT now()")
            row = await conn.fetchrow(
                "SELECT * FROM authz.care_relationships WHERE id = $1 FOR UPDATE", _uuid(care_id)
            )
            if row is None or not _may_manage_care(actor, row):
                raise PolicyError(404, "no such care relationship")
            ended = await _close_once(conn, "care_relationships", "ended", row, now, actor.sub)
            if ended is not None:
                row = ended
                await outbox.append(conn, lambda v: _care_grant(ended, v, active=False))
                await trail.record(conn, _care_audit(actor, ended, "ended"))
        return _care(row, now)

    async def list_care(self, actor: Actor, patient_ins: str | None) -> list[CareRelationship]:
        """Care relationships the caller may see (its own, its structure's, its patient's)."""
        conditions, args = _scope_for(actor, "actor_sub", "structure")
        if patient_ins is not None and actor.role is not RoleValues.PATIENT:
            args.append(patient_key_of_ins(_check_ins(patient_ins)))
            conditions.append(f"patient_key = ${len(args)}")
        async with self.pool.acquire() as conn:
            now: datetime = await conn.fetchval("SELECT now()")
            rows = await conn.fetch(
                f"SELECT * FROM authz.care_relationships WHERE {' AND '.join(conditions)}"
                f" ORDER BY created_at DESC LIMIT {_LIST_LIMIT}",
                *args,
            )
        return [_care(r, now) for r in rows]

    # --- share codes -------------------------------------------------------------------

    async def create_code(self, actor: Actor, body: ShareCodeCreate) -> ShareCodeCreated:
        """The patient (or a structure or admin on their behalf) creates a share code."""
        _require(actor, RoleValues.PATIENT, RoleValues.PRODUCER, RoleValues.ADMIN)
        if body.scope is ShareScopeValues.STUDY:
            if body.study_uid is None:
                raise PolicyError(400, "a study share code needs study_uid")
            _check_uid(body.study_uid, "study_uid")
        elif body.study_uid is not None:
            raise PolicyError(400, "study_uid only goes with scope 'study'")
        parts = codes.generate()
        async with self.pool.acquire() as conn, conn.transaction():
            now: datetime = await conn.fetchval("SELECT now()")
            key = await self._patient_key(conn, actor, body.patient_ins, None, actor.structure)
            start = body.valid_from or now
            end = body.valid_until or start + timedelta(days=self.settings.code_default_days)
            if end <= start or end <= now:
                raise PolicyError(400, "valid_until must be after valid_from and in the future")
            if end - start > timedelta(days=self.settings.code_max_days):
                raise PolicyError(
                    400, f"a share code is valid at most {self.settings.code_max_days} days"
                )
            row = await _one(
                conn,
                "INSERT INTO authz.share_codes (id, lookup, secret_hash, patient_key, scope,"
                " study_uid, valid_from, valid_until, created_by, created_by_role, structure)"
                " VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11) RETURNING *",
                uuid.uuid4(), parts.lookup, codes.hash_secret(self._pepper, parts.secret), key,
                body.scope.value, body.study_uid, start, end, actor.sub, actor.role.value,
                actor.structure if actor.role is RoleValues.PRODUCER else None,
            )  # fmt: skip
            await outbox.append(
                conn, lambda v: _code_event(row, v, ShareCodeEventValues.CREATED, actor.sub, now)
            )
            await trail.record(conn, _code_audit(AuditType.SHARECODE_CREATED, actor, row))
        return ShareCodeCreated(code=parts.display(), share_code=_code(row))

    async def list_codes(self, actor: Actor) -> list[ShareCode]:
        """Share codes of the patient, created by the structure, or redeemed by the professional."""
        conditions, args = _scope_for(actor, "bound_to", "structure")
        async with self.pool.acquire() as conn:
            rows = await conn.fetch(
                f"SELECT * FROM authz.share_codes WHERE {' AND '.join(conditions)}"
                f" ORDER BY created_at DESC LIMIT {_LIST_LIMIT}",
                *args,
            )
        return [_code(r) for r in rows]

    async def revoke_code(self, actor: Actor, code_id: str) -> ShareCode:
        """Revoke a share code: its grant (if redeemed) ends at once."""
        _require(actor, RoleValues.PATIENT, RoleValues.PRODUCER, RoleValues.ADMIN)
        async with self.pool.acquire() as conn, conn.transaction():
            now: datetime = await conn.fetchval("SELECT now()")
            row = await conn.fetchrow(
                "SELECT * FROM authz.share_codes WHERE id = $1 FOR UPDATE", _uuid(code_id)
            )
            if row is None or not _may_manage_code(actor, row):
                raise PolicyError(404, "no such share code")
            revoked = await _close_once(conn, "share_codes", "revoked", row, now, actor.sub)
            if revoked is not None:
                row = revoked
                await outbox.append(
                    conn,
                    lambda v: _code_event(revoked, v, ShareCodeEventValues.REVOKED, actor.sub, now),
                )
                if revoked["bound_to"] is not None:
                    await outbox.append(conn, lambda v: _code_grant(revoked, v))
                await trail.record(conn, _code_audit(AuditType.SHARECODE_REVOKED, actor, revoked))
        return _code(row)

    async def redeem_code(self, actor: Actor, body: ShareCodeRedeem) -> ShareCodeRedeemed:
        """A professional presents a code: the first one binds it; guessing is throttled.

        Every failure counts against the professional (`redeem_max_failures` in a sliding
        window, then 429) and, when the lookup group names real codes, against those codes
        (`code_max_failures`, then locked for good). All failures look alike to the caller.
        """
        _require(actor, RoleValues.PROFESSIONAL)
        s = self.settings
        failure: PolicyError | None = None
        async with self.pool.acquire() as conn, conn.transaction():
            await conn.execute(
                "SELECT pg_advisory_xact_lock(hashtext('authz.redeem:' || $1))", actor.sub
            )
            now: datetime = await conn.fetchval("SELECT now()")
            window_start = now - timedelta(seconds=s.redeem_window_seconds)
            recent = await conn.fetch(
                "SELECT at FROM authz.redeem_failures WHERE actor_sub = $1 AND at > $2"
                " ORDER BY at",
                actor.sub, window_start,
            )  # fmt: skip
            if len(recent) >= s.redeem_max_failures:
                wait = recent[len(recent) - s.redeem_max_failures]["at"] - window_start
                raise PolicyError(
                    429, "too many failed attempts; try again later",
                    retry_after=max(1, int(wait.total_seconds()) + 1),
                )  # fmt: skip
            parts = codes.parse(body.code)
            matched: asyncpg.Record | None = None
            candidates: list[asyncpg.Record] = []
            if parts is not None:
                candidates = await conn.fetch(
                    "SELECT * FROM authz.share_codes WHERE lookup = $1 ORDER BY created_at"
                    " FOR UPDATE",
                    parts.lookup,
                )
                digest = codes.hash_secret(self._pepper, parts.secret)
                for row in candidates:
                    if hmac.compare_digest(bytes(row["secret_hash"]), digest):
                        matched = row
            if matched is None:
                failure = PolicyError(403, _NOT_VALID, audited=True)
                await self._count_code_failures(conn, actor, candidates, now)
            elif matched["bound_to"] == actor.sub and matched["revoked_at"] is None:
                pass  # the same professional again: nothing changes
            elif (
                matched["revoked_at"] is not None
                or matched["locked_at"] is not None
                or matched["bound_to"] is not None
                or not matched["valid_from"] <= now < matched["valid_until"]
            ):
                failure = PolicyError(403, _NOT_VALID, audited=True)
                await self._count_code_failures(conn, actor, [matched], now)
            else:
                matched = await _one(
                    conn,
                    "UPDATE authz.share_codes SET bound_to = $2, bound_at = $3 WHERE id = $1"
                    " RETURNING *",
                    matched["id"], actor.sub, now,
                )  # fmt: skip
                bound = matched
                await outbox.append(
                    conn,
                    lambda v: _code_event(bound, v, ShareCodeEventValues.REDEEMED, actor.sub, now),
                )
                await outbox.append(conn, lambda v: _code_grant(bound, v))
            if failure is not None:
                await conn.execute(
                    "INSERT INTO authz.redeem_failures (actor_sub, at) VALUES ($1, $2)",
                    actor.sub,
                    now,
                )
                # The patient is known when the code exists (bound to another, revoked,
                # expired, locked): the refusal then shows in the patient's access history.
                await trail.record(
                    conn,
                    trail.event(
                        AuditType.SHARECODE_USED, actor,
                        patient_key=matched["patient_key"] if matched is not None else None,
                        study_uid=matched["study_uid"] if matched is not None else None,
                        outcome=AuditOutcomeValues.DENIED, reason=_NOT_VALID,
                        detail={"code_id": str(matched["id"])} if matched is not None else None,
                    ),
                )  # fmt: skip
            else:
                assert matched is not None
                await trail.record(
                    conn,
                    _code_audit(
                        AuditType.SHARECODE_USED, actor, matched, basis=AuditBasis.SHARE_CODE
                    ),
                )
        # Raised after the commit: the failure counts must be kept.
        if failure is not None:
            raise failure
        assert matched is not None
        key: str = matched["patient_key"]
        return ShareCodeRedeemed(
            id=str(matched["id"]),
            patient_key=key,
            patient_ins=key[4:] if key.startswith("INS:") else None,
            scope=ShareScopeValues(matched["scope"]),
            study_uid=matched["study_uid"],
            valid_until=matched["valid_until"],
        )

    async def _count_code_failures(
        self, conn: Conn, actor: Actor, rows: Sequence[asyncpg.Record], now: datetime
    ) -> None:
        """Count one failed attempt against each live code the attempt named; lock at the limit."""
        for row in rows:
            if (
                row["locked_at"] is not None
                or row["revoked_at"] is not None
                or row["valid_until"] <= now
            ):
                continue
            updated = await _one(
                conn,
                "UPDATE authz.share_codes SET failed_attempts = failed_attempts + 1,"
                " locked_at = CASE WHEN failed_attempts + 1 >= $2 THEN $3::timestamptz END"
                " WHERE id = $1 RETURNING *",
                row["id"], self.settings.code_max_failures, now,
            )  # fmt: skip
            if updated["locked_at"] is not None:
                make = functools.partial(
                    _code_event, updated, event=ShareCodeEventValues.LOCKED, by=actor.sub, at=now
                )
                await outbox.append(conn, make)

    # --- oppositions -------------------------------------------------------------------

    async def set_opposition(self, actor: Actor, body: OppositionChange) -> OppositionStatus:
        """The patient opposes sharing (online, or collected at a structure's desk)."""
        _require(actor, RoleValues.PATIENT, RoleValues.PRODUCER, RoleValues.ADMIN)
        note = _text(body.note, "note")
        async with self.pool.acquire() as conn, conn.transaction():
            key = await self._patient_key(
                conn, actor, body.patient_ins, body.patient_ipp, actor.structure
            )
            await _lock_patient(conn, key)
            active = await conn.fetchrow(
                "SELECT * FROM authz.oppositions WHERE patient_key = $1 AND lifted_at IS NULL", key
            )
            if active is None:
                structure = actor.structure if actor.role is RoleValues.PRODUCER else None
                row = await _one(
                    conn,
                    "INSERT INTO authz.oppositions (id, patient_key, set_by, structure, note)"
                    " VALUES ($1, $2, $3, $4, $5) RETURNING *",
                    uuid.uuid4(), key, actor.sub, structure, note,
                )  # fmt: skip
                keys = await _aliases(conn, key)
                await outbox.append(conn, lambda v: _opposition_event(row, v, keys))
                await trail.record(conn, _opposition_audit(AuditType.OPPOSITION_SET, actor, row))
            return await self._opposition_status(conn, key)

    async def lift_opposition(self, actor: Actor, body: OppositionChange) -> OppositionStatus:
        """Lift the patient's opposition (the patient, the structure that collected it, admin)."""
        _require(actor, RoleValues.PATIENT, RoleValues.PRODUCER, RoleValues.ADMIN)
        async with self.pool.acquire() as conn, conn.transaction():
            key = await self._patient_key(
                conn, actor, body.patient_ins, body.patient_ipp, actor.structure
            )
            await _lock_patient(conn, key)
            active = await conn.fetchrow(
                "SELECT * FROM authz.oppositions WHERE patient_key = $1 AND lifted_at IS NULL", key
            )
            if active is not None:
                if actor.role is RoleValues.PRODUCER and active["structure"] != actor.structure:
                    raise PolicyError(
                        403,
                        "only the patient or the structure that collected it may lift it",
                        patient_key=key,
                    )
                row = await _one(
                    conn,
                    "UPDATE authz.oppositions SET lifted_at = now(), lifted_by = $2,"
                    " lifted_by_structure = $3 WHERE id = $1 RETURNING *",
                    active["id"], actor.sub, actor.structure,
                )  # fmt: skip
                keys = await _aliases(conn, key)
                await outbox.append(conn, lambda v: _opposition_event(row, v, keys))
                await trail.record(conn, _opposition_audit(AuditType.OPPOSITION_LIFTED, actor, row))
            return await self._opposition_status(conn, key)

    async def opposition_status(self, actor: Actor, patient_ins: str | None) -> OppositionStatus:
        """Whether the patient opposes sharing, with the history."""
        _require(actor, RoleValues.PATIENT, RoleValues.PRODUCER, RoleValues.ADMIN)
        async with self.pool.acquire() as conn:
            key = await self._patient_key(conn, actor, patient_ins, None, None)
            return await self._opposition_status(conn, key)

    async def _opposition_status(self, conn: Conn, key: str) -> OppositionStatus:
        rows = await conn.fetch(
            "SELECT * FROM authz.oppositions WHERE patient_key = $1 ORDER BY set_at DESC", key
        )
        history = [_opposition(r) for r in rows]
        return OppositionStatus(
            patient_key=key, active=any(o.lifted_at is None for o in history), history=history
        )

    # --- break-the-glass ---------------------------------------------------------------

    async def open_break_glass(self, actor: Actor, body: BreakGlassOpen) -> BreakGlassSession:
        """A physician opens emergency access; impossible when the patient opposes sharing."""
        _require(actor, RoleValues.PROFESSIONAL)
        if actor.profession != PHYSICIAN_PROFESSION:
            named = body.patient_ins if INS_PATTERN.fullmatch(body.patient_ins) else None
            raise PolicyError(
                403,
                "only physicians may break the glass",
                patient_key=patient_key_of_ins(named) if named else None,
            )
        justification = _text(
            body.justification, "justification", minimum=self.settings.justification_min_chars
        )
        assert justification is not None
        _check_uid(body.study_uid, "study_uid")
        key = patient_key_of_ins(_check_ins(body.patient_ins))
        refused = f"{_OPPOSED}: break-the-glass is impossible"
        row: asyncpg.Record | None = None
        async with self.pool.acquire() as conn, conn.transaction():
            await _lock_patient(conn, key)
            opposed = await conn.fetchval(
                "SELECT EXISTS (SELECT 1 FROM authz.oppositions WHERE patient_key = ANY($1::text[])"
                " AND lifted_at IS NULL)",
                await _aliases(conn, key),
            )
            if opposed:
                # Committed, then refused: the attempt stays in the patient's access history.
                await trail.record(
                    conn,
                    trail.event(
                        AuditType.BTG_OPENED, actor, patient_key=key, study_uid=body.study_uid,
                        outcome=AuditOutcomeValues.DENIED, reason=refused,
                        justification=justification,
                    ),
                )  # fmt: skip
            else:
                row = await _one(
                    conn,
                    "INSERT INTO authz.break_glass (id, actor_sub, actor_structure, patient_key,"
                    " study_uid, justification, expires_at)"
                    " VALUES ($1, $2, $3, $4, $5, $6, now() + $7 * interval '1 hour') RETURNING *",
                    uuid.uuid4(), actor.sub, actor.structure, key, body.study_uid, justification,
                    self.settings.break_glass_hours,
                )  # fmt: skip
                opened = row
                await outbox.append(conn, lambda v: _break_glass_event(opened, v))
                await outbox.append(conn, lambda v: _break_glass_grant(opened, v))
                await trail.record(
                    conn,
                    trail.event(
                        AuditType.BTG_OPENED, actor, patient_key=key, study_uid=body.study_uid,
                        basis=AuditBasis.BREAK_THE_GLASS, justification=justification,
                        detail={"session_id": str(opened["id"]),
                                "expires_at": opened["expires_at"].isoformat()},
                    ),
                )  # fmt: skip
        if row is None:
            raise PolicyError(403, refused, patient_key=key, audited=True)
        return _session(row)

    async def list_break_glass(self, actor: Actor, unreviewed: bool) -> list[BreakGlassSession]:
        """Sessions: all (admin, for review), one's own (physician), about oneself (patient)."""
        _require(actor, RoleValues.PROFESSIONAL, RoleValues.PATIENT, RoleValues.ADMIN)
        conditions, args = _scope_for(actor, "actor_sub", None)
        if unreviewed:
            conditions.append("reviewed_at IS NULL")
        async with self.pool.acquire() as conn:
            rows = await conn.fetch(
                f"SELECT * FROM authz.break_glass WHERE {' AND '.join(conditions)}"
                f" ORDER BY opened_at DESC LIMIT {_LIST_LIMIT}",
                *args,
            )
        return [_session(r) for r in rows]

    async def review_break_glass(
        self, actor: Actor, session_id: str, body: BreakGlassReview
    ) -> BreakGlassSession:
        """An admin records the review of a session."""
        _require(actor, RoleValues.ADMIN)
        note = _text(body.note, "note")
        async with self.pool.acquire() as conn, conn.transaction():
            row = await conn.fetchrow(
                "UPDATE authz.break_glass SET reviewed_at = now(), reviewed_by = $2,"
                " review_note = $3 WHERE id = $1 RETURNING *",
                _uuid(session_id), actor.sub, note,
            )  # fmt: skip
            if row is None:
                raise PolicyError(404, "no such break-the-glass session")
            await trail.record(
                conn,
                trail.event(
                    AuditType.ADMIN_CHANGE, actor, patient_key=row["patient_key"],
                    detail={"entity": "break_glass_review", "key": str(row["id"])},
                ),
            )  # fmt: skip
        return _session(row)

    # --- directory (admin) -------------------------------------------------------------

    async def put_structure(
        self, actor: Actor, finess: str, body: StructureRecord
    ) -> dict[str, Any]:
        """Create or update a member structure."""
        _require(actor, RoleValues.ADMIN)
        finess = body.finess or finess
        if not FINESS_PATTERN.fullmatch(finess):
            raise PolicyError(400, "finess must be a 9-character FINESS")
        name = _text(body.name, "name", minimum=1)
        async with self.pool.acquire() as conn, conn.transaction():
            row = await _one(
                conn,
                "INSERT INTO authz.structures (finess, name, active) VALUES ($1, $2, $3)"
                " ON CONFLICT (finess) DO UPDATE SET name = excluded.name,"
                " active = excluded.active, updated_at = now() RETURNING *",
                finess, name, body.active,
            )  # fmt: skip
            await _directory_event(conn, "structure", finess, actor)
        return dict(row)

    async def list_structures(self, actor: Actor) -> list[dict[str, Any]]:
        """Every member structure."""
        _require(actor, RoleValues.ADMIN)
        async with self.pool.acquire() as conn:
            return [
                dict(r) for r in await conn.fetch("SELECT * FROM authz.structures ORDER BY finess")
            ]

    async def put_professional(
        self, actor: Actor, sub: str, body: ProfessionalRecord
    ) -> dict[str, Any]:
        """Create or update a professional and replace their structure memberships."""
        _require(actor, RoleValues.ADMIN)
        sub = _text(body.sub or sub, "sub", minimum=1) or sub
        for structure in body.structures:
            if not FINESS_PATTERN.fullmatch(structure):
                raise PolicyError(400, "structures must be 9-character FINESS numbers")
        async with self.pool.acquire() as conn, conn.transaction():
            row = await _one(
                conn,
                "INSERT INTO authz.professionals (sub, rpps, name, profession)"
                " VALUES ($1, $2, $3, $4) ON CONFLICT (sub) DO UPDATE SET rpps = excluded.rpps,"
                " name = excluded.name, profession = excluded.profession, updated_at = now()"
                " RETURNING *",
                sub, body.rpps, body.name, body.profession,
            )  # fmt: skip
            await conn.execute("DELETE FROM authz.memberships WHERE professional = $1", sub)
            await conn.executemany(
                "INSERT INTO authz.memberships (professional, structure) VALUES ($1, $2)",
                [(sub, s) for s in sorted(set(body.structures))],
            )
            await _directory_event(conn, "professional", sub, actor)
        return {**dict(row), "structures": sorted(set(body.structures))}

    async def list_professionals(self, actor: Actor) -> list[dict[str, Any]]:
        """Every registered professional with their structures."""
        _require(actor, RoleValues.ADMIN)
        async with self.pool.acquire() as conn:
            rows = await conn.fetch(
                "SELECT p.*, coalesce(array_agg(m.structure ORDER BY m.structure)"
                " FILTER (WHERE m.structure IS NOT NULL), '{}') AS structures"
                " FROM authz.professionals p LEFT JOIN authz.memberships m ON m.professional = p.sub"
                f" GROUP BY p.sub ORDER BY p.sub LIMIT {_LIST_LIMIT}"
            )
        return [dict(r) for r in rows]

    async def put_patient(self, actor: Actor, ins: str, body: PatientRecord) -> dict[str, Any]:
        """Create or update a patient and replace their local identifiers.

        An active opposition is published again with the new aliases, so it also covers
        studies that carry only one of those local identifiers.
        """
        _require(actor, RoleValues.ADMIN)
        ins = _check_ins(body.ins or ins)
        key = patient_key_of_ins(ins)
        async with self.pool.acquire() as conn, conn.transaction():
            await _lock_patient(conn, key)
            await conn.execute(
                "INSERT INTO authz.patients (ins) VALUES ($1)"
                " ON CONFLICT (ins) DO UPDATE SET updated_at = now()",
                ins,
            )
            await conn.execute("DELETE FROM authz.patient_ipps WHERE ins = $1", ins)
            try:
                await conn.executemany(
                    "INSERT INTO authz.patient_ipps (structure, ipp, ins) VALUES ($1, $2, $3)",
                    [(i.structure, i.ipp, ins) for i in body.ipps],
                )
            except asyncpg.UniqueViolationError:
                raise PolicyError(
                    409, "a local identifier already belongs to another patient"
                ) from None
            active = await conn.fetchrow(
                "SELECT * FROM authz.oppositions WHERE patient_key = $1 AND lifted_at IS NULL", key
            )
            keys = await _aliases(conn, key)
            if active is not None:
                await outbox.append(conn, lambda v: _opposition_event(active, v, keys))
            await _directory_event(conn, "patient", key, actor)
        return {"ins": ins, "patient_key": key, "aliases": keys[1:]}

    async def get_patient(self, actor: Actor, ins: str) -> dict[str, Any]:
        """A patient's record."""
        _require(actor, RoleValues.ADMIN)
        ins = _check_ins(ins)
        async with self.pool.acquire() as conn:
            if not await conn.fetchval(
                "SELECT EXISTS (SELECT 1 FROM authz.patients WHERE ins = $1)", ins
            ):
                raise PolicyError(404, "no such patient")
            keys = await _aliases(conn, patient_key_of_ins(ins))
        return {"ins": ins, "patient_key": keys[0], "aliases": keys[1:]}


_DECIDE_SQL: Final = """
SELECT
  EXISTS (SELECT 1 FROM authz.oppositions o
           WHERE o.lifted_at IS NULL AND o.patient_key = ANY(
             SELECT $2 UNION ALL
             SELECT 'IPP:' || pi.structure || ':' || pi.ipp FROM authz.patient_ipps pi
              WHERE $2 LIKE 'INS:%' AND pi.ins = substr($2, 5))) AS opposed,
  EXISTS (SELECT 1 FROM authz.care_relationships c
           WHERE c.actor_sub = $1 AND c.patient_key = $2 AND c.ended_at IS NULL
             AND c.starts_at <= now() AND c.ends_at > now()) AS care,
  EXISTS (SELECT 1 FROM authz.community_shares cs
           JOIN authz.community_members cm ON cm.community_id = cs.community_id
           WHERE cm.actor_sub = $1 AND cm.removed_at IS NULL AND cs.patient_key = $2
             AND cs.ended_at IS NULL AND cs.valid_from <= now()
             AND cs.valid_until > now()) AS community,
  EXISTS (SELECT 1 FROM authz.share_codes s
           WHERE s.bound_to = $1 AND s.patient_key = $2 AND s.revoked_at IS NULL
             AND s.valid_from <= now() AND s.valid_until > now()
             AND (s.study_uid IS NULL OR s.study_uid = $3)) AS code,
  EXISTS (SELECT 1 FROM authz.break_glass b
           WHERE b.actor_sub = $1 AND b.patient_key = $2
             AND b.opened_at <= now() AND b.expires_at > now()
             AND (b.study_uid IS NULL OR b.study_uid = $3)) AS btg
"""


def _may_manage_care(actor: Actor, row: asyncpg.Record) -> bool:
    if actor.role is RoleValues.ADMIN:
        return True
    if actor.role is RoleValues.PRODUCER:
        return row["structure"] is not None and row["structure"] == actor.structure
    return bool(row["actor_sub"] == actor.sub)


def _may_manage_code(actor: Actor, row: asyncpg.Record) -> bool:
    if actor.role is RoleValues.ADMIN:
        return True
    if actor.role is RoleValues.PATIENT:
        return actor.ins is not None and row["patient_key"] == patient_key_of_ins(actor.ins)
    return row["structure"] is not None and row["structure"] == actor.structure


def _scope_for(
    actor: Actor, own_column: str, structure_column: str | None
) -> tuple[list[str], list[Any]]:
    """Rows a caller may list: admin all; patient theirs; structure its own; professional theirs."""
    if actor.role is RoleValues.ADMIN:
        return ["TRUE"], []
    if actor.role is RoleValues.PATIENT and actor.ins:
        return ["patient_key = $1"], [patient_key_of_ins(actor.ins)]
    if actor.role is RoleValues.PRODUCER and structure_column and actor.structure:
        return [f"{structure_column} = $1"], [actor.structure]
    if actor.role is RoleValues.PROFESSIONAL:
        return [f"{own_column} = $1"], [actor.sub]
    raise PolicyError(403, "not allowed for this role")


# --- events ----------------------------------------------------------------------------


def _care_grant(row: asyncpg.Record, version: int, *, active: bool) -> GrantChanged:
    return GrantChanged(
        grant_id=f"care:{row['id']}",
        version=version,
        actor_sub=row["actor_sub"],
        patient_key=row["patient_key"],
        valid_from=row["starts_at"],
        valid_until=row["ended_at"] if row["ended_at"] is not None else row["ends_at"],
        basis=AccessBasisValues.CARE,
        active=active and row["ended_at"] is None,
    )


def _code_grant(row: asyncpg.Record, version: int) -> GrantChanged:
    return GrantChanged(
        grant_id=f"code:{row['id']}",
        version=version,
        actor_sub=row["bound_to"],
        patient_key=row["patient_key"],
        study_uid=row["study_uid"],
        valid_from=row["valid_from"],
        valid_until=row["revoked_at"] if row["revoked_at"] is not None else row["valid_until"],
        basis=AccessBasisValues.SHARE_CODE,
        active=row["revoked_at"] is None,
    )


def _break_glass_grant(row: asyncpg.Record, version: int) -> GrantChanged:
    return GrantChanged(
        grant_id=f"btg:{row['id']}",
        version=version,
        actor_sub=row["actor_sub"],
        patient_key=row["patient_key"],
        study_uid=row["study_uid"],
        valid_from=row["opened_at"],
        valid_until=row["expires_at"],
        basis=AccessBasisValues.BREAK_GLASS,
    )


def _code_event(
    row: asyncpg.Record, version: int, event: ShareCodeEventValues, by: str, at: datetime
) -> ShareCodeChanged:
    return ShareCodeChanged(
        code_id=str(row["id"]),
        version=version,
        event=event,
        patient_key=row["patient_key"],
        scope=ShareScopeValues(row["scope"]),
        study_uid=row["study_uid"],
        actor_sub=by,
        at=at,
    )


def _opposition_event(row: asyncpg.Record, version: int, keys: list[str]) -> OppositionChanged:
    return OppositionChanged(
        opposition_id=str(row["id"]),
        version=version,
        patient_key=row["patient_key"],
        patient_keys=keys,
        active=row["lifted_at"] is None,
        set_at=row["set_at"],
        set_by=row["set_by"],
        structure=row["structure"],
        lifted_at=row["lifted_at"],
        lifted_by=row["lifted_by"],
    )


def _break_glass_event(row: asyncpg.Record, version: int) -> BreakGlassOpened:
    return BreakGlassOpened(
        session_id=str(row["id"]),
        version=version,
        actor_sub=row["actor_sub"],
        actor_structure=row["actor_structure"],
        patient_key=row["patient_key"],
        study_uid=row["study_uid"],
        justification=row["justification"],
        opened_at=row["opened_at"],
        expires_at=row["expires_at"],
    )


async def _directory_event(conn: Conn, entity: str, key: str, actor: Actor) -> None:
    now: datetime = await conn.fetchval("SELECT now()")
    await outbox.append(
        conn,
        lambda v: DirectoryChanged(entity=entity, key=key, version=v, actor_sub=actor.sub, at=now),
    )
    await trail.record(
        conn,
        trail.event(
            AuditType.ADMIN_CHANGE,
            actor,
            patient_key=key if entity == "patient" else None,
            detail={"entity": entity, "key": key},
        ),
    )


# --- audit events ------------------------------------------------------------------------


def _care_audit(actor: Actor, row: asyncpg.Record, action: str) -> AuditEvent:
    return trail.event(
        AuditType.CARE_CHANGED,
        actor,
        patient_key=row["patient_key"],
        study_uid=row["study_uid"],
        justification=row["attestation"],
        detail={
            "action": action,
            "care_id": str(row["id"]),
            "professional": row["actor_sub"],
            "care_basis": row["basis"],
            "ends_at": (row["ended_at"] or row["ends_at"]).isoformat(),
        },
    )


def _code_audit(
    type_: AuditType,
    actor: Actor,
    row: asyncpg.Record,
    *,
    basis: AuditBasis = AuditBasis.NONE,
) -> AuditEvent:
    return trail.event(
        type_,
        actor,
        patient_key=row["patient_key"],
        study_uid=row["study_uid"],
        basis=basis,
        detail={
            "code_id": str(row["id"]),
            "scope": row["scope"],
            "valid_until": row["valid_until"].isoformat(),
        },
    )


def _opposition_audit(type_: AuditType, actor: Actor, row: asyncpg.Record) -> AuditEvent:
    detail = {"opposition_id": str(row["id"])}
    if row["structure"]:
        detail["collected_by"] = row["structure"]
    return trail.event(type_, actor, patient_key=row["patient_key"], detail=detail)

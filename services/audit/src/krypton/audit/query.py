"""Audit queries: who may see which records, as one parameterised SQL statement.

Scopes (set by the gateway from the caller's verified rights, never from the query string):

- patient: the events that touched the studies of the caller's INS (through the ``studies``
  projection) or that name the caller's INS; studies and patients of other people that the same
  event touched are removed from what the patient sees, and so are technical fields.
- structure: the events on the studies produced by the caller's structure, and the events of
  its own staff (for its data protection officer).
- all: everything (platform administrator).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

import asyncpg
import msgspec

from krypton.contracts.audit.v1 import AuditEvent, AuditQueryRequest, AuditScopeValues
from krypton.core.errors import ValidationError

__all__ = ["MAX_LIMIT", "Record", "build_query", "run_query"]

MAX_LIMIT = 1000
_decoder = msgspec.json.Decoder(AuditEvent)


@dataclass(frozen=True, slots=True)
class Record:
    """One log record as a query returns it."""

    seq: int
    recorded_at: datetime
    event: AuditEvent


class _Params:
    def __init__(self) -> None:
        self.values: list[object] = []

    def add(self, value: object) -> str:
        self.values.append(value)
        return f"${len(self.values)}"


def _time(value: str, name: str) -> datetime:
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        msg = "expected an ISO 8601 date or date-time"
        raise ValidationError(msg, field=name) from None
    if parsed.tzinfo is None:  # a bare date or date-time is read as UTC
        parsed = parsed.replace(tzinfo=UTC)
    return parsed


def build_query(request: AuditQueryRequest) -> tuple[str, list[object]]:
    """The SQL and parameters answering `request`.

    Raises:
        ValidationError: a filter is malformed, or the scope lacks the identity it needs.
    """
    p = _Params()
    where: list[str] = []
    actor = request.actor
    if request.scope is AuditScopeValues.PATIENT:
        if not actor.ins:
            msg = "a patient scope needs the caller's INS"
            raise ValidationError(msg, field="scope")
        ins = p.add(actor.ins)
        where.append(
            f"(l.study_uids && ARRAY(SELECT study_uid FROM audit.studies WHERE patient_ins = {ins})"
            f" OR l.patient_keys && ARRAY['INS:' || {ins}])"
        )
    elif request.scope is AuditScopeValues.STRUCTURE:
        if not actor.structure:
            msg = "a structure scope needs the caller's structure"
            raise ValidationError(msg, field="scope")
        structure = p.add(actor.structure)
        where.append(
            f"(l.actor_structure = {structure} OR EXISTS (SELECT 1 FROM audit.studies s"
            f" WHERE s.study_uid = ANY(l.study_uids) AND s.structure = {structure}))"
        )
    if request.actor_sub:
        where.append(f"l.actor_sub = {p.add(request.actor_sub)}")
    if request.patient:
        patient = p.add(request.patient)
        where.append(
            f"(l.patient_keys && ARRAY[{patient}, 'INS:' || {patient}] OR l.study_uids && ARRAY("
            f"SELECT study_uid FROM audit.studies WHERE patient_ins = {patient}"
            f" OR patient_key = {patient}))"
        )
    if request.start:
        where.append(f"l.occurred_at >= {p.add(_time(request.start, 'from'))}")
    if request.end:
        where.append(f"l.occurred_at < {p.add(_time(request.end, 'to'))}")
    if request.types:
        where.append(f"l.event_type = ANY({p.add(list(request.types))}::text[])")
    if not 0 < request.limit <= MAX_LIMIT:
        msg = f"limit must be between 1 and {MAX_LIMIT}"
        raise ValidationError(msg, field="limit")
    if request.offset < 0:
        msg = "offset must not be negative"
        raise ValidationError(msg, field="offset")
    sql = (
        "SELECT l.seq, l.recorded_at, l.body FROM audit.log l"
        f" WHERE {' AND '.join(where) or 'TRUE'}"
        f" ORDER BY l.seq DESC LIMIT {p.add(request.limit)} OFFSET {p.add(request.offset)}"
    )
    return sql, p.values


async def _own_studies(pool: asyncpg.Pool, ins: str) -> set[str]:
    rows = await pool.fetch("SELECT study_uid FROM audit.studies WHERE patient_ins = $1", ins)
    return {r["study_uid"] for r in rows}


def _for_patient(event: AuditEvent, ins: str, own: set[str]) -> AuditEvent:
    """What a patient sees of an event: their own studies only, no technical details."""
    return msgspec.structs.replace(
        event,
        study_uids=[uid for uid in event.study_uids if uid in own],
        patients=[pt for pt in event.patients if pt.ins == ins or pt.key == f"INS:{ins}"],
        client_address=None,
        query=None,
        trace_id=None,
        detail={},
        instances=event.instances if len(event.study_uids) <= 1 else None,
    )


async def run_query(pool: asyncpg.Pool, request: AuditQueryRequest) -> list[Record]:
    """Answer `request` (newest first)."""
    sql, params = build_query(request)
    rows = await pool.fetch(sql, *params)
    records = [Record(r["seq"], r["recorded_at"], _decoder.decode(bytes(r["body"]))) for r in rows]
    if request.scope is AuditScopeValues.PATIENT:
        ins = request.actor.ins
        assert ins is not None
        own = await _own_studies(pool, ins)
        records = [Record(r.seq, r.recorded_at, _for_patient(r.event, ins, own)) for r in records]
    return records

"""The hash chain: append events, checkpoint the head, verify, purge.

Record ``n`` stores ``body`` (the canonical JSON bytes of its event), ``prev_hash`` (the hash of
record ``n - 1``; 32 zero bytes for record 1) and ``hash = SHA-256(prev_hash || body)``. Appends
take one transaction-scoped advisory lock, so any number of writers (service replicas) extend
one chain with gap-free sequence numbers; event ids already in the log are skipped under the same
lock, so a redelivered event is recorded once and never forks the chain.

A purge removes a prefix of the chain and first writes a ``purge`` checkpoint holding the hash
of the last record it removes: verification of the remaining records starts from it.
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

import asyncpg
import msgspec

from krypton.contracts.audit.v1 import AuditCheckpoint, AuditEvent

__all__ = [
    "CHAIN_LOCK_KEY",
    "GENESIS",
    "VerifyResult",
    "append",
    "canonical",
    "checkpoint",
    "link",
    "patient_keys",
    "purge",
    "verify",
]

#: Advisory lock serialising appends and purges (64-bit; "KRY" "AUDT").
CHAIN_LOCK_KEY = 0x4B5259_41554454
#: The previous hash of record 1.
GENESIS = bytes(32)

_COLUMNS = (
    "seq", "event_id", "occurred_at", "recorded_at", "event_type", "outcome", "basis",
    "actor_sub", "actor_structure", "study_uids", "patient_keys", "body", "prev_hash", "hash",
)  # fmt: skip
_encoder = msgspec.json.Encoder(order="deterministic")
_decoder = msgspec.json.Decoder(AuditEvent)
Executor = asyncpg.Connection | asyncpg.pool.PoolConnectionProxy


def canonical(event: AuditEvent) -> bytes:
    """The bytes that are hashed and stored: deterministic JSON of the event."""
    return _encoder.encode(event)


def link(prev_hash: bytes, body: bytes) -> bytes:
    """The hash of a record whose predecessor hashes to `prev_hash`."""
    return hashlib.sha256(prev_hash + body).digest()


def patient_keys(event: AuditEvent) -> list[str]:
    """The patient keys an event names (INS as ``INS:<ins>`` when only the INS is known)."""
    keys: list[str] = []
    for patient in event.patients:
        for key in (patient.key, f"INS:{patient.ins}" if patient.ins else None):
            if key and key not in keys:
                keys.append(key)
    return keys


def _occurred(event: AuditEvent) -> datetime:
    return datetime.fromisoformat(event.time.replace("Z", "+00:00"))


async def _head(conn: Executor) -> tuple[int, bytes]:
    """The last record's (seq, hash), else the last checkpoint's (all purged), else genesis."""
    row = await conn.fetchrow("SELECT seq, hash FROM audit.log ORDER BY seq DESC LIMIT 1")
    if row is None:
        row = await conn.fetchrow(
            "SELECT seq, hash FROM audit.checkpoints ORDER BY seq DESC LIMIT 1"
        )
    if row is None:
        return 0, GENESIS
    return int(row["seq"]), bytes(row["hash"])


async def append(conn: Executor, events: Sequence[AuditEvent]) -> int:
    """Append the events not yet in the log, in order; return how many were added.

    Safe to call from N processes at once and with redelivered events.
    """
    if not events:
        return 0
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock($1)", CHAIN_LOCK_KEY)
        ids = [uuid.UUID(e.event_id) for e in events]
        seen = {
            r["event_id"]
            for r in await conn.fetch(
                "SELECT event_id FROM audit.log WHERE event_id = ANY($1::uuid[])", ids
            )
        }
        seq, prev = await _head(conn)
        # clock_timestamp(), read under the lock: recorded_at never goes down as seq goes up,
        # which purge relies on to remove a prefix.
        now = await conn.fetchval("SELECT clock_timestamp()")
        rows = []
        for event, event_id in zip(events, ids, strict=True):
            if event_id in seen:
                continue
            seen.add(event_id)
            body = canonical(event)
            digest = link(prev, body)
            seq += 1
            rows.append(
                (
                    seq,
                    event_id,
                    _occurred(event),
                    now,
                    event.type.value,
                    event.outcome.value,
                    event.basis.value,
                    event.actor.sub,
                    event.actor.structure,
                    list(event.study_uids),
                    patient_keys(event),
                    body,
                    prev,
                    digest,
                )
            )
            prev = digest
        if rows:
            await conn.copy_records_to_table(
                "log",
                schema_name="audit",
                records=rows,
                columns=_COLUMNS,
            )
        return len(rows)


async def checkpoint(conn: Executor, kind: str = "periodic") -> AuditCheckpoint | None:
    """Record the current head as a checkpoint; None if the head already has one (or no log)."""
    row = await conn.fetchrow(
        "INSERT INTO audit.checkpoints (seq, hash, kind)"
        " SELECT seq, hash, $1 FROM audit.log ORDER BY seq DESC LIMIT 1"
        " ON CONFLICT (seq) DO NOTHING RETURNING seq, hash, recorded_at",
        kind,
    )
    if row is None:
        return None
    return AuditCheckpoint(
        seq=row["seq"],
        hash=bytes(row["hash"]).hex(),
        time=row["recorded_at"].isoformat(),
        kind=kind,
    )


@dataclass(frozen=True, slots=True)
class VerifyResult:
    """The outcome of a chain verification."""

    ok: bool
    checked: int  # records checked
    first_seq: int | None = None
    last_seq: int | None = None
    broken_seq: int | None = None  # the first record that does not verify
    problem: str | None = None

    def describe(self) -> str:
        """One line for an operator."""
        if self.ok:
            if not self.checked:
                return "audit chain OK: empty"
            return f"audit chain OK: {self.checked} records, seq {self.first_seq}..{self.last_seq}"
        return f"audit chain BROKEN at seq {self.broken_seq}: {self.problem}"


def _column_mismatch(row: asyncpg.Record, event: AuditEvent) -> str | None:
    expected = {
        "event_id": uuid.UUID(event.event_id),
        "occurred_at": _occurred(event),
        "event_type": event.type.value,
        "outcome": event.outcome.value,
        "basis": event.basis.value,
        "actor_sub": event.actor.sub,
        "actor_structure": event.actor.structure,
        "study_uids": list(event.study_uids),
        "patient_keys": patient_keys(event),
    }
    for column, value in expected.items():
        if row[column] != value:
            return f"column {column} does not match the recorded event"
    return None


async def verify(conn: Executor, *, batch: int = 5000) -> VerifyResult:
    """Check every retained record: sequence, links, hashes, and query columns against bodies.

    The first retained record links to genesis (seq 1) or to the checkpoint at ``seq - 1``
    (written by the purge that removed its predecessors). Every checkpoint inside the retained
    range must equal the hash of its record.
    """
    checked = 0
    first: int | None = None
    expected_seq = 0
    prev = GENESIS
    last = 0
    # One snapshot for checkpoints and records: appends running meanwhile are simply not seen.
    async with conn.transaction(isolation="repeatable_read", readonly=True):
        checkpoints = {
            int(r["seq"]): bytes(r["hash"])
            for r in await conn.fetch("SELECT seq, hash FROM audit.checkpoints")
        }
        cursor = conn.cursor("SELECT * FROM audit.log ORDER BY seq", prefetch=batch)
        async for row in cursor:
            seq = int(row["seq"])
            if first is None:
                first = seq
                if seq != 1:
                    anchor = checkpoints.get(seq - 1)
                    if anchor is None:
                        return _broken(
                            checked, first, seq, "no checkpoint anchors the first record"
                        )
                    prev = anchor
                expected_seq = seq
            if seq != expected_seq:
                return _broken(checked, first, expected_seq, f"record missing (next is {seq})")
            body = bytes(row["body"])
            if bytes(row["prev_hash"]) != prev:
                return _broken(checked, first, seq, "previous hash does not match record before")
            digest = link(prev, body)
            if bytes(row["hash"]) != digest:
                return _broken(checked, first, seq, "hash does not match the record's content")
            if seq in checkpoints and checkpoints[seq] != digest:
                return _broken(checked, first, seq, "a checkpoint disagrees with the record")
            try:
                event = _decoder.decode(body)
            except msgspec.DecodeError:
                return _broken(checked, first, seq, "body is not a valid audit event")
            mismatch = _column_mismatch(row, event)
            if mismatch:
                return _broken(checked, first, seq, mismatch)
            prev = digest
            last = seq
            expected_seq = seq + 1
            checked += 1
    return VerifyResult(ok=True, checked=checked, first_seq=first, last_seq=last or None)


def _broken(checked: int, first: int | None, seq: int, problem: str) -> VerifyResult:
    return VerifyResult(ok=False, checked=checked, first_seq=first, broken_seq=seq, problem=problem)


async def purge(conn: Executor, retention: timedelta, *, now: datetime | None = None) -> int:
    """Remove the records recorded more than `retention` ago; return how many.

    Runs as the schema owner (the writer role cannot delete). Refuses to purge a chain that does
    not verify (that would destroy the evidence). Writes a ``purge`` checkpoint with the hash of
    the last removed record first, in the same transaction.

    Raises:
        RuntimeError: the chain does not verify.
    """
    result = await verify(conn)
    if not result.ok:
        msg = f"refusing to purge: {result.describe()}"
        raise RuntimeError(msg)
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock($1)", CHAIN_LOCK_KEY)
        cutoff = (now or await conn.fetchval("SELECT clock_timestamp()")) - retention
        row = await conn.fetchrow(
            "SELECT seq, hash FROM audit.log WHERE recorded_at < $1 ORDER BY seq DESC LIMIT 1",
            cutoff,
        )
        if row is None:
            return 0
        await conn.execute(
            "INSERT INTO audit.checkpoints (seq, hash, kind) VALUES ($1, $2, 'purge')"
            " ON CONFLICT (seq) DO NOTHING",
            row["seq"],
            row["hash"],
        )
        status = await conn.execute("DELETE FROM audit.log WHERE seq <= $1", row["seq"])
        return int(status.split()[-1])

"""Write path of the index: batches of `InstanceStored` events → studies / series / instances.

`upsert_batch` is idempotent and exact under at-least-once delivery and concurrent replicas:

1. The batch is merged in memory: one row per study, per series, per instance. Events are taken
   in (stored_at, SOP Instance UID) order and the first non-null value of each attribute wins.
2. One transaction upserts the studies in Study Instance UID order. ``ON CONFLICT DO UPDATE``
   only fills attributes that are still null (and writes nothing when there is nothing to
   fill), but it always locks the study row. Every later write of the transaction is under a
   study it holds, so two replicas with overlapping batches serialise on their common studies
   in one global order, which rules out lock cycles between them.
3. Series are upserted the same way, then instances are inserted with ``ON CONFLICT DO
   NOTHING RETURNING``: only rows that are really new come back, and only those increment the
   series and study counters (instances, bytes) and refresh the series count and the modality
   set. A redelivered event therefore changes nothing.

A deadlock or serialization failure (possible against other writers, e.g. a future reindex)
retries the whole batch a few times.
"""

from __future__ import annotations

import asyncio
import random
import re
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time
from typing import Any, Final

import asyncpg

from krypton.contracts.ingest.v1 import InstanceStored

__all__ = ["normalise_pn", "parse_da", "parse_tm", "upsert_batch"]

_MAX_ATTEMPTS: Final = 5
_INT4_MAX: Final = 2**31 - 1
_RETRYABLE: Final = (asyncpg.DeadlockDetectedError, asyncpg.SerializationError)

# Letters that NFKD does not decompose into a base letter plus marks.
_SPECIAL_LETTERS: Final = str.maketrans(
    {"Œ": "OE", "œ": "OE", "Æ": "AE", "æ": "AE", "Ø": "O", "ø": "O", "Ł": "L", "ł": "L",
     "Đ": "D", "đ": "D", "ß": "SS", "Þ": "TH", "þ": "TH"}
)  # fmt: skip


def normalise_pn(value: str | None, *, keep_wildcards: bool = False) -> str | None:
    """Return the search form of a DICOM PN: the one used for case/accent-insensitive matching.

    Only the alphabetic group (before the first ``=``) is kept; letters are upper-cased and
    stripped of accents; ``^`` separates components; any other character becomes a space;
    runs of spaces collapse, spaces around ``^`` and trailing ``^`` go. ``"Hélène^Dupont-Roy "``
    gives ``"HELENE^DUPONT ROY"``. With `keep_wildcards`, ``*`` and ``?`` are kept (query side).

    The same function runs at write time and at query time, so the database needs no
    ``unaccent`` extension and the two sides can never disagree.
    """
    if value is None:
        return None
    alphabetic = value.split("=", 1)[0].translate(_SPECIAL_LETTERS)
    chars: list[str] = []
    for ch in unicodedata.normalize("NFKD", alphabetic):
        if unicodedata.combining(ch):
            continue
        if ch.isalnum() or ch == "^" or (keep_wildcards and ch in "*?"):
            chars.append(ch.upper())
        else:
            chars.append(" ")
    text = re.sub(r" +", " ", "".join(chars))
    text = re.sub(r" ?\^ ?", "^", text).strip(" ").rstrip("^")
    return text or None


def parse_da(value: str | None) -> date | None:
    """Parse a DICOM DA (``YYYYMMDD``, or the legacy ``YYYY.MM.DD``); None when invalid."""
    if not value:
        return None
    digits = value.strip().replace(".", "").replace("-", "")
    if len(digits) != 8 or not digits.isdigit():
        return None
    try:
        return date(int(digits[:4]), int(digits[4:6]), int(digits[6:8]))
    except ValueError:
        return None


_TM_RE: Final = re.compile(r"^(\d{2})(?:(\d{2})(?:(\d{2})(?:\.(\d{1,6}))?)?)?$")


def parse_tm(value: str | None) -> time | None:
    """Parse a DICOM TM (``HH[MM[SS[.F{1,6}]]]``, or legacy ``HH:MM:SS``); None when invalid."""
    if not value:
        return None
    match = _TM_RE.match(value.strip().replace(":", ""))
    if match is None:
        return None
    hour, minute, second = (int(match.group(i) or 0) for i in (1, 2, 3))
    micro = int((match.group(4) or "0").ljust(6, "0"))
    try:
        return time(hour, minute, min(second, 59), micro)  # a leap second 60 keeps its minute
    except ValueError:
        return None


def _parse_instant(value: str) -> datetime:
    """Parse an ISO 8601 instant; a malformed or naive one is read as now / UTC, not refused."""
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        return datetime.now(UTC)
    return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=UTC)


def _clean(value: str | None) -> str | None:
    """Strip DICOM padding (and any NUL, which PostgreSQL text refuses); empty is no value."""
    if value is None:
        return None
    value = value.replace("\x00", "").strip()
    return value or None


def _int4(value: int | None) -> int | None:
    """An integer attribute outside PostgreSQL's integer range is dropped, not fatal."""
    if value is None or -_INT4_MAX - 1 <= value <= _INT4_MAX:
        return value
    return None


@dataclass
class _Row:
    """Merged attributes of one study or series: first non-null value wins."""

    values: dict[str, Any] = field(default_factory=dict)

    def merge(self, values: dict[str, Any]) -> None:
        for key, value in values.items():
            if self.values.get(key) is None:
                self.values[key] = value


_STUDY_COLUMNS: Final = (
    ("study_uid", "text"),
    ("structure", "text"),
    ("patient_key", "text"),
    ("patient_id", "text"),
    ("issuer_of_patient_id", "text"),
    ("patient_ins", "text"),
    ("patient_name", "text"),
    ("patient_name_search", "text"),
    ("patient_birth_date", "date"),
    ("patient_sex", "text"),
    ("study_date", "date"),
    ("study_time", "time"),
    ("accession_number", "text"),
    ("study_id", "text"),
    ("study_description", "text"),
    ("referring_physician_name", "text"),
    ("referring_physician_search", "text"),
    ("timezone_offset", "text"),
    ("specific_character_set", "text"),
)
# Set once by the first event and never changed by a later one (identity and ownership).
_STUDY_FIXED: Final = frozenset({"study_uid", "structure", "patient_key", "patient_id"})

_SERIES_COLUMNS: Final = (
    ("series_uid", "text"),
    ("study_uid", "text"),
    ("structure", "text"),
    ("modality", "text"),
    ("series_number", "integer"),
    ("series_description", "text"),
    ("series_date", "date"),
    ("series_time", "time"),
    ("body_part_examined", "text"),
    ("pps_start_date", "date"),
    ("pps_start_time", "time"),
    ("institution_name", "text"),
    ("station_name", "text"),
    ("manufacturer", "text"),
)
_SERIES_FIXED: Final = frozenset({"series_uid", "study_uid", "structure"})

_INSTANCE_COLUMNS: Final = (
    ("sop_instance_uid", "text"),
    ("series_uid", "text"),
    ("study_uid", "text"),
    ("structure", "text"),
    ("sop_class_uid", "text"),
    ("transfer_syntax_uid", "text"),
    ("instance_number", "integer"),
    ("rows", "integer"),
    ("columns", "integer"),
    ("bits_allocated", "integer"),
    ("number_of_frames", "integer"),
    ("photometric_interpretation", "text"),
    ("content_date", "date"),
    ("content_time", "time"),
    ("object_key", "text"),
    ("sha256", "text"),
    ("size", "bigint"),
    ("pixel_data_offset", "bigint"),
    ("stored_at", "timestamptz"),
)


def _upsert_sql(
    table: str, columns: tuple[tuple[str, str], ...], key: str, fixed: frozenset[str]
) -> str:
    names = ", ".join(name for name, _ in columns)
    arrays = ", ".join(f"${i}::{kind}[]" for i, (_, kind) in enumerate(columns, start=1))
    fillable = [name for name, _ in columns if name not in fixed]
    sets = ", ".join(f"{name} = COALESCE(t.{name}, EXCLUDED.{name})" for name in fillable)
    # Update (and so write a new row version) only when a null attribute gets a value; the
    # conflicting row is locked either way, which is what orders concurrent batches.
    changed = " OR ".join(
        f"(t.{name} IS NULL AND EXCLUDED.{name} IS NOT NULL)" for name in fillable
    )
    return (
        f"INSERT INTO index.{table} AS t ({names}) "
        f"SELECT * FROM unnest({arrays}) AS u({names}) ORDER BY {key} "
        f"ON CONFLICT ({key}) DO UPDATE SET {sets}, updated_at = now() WHERE {changed}"
    )


_UPSERT_STUDIES: Final = _upsert_sql("studies", _STUDY_COLUMNS, "study_uid", _STUDY_FIXED)
_UPSERT_SERIES: Final = _upsert_sql("series", _SERIES_COLUMNS, "series_uid", _SERIES_FIXED)

_INSERT_INSTANCES: Final = (
    "INSERT INTO index.instances ({names}) "
    "SELECT * FROM unnest({arrays}) AS u({names}) ORDER BY sop_instance_uid "
    "ON CONFLICT (sop_instance_uid) DO NOTHING "
    "RETURNING sop_instance_uid, series_uid, study_uid, size"
).format(
    names=", ".join(name for name, _ in _INSTANCE_COLUMNS),
    arrays=", ".join(f"${i}::{kind}[]" for i, (_, kind) in enumerate(_INSTANCE_COLUMNS, 1)),
)

_BUMP_SERIES: Final = """
UPDATE index.series AS s
   SET num_instances = s.num_instances + u.n,
       size_bytes = s.size_bytes + u.bytes,
       updated_at = now()
  FROM unnest($1::text[], $2::integer[], $3::bigint[]) AS u(series_uid, n, bytes)
 WHERE s.series_uid = u.series_uid
"""

# Series count and modality set are recomputed from the study's series (a handful of rows via
# series_study_idx) rather than incremented: exact even when a series arrives before its
# modality is known. Only studies that received new instances are touched.
_BUMP_STUDIES: Final = """
UPDATE index.studies AS s
   SET num_instances = s.num_instances + u.n,
       size_bytes = s.size_bytes + u.bytes,
       num_series = (SELECT count(*) FROM index.series x WHERE x.study_uid = s.study_uid),
       modalities = ARRAY(
           SELECT DISTINCT x.modality FROM index.series x
            WHERE x.study_uid = s.study_uid AND x.modality IS NOT NULL
            ORDER BY 1),
       updated_at = now()
  FROM unnest($1::text[], $2::integer[], $3::bigint[]) AS u(study_uid, n, bytes)
 WHERE s.study_uid = u.study_uid
"""


def _study_values(event: InstanceStored) -> dict[str, Any]:
    study, patient = event.study, event.patient
    patient_name = _clean(study.patient_name)
    referring = _clean(study.referring_physician_name)
    return {
        "study_uid": study.study_uid,
        "structure": event.structure,
        "patient_key": patient.key,
        "patient_id": patient.patient_id,
        "issuer_of_patient_id": _clean(patient.issuer),
        "patient_ins": _clean(patient.ins),
        "patient_name": patient_name,
        "patient_name_search": normalise_pn(patient_name),
        "patient_birth_date": parse_da(study.patient_birth_date),
        "patient_sex": _clean(study.patient_sex),
        "study_date": parse_da(study.study_date),
        "study_time": parse_tm(study.study_time),
        "accession_number": _clean(study.accession_number),
        "study_id": _clean(study.study_id),
        "study_description": _clean(study.study_description),
        "referring_physician_name": referring,
        "referring_physician_search": normalise_pn(referring),
        "timezone_offset": _clean(study.timezone_offset),
        "specific_character_set": _clean(study.specific_character_set),
    }


def _series_values(event: InstanceStored) -> dict[str, Any]:
    series = event.series
    return {
        "series_uid": series.series_uid,
        "study_uid": event.study.study_uid,
        "structure": event.structure,
        "modality": _clean(series.modality),
        "series_number": _int4(series.series_number),
        "series_description": _clean(series.series_description),
        "series_date": parse_da(series.series_date),
        "series_time": parse_tm(series.series_time),
        "body_part_examined": _clean(series.body_part_examined),
        "pps_start_date": parse_da(series.performed_procedure_step_start_date),
        "pps_start_time": parse_tm(series.performed_procedure_step_start_time),
        "institution_name": _clean(series.institution_name),
        "station_name": _clean(series.station_name),
        "manufacturer": _clean(series.manufacturer),
    }


def _instance_values(event: InstanceStored) -> dict[str, Any]:
    instance = event.instance
    return {
        "sop_instance_uid": instance.sop_instance_uid,
        "series_uid": event.series.series_uid,
        "study_uid": event.study.study_uid,
        "structure": event.structure,
        "sop_class_uid": instance.sop_class_uid,
        "transfer_syntax_uid": instance.transfer_syntax_uid,
        "instance_number": _int4(instance.instance_number),
        "rows": _int4(instance.rows),
        "columns": _int4(instance.columns),
        "bits_allocated": _int4(instance.bits_allocated),
        "number_of_frames": _int4(instance.number_of_frames),
        "photometric_interpretation": _clean(instance.photometric_interpretation),
        "content_date": parse_da(instance.content_date),
        "content_time": parse_tm(instance.content_time),
        "object_key": event.object_key,
        "sha256": event.sha256,
        "size": event.size,
        "pixel_data_offset": event.pixel_data_offset,
        "stored_at": _parse_instant(event.stored_at),
    }


def _columns_of(
    rows: Sequence[dict[str, Any]], columns: tuple[tuple[str, str], ...]
) -> list[list[Any]]:
    """Turn rows into one array per column, the shape ``unnest($1::t[], ...)`` takes."""
    return [[row[name] for row in rows] for name, _ in columns]


@dataclass(frozen=True, slots=True)
class _Batch:
    studies: list[dict[str, Any]]
    series: list[dict[str, Any]]
    instances: list[dict[str, Any]]


def _merge(events: Sequence[InstanceStored]) -> _Batch:
    ordered = sorted(events, key=lambda e: (e.stored_at, e.instance.sop_instance_uid))
    studies: dict[str, _Row] = {}
    series: dict[str, _Row] = {}
    instances: dict[str, dict[str, Any]] = {}
    for event in ordered:
        sop_uid = event.instance.sop_instance_uid
        if sop_uid in instances:
            continue  # the same instance twice in one batch: the first copy stands
        instances[sop_uid] = _instance_values(event)
        studies.setdefault(event.study.study_uid, _Row()).merge(_study_values(event))
        series.setdefault(event.series.series_uid, _Row()).merge(_series_values(event))
    return _Batch(
        studies=[studies[k].values for k in sorted(studies)],
        series=[series[k].values for k in sorted(series)],
        instances=[instances[k] for k in sorted(instances)],
    )


async def upsert_batch(pool: asyncpg.Pool, events: Sequence[InstanceStored]) -> int:
    """Index a batch of stored instances in one transaction; safe to repeat and to race.

    Args:
        pool: pool on the database holding the ``index`` schema.
        events: the batch, in any order, duplicates allowed.

    Returns:
        How many instances were not indexed before this call (0 for a pure redelivery).

    Raises:
        asyncpg.PostgresError: the batch failed for a reason other than a transient deadlock
            or serialization failure, or kept failing for one; nothing of it was written.
    """
    if not events:
        return 0
    batch = _merge(events)
    attempt = 1
    while True:
        try:
            async with pool.acquire() as conn, conn.transaction():
                return await _write(conn, batch)
        except _RETRYABLE:
            if attempt == _MAX_ATTEMPTS:
                raise
            await asyncio.sleep(random.uniform(0.01, 0.05) * attempt)  # jitter only
            attempt += 1


async def _write(conn: asyncpg.pool.PoolConnectionProxy, batch: _Batch) -> int:
    await conn.execute(_UPSERT_STUDIES, *_columns_of(batch.studies, _STUDY_COLUMNS))
    await conn.execute(_UPSERT_SERIES, *_columns_of(batch.series, _SERIES_COLUMNS))
    inserted = await conn.fetch(_INSERT_INSTANCES, *_columns_of(batch.instances, _INSTANCE_COLUMNS))
    if not inserted:
        return 0
    per_series: dict[str, list[int]] = {}
    per_study: dict[str, list[int]] = {}
    for row in inserted:
        for key, totals in ((row["series_uid"], per_series), (row["study_uid"], per_study)):
            counts = totals.setdefault(key, [0, 0])
            counts[0] += 1
            counts[1] += row["size"]
    for sql, totals in ((_BUMP_SERIES, per_series), (_BUMP_STUDIES, per_study)):
        keys = sorted(totals)
        await conn.execute(sql, keys, [totals[k][0] for k in keys], [totals[k][1] for k in keys])
    return len(inserted)

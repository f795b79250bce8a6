"""The study → patient / producing structure read model, fed by ``instance.stored.*``.

Audit events name the studies they touched; this projection lets the patient's view (by INS)
and a structure's DPO find them, even when the emitter only knew study UIDs.
"""

from __future__ import annotations

from collections.abc import Sequence

import asyncpg

from krypton.contracts.ingest.v1 import InstanceStored

__all__ = ["upsert_studies"]

_UPSERT = """
INSERT INTO audit.studies (study_uid, structure, patient_key, patient_ins)
SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[])
ON CONFLICT (study_uid) DO UPDATE
   SET structure = EXCLUDED.structure,
       patient_key = EXCLUDED.patient_key,
       patient_ins = EXCLUDED.patient_ins
 WHERE (audit.studies.structure, audit.studies.patient_key, audit.studies.patient_ins)
       IS DISTINCT FROM (EXCLUDED.structure, EXCLUDED.patient_key, EXCLUDED.patient_ins)
"""


async def upsert_studies(
    pool: asyncpg.Pool | asyncpg.Connection, events: Sequence[InstanceStored]
) -> int:
    """Record the study → patient mapping of `events`; return the number of distinct studies."""
    latest = {e.study.study_uid: e for e in events}  # one row per study per statement
    if not latest:
        return 0
    rows = list(latest.values())
    await pool.execute(
        _UPSERT,
        [e.study.study_uid for e in rows],
        [e.structure for e in rows],
        [e.patient.key for e in rows],
        [e.patient.ins for e in rows],
    )
    return len(rows)

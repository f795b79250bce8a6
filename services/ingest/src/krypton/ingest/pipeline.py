"""The ingest pipeline for one staged upload: parse, validate, place, announce.

Crash safety: every step is idempotent and the verdict is recorded in `ingest.uploads` in the same
transaction that claims the SOP Instance UID, so a redelivered upload (after a crash anywhere,
before the ack) finishes the remaining steps and gets the same answer. The JetStream message is
acked only after the object is in its canonical place and `instance.stored` is durable.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg
import msgspec
from nats.js import JetStreamContext

from krypton.bus.codec import decode, encode
from krypton.contracts import subjects
from krypton.contracts.ingest.v1 import (
    IngestReceived,
    IngestResult,
    InstanceRejected,
    InstanceStored,
)
from krypton.core.clock import utc_now_iso
from krypton.core.logging import get_logger
from krypton.dicom.errors import DicomRejection, FailureReasonValues
from krypton.dicom.extract import Extracted, extract
from krypton.dicom.header import Header, read_header
from krypton.storage.base import ObjectStore
from krypton.storage.errors import ObjectNotFound
from krypton.storage.keys import instance_key, quarantine_key

__all__ = ["IngestPipeline", "Outcome"]

Connection = asyncpg.Connection | asyncpg.pool.PoolConnectionProxy

_log = get_logger("krypton.ingest")

# Most headers fit in the first 2 MiB; a larger one is read again with a larger window.
_FIRST_READ = 2 * 1024 * 1024
_MAX_HEADER = 64 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class Outcome:
    """What became of one upload."""

    result: IngestResult
    stored: InstanceStored | None = None


class IngestPipeline:
    """Processes `IngestReceived` events; one instance per process, shared by its workers."""

    def __init__(self, pool: asyncpg.Pool, store: ObjectStore, js: JetStreamContext) -> None:
        """Bind the pipeline to its database pool, object store and JetStream context."""
        self._pool = pool
        self._store = store
        self._js = js

    async def process(self, event: IngestReceived) -> Outcome:
        """Handle one staged upload to completion (idempotent)."""
        previous = await self._pool.fetchrow(
            "select * from ingest.uploads where staging_key = $1", event.staging_key
        )
        if previous is not None:
            return await self._resume(event, previous)
        try:
            header = await self._read_header(event)
            extracted = extract(
                header, event.structure, expected_study_uid=event.expected_study_uid
            )
        except ObjectNotFound:
            # Only possible if staging was removed by hand: nothing to ingest, say so once.
            missing = DicomRejection(
                FailureReasonValues.PROCESSING_FAILURE, "staged object is missing"
            )
            return await self._reject(event, missing, None, keep_object=False)
        except DicomRejection as rejection:
            return await self._reject(event, rejection, None)
        stored = self._stored_event(event, header, extracted)
        return await self._claim_and_place(event, stored)

    async def _read_header(self, event: IngestReceived) -> Header:
        path = self._store.local_path(event.staging_key)
        if path is not None:
            try:
                with path.open("rb") as fp:
                    return read_header(fp, max_header_bytes=_MAX_HEADER)
            except FileNotFoundError as exc:
                raise ObjectNotFound(event.staging_key) from exc
        window = min(event.size, _FIRST_READ)
        while True:
            data = await self._store.read(event.staging_key, 0, window)
            try:
                return read_header(data, max_header_bytes=_MAX_HEADER)
            except DicomRejection:
                if window >= min(event.size, _MAX_HEADER):
                    raise
                window = min(event.size, _MAX_HEADER, window * 8)

    @staticmethod
    def _stored_event(event: IngestReceived, header: Header, x: Extracted) -> InstanceStored:
        return InstanceStored(
            structure=event.structure,
            object_key=instance_key(
                x.study.study_uid, x.series.series_uid, x.instance.sop_instance_uid
            ),
            sha256=event.sha256,
            size=event.size,
            stored_at=utc_now_iso(),
            patient=x.patient,
            study=x.study,
            series=x.series,
            instance=x.instance,
            pixel_data_offset=header.pixel_data_offset,
            request_id=event.request_id,
        )

    async def _claim_and_place(self, event: IngestReceived, stored: InstanceStored) -> Outcome:
        sop = stored.instance.sop_instance_uid
        rejection: DicomRejection | None = None
        duplicate = False
        async with self._pool.acquire() as conn, conn.transaction():
            owner = await conn.fetchrow(
                """insert into ingest.studies (study_uid, structure, patient_key)
                   values ($1, $2, $3)
                   on conflict (study_uid) do update set study_uid = excluded.study_uid
                   returning structure, patient_key""",
                stored.study.study_uid,
                stored.structure,
                stored.patient.key,
            )
            assert owner is not None
            if owner["structure"] != stored.structure:
                rejection = DicomRejection(
                    FailureReasonValues.PROCESSING_FAILURE,
                    "this study was produced by another structure; it cannot be extended",
                )
            elif owner["patient_key"] != stored.patient.key:
                rejection = DicomRejection(
                    FailureReasonValues.DATASET_DOES_NOT_MATCH_SOP_CLASS,
                    "the patient identity differs from that of the study's other instances",
                )
            else:
                existing = await conn.fetchrow(
                    """insert into ingest.objects
                         (sop_instance_uid, sha256, object_key, structure, study_uid, size, event)
                       values ($1, $2, $3, $4, $5, $6, $7)
                       on conflict (sop_instance_uid) do nothing
                       returning sop_instance_uid""",
                    sop,
                    stored.sha256,
                    stored.object_key,
                    stored.structure,
                    stored.study.study_uid,
                    stored.size,
                    encode(stored),
                )
                if existing is None:
                    known = await conn.fetchrow(
                        "select sha256, event from ingest.objects where sop_instance_uid = $1", sop
                    )
                    assert known is not None
                    if known["sha256"] != stored.sha256:
                        rejection = DicomRejection(
                            FailureReasonValues.DUPLICATE_SOP_INSTANCE,
                            "another object is already stored under this SOP Instance UID",
                        )
                    else:
                        duplicate = True
                        stored = decode(known["event"], InstanceStored)
                if rejection is None:
                    await self._record(conn, event, stored, "duplicate" if duplicate else "stored")
        if rejection is not None:
            return await self._reject(event, rejection, stored)
        await self._place(event.staging_key, stored.object_key)
        await self._announce(stored)
        return Outcome(result=self._ok(event, stored), stored=stored)

    @staticmethod
    async def _record(
        conn: Connection, event: IngestReceived, stored: InstanceStored, outcome: str
    ) -> None:
        await conn.execute(
            """insert into ingest.uploads (staging_key, outcome, sop_instance_uid, sop_class_uid,
                                            study_uid, series_uid)
               values ($1, $2, $3, $4, $5, $6)""",
            event.staging_key,
            outcome,
            stored.instance.sop_instance_uid,
            stored.instance.sop_class_uid,
            stored.study.study_uid,
            stored.series.series_uid,
        )

    async def _place(self, staging_key: str, canonical_key: str) -> None:
        """Put the staged bytes at the canonical key, or drop them if the canonical copy exists."""
        if await self._store.exists(canonical_key):
            await self._store.delete(staging_key)
        else:
            await self._store.move(staging_key, canonical_key)

    async def _announce(self, stored: InstanceStored) -> None:
        await self._js.publish(
            subjects.instance_stored(stored.structure),
            encode(stored),
            stream=subjects.INSTANCES_STREAM,
            headers={"Nats-Msg-Id": f"stored:{stored.instance.sop_instance_uid}:{stored.sha256}"},
        )

    async def _reject(
        self,
        event: IngestReceived,
        rejection: DicomRejection,
        stored: InstanceStored | None,
        *,
        keep_object: bool = True,
    ) -> Outcome:
        upload_id = event.staging_key.rsplit("/", 1)[-1]
        qkey = quarantine_key(upload_id)
        if keep_object:
            await self._store.move(event.staging_key, qkey)
        sop = stored.instance.sop_instance_uid if stored else None
        sop_class = stored.instance.sop_class_uid if stored else None
        study = stored.study.study_uid if stored else None
        async with self._pool.acquire() as conn, conn.transaction():
            await conn.execute(
                """insert into ingest.quarantine (quarantine_key, structure, sha256, size,
                     failure_code, reason, sop_instance_uid, study_uid, actor_sub, received_at)
                   values ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)
                   on conflict (quarantine_key) do nothing""",
                qkey,
                event.structure,
                event.sha256,
                event.size,
                int(rejection.code),
                rejection.reason,
                sop,
                study,
                event.actor.sub,
                datetime.fromisoformat(event.received_at),
            )
            await conn.execute(
                """insert into ingest.uploads (staging_key, outcome, sop_instance_uid,
                     sop_class_uid, study_uid, failure_code, reason)
                   values ($1, 'rejected', $2, $3, $4, $5, $6)
                   on conflict (staging_key) do nothing""",
                event.staging_key,
                sop,
                sop_class,
                study,
                int(rejection.code),
                rejection.reason,
            )
        rejected = InstanceRejected(
            structure=event.structure,
            quarantine_key=qkey,
            sha256=event.sha256,
            reason=rejection.reason,
            failure_code=int(rejection.code),
            rejected_at=utc_now_iso(),
            sop_instance_uid=sop,
            sop_class_uid=sop_class,
            study_uid=study,
            request_id=event.request_id,
        )
        await self._js.publish(
            subjects.instance_rejected(event.structure),
            encode(rejected),
            stream=subjects.INSTANCES_STREAM,
            headers={"Nats-Msg-Id": f"rejected:{event.staging_key}"},
        )
        _log.info(
            "upload quarantined",
            code=hex(int(rejection.code)),
            reason=rejection.reason,
            structure=event.structure,
            quarantine_key=qkey,
        )
        return Outcome(
            result=IngestResult(
                staging_key=event.staging_key,
                ok=False,
                sop_instance_uid=sop,
                sop_class_uid=sop_class,
                study_uid=study,
                failure_code=int(rejection.code),
                reason=rejection.reason,
            )
        )

    async def _resume(self, event: IngestReceived, row: Any) -> Outcome:
        """Finish an upload whose verdict was recorded before a crash; same answer as then."""
        if row["outcome"] == "rejected":
            upload_id = event.staging_key.rsplit("/", 1)[-1]
            if await self._store.exists(event.staging_key):
                await self._store.move(event.staging_key, quarantine_key(upload_id))
            return Outcome(
                result=IngestResult(
                    staging_key=event.staging_key,
                    ok=False,
                    sop_instance_uid=row["sop_instance_uid"],
                    sop_class_uid=row["sop_class_uid"],
                    study_uid=row["study_uid"],
                    failure_code=row["failure_code"],
                    reason=row["reason"],
                )
            )
        data = await self._pool.fetchval(
            "select event from ingest.objects where sop_instance_uid = $1", row["sop_instance_uid"]
        )
        stored = decode(data, InstanceStored)
        if await self._store.exists(event.staging_key):
            await self._place(event.staging_key, stored.object_key)
        await self._announce(stored)
        return Outcome(result=self._ok(event, stored), stored=stored)

    @staticmethod
    def _ok(event: IngestReceived, stored: InstanceStored) -> IngestResult:
        return IngestResult(
            staging_key=event.staging_key,
            ok=True,
            sop_instance_uid=stored.instance.sop_instance_uid,
            sop_class_uid=stored.instance.sop_class_uid,
            study_uid=stored.study.study_uid,
            series_uid=stored.series.series_uid,
        )


def result_payload(result: IngestResult) -> bytes:
    """The reply sent to the gateway waiting on `reply_to`."""
    return msgspec.json.encode(result)

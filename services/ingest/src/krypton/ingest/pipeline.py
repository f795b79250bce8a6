"""The ingest pipeline for staged uploads: parse, validate, place, announce — a batch at a time.

Crash safety: every step is idempotent and the verdict is recorded in `ingest.uploads` in the same
transaction that claims the SOP Instance UID, so a redelivered upload (after a crash anywhere,
before the ack) finishes the remaining steps and gets the same answer. The JetStream message is
acked only after the object is in its canonical place and `instance.stored` is durable.

Batching: `process_many` handles the uploads a consumer fetched together with one query for
earlier verdicts, one transaction claiming every study and SOP Instance UID of the batch, one
thread hop making the staged files durable (`FileSystemStore.sync`), one placing them all
(`FileSystemStore.move_many`, each directory fsynced once) and the `instance.stored` publishes
awaited together. Each upload
still gets its own verdict: a bad one is quarantined alone, and one that meets a transient
failure is returned as an exception (retry it) without holding back the others.

Staged bytes are checked before any verdict: on the filesystem store the gateway stages without
fsync, so a power cut can lose or tear a staged file whose `ingest.received` survived. Its size
and SHA-256 must match the event (a mismatch is refused as a processing failure; the client was
never answered and resends), and it is fsynced (with its directory) before the verdict is
recorded: a redelivered upload whose verdict exists therefore always finds intact bytes. The
SHA-256 is recomputed only when a crash may have happened since staging: an event staged in this
host's current boot (`IngestReceived.staged_boot_id`) is read from a page cache that nothing has
lost (killed processes do not lose it; a kernel crash or power cut reboots), so its size is
checked and the gateway's hash, computed while writing, stands. The fsync of the batch's staged
files (concurrent, see `FileSystemStore.sync`) and the query for earlier verdicts run while the
headers are parsed.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, TypeVar

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
from krypton.dicom.extract import DEFAULT_MAX_FRAMES, Extracted, extract
from krypton.dicom.header import Header, read_header
from krypton.dicom.quick import QuickHeader, read_quick
from krypton.storage.base import ObjectStore
from krypton.storage.errors import ObjectNotFound
from krypton.storage.fs import FileSystemStore, boot_id
from krypton.storage.keys import instance_key, quarantine_key

__all__ = ["IngestPipeline", "Outcome", "result_payload"]

Connection = asyncpg.Connection | asyncpg.pool.PoolConnectionProxy

_log = get_logger("krypton.ingest")

# Most headers fit in the first 2 MiB; a larger one is read again with a larger window.
_FIRST_READ = 2 * 1024 * 1024
_MAX_HEADER = 64 * 1024 * 1024
# Staged files up to this size are read whole (one read, then hashed and parsed from memory).
_WHOLE_READ = 8 * 1024 * 1024


_T = TypeVar("_T")
_TORN = "the staged upload is incomplete (lost in a crash before it was kept); resend it"


@dataclass(frozen=True, slots=True)
class Outcome:
    """What became of one upload."""

    result: IngestResult
    stored: InstanceStored | None = None


@dataclass(slots=True)
class _Claim:
    """A parsed upload on its way through the batch transaction."""

    index: int
    event: IngestReceived
    stored: InstanceStored
    rejection: DicomRejection | None = None
    duplicate: bool = False


class IngestPipeline:
    """Processes `IngestReceived` events; one instance per process, shared by its workers."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        store: ObjectStore,
        js: JetStreamContext,
        *,
        max_frames: int = DEFAULT_MAX_FRAMES,
    ) -> None:
        """Bind the pipeline to its database pool, object store and JetStream context."""
        self._pool = pool
        self._store = store
        self._js = js
        self._max_frames = max_frames

    async def process_many(self, events: Sequence[IngestReceived]) -> list[Outcome | Exception]:
        """Handle a batch of staged uploads; per upload its outcome, or the error to retry on.

        An exception in the list is not a verdict: nothing was answered for that upload and it
        must be redelivered (its recorded steps make the retry finish the work). An exception
        raised by this method concerns the batch as a whole (database down, a bug): retry it,
        or each upload alone to isolate a bad one.
        """
        results: list[Outcome | Exception | None] = [None] * len(events)
        # The query for earlier verdicts, the reading and parsing of the staged files and their
        # fsync run together: they are independent, and the batch waits for the slowest only.
        # An upload that turns out to have a verdict already (redelivered after a crash, rare)
        # was examined and synced for nothing, which is harmless; its recorded verdict stands.
        local = list(range(len(events))) if isinstance(self._store, FileSystemStore) else []
        query = asyncio.ensure_future(
            self._pool.fetch(
                "select * from ingest.uploads where staging_key = any($1::text[])",
                [e.staging_key for e in events],
            )
        )
        try:
            examined_all, synced_list = await asyncio.gather(
                self._examine_all(events), self._sync([events[i].staging_key for i in local])
            )
        except BaseException:
            query.cancel()
            raise
        previous = {row["staging_key"]: row for row in await query}
        resumed = [i for i, e in enumerate(events) if e.staging_key in previous]
        fresh = [i for i, e in enumerate(events) if e.staging_key not in previous]
        examined = [examined_all[i] for i in fresh]
        # The gateway staged without fsync: the bytes just checked are durable before any
        # verdict is recorded, so a recorded verdict never points at a torn file.
        synced = {
            i: error
            for i, error in zip(local, synced_list, strict=True)
            if events[i].staging_key not in previous
        }
        claims: list[_Claim] = []
        rejects: list[tuple[int, DicomRejection, InstanceStored | None, bool]] = []
        for i, found in zip(fresh, examined, strict=True):
            if isinstance(found, InstanceStored):
                claims.append(_Claim(index=i, event=events[i], stored=found))
            elif isinstance(found, ObjectNotFound):
                # Only possible if staging was removed by hand: nothing to ingest, say so once.
                missing = DicomRejection(
                    FailureReasonValues.PROCESSING_FAILURE, "staged object is missing"
                )
                rejects.append((i, missing, None, False))
            elif isinstance(found, DicomRejection):
                rejects.append((i, found, None, True))
            else:
                results[i] = found
        if synced:
            for c in claims:
                error = synced.get(c.index)
                if error is not None:
                    results[c.index] = error
            claims = [c for c in claims if synced.get(c.index) is None]
        if claims:
            await self._claim(claims)
        accepted = [c for c in claims if c.rejection is None]
        for c in claims:
            if c.rejection is not None:
                rejects.append((c.index, c.rejection, c.stored, True))
        placed = await self._place_all(
            [(c.event.staging_key, c.stored.object_key, c.duplicate) for c in accepted]
        )
        announce = [c for c, error in zip(accepted, placed, strict=True) if error is None]
        for c, error in zip(accepted, placed, strict=True):
            if error is not None:
                results[c.index] = error
        announced = _settled(
            await asyncio.gather(
                *(self._announce(c.stored) for c in announce), return_exceptions=True
            )
        )
        for c, error in zip(announce, announced, strict=True):
            results[c.index] = error or Outcome(result=self._ok(c.event, c.stored), stored=c.stored)
        side = _settled(
            await asyncio.gather(
                *(self._reject(events[i], r, st, keep_object=keep) for i, r, st, keep in rejects),
                *(self._resume(events[i], previous[events[i].staging_key]) for i in resumed),
                return_exceptions=True,
            )
        )
        for i, outcome in zip([r[0] for r in rejects] + resumed, side, strict=True):
            results[i] = outcome
        assert all(r is not None for r in results)
        return [r for r in results if r is not None]

    async def _examine_all(
        self, events: Sequence[IngestReceived]
    ) -> list[InstanceStored | Exception]:
        """Examine each upload; per upload what it holds, or the error that refuses it."""
        if not events or not isinstance(self._store, FileSystemStore):
            return _settled(
                await asyncio.gather(*(self._examine(e) for e in events), return_exceptions=True)
            )
        # Local files: the whole batch is read in one thread hop (a hop per file costs more
        # than reading a cached file), then parsed here (parsing holds the GIL anyway).
        this_boot = boot_id()
        jobs = [
            (
                self._store.local_path(e.staging_key),
                e,
                # Same boot as the staging write: the page cache holds what the gateway hashed.
                e.staged_boot_id is None or e.staged_boot_id != this_boot,
            )
            for e in events
        ]
        contents = await asyncio.to_thread(_read_many, jobs)
        out: list[InstanceStored | Exception] = []
        for event, data in zip(events, contents, strict=True):
            if isinstance(data, Exception):
                out.append(data)
                continue
            try:
                out.append(await self._parse(event, data))
            except Exception as exc:  # a verdict for this upload alone, as with gather
                out.append(exc)
        return out

    async def _sync(self, keys: Sequence[str]) -> list[Exception | None]:
        if not keys or not isinstance(self._store, FileSystemStore):
            return []
        return await self._store.sync(keys)

    async def _examine(self, event: IngestReceived) -> InstanceStored:
        """Check the staged bytes, parse the header and extract what the platform keeps."""
        path = self._store.local_path(event.staging_key)
        data = None if path is None else await asyncio.to_thread(_read_local, path, event, True)
        return await self._parse(event, data)

    async def _parse(self, event: IngestReceived, data: bytes | None) -> InstanceStored:
        """Parse the header (from `data`, else read from the store) and extract the attributes."""
        header: Header | QuickHeader
        if data is not None:
            # Ordinary files take the fast path (same verdict and attributes, a fifth of the
            # CPU); anything unusual, and every refusal, goes through the full reader.
            header = read_quick(data) or read_header(data, max_header_bytes=_MAX_HEADER)
        else:
            header = await self._read_header(event)
        extracted = extract(
            header,
            event.structure,
            expected_study_uid=event.expected_study_uid,
            max_frames=self._max_frames,
        )
        return self._stored_event(event, header, extracted)

    async def _read_header(self, event: IngestReceived) -> Header:
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
    def _stored_event(
        event: IngestReceived, header: Header | QuickHeader, x: Extracted
    ) -> InstanceStored:
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

    async def _claim(self, claims: list[_Claim]) -> None:
        """Claim every study and SOP Instance UID of the batch and record the verdicts, at once.

        Sets `rejection` or `duplicate` on each claim. Within the batch the first upload of a
        study or SOP instance claims it and the next ones are judged against it, as if they
        had come one after the other.
        """
        studies: dict[str, _Claim] = {}
        for c in claims:
            studies.setdefault(c.stored.study.study_uid, c)
        async with self._pool.acquire() as conn, conn.transaction():
            await conn.execute(
                """insert into ingest.studies (study_uid, structure, patient_key)
                   select * from unnest($1::text[], $2::text[], $3::text[])
                   on conflict (study_uid) do nothing""",
                list(studies),
                [c.stored.structure for c in studies.values()],
                [c.stored.patient.key for c in studies.values()],
            )
            owners = {
                row["study_uid"]: row
                for row in await conn.fetch(
                    """select study_uid, structure, patient_key from ingest.studies
                       where study_uid = any($1::text[])""",
                    list(studies),
                )
            }
            candidates: list[_Claim] = []
            for c in claims:
                owner = owners[c.stored.study.study_uid]
                if owner["structure"] != c.stored.structure:
                    c.rejection = DicomRejection(
                        FailureReasonValues.PROCESSING_FAILURE,
                        "this study was produced by another structure; it cannot be extended",
                    )
                elif owner["patient_key"] != c.stored.patient.key:
                    c.rejection = DicomRejection(
                        FailureReasonValues.DATASET_DOES_NOT_MATCH_SOP_CLASS,
                        "the patient identity differs from that of the study's other instances",
                    )
                else:
                    candidates.append(c)
            first: dict[str, _Claim] = {}
            for c in candidates:
                first.setdefault(c.stored.instance.sop_instance_uid, c)
            new = list(first.values())
            inserted = {
                row["sop_instance_uid"]
                for row in await conn.fetch(
                    """insert into ingest.objects
                         (sop_instance_uid, sha256, object_key, structure, study_uid, size, event)
                       select * from unnest($1::text[], $2::text[], $3::text[], $4::text[],
                                            $5::text[], $6::bigint[], $7::bytea[])
                       on conflict (sop_instance_uid) do nothing
                       returning sop_instance_uid""",
                    [c.stored.instance.sop_instance_uid for c in new],
                    [c.stored.sha256 for c in new],
                    [c.stored.object_key for c in new],
                    [c.stored.structure for c in new],
                    [c.stored.study.study_uid for c in new],
                    [c.stored.size for c in new],
                    [encode(c.stored) for c in new],
                )
            }
            known_of = [
                c
                for c in candidates
                if first[c.stored.instance.sop_instance_uid] is not c
                or c.stored.instance.sop_instance_uid not in inserted
            ]
            if known_of:
                known = {
                    row["sop_instance_uid"]: row
                    for row in await conn.fetch(
                        """select sop_instance_uid, sha256, event from ingest.objects
                           where sop_instance_uid = any($1::text[])""",
                        list({c.stored.instance.sop_instance_uid for c in known_of}),
                    )
                }
                for c in known_of:
                    row = known[c.stored.instance.sop_instance_uid]
                    if row["sha256"] != c.stored.sha256:
                        c.rejection = DicomRejection(
                            FailureReasonValues.DUPLICATE_SOP_INSTANCE,
                            "another object is already stored under this SOP Instance UID",
                        )
                    else:
                        c.duplicate = True
                        c.stored = decode(row["event"], InstanceStored)
            accepted = [c for c in candidates if c.rejection is None]
            if accepted:
                # No `on conflict`: an upload recorded meanwhile by another replica aborts the
                # batch, whose uploads are then retried one by one and resume that verdict.
                await conn.execute(
                    """insert into ingest.uploads (staging_key, outcome, sop_instance_uid,
                                                    sop_class_uid, study_uid, series_uid)
                       select * from unnest($1::text[], $2::text[], $3::text[], $4::text[],
                                            $5::text[], $6::text[])""",
                    [c.event.staging_key for c in accepted],
                    ["duplicate" if c.duplicate else "stored" for c in accepted],
                    [c.stored.instance.sop_instance_uid for c in accepted],
                    [c.stored.instance.sop_class_uid for c in accepted],
                    [c.stored.study.study_uid for c in accepted],
                    [c.stored.series.series_uid for c in accepted],
                )

    async def _place_all(self, moves: Sequence[tuple[str, str, bool]]) -> list[Exception | None]:
        """Put staged bytes at their canonical keys; `(staging, canonical, duplicate)` each.

        A duplicate's canonical copy exists already: its staged copy is dropped instead.
        """
        if not moves:
            return []
        if isinstance(self._store, FileSystemStore):
            store = self._store
            results: list[Exception | None] = [None] * len(moves)
            todo = [(i, m) for i, m in enumerate(moves) if not m[2]]
            # Data already synced before the verdict (`process_many`); the renames are made
            # durable here, each directory once.
            done = await store.move_many([(src, dst) for _, (src, dst, _) in todo])
            for (i, _), error in zip(todo, done, strict=True):
                results[i] = error
            dropped = _settled(
                await asyncio.gather(
                    *(store.delete(src) for src, _, duplicate in moves if duplicate),
                    return_exceptions=True,
                )
            )
            for i, outcome in zip([i for i, m in enumerate(moves) if m[2]], dropped, strict=True):
                results[i] = outcome
            return results
        return _settled(
            await asyncio.gather(
                *(self._place(src, dst) for src, dst, _ in moves), return_exceptions=True
            )
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
            duplicate = row["outcome"] == "duplicate"
            (error,) = await self._place_all([(event.staging_key, stored.object_key, duplicate)])
            if error is not None:
                raise error
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


def _settled(outcomes: Sequence[_T | BaseException]) -> list[_T | Exception]:
    """The results of `gather(..., return_exceptions=True)`; cancellation is re-raised."""
    out: list[_T | Exception] = []
    for outcome in outcomes:
        if isinstance(outcome, BaseException) and not isinstance(outcome, Exception):
            raise outcome
        out.append(outcome)
    return out


def _read_many(
    jobs: Sequence[tuple[os.PathLike[str] | None, IngestReceived, bool]],
) -> list[bytes | Exception | None]:
    """`_read_local` for each `(path, event, verify)`, in one worker thread; errors returned."""
    out: list[bytes | Exception | None] = []
    for path, event, verify in jobs:
        if path is None:
            out.append(None)
            continue
        try:
            out.append(_read_local(path, event, verify))
        except Exception as exc:
            out.append(exc)
    return out


def _read_local(path: os.PathLike[str], event: IngestReceived, verify: bool) -> bytes | None:
    """Check a staged file against its event (in a worker thread); its bytes if small.

    Returns the whole file when it is at most `_WHOLE_READ` bytes (the header is then parsed
    from memory, in the loop: parsing from the file would release and retake the GIL on every
    small read), else None. The size is always checked; the SHA-256 only with `verify`.
    """
    try:
        with open(path, "rb") as fp:
            size = os.fstat(fp.fileno()).st_size
            if size != event.size:
                raise DicomRejection(FailureReasonValues.PROCESSING_FAILURE, _TORN)
            data = fp.read() if size <= _WHOLE_READ else None
            if not verify:
                return data
            # hashlib hashes large buffers without holding the GIL.
            digest = (
                hashlib.sha256(data).hexdigest()
                if data is not None
                else hashlib.file_digest(fp, "sha256").hexdigest()
            )
    except FileNotFoundError as exc:
        raise ObjectNotFound(event.staging_key) from exc
    if digest != event.sha256:
        raise DicomRejection(FailureReasonValues.PROCESSING_FAILURE, _TORN)
    return data


def result_payload(result: IngestResult) -> bytes:
    """The reply sent to the gateway waiting on `reply_to`."""
    return msgspec.json.encode(result)

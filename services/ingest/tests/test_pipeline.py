"""The ingest pipeline on real PostgreSQL, NATS and filesystem store: batches keep per-upload verdicts."""

from __future__ import annotations

import asyncio
import functools
import hashlib
import itertools
from collections.abc import AsyncIterator
from io import BytesIO
from pathlib import Path

import asyncpg
import msgspec
import pydicom
import pytest
from nats.aio.client import Client
from nats.aio.msg import Msg
from pydicom.uid import UID, DeflatedExplicitVRLittleEndian

from krypton.bus import streams
from krypton.bus.codec import encode
from krypton.bus.connect import connect
from krypton.contracts import subjects
from krypton.contracts.common.v1 import Actor, RoleValues
from krypton.contracts.ingest.v1 import IngestReceived, IngestResult, InstanceStored
from krypton.db.migrations import apply_migrations
from krypton.dicom.errors import FailureReasonValues
from krypton.dicom.extract import extract
from krypton.dicom.header import read_header
from krypton.dicom.identity import INS_NIR_TEST_OID, ins_key
from krypton.dicom.quick import read_quick
from krypton.dicom.testfiles import pydicom_test_files
from krypton.ingest.app import MIGRATIONS, SCHEMA
from krypton.ingest.consumer import UploadConsumer
from krypton.ingest.pipeline import IngestPipeline, Outcome
from krypton.storage.fs import FileSystemStore, boot_id
from krypton.storage.keys import staging_key

pytestmark = [pytest.mark.nats, pytest.mark.postgres]

ROOT = "1.2.826.0.1.3680043.8.498.7731"
_uids = itertools.count(1)
_structures = itertools.count(1)


def _dicom(study: str, sop: str, patient: str = "P1", description: str = "") -> bytes:
    path = next(p for p in pydicom_test_files() if p.name == "CT_small.dcm")
    ds = pydicom.dcmread(path)
    ds.PatientID = patient
    ds.StudyInstanceUID = study
    ds.SeriesInstanceUID = f"{study}.1"
    ds.SOPInstanceUID = sop
    ds.file_meta.MediaStorageSOPInstanceUID = UID(sop)
    ds.SeriesDescription = description
    buf = BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


class Rig:
    """A pipeline with its store, and helpers to stage uploads."""

    def __init__(self, pool: asyncpg.Pool, store: FileSystemStore, nc: Client) -> None:
        self.pool = pool
        self.store = store
        self.nc = nc
        self.js = nc.jetstream()
        self.pipeline = IngestPipeline(pool, store, self.js)
        self.structure = f"97{next(_structures):07d}"

    async def stage(
        self, data: bytes, *, announced: bytes | None = None, boot: str | None = None
    ) -> IngestReceived:
        """Stage `data` as the gateway does (no fsync); the event describes `announced`."""
        upload = f"u{next(_uids)}x{id(self)}"
        key = staging_key(upload)

        async def chunks() -> AsyncIterator[bytes]:
            yield data

        await self.store.put_stream(key, chunks(), durable=False)
        described = data if announced is None else announced
        return IngestReceived(
            staging_key=key,
            structure=self.structure,
            sha256=hashlib.sha256(described).hexdigest(),
            size=len(described),
            received_at="2026-11-23T10:00:00+00:00",
            actor=Actor(
                sub="producer-1", role=RoleValues.PRODUCER, issuer="test", structure=self.structure
            ),
            staged_boot_id=boot,
        )


@pytest.fixture
async def rig(pg_pool: asyncpg.Pool, nats_url: str, tmp_path: Path) -> AsyncIterator[Rig]:
    await apply_migrations(pg_pool, SCHEMA, MIGRATIONS)
    nc = await connect(nats_url, "ingest-test")
    await streams.provision(nc.jetstream())
    try:
        yield Rig(pg_pool, FileSystemStore(tmp_path / "objects"), nc)
    finally:
        await nc.drain()


def _ok(result: Outcome | Exception) -> IngestResult:
    assert isinstance(result, Outcome), result
    return result.result


async def test_a_batch_stores_every_instance_at_its_canonical_key_and_announces_it(
    rig: Rig,
) -> None:
    study = f"{ROOT}.{next(_uids)}"
    datas = [_dicom(study, f"{study}.1.{i}") for i in range(5)]
    announced: list[InstanceStored] = []
    sub = await rig.nc.subscribe(
        subjects.instance_stored(rig.structure),
        cb=functools.partial(_collect, announced),
    )
    events = [await rig.stage(d) for d in datas]

    results = await rig.pipeline.process_many(events)

    assert [_ok(r).ok for r in results] == [True] * 5
    for data, result in zip(datas, results, strict=True):
        assert isinstance(result, Outcome)
        assert result.stored is not None
        assert await rig.store.read(result.stored.object_key) == data
    for event in events:
        assert not await rig.store.exists(event.staging_key)
    await rig.nc.flush()
    await asyncio.sleep(0.1)
    await sub.unsubscribe()
    assert sorted(s.instance.sop_instance_uid for s in announced) == sorted(
        f"{study}.1.{i}" for i in range(5)
    )


async def _collect(into: list[InstanceStored], msg: Msg) -> None:
    into.append(msgspec.json.decode(msg.data, type=InstanceStored))


async def test_bad_torn_and_conflicting_uploads_are_refused_alone_in_their_batch(
    rig: Rig,
) -> None:
    study = f"{ROOT}.{next(_uids)}"
    good = _dicom(study, f"{study}.1.1")
    same_again = good
    other_bytes = _dicom(study, f"{study}.1.1", description="changed")
    other_patient = _dicom(study, f"{study}.1.2", patient="P2")
    events = [
        await rig.stage(good),
        await rig.stage(b"not a dicom file at all" * 10),
        await rig.stage(good[: len(good) // 2], announced=good),  # torn by a power cut
        await rig.stage(same_again),
        await rig.stage(other_bytes),
        await rig.stage(other_patient),
    ]

    results = [_ok(r) for r in await rig.pipeline.process_many(events)]

    assert [r.ok for r in results] == [True, False, False, True, False, False]
    assert results[1].failure_code == FailureReasonValues.CANNOT_UNDERSTAND
    assert results[2].failure_code == FailureReasonValues.PROCESSING_FAILURE
    assert results[4].failure_code == FailureReasonValues.DUPLICATE_SOP_INSTANCE
    assert results[5].failure_code == FailureReasonValues.DATASET_DOES_NOT_MATCH_SOP_CLASS
    rows = await rig.pool.fetch(
        "select staging_key, outcome from ingest.uploads where staging_key = any($1)",
        [e.staging_key for e in events],
    )
    outcomes: dict[str, str] = {row["staging_key"]: row["outcome"] for row in rows}
    assert [outcomes[e.staging_key] for e in events] == [
        "stored",
        "rejected",
        "rejected",
        "duplicate",
        "rejected",
        "rejected",
    ]
    quarantined = await rig.pool.fetchval(
        "select count(*) from ingest.quarantine where structure = $1", rig.structure
    )
    assert quarantined == 4


async def test_staged_bytes_are_rehashed_unless_staged_in_this_boot(rig: Rig) -> None:
    """Same boot: the page cache holds what the gateway hashed, so only the size is checked.

    Here the announced hash is of other bytes of the same size, which only a verification
    notices: an event from another boot (a power cut since staging) is refused, one from this
    boot is taken as announced.
    """
    study = f"{ROOT}.{next(_uids)}"
    staged = _dicom(study, f"{study}.1.1", description="as staged")
    other = _dicom(study, f"{study}.1.1", description="announced")
    assert len(staged) == len(other)
    this_boot = boot_id()
    assert this_boot is not None

    earlier_boot = await rig.stage(staged, announced=other, boot="an earlier boot")
    same_boot = await rig.stage(staged, announced=other, boot=this_boot)
    (refused,) = await rig.pipeline.process_many([earlier_boot])
    (stored,) = await rig.pipeline.process_many([same_boot])

    assert _ok(refused).failure_code == FailureReasonValues.PROCESSING_FAILURE
    assert _ok(stored).ok
    assert isinstance(stored, Outcome)
    assert stored.stored is not None
    assert await rig.store.read(stored.stored.object_key) == staged


async def test_a_redelivered_batch_gets_the_same_verdicts_and_stores_nothing_twice(
    rig: Rig,
) -> None:
    study = f"{ROOT}.{next(_uids)}"
    events = [await rig.stage(_dicom(study, f"{study}.1.{i}")) for i in range(3)]
    events.append(await rig.stage(b"junk" * 100))

    first = [_ok(r) for r in await rig.pipeline.process_many(events)]
    again = [_ok(r) for r in await rig.pipeline.process_many(events)]

    assert first == again
    assert [r.ok for r in first] == [True, True, True, False]
    count = await rig.pool.fetchval(
        "select count(*) from ingest.objects where study_uid = $1", study
    )
    assert count == 3


async def test_the_consumer_answers_each_upload_on_its_reply_subject(rig: Rig) -> None:
    study = f"{ROOT}.{next(_uids)}"
    consumer = UploadConsumer(rig.nc, rig.js, rig.pipeline, batch=4, workers=2)
    await consumer.start()
    try:
        events = [await rig.stage(_dicom(study, f"{study}.1.{i}")) for i in range(6)]
        events.append(await rig.stage(b"junk" * 100))
        inbox = f"_INBOX.ingest-test.{next(_uids)}"
        answers: dict[str, IngestResult] = {}
        done = asyncio.Event()

        async def on_answer(msg: Msg) -> None:
            result = msgspec.json.decode(msg.data, type=IngestResult)
            answers[result.staging_key] = result
            if len(answers) == len(events):
                done.set()

        await rig.nc.subscribe(inbox, cb=on_answer)
        for event in events:
            await rig.js.publish(
                subjects.ingest_received(rig.structure),
                encode(msgspec.structs.replace(event, reply_to=inbox)),
                stream=subjects.INGEST_STREAM,
            )
        await asyncio.wait_for(done.wait(), timeout=20)
    finally:
        await consumer.stop()
    assert [answers[e.staging_key].ok for e in events] == [True] * 6 + [False]


def _variant(study: str, sop: str, kind: str) -> bytes:
    """CT_small as an ordinary file, with an INS in an undefined-length sequence, or deflated."""
    ds = pydicom.dcmread(next(p for p in pydicom_test_files() if p.name == "CT_small.dcm"))
    ds.StudyInstanceUID = study
    ds.SeriesInstanceUID = f"{study}.1"
    ds.SOPInstanceUID = sop
    ds.file_meta.MediaStorageSOPInstanceUID = UID(sop)
    if kind == "ins":
        qualifier = pydicom.Dataset()
        qualifier.UniversalEntityID = INS_NIR_TEST_OID
        qualifier.UniversalEntityIDType = "ISO"
        other = pydicom.Dataset()
        other.PatientID = "1850312345678" + ins_key("1850312345678")
        other.IssuerOfPatientIDQualifiersSequence = [qualifier]
        ds.OtherPatientIDsSequence = [other]
        ds["OtherPatientIDsSequence"].is_undefined_length = True
    if kind == "deflated":
        ds.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    buf = BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


async def test_fast_and_full_header_paths_store_the_same_attributes_in_one_batch(
    rig: Rig,
) -> None:
    kinds = ["plain", "ins", "deflated"]
    studies = [f"{ROOT}.{next(_uids)}" for _ in kinds]  # the INS is another patient
    datas = [
        _variant(study, f"{study}.1.{i}", kind)
        for i, (study, kind) in enumerate(zip(studies, kinds, strict=True))
    ]
    # The first two take the fast path, the deflated one the full reader.
    assert [read_quick(d) is not None for d in datas] == [True, True, False]

    results = await rig.pipeline.process_many([await rig.stage(d) for d in datas])

    for data, result in zip(datas, results, strict=True):
        assert isinstance(result, Outcome)
        assert result.stored is not None
        header = read_header(data)
        expected = extract(header, rig.structure)
        stored = result.stored
        assert (stored.patient, stored.study, stored.series, stored.instance) == (
            expected.patient,
            expected.study,
            expected.series,
            expected.instance,
        )
        assert stored.pixel_data_offset == header.pixel_data_offset
    second = results[1]
    assert isinstance(second, Outcome)
    assert second.stored is not None
    assert second.stored.patient.key.startswith("INS:")


class _GatedPool:
    """A pool whose verdict query waits for `gate`, or fails with `error` (all else as is)."""

    def __init__(
        self, pool: asyncpg.Pool, gate: asyncio.Event, error: Exception | None = None
    ) -> None:
        self._pool = pool
        self._gate = gate
        self._error = error

    async def fetch(self, query: str, *args: object) -> list[asyncpg.Record]:
        if "from ingest.uploads" in query:
            await asyncio.wait_for(self._gate.wait(), 5.0)
            if self._error is not None:
                raise self._error
        rows: list[asyncpg.Record] = await self._pool.fetch(query, *args)
        return rows

    def __getattr__(self, name: str) -> object:
        return getattr(self._pool, name)


async def test_the_verdict_query_runs_while_the_staged_files_are_synced(
    rig: Rig, monkeypatch: pytest.MonkeyPatch
) -> None:
    study = f"{ROOT}.{next(_uids)}"
    events = [await rig.stage(_dicom(study, f"{study}.1.{i}")) for i in range(2)]
    syncing = asyncio.Event()
    real_sync = rig.store.sync

    async def sync(keys: list[str]) -> list[Exception | None]:
        syncing.set()
        return await real_sync(keys)

    monkeypatch.setattr(rig.store, "sync", sync)
    # The query answers only once the fsyncs have started: one after the other would hang.
    pool: asyncpg.Pool = _GatedPool(rig.pool, syncing)  # type: ignore[assignment]
    pipeline = IngestPipeline(pool, rig.store, rig.js)

    results = await asyncio.wait_for(pipeline.process_many(events), 10.0)

    assert [_ok(r).ok for r in results] == [True, True]


async def test_a_failing_verdict_query_fails_the_batch_and_records_nothing(rig: Rig) -> None:
    study = f"{ROOT}.{next(_uids)}"
    events = [await rig.stage(_dicom(study, f"{study}.1.{i}")) for i in range(2)]
    opened = asyncio.Event()
    opened.set()
    down = asyncpg.exceptions.ConnectionDoesNotExistError("connection lost")
    pool: asyncpg.Pool = _GatedPool(rig.pool, opened, down)  # type: ignore[assignment]
    pipeline = IngestPipeline(pool, rig.store, rig.js)

    with pytest.raises(asyncpg.exceptions.ConnectionDoesNotExistError):
        await pipeline.process_many(events)

    recorded = await rig.pool.fetchval(
        "select count(*) from ingest.uploads where staging_key = any($1::text[])",
        [e.staging_key for e in events],
    )
    assert recorded == 0
    # The staged files are still there: the redelivered batch stores them.
    assert [_ok(r).ok for r in await rig.pipeline.process_many(events)] == [True, True]

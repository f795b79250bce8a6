"""Precompute at ingest: renditions are made, in a low-priority thread of their own."""

from __future__ import annotations

import hashlib
import os
import threading
from pathlib import Path

from krypton.contracts.ingest.v1 import InstanceStored
from krypton.dicom.extract import extract
from krypton.dicom.header import read_header
from krypton.dicom.testfiles import pydicom_test_files
from krypton.render.worker import Worker
from krypton.storage.fs import FileSystemStore
from krypton.storage.keys import derived_key, instance_key

STRUCTURE = "970000001"


async def _stored(store: FileSystemStore) -> InstanceStored:
    data = next(p for p in pydicom_test_files() if p.name == "CT_small.dcm").read_bytes()
    header = read_header(data)
    x = extract(header, STRUCTURE)
    key = instance_key(x.study.study_uid, x.series.series_uid, x.instance.sop_instance_uid)
    await store.put_bytes(key, data)
    return InstanceStored(
        structure=STRUCTURE,
        object_key=key,
        sha256=hashlib.sha256(data).hexdigest(),
        size=len(data),
        stored_at="2026-11-23T10:00:00+00:00",
        patient=x.patient,
        study=x.study,
        series=x.series,
        instance=x.instance,
        pixel_data_offset=header.pixel_data_offset,
    )


def _thread_nice() -> int:
    return os.getpriority(os.PRIO_PROCESS, threading.get_native_id())


async def test_precompute_makes_the_thumbnail_and_htj2k_copy_in_a_lower_priority_thread(
    tmp_path: Path,
) -> None:
    store = FileSystemStore(tmp_path / "objects")
    event = await _stored(store)
    worker = Worker(store, precompute_nice=5)
    try:
        await worker.precompute(event)
        uids = (event.study.study_uid, event.series.series_uid, event.instance.sop_instance_uid)
        assert await store.exists(derived_key("thumbnail-v1", *uids, "jpg"))
        assert await store.exists(derived_key("ts-1.2.840.10008.1.2.4.201", *uids, "dcm"))
        own = _thread_nice()
        background = worker._background.submit(_thread_nice).result()
        # Lowered by 5, capped at the lowest priority (19) when the test itself runs niced.
        assert background == min(own + 5, 19)
    finally:
        worker.close()


async def test_precompute_nice_zero_keeps_the_priority(tmp_path: Path) -> None:
    worker = Worker(FileSystemStore(tmp_path / "objects"), precompute_nice=0)
    try:
        assert worker._background.submit(_thread_nice).result() == _thread_nice()
    finally:
        worker.close()

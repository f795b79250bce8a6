"""The render worker's transcoding: answered at once, kept in the store after the answer."""

from __future__ import annotations

import asyncio
import io
from pathlib import Path

import numpy as np
import pydicom
from pydicom.uid import ExplicitVRLittleEndian, JPEGLSLossless

from krypton.contracts.transcode.v1 import TranscodeRequest
from krypton.dicom.pixels import transcode
from krypton.dicom.synthetic import Population, render_instances
from krypton.render.worker import Worker
from krypton.storage.fs import FileSystemStore


def _instance() -> tuple[bytes, pydicom.Dataset]:
    population = Population(11, 50)
    for index in range(50):
        study = population.study(index, max_instances_per_series=1)
        for data in render_instances(study, rows=64, cols=64, bits=16):
            return data, pydicom.dcmread(io.BytesIO(data))
    msg = "no instance"
    raise AssertionError(msg)


async def test_a_first_transcode_answers_the_bytes_and_keeps_them(tmp_path: Path) -> None:
    original, ds = _instance()
    store = FileSystemStore(tmp_path)
    compressed = transcode(original, JPEGLSLossless)
    await store.put_bytes("originals/one.dcm", compressed)
    worker = Worker(store, precompute_htj2k=False, precompute_thumbnail=False)
    request = TranscodeRequest(
        object_key="originals/one.dcm",
        study_uid=str(ds.StudyInstanceUID),
        series_uid=str(ds.SeriesInstanceUID),
        sop_instance_uid=str(ds.SOPInstanceUID),
        transfer_syntax_uid=ExplicitVRLittleEndian,
        source_transfer_syntax_uid=JPEGLSLossless,
        inline=True,
    )
    response, data = await worker.transcode_inline(request)
    assert response.status == 200
    assert data is not None
    assert response.size == len(data)
    decoded = pydicom.dcmread(io.BytesIO(data))
    assert decoded.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
    assert np.array_equal(decoded.pixel_array, ds.pixel_array)
    assert response.pixel_data_offset is not None
    assert data[response.pixel_data_offset : response.pixel_data_offset + 4] == b"\xe0\x7f\x10\x00"

    # The next request names the kept object (once written) and carries no bytes.
    again, none = await worker.transcode_inline(request)
    assert none is None
    assert again == response
    deadline = asyncio.get_running_loop().time() + 30.0
    while not await store.exists(response.object_key or ""):
        assert asyncio.get_running_loop().time() < deadline
        await asyncio.sleep(0.01)
    assert await store.read(response.object_key or "") == data
    assert await worker.transcode(request) == response

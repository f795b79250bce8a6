"""Transcoding in the gateway (`wado_transcode`): pydicom's pixels, no render service, kept.

The instance route's `_transcoded` is called with a context whose NATS client fails every
request: a pair the gateway transcodes itself never reaches the render service.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import uuid
from pathlib import Path
from types import SimpleNamespace
from typing import cast

import msgspec
import numpy as np
import pydicom
import pytest
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    HTJ2KLossless,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGLSLossless,
    RLELossless,
)

from krypton.contracts.index.v1 import LocatedInstance
from krypton.contracts.transcode.v1 import TranscodeResponse
from krypton.dicom.pixels import RLE_WITHOUT_GIL, read_dataset, transcode
from krypton.dicom.synthetic import Population, render_instances
from krypton.gateway.context import GatewayContext
from krypton.gateway.routes_wado import _transcoded
from krypton.gateway.wado_services import WadoError
from krypton.gateway.wado_transcode import LocalTranscoder, transcodes_here
from krypton.storage.fs import FileSystemStore
from krypton.storage.keys import instance_key, sidecar_key, transcoded_key


class NoService:
    """A NATS client that fails the test when anything is asked of a service."""

    async def request(self, subject: str, *args: object, **kwargs: object) -> None:
        pytest.fail(f"asked {subject}: the gateway should have transcoded itself")


def _original() -> bytes:
    population = Population(11, 50)
    for index in range(50):
        study = population.study(index, max_instances_per_series=1)
        for data in render_instances(study, rows=64, cols=64, bits=16):
            return data
    msg = "no instance"
    raise AssertionError(msg)


def _deflated(original: bytes) -> bytes:
    ds = read_dataset(original)
    ds.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


async def _stored(store: FileSystemStore, data: bytes, syntax: str) -> LocatedInstance:
    """`data` stored as an original, described as the index would.

    The content hash is unique to the test: what one test's transcodes leave in this process's
    memory of derived objects (`wado_services`) never answers another's.
    """
    ds = read_dataset(data, pixels=False)
    uids = (str(ds.StudyInstanceUID), str(ds.SeriesInstanceUID), str(ds.SOPInstanceUID))
    key = instance_key(*uids)
    await store.put_bytes(key, data)
    return LocatedInstance(
        study_uid=uids[0],
        series_uid=uids[1],
        sop_instance_uid=uids[2],
        sop_class_uid=str(ds.SOPClassUID),
        transfer_syntax_uid=syntax,
        object_key=key,
        sha256=hashlib.sha256(data + uuid.uuid4().bytes).hexdigest(),
        size=len(data),
        rows=int(ds.Rows),
        columns=int(ds.Columns),
        bits_allocated=int(ds.BitsAllocated),
        photometric_interpretation=str(ds.PhotometricInterpretation),
        pixel_data_offset=None if syntax == DeflatedExplicitVRLittleEndian else 1,
    )


def _context(store: FileSystemStore) -> GatewayContext:
    return cast(
        GatewayContext, SimpleNamespace(store=store, nc=NoService(), transcoder=LocalTranscoder())
    )


async def _written(store: FileSystemStore, key: str) -> None:
    for _ in range(300):
        if await store.exists(key):
            return
        await asyncio.sleep(0.01)
    pytest.fail(f"{key} never written")


@pytest.mark.parametrize(
    ("source", "target"),
    [
        (RLELossless, ExplicitVRLittleEndian),
        (JPEGLSLossless, ExplicitVRLittleEndian),
        (HTJ2KLossless, ExplicitVRLittleEndian),
        (DeflatedExplicitVRLittleEndian, ExplicitVRLittleEndian),
        (ExplicitVRLittleEndian, JPEGLSLossless),
        (RLELossless, HTJ2KLossless),
    ],
)
async def test_lossless_pairs_give_pydicoms_pixels_without_the_render_service(
    tmp_path: Path, source: str, target: str
) -> None:
    original = _original()
    data = (
        _deflated(original)
        if source == DeflatedExplicitVRLittleEndian
        else original
        if source == ExplicitVRLittleEndian
        else transcode(original, source)
    )
    store = FileSystemStore(tmp_path)
    instance = await _stored(store, data, source)
    ctx = _context(store)

    response, made = await _transcoded(ctx, instance, target)
    assert made is not None
    assert made == transcode(data, target)  # the render service's own function: same bytes
    ds = pydicom.dcmread(io.BytesIO(made))
    assert ds.file_meta.TransferSyntaxUID == target
    np.testing.assert_array_equal(ds.pixel_array, pydicom.dcmread(io.BytesIO(data)).pixel_array)
    assert response.size == len(made)

    # Kept under the service's key, sidecar last (with the Pixel Data offset); the next read
    # names the stored object.
    assert response.object_key == transcoded_key(
        target, instance.study_uid, instance.series_uid, instance.sop_instance_uid
    )
    await _written(store, sidecar_key(response.object_key))
    assert await store.read(response.object_key) == made
    await asyncio.sleep(0.01)
    again, none = await _transcoded(ctx, instance, target)
    assert none is None
    assert again.object_key == response.object_key
    assert again.size == len(made)
    assert again.pixel_data_offset is not None
    at = again.pixel_data_offset
    assert made[at : at + 4] == b"\xe0\x7f\x10\x00"
    assert ctx.transcoder.made == 1


async def test_concurrent_reads_share_one_transcode_and_frames_wait_for_the_store(
    tmp_path: Path,
) -> None:
    store = FileSystemStore(tmp_path)
    instance = await _stored(store, transcode(_original(), RLELossless), RLELossless)
    transcoder = LocalTranscoder()
    results = await asyncio.gather(
        *(transcoder.transcode(store, instance, ExplicitVRLittleEndian) for _ in range(5))
    )
    assert transcoder.made == 1
    assert len({r[1] for r in results if r is not None}) == 1

    other = await _stored(store, transcode(_original(), JPEGLSLossless), JPEGLSLossless)
    stored = await transcoder.stored(store, other, ExplicitVRLittleEndian)
    assert stored is not None
    assert stored.object_key is not None
    assert stored.pixel_data_offset is not None
    assert await store.exists(stored.object_key)


async def test_a_derived_object_made_elsewhere_is_read_not_remade(tmp_path: Path) -> None:
    store = FileSystemStore(tmp_path)
    original = transcode(_original(), HTJ2KLossless)
    instance = await _stored(store, original, HTJ2KLossless)
    key = transcoded_key(
        ExplicitVRLittleEndian, instance.study_uid, instance.series_uid, instance.sop_instance_uid
    )
    made = transcode(original, ExplicitVRLittleEndian)
    await store.put_bytes(key, made)
    described = TranscodeResponse(status=200, object_key=key, size=len(made), pixel_data_offset=9)
    await store.put_bytes(sidecar_key(key), _json(described))
    transcoder = LocalTranscoder()
    found = await transcoder.transcode(store, instance, ExplicitVRLittleEndian)
    assert found == (described, None)
    assert transcoder.made == 0


def _json(response: TranscodeResponse) -> bytes:
    return msgspec.json.encode(response)


async def test_jpeg2000_is_decoded_here_only_from_its_htj2k_copy(tmp_path: Path) -> None:
    store = FileSystemStore(tmp_path)
    original = _original()
    instance = await _stored(store, transcode(original, JPEG2000Lossless), JPEG2000Lossless)
    transcoder = LocalTranscoder()
    assert await transcoder.transcode(store, instance, ExplicitVRLittleEndian) is None

    copy = transcoded_key(
        HTJ2KLossless, instance.study_uid, instance.series_uid, instance.sop_instance_uid
    )
    await store.put_bytes(copy, transcode(original, HTJ2KLossless))
    await store.put_bytes(sidecar_key(copy), b"{}")
    found = await transcoder.transcode(store, instance, ExplicitVRLittleEndian)
    assert found is not None
    assert found[1] is not None
    np.testing.assert_array_equal(
        pydicom.dcmread(io.BytesIO(found[1])).pixel_array,
        pydicom.dcmread(io.BytesIO(original)).pixel_array,
    )


async def test_slow_targets_and_big_instances_go_to_the_render_service(tmp_path: Path) -> None:
    store = FileSystemStore(tmp_path)
    instance = await _stored(store, _original(), ExplicitVRLittleEndian)
    assert transcodes_here(instance, JPEGLSLossless)
    assert not transcodes_here(instance, RLELossless)  # pydicom's encoder holds the GIL
    assert not transcodes_here(instance, JPEG2000Lossless)
    many_frames = LocatedInstance(
        **{
            **{f: getattr(instance, f) for f in instance.__struct_fields__},
            "number_of_frames": 5000,
        }
    )
    assert not transcodes_here(many_frames, JPEGLSLossless)
    rle = await _stored(store, transcode(_original(), RLELossless), RLELossless)
    assert transcodes_here(rle, ExplicitVRLittleEndian)
    big_frames = LocatedInstance(
        **{**{f: getattr(rle, f) for f in rle.__struct_fields__}, "rows": 2048, "columns": 2048}
    )
    # Its frames decode without the GIL (imagecodecs): big ones too; JPEG baseline's do not.
    assert transcodes_here(big_frames, ExplicitVRLittleEndian) is RLE_WITHOUT_GIL
    big_jpeg = LocatedInstance(
        **{
            **{f: getattr(big_frames, f) for f in big_frames.__struct_fields__},
            "transfer_syntax_uid": JPEGBaseline8Bit,
            "bits_allocated": 8,
        }
    )
    assert not transcodes_here(big_jpeg, ExplicitVRLittleEndian)
    assert await LocalTranscoder().transcode(store, instance, RLELossless) is None


async def test_an_undecodable_instance_is_406_and_a_missing_one_404(tmp_path: Path) -> None:
    store = FileSystemStore(tmp_path)
    data = transcode(_original(), RLELossless)
    broken = data[: len(data) - 2000]  # pixel data cut short
    instance = await _stored(store, broken, RLELossless)
    with pytest.raises(WadoError) as refused:
        await LocalTranscoder().transcode(store, instance, ExplicitVRLittleEndian)
    assert refused.value.status == 406
    await store.delete(instance.object_key)
    gone = LocatedInstance(
        **{**{f: getattr(instance, f) for f in instance.__struct_fields__}, "sha256": "f" * 64}
    )
    with pytest.raises(WadoError) as missing:
        await LocalTranscoder().transcode(store, gone, ExplicitVRLittleEndian)
    assert missing.value.status == 404

"""Frame count and pixel data length checks of `extract`, and the tail check of `read_header`."""

from __future__ import annotations

from io import BytesIO

import pydicom
import pytest

from krypton.dicom.errors import DicomRejection, FailureReasonValues
from krypton.dicom.extract import extract
from krypton.dicom.header import read_header
from krypton.dicom.synthetic import Population, render_instances

STRUCTURE = "330781196"


def _instance(frames: object = None, pixel_bytes: int | None = None) -> bytes:
    study = Population(1, 10).study(0, max_instances_per_series=1)
    data = next(render_instances(study, rows=4, cols=4, bits=16))
    ds = pydicom.dcmread(BytesIO(data))
    if frames is not None:
        ds.NumberOfFrames = frames
        if isinstance(frames, int) and frames > 0:
            ds.PixelData = ds.PixelData * min(frames, 8)
    if pixel_bytes is not None:
        ds.PixelData = ds.PixelData[:pixel_bytes]
    ds.add_new((0x7FE1, 0x0010), "LO", "TRAILER")  # an element after the pixel data
    out = BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


def _code(data: bytes, max_frames: int = 100) -> int | None:
    try:
        extract(read_header(data), STRUCTURE, max_frames=max_frames)
    except DicomRejection as exc:
        return exc.code
    return None


def test_a_consistent_multi_frame_instance_is_accepted() -> None:
    assert _code(_instance(frames=8)) is None


@pytest.mark.parametrize("frames", ["0", "-5"])
def test_an_invalid_frame_count_is_refused(frames: str) -> None:
    assert _code(_instance(frames=frames)) == FailureReasonValues.DATASET_DOES_NOT_MATCH_SOP_CLASS


def test_frames_above_the_limit_are_out_of_resources() -> None:
    assert _code(_instance(frames=8), max_frames=4) == FailureReasonValues.OUT_OF_RESOURCES


def test_pixel_data_shorter_than_the_frames_need_is_refused() -> None:
    # 1,000 frames declared, 8 frames of pixels present.
    declared = _instance(frames=1000)
    assert _code(declared, max_frames=10**9) == FailureReasonValues.CANNOT_UNDERSTAND
    assert _code(_instance(pixel_bytes=16)) == FailureReasonValues.CANNOT_UNDERSTAND


@pytest.mark.parametrize("cut", [1, 5, 12])
def test_a_file_cut_after_its_pixel_data_is_refused(cut: int) -> None:
    data = _instance()
    assert _code(data) is None
    assert _code(data[:-cut]) == FailureReasonValues.CANNOT_UNDERSTAND

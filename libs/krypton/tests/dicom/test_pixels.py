"""Transcoding to Explicit VR Little Endian keeps exactly the pixels pydicom decodes."""

from __future__ import annotations

import io
import warnings
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.uid import ExplicitVRLittleEndian, JPEGLSLossless, RLELossless

from krypton.dicom.codecs import can_produce, frame_media_type, is_native
from krypton.dicom.pixels import DecodeError, decode_frame, to_explicit_le
from krypton.dicom.testfiles import pydicom_test_files


def _reference(path: Path) -> np.ndarray | None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            return pydicom.dcmread(path).pixel_array
        except Exception:
            return None


DECODABLE = [p for p in pydicom_test_files() if _reference(p) is not None]


@pytest.mark.parametrize("path", DECODABLE, ids=lambda p: p.name)
def test_explicit_le_copy_has_pydicoms_pixels(path: Path) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out = to_explicit_le(path.read_bytes())
        ds = pydicom.dcmread(io.BytesIO(out))
        assert ds.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
        np.testing.assert_array_equal(ds.pixel_array, _reference(path))


def test_decode_frame_refuses_a_frame_that_does_not_exist() -> None:
    path = next(p for p in DECODABLE if p.name == "CT_small.dcm")
    arr, _ = decode_frame(path, 0)
    assert arr.shape == (128, 128)
    with pytest.raises(DecodeError, match="does not exist"):
        decode_frame(path, 1)


def test_transfer_syntax_tables() -> None:
    assert is_native(ExplicitVRLittleEndian)
    assert frame_media_type(JPEGLSLossless) == "image/jls"
    assert frame_media_type(RLELossless) == "image/dicom-rle"
    assert can_produce(JPEGLSLossless, ExplicitVRLittleEndian)
    assert not can_produce(ExplicitVRLittleEndian, JPEGLSLossless)

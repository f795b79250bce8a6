"""Transcoding keeps exactly the pixels pydicom decodes (lossless syntaxes); JPEG is close."""

from __future__ import annotations

import io
import warnings
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.uid import (
    ExplicitVRLittleEndian,
    HTJ2KLossless,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGLSLossless,
    RLELossless,
)

from krypton.dicom.codecs import LOSSLESS_ENCODABLE, can_produce, frame_media_type, is_native
from krypton.dicom.pixels import DecodeError, decode_frame, to_explicit_le, transcode
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


@pytest.mark.parametrize("path", DECODABLE, ids=lambda p: p.name)
def test_decode_frame_from_bytes_is_pydicoms_frame(path: Path) -> None:
    """Bytes take the direct native path where it applies: the same array, dtype and all.

    A path always goes through pydicom's `pixel_array`: the reference.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds = pydicom.dcmread(path)
        frames = int(ds.get("NumberOfFrames") or 1)
        for index in sorted({0, frames - 1}):
            try:
                expected, _ = decode_frame(path, index)
            except DecodeError:
                with pytest.raises(DecodeError):
                    decode_frame(path.read_bytes(), index)
                continue
            arr, _ = decode_frame(path.read_bytes(), index)
            assert arr.dtype == expected.dtype
            np.testing.assert_array_equal(arr, expected)


@pytest.mark.parametrize("signed", [False, True])
@pytest.mark.parametrize("implicit", [False, True])
def test_native_frames_drop_unused_high_bits_as_pydicom_does(signed: bool, implicit: bool) -> None:
    """12 bits stored in 16 with garbage above: masked (unsigned) or sign-extended (signed)."""
    path = next(p for p in DECODABLE if p.name == "CT_small.dcm")
    ds = pydicom.dcmread(path)
    rng = np.random.default_rng(7)
    raw = rng.integers(0, 65536, size=(ds.Rows, ds.Columns), dtype=np.uint16)
    ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 12, 11, int(signed)
    ds.PixelData = raw.tobytes()
    syntax = pydicom.uid.ImplicitVRLittleEndian if implicit else ExplicitVRLittleEndian
    ds.file_meta.TransferSyntaxUID = syntax
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True, implicit_vr=implicit, little_endian=True)
    data = out.getvalue()
    expected = pydicom.pixels.pixel_array(io.BytesIO(data), index=0)
    arr, _ = decode_frame(data, 0)
    assert arr.dtype == expected.dtype == (np.int16 if signed else np.uint16)
    np.testing.assert_array_equal(arr, expected)
    assert int(np.abs(arr.astype(np.int32)).max()) < 4096


def test_transfer_syntax_tables() -> None:
    assert is_native(ExplicitVRLittleEndian)
    assert frame_media_type(JPEGLSLossless) == "image/jls"
    assert frame_media_type(RLELossless) == "image/dicom-rle"
    assert can_produce(JPEGLSLossless, ExplicitVRLittleEndian)
    assert can_produce(ExplicitVRLittleEndian, JPEGLSLossless, 16)
    assert not can_produce(ExplicitVRLittleEndian, JPEGBaseline8Bit, 16)
    assert not can_produce(ExplicitVRLittleEndian, HTJ2KLossless, 1)
    assert not can_produce(ExplicitVRLittleEndian, "1.2.840.10008.1.2.4.57")


COMPRESSED_TARGETS = sorted(LOSSLESS_ENCODABLE - {ExplicitVRLittleEndian})


@pytest.mark.parametrize("syntax", COMPRESSED_TARGETS, ids=lambda s: s.name)
@pytest.mark.parametrize("path", DECODABLE, ids=lambda p: p.name)
def test_lossless_transcoding_round_trips_pydicoms_pixels(path: Path, syntax: str) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        source = pydicom.dcmread(path, stop_before_pixels=True)
        bits = int(source.get("BitsAllocated") or 0)
        samples = int(source.get("SamplesPerPixel") or 1)
        if source.file_meta.TransferSyntaxUID == syntax:
            return  # served as stored, never transcoded
        if not can_produce(str(source.file_meta.TransferSyntaxUID), syntax, bits, samples):
            with pytest.raises(DecodeError):
                transcode(path.read_bytes(), syntax)
            return
        out = transcode(path.read_bytes(), syntax)
        ds = pydicom.dcmread(io.BytesIO(out))
        assert ds.file_meta.TransferSyntaxUID == syntax
        assert ds.SOPInstanceUID == source.SOPInstanceUID
        np.testing.assert_array_equal(ds.pixel_array, _reference(path))


@pytest.mark.parametrize(
    "name", ["CT_small.dcm", "SC_rgb_rle.dcm", "examples_ybr_color.dcm", "MR_small.dcm"]
)
def test_jpeg_baseline_is_written_for_8_bit_data_only(name: str) -> None:
    path = next((p for p in DECODABLE if p.name == name), None)
    if path is None:
        pytest.skip(f"{name} is not among this pydicom's test files")
    reference = _reference(path)
    assert reference is not None
    if reference.dtype != np.uint8:
        with pytest.raises(DecodeError, match="cannot be written"):
            transcode(path.read_bytes(), JPEGBaseline8Bit)
        return
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds = pydicom.dcmread(io.BytesIO(transcode(path.read_bytes(), JPEGBaseline8Bit)))
        assert ds.LossyImageCompression == "01"
        difference = np.abs(ds.pixel_array.astype(np.int16) - reference.astype(np.int16))
    assert difference.mean() < 3


@pytest.mark.parametrize("name", ["CT_small.dcm", "examples_jpeg2k.dcm"])
def test_htj2k_frames_decode_with_the_fast_plugin_like_openjpeg(name: str) -> None:
    path = next(p for p in DECODABLE if p.name == name)
    htj2k = transcode(path.read_bytes(), HTJ2KLossless)
    arr, _ = decode_frame(htj2k, 0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        reference = pydicom.dcmread(io.BytesIO(htj2k)).pixel_array  # OpenJPEG
    np.testing.assert_array_equal(arr, reference)
    assert JPEG2000Lossless in LOSSLESS_ENCODABLE


def _syntax(path: Path) -> str:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return str(pydicom.dcmread(path, stop_before_pixels=True).file_meta.TransferSyntaxUID)


RLE_FILES = [p for p in DECODABLE if _syntax(p) == RLELossless]


def test_rle_frames_decode_with_the_imagecodecs_plugin() -> None:
    from krypton.dicom.pixels import _plugin_for

    assert _plugin_for(RLELossless) == "krypton-imagecodecs"
    assert len(RLE_FILES) >= 5  # 8/16/32-bit, grey and RGB, single and multi-frame


@pytest.mark.parametrize("path", RLE_FILES, ids=lambda p: p.name)
def test_rle_plugin_matches_pydicoms_own_rle_decoder(path: Path) -> None:
    """Every frame, byte for byte the array pydicom's pure-Python RLE decoder gives."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds = pydicom.dcmread(path)
    for index in range(int(ds.get("NumberOfFrames") or 1)):
        expected = pydicom.pixels.pixel_array(path, index=index, decoding_plugin="pydicom")
        arr = pydicom.pixels.pixel_array(path, index=index, decoding_plugin="krypton-imagecodecs")
        assert arr.dtype == expected.dtype
        np.testing.assert_array_equal(arr, expected)

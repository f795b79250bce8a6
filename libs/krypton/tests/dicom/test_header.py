"""read_header: Part 10 parsing, precise rejections, pixel data location, bounded reads."""

from __future__ import annotations

import io
import struct
import zlib
from collections.abc import Iterable
from pathlib import Path

import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (
    CTImageStorage,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    generate_uid,
)

from krypton.dicom.errors import DicomRejection, FailureReasonValues
from krypton.dicom.header import PIXEL_DATA_TAGS, Header, read_header
from krypton.dicom.testfiles import pydicom_test_files, pydicom_test_files_dir

FILES = pydicom_test_files_dir()


def _bytes(name: str) -> bytes:
    return (FILES / name).read_bytes()


def _part10(ds: Dataset, transfer_syntax: str = ExplicitVRLittleEndian) -> bytes:
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.file_meta.TransferSyntaxUID = pydicom.uid.UID(transfer_syntax)
    out = io.BytesIO()
    if pydicom.uid.UID(transfer_syntax).is_transfer_syntax:
        ds.save_as(out, enforce_file_format=True)
    else:  # pydicom needs to be told how to encode for a transfer syntax it does not know
        ds.save_as(out, enforce_file_format=True, implicit_vr=False, little_endian=True)
    return out.getvalue()


def _small_ct() -> Dataset:
    ds = Dataset()
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = generate_uid()
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.PatientID = "P1"
    ds.Rows = 2
    ds.Columns = 2
    ds.BitsAllocated = 16
    ds.PixelData = b"\x01\x00\x02\x00\x03\x00\x04\x00"
    return ds


def test_the_pydicom_test_files_are_found_without_network() -> None:
    files = pydicom_test_files()
    assert len(files) > 60
    assert all(p.suffix == ".dcm" and p.is_file() for p in files)


@pytest.mark.parametrize("path", pydicom_test_files(), ids=lambda p: p.name)
def test_every_pydicom_test_file_parses_or_is_rejected_with_a_reason(path: Path) -> None:
    outcome = _outcome(path.read_bytes())
    if isinstance(outcome, DicomRejection):
        assert outcome.code in set(FailureReasonValues)
        assert outcome.reason
    else:
        assert "PixelData" not in outcome.dataset
        assert outcome.header_length <= outcome.size


def _outcome(data: bytes) -> Header | DicomRejection:
    try:
        return read_header(data)
    except DicomRejection as exc:
        return exc


@pytest.mark.parametrize(
    ("name", "reason"),
    [
        ("no_meta.dcm", "not a DICOM Part 10 file: no DICM prefix"),
        ("ExplVR_LitEndNoMeta.dcm", "not a DICOM Part 10 file: no DICM prefix"),
        ("rtstruct.dcm", "not a DICOM Part 10 file: no DICM prefix"),
        ("meta_missing_tsyntax.dcm", "no Transfer Syntax UID (0002,0010)"),
        ("MR_truncated.dcm", "truncated pixel data"),
        ("rtplan_truncated.dcm", "truncated header"),
    ],
)
def test_known_bad_files_cannot_be_understood(name: str, reason: str) -> None:
    with pytest.raises(DicomRejection) as caught:
        read_header(_bytes(name))
    assert caught.value.code == FailureReasonValues.CANNOT_UNDERSTAND
    assert reason in caught.value.reason


def test_bytes_that_are_not_dicom_are_rejected() -> None:
    for data in (b"", b"hello", b"\0" * 200, b"%PDF-1.7\n" + b"x" * 500):
        with pytest.raises(DicomRejection) as caught:
            read_header(data)
        assert caught.value.code == FailureReasonValues.CANNOT_UNDERSTAND


def test_ct_small_gives_its_pixel_data_offset_pointing_at_the_tag() -> None:
    data = _bytes("CT_small.dcm")
    header = read_header(data)
    offset = header.pixel_data_offset
    assert offset is not None
    assert header.header_length == offset
    assert data[offset : offset + 4] == struct.pack("<HH", 0x7FE0, 0x0010)
    location = header.pixel_data
    assert location is not None
    assert location.vr == "OW"
    assert location.value_offset == offset + 12
    assert location.length == 128 * 128 * 2
    assert location.value_offset + location.length <= len(data)
    assert header.transfer_syntax_uid == ExplicitVRLittleEndian


@pytest.mark.parametrize(
    "name",
    ["MR_small_implicit.dcm", "MR_small_bigendian.dcm", "rtdose.dcm", "JPEG2000.dcm"],
)
def test_pixel_data_offset_points_at_the_tag_in_every_encoding(name: str) -> None:
    data = _bytes(name)
    header = read_header(data)
    offset = header.pixel_data_offset
    assert offset is not None
    endian = "<" if header.transfer_syntax_uid.is_little_endian else ">"
    group, element = struct.unpack(f"{endian}HH", data[offset : offset + 4])
    assert group << 16 | element in PIXEL_DATA_TAGS


def test_encapsulated_pixel_data_lists_its_items() -> None:
    data = _bytes("SC_rgb_rle_2frame.dcm")
    location = read_header(data).pixel_data
    assert location is not None
    assert location.length is None
    # Basic Offset Table then one fragment per frame, each preceded by an item tag.
    assert len(location.items) == 3
    for value_offset, length in location.items:
        assert data[value_offset - 8 : value_offset - 4] == struct.pack("<HH", 0xFFFE, 0xE000)
        assert struct.unpack("<L", data[value_offset - 4 : value_offset])[0] == length


def test_the_deflated_test_file_parses_without_a_file_offset() -> None:
    header = read_header(_bytes("image_dfl.dcm"))
    assert header.transfer_syntax_uid == DeflatedExplicitVRLittleEndian
    assert header.has_pixel_data
    assert header.pixel_data_offset is None
    assert header.dataset.Rows > 0


def test_a_deflated_file_we_write_parses_back() -> None:
    ds = _small_ct()
    ds.PatientName = "DÉFLATÉ^Hélène"
    ds.SpecificCharacterSet = "ISO_IR 192"
    header = read_header(_part10(ds, DeflatedExplicitVRLittleEndian))
    assert str(header.dataset.PatientName) == "DÉFLATÉ^Hélène"
    assert header.has_pixel_data


def test_a_deflated_file_with_a_broken_stream_is_rejected() -> None:
    data = bytearray(_part10(_small_ct(), DeflatedExplicitVRLittleEndian))
    data[-10:] = b"\xff" * 10
    with pytest.raises(DicomRejection) as caught:
        read_header(bytes(data[:-20]))
    assert caught.value.code == FailureReasonValues.CANNOT_UNDERSTAND


def test_an_unknown_transfer_syntax_is_not_supported() -> None:
    data = _part10(_small_ct(), generate_uid())
    with pytest.raises(DicomRejection) as caught:
        read_header(data)
    assert caught.value.code == FailureReasonValues.TRANSFER_SYNTAX_NOT_SUPPORTED


@pytest.mark.parametrize(
    "name", ["CT_small.dcm", "MR_small_implicit.dcm", "MR_small_bigendian.dcm", "rtplan.dcm"]
)
def test_truncating_a_file_anywhere_only_ever_raises_a_rejection(name: str) -> None:
    data = _bytes(name)
    if name == "rtplan.dcm":  # no pixel data: every cut is checked against the whole file
        data = _part10(pydicom.dcmread(FILES / name), ImplicitVRLittleEndian)
        _check_cuts(data, range(0, len(data), 7))
        return
    location = read_header(data).pixel_data
    assert location is not None
    assert location.length is not None
    pixel_offset, pixel_end = location.offset, location.value_offset + location.length
    cuts = set(range(0, pixel_end, 97)) | set(range(pixel_offset - 16, pixel_offset + 16))
    _check_cuts(data, sorted(cuts))


def _check_cuts(data: bytes, cuts: Iterable[int]) -> None:
    for cut in cuts:
        outcome = _outcome(data[:cut])
        if isinstance(outcome, DicomRejection):
            assert outcome.code == FailureReasonValues.CANNOT_UNDERSTAND, cut
        else:
            # Cut exactly between two elements before the pixels: a valid, shorter header.
            assert not outcome.has_pixel_data, cut


def test_truncated_pixel_data_is_rejected() -> None:
    data = _bytes("MR_small.dcm")
    location = read_header(data).pixel_data
    assert location is not None
    assert location.length is not None
    with pytest.raises(DicomRejection, match="truncated pixel data"):
        read_header(data[: location.value_offset + location.length - 1])


def test_a_stream_is_read_from_its_current_position() -> None:
    data = _bytes("CT_small.dcm")
    stream = io.BytesIO(b"junk" * 25 + data)
    stream.seek(100)
    header = read_header(stream)
    assert header.pixel_data_offset == read_header(data).pixel_data_offset
    assert header.size == len(data)


def test_large_values_are_deferred_and_read_back_on_access() -> None:
    ds = _small_ct()
    blob = bytes(range(256)) * 4096  # 1 MiB private blob before the pixels
    block = ds.private_block(0x0029, "KRYPTON TEST", create=True)
    block.add_new(0x10, "OB", blob)
    header = read_header(_part10(ds), defer_size=1024)
    raw = header.dataset.get_item(0x00291010, keep_deferred=True)
    assert raw.value is None  # not loaded while parsing
    assert header.dataset[0x00291010].value == blob


def test_a_header_beyond_the_bound_is_refused_for_resources() -> None:
    ds = _small_ct()
    ds.private_block(0x0029, "KRYPTON TEST", create=True).add_new(0x10, "OB", b"\0" * 100_000)
    with pytest.raises(DicomRejection) as caught:
        read_header(_part10(ds), max_header_bytes=50_000)
    assert caught.value.code == FailureReasonValues.OUT_OF_RESOURCES


def test_a_file_with_only_a_file_meta_is_rejected() -> None:
    data = _part10(_small_ct())
    meta_end = 132 + 12 + struct.unpack("<L", data[140:144])[0]
    with pytest.raises(DicomRejection, match="nothing after the file meta"):
        read_header(data[:meta_end])


def test_a_deflate_bomb_is_bounded() -> None:
    ds = _small_ct()
    ds.private_block(0x0029, "KRYPTON TEST", create=True).add_new(0x10, "OB", b"\0" * 4_000_000)
    data = _part10(ds, DeflatedExplicitVRLittleEndian)
    assert len(data) < 100_000  # zeros deflate well
    with pytest.raises(DicomRejection) as caught:
        read_header(data, max_header_bytes=1_000_000)
    assert caught.value.code == FailureReasonValues.OUT_OF_RESOURCES


def test_deflate_data_is_really_deflated_in_our_fixture() -> None:
    data = _part10(_small_ct(), DeflatedExplicitVRLittleEndian)
    meta_end = 132 + 12 + struct.unpack("<L", data[140:144])[0]
    inflated = zlib.decompress(data[meta_end:], -zlib.MAX_WBITS)
    assert b"P1" in inflated

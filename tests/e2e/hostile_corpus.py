"""A corpus of malformed DICOM Part 10 files for the hostile-input tests (issue 9).

Every builder starts from pydicom's `CT_small.dcm` (Explicit VR Little Endian) with fresh UIDs,
then breaks one thing at the byte level, the way a faulty or malicious producer would.
"""

from __future__ import annotations

import struct
import warnings
import zlib
from collections.abc import Callable
from io import BytesIO

import pydicom
from pydicom.dataset import Dataset
from pydicom.uid import UID

from krypton.dicom.testfiles import pydicom_test_files

__all__ = ["ROOT", "corpus", "valid_instance"]

ROOT = "1.2.826.0.1.3680043.8.498.9"
_PRIVATE_TAG = b"\x09\x00\x01\x10OB\x00\x00"  # (0009,1001) OB, explicit VR little endian
_PIXEL_TAG = b"\xe0\x7f\x10\x00OW\x00\x00"  # (7FE0,0010) OW
_NAME_PLACEHOLDER = "QQQQQQQQ"


def _base(study: str, sop: str, patient: str = "HOSTILE") -> Dataset:
    path = next(p for p in pydicom_test_files() if p.name == "CT_small.dcm")
    ds = pydicom.dcmread(path)
    ds.StudyInstanceUID, ds.SOPInstanceUID, ds.PatientID = study, sop, patient
    ds.SeriesInstanceUID = study + ".1"
    ds.file_meta.MediaStorageSOPInstanceUID = UID(sop)
    # A private OB element early in the data set, whose length field the builders corrupt.
    ds.add_new((0x0009, 0x0010), "LO", "KRYPTON HOSTILE")
    ds.add_new((0x0009, 0x1001), "OB", b"abcd")
    return ds


def _save(ds: Dataset) -> bytes:
    out = BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


def valid_instance(study: str, sop: str, patient: str = "HOSTILE") -> bytes:
    """A well-formed instance (the control)."""
    return _save(_base(study, sop, patient))


def _patch_length(data: bytes, tag: bytes, length: int) -> bytes:
    at = data.index(tag) + len(tag)
    return data[:at] + struct.pack("<I", length) + data[at + 4 :]


def _patch_vr(data: bytes, tag: bytes, vr: bytes) -> bytes:
    at = data.index(tag) + 4
    return data[:at] + vr + data[at + 2 :]


def _deflate_bomb(study: str, sop: str) -> bytes:
    """Deflated Explicit VR Little Endian whose data set inflates to 80 MiB of zeros."""
    ds = _base(study, sop)
    del ds.PixelData
    plain = _save(ds)
    (meta_length,) = struct.unpack("<I", plain[140:144])
    body = plain[144 + meta_length :]
    ds.file_meta.TransferSyntaxUID = pydicom.uid.DeflatedExplicitVRLittleEndian
    meta = _save_meta(ds)
    squeeze = zlib.compressobj(9, zlib.DEFLATED, -15)
    chunks = [squeeze.compress(body)]
    size = 80 * 1024 * 1024
    # A private (7FDF,1001) OB of `size` zero bytes after everything else: the parser inflates
    # far past its 64 MiB header bound looking for pixel data that never comes.
    chunks.append(squeeze.compress(b"\xdf\x7f\x10\x00LO\x10\x00KRYPTON HOSTILE "))
    chunks.append(squeeze.compress(b"\xdf\x7f\x01\x10OB\x00\x00" + struct.pack("<I", size)))
    zeros = bytes(1024 * 1024)
    for _ in range(size // len(zeros)):
        chunks.append(squeeze.compress(zeros))
    chunks.append(squeeze.flush())
    return meta + b"".join(chunks)


def _save_meta(ds: Dataset) -> bytes:
    """Preamble, magic and file meta information only."""
    out = BytesIO()
    out.write(b"\x00" * 128 + b"DICM")
    pydicom.filewriter.write_file_meta_info(out, ds.file_meta, enforce_standard=True)  # type: ignore[arg-type]
    return out.getvalue()


def _with_name_bytes(study: str, sop: str, charset: str, raw: bytes) -> bytes:
    ds = _base(study, sop)
    ds.SpecificCharacterSet = charset
    ds.PatientName = _NAME_PLACEHOLDER
    data = _save(ds)
    assert len(raw) == len(_NAME_PLACEHOLDER)
    return data.replace(_NAME_PLACEHOLDER.encode(), raw, 1)


def _with(**attributes: str) -> Callable[[str, str], bytes]:
    def build(study: str, sop: str) -> bytes:
        ds = _base(study, sop)
        for keyword, value in attributes.items():
            if keyword == "TransferSyntaxUID":
                ds.file_meta.TransferSyntaxUID = UID(value)
            else:
                setattr(ds, keyword, value)
                if keyword == "SOPInstanceUID":
                    ds.file_meta.MediaStorageSOPInstanceUID = UID(value)
        return _save(ds)

    return build


def corpus(study: str, sop: str) -> dict[str, bytes]:
    """Named malformed instances; each carries `study` and a SOP UID under `sop`."""
    # pydicom warns about every invalid value it is asked to write: here that is the point.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return _corpus(study, sop)


def _corpus(study: str, sop: str) -> dict[str, bytes]:
    counter = iter(range(1, 1000))

    def fresh() -> str:
        return f"{sop}.{next(counter)}"

    good = valid_instance(study, fresh())
    size = len(good)
    cases: dict[str, bytes] = {}
    for offset in (0, 1, 64, 128, 132, 140, 200, 400, size // 2, size - 100, size - 1):
        # A fresh SOP Instance UID each: a truncation the platform tolerates is stored.
        cases[f"truncated at {offset}"] = valid_instance(study, fresh())[:offset]
    for name, tag in (("private OB", _PRIVATE_TAG), ("pixel data", _PIXEL_TAG)):
        for label, length in (
            ("0xFFFFFFFF", 0xFFFFFFFF),
            ("past EOF", size + 1000),
            ("2 GB", 0x80000000),
            ("odd", 3),
        ):
            fresh_good = valid_instance(study, fresh())
            cases[f"{name} length {label}"] = _patch_length(fresh_good, tag, length)
    cases["unknown VR bytes"] = _patch_vr(good, _PRIVATE_TAG, b"\x00\xff")
    cases["lowercase VR"] = _patch_vr(good, _PRIVATE_TAG, b"zz")
    cases["no DICM magic"] = good[:128] + b"DICX" + good[132:]
    cases["garbage"] = bytes(range(256)) * 64
    cases["unknown transfer syntax"] = _with(TransferSyntaxUID="1.2.3.4.5.6.7")(study, fresh())
    cases["transfer syntax with letters"] = _with(TransferSyntaxUID="1.2.abc")(study, fresh())
    cases["deflate bomb"] = _deflate_bomb(study, fresh())
    cases["a billion frames"] = _with(NumberOfFrames="1000000000")(study, fresh())
    cases["negative frames"] = _with(NumberOfFrames="-5")(study, fresh())
    for label, uid in (
        ("letters", "1.2.abc.4"),
        ("over 64 characters", "1." + "2" * 70),
        ("empty component", "1..2.3"),
        ("leading zero", "1.02.3"),
        ("path traversal", "../../etc"),
        ("slashes", "1.2/../../3"),
    ):
        cases[f"SOP Instance UID {label}"] = _with(SOPInstanceUID=uid)(study, fresh())
        cases[f"Study Instance UID {label}"] = _with(StudyInstanceUID=uid)(study, fresh())
        cases[f"Series Instance UID {label}"] = _with(SeriesInstanceUID=uid)(study, fresh())
    cases["PatientName invalid UTF-8"] = _with_name_bytes(
        study, fresh(), "ISO_IR 192", b"\xff\xfe\xc3(AB^C"
    )
    cases["PatientName high bytes in ASCII"] = _with_name_bytes(
        study, fresh(), "ISO_IR 6", b"\xe9\xe8\xff^\x80\x81\x82Z"
    )
    cases["PatientName unknown charset"] = _with_name_bytes(
        study, fresh(), "ISO_IR 9999", b"ABCD^EFG"
    )
    return cases

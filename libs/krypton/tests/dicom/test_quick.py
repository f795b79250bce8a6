"""read_quick: the fast header path gives exactly what read_header + extract give, or steps aside.

The property under test: whenever `read_quick` returns a header, `extract` on it gives the same
patient, study, series and instance attributes, the same pixel data offset and the same
rejection (if any) as the full path; when the full path refuses a file, the fast path never
accepts it. Checked on every pydicom test file, on synthetic instances of every modality, on
hand-made edge cases (implicit VR, sequences of undefined length, several values, other
character sets) and on thousands of damaged variants (truncated, bytes flipped).
"""

from __future__ import annotations

import io
import random
import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (
    UID,
    CTImageStorage,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    generate_uid,
)

from krypton.dicom.extract import extract
from krypton.dicom.header import read_header
from krypton.dicom.identity import INS_NIR_TEST_OID, ins_key
from krypton.dicom.quick import read_quick
from krypton.dicom.synthetic import Population, render_instances
from krypton.dicom.testfiles import pydicom_test_files, pydicom_test_files_dir

STRUCTURE = "330781196"

Result = tuple[object, ...]


def _full(data: bytes) -> Result:
    """What the full path decides: the attributes and offset, or the rejection."""
    try:
        header = read_header(data)
        x = extract(header, STRUCTURE)
    except Exception as exc:
        return ("refused", type(exc).__name__, str(exc))
    return (x.patient, x.study, x.series, x.instance, header.pixel_data_offset)


def _quick(data: bytes) -> Result | None:
    """What the fast path decides, or None when it steps aside."""
    header = read_quick(data)
    if header is None:
        return None
    try:
        x = extract(header, STRUCTURE)
    except Exception as exc:
        return ("refused", type(exc).__name__, str(exc))
    return (x.patient, x.study, x.series, x.instance, header.pixel_data_offset)


def _same_or_aside(data: bytes) -> bool:
    """Assert the property; return whether the fast path took the file."""
    quick = _quick(data)
    if quick is None:
        return False
    assert quick == _full(data)
    return True


def _synthetic(modalities: int = 40) -> Iterator[bytes]:
    population = Population(7, 200)
    for index in range(modalities):
        study = population.study(index, max_instances_per_series=2)
        yield from list(render_instances(study, rows=16, cols=16))[:3]


@pytest.mark.parametrize("path", pydicom_test_files(), ids=lambda p: p.name)
def test_every_pydicom_test_file_gives_the_full_paths_result_or_none(path: Path) -> None:
    _same_or_aside(path.read_bytes())


def test_the_fast_path_takes_most_pydicom_test_files_with_pixel_data() -> None:
    taken = [p.name for p in pydicom_test_files() if _same_or_aside(p.read_bytes())]
    # Not a speed assertion: proof that the comparison above compares something.
    assert len(taken) >= 30, taken
    assert {"CT_small.dcm", "MR_small_implicit.dcm", "JPEG2000.dcm"} <= set(taken)


def test_synthetic_instances_of_every_modality_take_the_fast_path_with_the_same_result() -> None:
    files = list(_synthetic())
    assert len(files) > 40
    assert all(_same_or_aside(data) for data in files)


def _part10(ds: Dataset, syntax: UID = ExplicitVRLittleEndian) -> bytes:
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.file_meta.TransferSyntaxUID = syntax
    ds.preamble = b"\0" * 128
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


def _image(**attributes: object) -> Dataset:
    ds = Dataset()
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = generate_uid()
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.PatientID = "IPP42"
    ds.Rows = ds.Columns = 2
    ds.BitsAllocated = 8
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # invalid values on purpose ("12.0" for an IS)
        for keyword, value in attributes.items():
            setattr(ds, keyword, value)
    ds.PixelData = b"\0\1\2\3"
    return ds


def _ins_item() -> Dataset:
    qualifier = Dataset()
    qualifier.UniversalEntityID = INS_NIR_TEST_OID
    qualifier.UniversalEntityIDType = "ISO"
    item = Dataset()
    nir = "1850312345678"
    item.PatientID = nir + ins_key(nir)
    item.IssuerOfPatientIDQualifiersSequence = [qualifier]
    return item


EDGE_CASES = {
    "plain": {},
    "latin-1 names": {"SpecificCharacterSet": "ISO_IR 100", "PatientName": "Hélène^Zoé"},
    "utf-8 names": {"SpecificCharacterSet": "ISO_IR 192", "PatientName": "Łucja^Ørsted"},
    "name groups": {"PatientName": "Yamada^Tarou=山田^太郎", "SpecificCharacterSet": "ISO_IR 192"},
    "other charset": {"SpecificCharacterSet": "ISO_IR 144", "StudyDescription": "\u041a\u0422"},
    "ISO 2022 escapes": {
        "SpecificCharacterSet": ["", "ISO 2022 IR 87"],
        "StudyDescription": "\u5c71\u7530",  # JIS X 0208 bytes are all below 0x80
    },
    "escape without character set": {"StudyDescription": "A\x1b$BA"},
    "escape in Latin-1": {"SpecificCharacterSet": "ISO_IR 100", "StudyDescription": "\x1b(BZ"},
    "several values": {"Modality": ["CT", "PT"], "InstanceNumber": "3", "SeriesNumber": "+4"},
    "padded numbers": {"InstanceNumber": " 12 ", "NumberOfFrames": "1"},
    "decimal IS": {"InstanceNumber": "12.0"},
    "empty values": {"StudyDate": "", "PatientSex": "", "InstanceNumber": None},
    "bad dates": {"StudyDate": "20231301", "SeriesDate": "2023.01.02", "StudyTime": "25"},
    "INS in other IDs": {"OtherPatientIDsSequence": [_ins_item()]},
    "INS qualifiers": {
        "PatientID": "185031234567865",
        "IssuerOfPatientIDQualifiersSequence": _ins_item().IssuerOfPatientIDQualifiersSequence,
    },
    "frames": {"NumberOfFrames": "2"},
    "study mismatch in meta": {"StudyID": "S" * 20},
}


@pytest.mark.parametrize("syntax", [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
@pytest.mark.parametrize("case", list(EDGE_CASES), ids=str)
def test_edge_cases_give_the_full_paths_result(case: str, syntax: UID) -> None:
    data = _part10(_image(**EDGE_CASES[case]), syntax)
    _same_or_aside(data)


def test_a_sequence_of_undefined_length_is_walked_and_its_value_read() -> None:
    ds = _image(OtherPatientIDsSequence=[_ins_item()])
    ds["OtherPatientIDsSequence"].is_undefined_length = True
    ds.OtherPatientIDsSequence[0].is_undefined_length_sequence_item = True
    ds.ReferencedImageSequence = [Dataset()]
    ds["ReferencedImageSequence"].is_undefined_length = True
    data = _part10(ds)
    assert _same_or_aside(data)
    quick = _quick(data)
    assert quick is not None
    assert str(quick[0]).startswith("PatientIdentity(key='INS:")


def _damaged(data: bytes, rng: random.Random, count: int) -> Iterator[bytes]:
    header_end = min(len(data), 2048)
    for _ in range(count):
        kind = rng.random()
        if kind < 0.3:
            yield data[: rng.randrange(len(data))]
        else:
            mutated = bytearray(data)
            for _ in range(rng.randint(1, 3)):
                mutated[rng.randrange(128, header_end)] = rng.randrange(256)
            yield bytes(mutated)


@pytest.mark.parametrize(
    "source",
    ["synthetic", "CT_small.dcm", "MR_small_implicit.dcm", "JPEG2000.dcm", "undefined"],
)
def test_damaged_files_are_never_accepted_differently(source: str) -> None:
    if source == "synthetic":
        data = next(_synthetic(1))
    elif source == "undefined":
        ds = _image(OtherPatientIDsSequence=[_ins_item()])
        ds["OtherPatientIDsSequence"].is_undefined_length = True
        ds.OtherPatientIDsSequence[0].is_undefined_length_sequence_item = True
        data = _part10(ds)
    else:
        data = (pydicom_test_files_dir() / source).read_bytes()
    rng = random.Random(source)
    for variant in _damaged(data, rng, 400):
        _same_or_aside(variant)

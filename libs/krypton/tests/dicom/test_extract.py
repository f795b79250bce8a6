"""extract: required UIDs, SOP Class, study match, lenient optional values, names."""

from __future__ import annotations

import io
import warnings
from pathlib import Path

import pydicom
import pytest
from pydicom._uid_dict import UID_dictionary
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (
    UID,
    CTImageStorage,
    ExplicitVRLittleEndian,
    MediaStorageDirectoryStorage,
    generate_uid,
)

from krypton.dicom.errors import DicomRejection, FailureReasonValues
from krypton.dicom.extract import (
    Extracted,
    check_sop_class,
    extract,
    normalise_date,
    normalise_time,
    validate_uid,
)
from krypton.dicom.header import read_header
from krypton.dicom.testfiles import pydicom_test_files, pydicom_test_files_dir

STRUCTURE = "330781196"
# pydicom has no constant for the Verification SOP Class: look it up by keyword.
VERIFICATION = next(uid for uid, entry in UID_dictionary.items() if entry[4] == "Verification")


def _ds() -> Dataset:
    ds = Dataset()
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = generate_uid()
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.PatientID = "IPP42"
    ds.Modality = "CT"
    return ds


def _part10(ds: Dataset, *, media_instance: str | None = None) -> bytes:
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = ds.get("SOPClassUID", CTImageStorage)
    ds.file_meta.MediaStorageSOPInstanceUID = UID(
        media_instance or ds.get("SOPInstanceUID", generate_uid())
    )
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.FileMetaInformationVersion = b"\0\1"
    ds.preamble = b"\0" * 128
    out = io.BytesIO()
    # Not enforce_file_format: it would overwrite the Media Storage UIDs we may want wrong.
    ds.save_as(out, implicit_vr=False, little_endian=True)
    return out.getvalue()


def _extract(ds: Dataset, **kwargs: str) -> object:
    return extract(read_header(_part10(ds)), STRUCTURE, **kwargs)


@pytest.mark.parametrize("path", pydicom_test_files(), ids=lambda p: p.name)
def test_every_pydicom_test_file_extracts_or_is_rejected_with_a_reason(path: Path) -> None:
    outcome = _outcome(path.read_bytes())
    if isinstance(outcome, DicomRejection):
        assert outcome.code in set(FailureReasonValues)
        assert outcome.reason
    else:
        assert outcome.patient.key
        assert outcome.instance.sop_instance_uid


def _outcome(data: bytes) -> Extracted | DicomRejection:
    try:
        return extract(read_header(data), STRUCTURE)
    except DicomRejection as exc:
        return exc


def test_ct_small_extracts_its_uids_and_patient() -> None:
    path = pydicom_test_files_dir() / "CT_small.dcm"
    reference = pydicom.dcmread(path)
    extracted = extract(read_header(path.read_bytes()), STRUCTURE)
    assert extracted.instance.sop_instance_uid == reference.SOPInstanceUID
    assert extracted.instance.sop_class_uid == CTImageStorage
    assert extracted.study.study_uid == reference.StudyInstanceUID
    assert extracted.series.series_uid == reference.SeriesInstanceUID
    assert extracted.patient.patient_id == reference.PatientID
    assert extracted.patient.key == f"IPP:{STRUCTURE}:{reference.PatientID}"
    assert extracted.study.patient_name == "CompressedSamples^CT1"
    assert extracted.study.study_date == "20040119"
    assert extracted.series.modality == "CT"
    assert extracted.instance.rows == 128
    assert extracted.instance.columns == 128
    assert extracted.instance.bits_allocated == 16
    assert extracted.instance.transfer_syntax_uid == ExplicitVRLittleEndian


@pytest.mark.parametrize(
    ("name", "code"),
    [
        ("no_meta.dcm", FailureReasonValues.CANNOT_UNDERSTAND),
        ("rtdose.dcm", FailureReasonValues.DATASET_DOES_NOT_MATCH_SOP_CLASS),  # meta differs
        ("UN_sequence.dcm", FailureReasonValues.DATASET_DOES_NOT_MATCH_SOP_CLASS),
    ],
)
def test_known_files_are_rejected_with_the_right_code(name: str, code: int) -> None:
    with pytest.raises(DicomRejection) as caught:
        extract(read_header((pydicom_test_files_dir() / name).read_bytes()), STRUCTURE)
    assert caught.value.code == code


@pytest.mark.parametrize(
    "keyword", ["SOPClassUID", "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID"]
)
def test_each_required_uid_must_be_present(keyword: str) -> None:
    ds = _ds()
    delattr(ds, keyword)
    with pytest.raises(DicomRejection) as caught:
        _extract(ds)
    assert caught.value.code == FailureReasonValues.DATASET_DOES_NOT_MATCH_SOP_CLASS
    assert caught.value.reason == f"{keyword} is missing"


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        ("1.2.3.", "empty component"),
        ("1..2", "empty component"),
        ("1.2.a", "characters other than digits and dots"),
        ("1." + "2" * 70, "longer than 64"),
        ("", "missing"),
        (None, "missing"),
    ],
)
def test_invalid_uids_are_refused_with_a_precise_reason(value: str | None, reason: str) -> None:
    with pytest.raises(DicomRejection) as caught:
        validate_uid(value, "StudyInstanceUID")
    assert caught.value.code == FailureReasonValues.DATASET_DOES_NOT_MATCH_SOP_CLASS
    assert reason in caught.value.reason


def test_leading_zeros_in_a_uid_are_accepted_and_noted() -> None:
    notes: list[str] = []
    assert validate_uid("1.2.03.4\0", "SeriesInstanceUID", notes) == "1.2.03.4"
    assert notes == ["SeriesInstanceUID has a component with a leading zero"]
    assert validate_uid("1.2.0.4", "SeriesInstanceUID", []) == "1.2.0.4"


def test_media_storage_instance_uid_must_match_the_data_set() -> None:
    ds = _ds()
    data = _part10(ds, media_instance=generate_uid())
    with pytest.raises(DicomRejection, match="MediaStorageSOPInstanceUID"):
        extract(read_header(data), STRUCTURE)


def test_an_instance_of_another_study_than_the_url_is_refused() -> None:
    ds = _ds()
    with pytest.raises(DicomRejection) as caught:
        _extract(ds, expected_study_uid=generate_uid())
    assert caught.value.code == FailureReasonValues.STUDY_UID_MISMATCH
    extracted = _extract(ds, expected_study_uid=str(ds.StudyInstanceUID))
    assert extracted.study.study_uid == ds.StudyInstanceUID  # type: ignore[attr-defined]


def test_non_storage_sop_classes_are_not_supported() -> None:
    for uid in (VERIFICATION, MediaStorageDirectoryStorage):
        with pytest.raises(DicomRejection) as caught:
            check_sop_class(uid)
        assert caught.value.code == FailureReasonValues.SOP_CLASS_NOT_SUPPORTED
    notes: list[str] = []
    check_sop_class(generate_uid(), notes)  # a private SOP Class is stored
    assert notes == ["private SOP Class"]
    check_sop_class(CTImageStorage)


def test_an_image_without_pixel_data_is_refused() -> None:
    ds = _ds()
    ds.Rows = 4
    ds.Columns = 4
    with pytest.raises(DicomRejection, match="no Pixel Data"):
        _extract(ds)


def test_bad_optional_values_become_none_and_notes_never_rejections() -> None:
    ds = _ds()
    with warnings.catch_warnings():  # pydicom warns when invalid values are set: we want them
        warnings.simplefilter("ignore")
        _set_bad_values(ds)
    # pydicom refuses to hold "two" in an IS: put it in the encoded file instead.
    data = _part10(ds).replace(b" \0\x11\0IS\x02\x0099", b" \0\x11\0IS\x04\0two ")
    extracted = extract(read_header(data), STRUCTURE)
    assert extracted.study.study_date is None
    assert extracted.series.series_date is None
    assert extracted.study.study_time is None
    assert extracted.study.patient_birth_date == "19700203"
    assert extracted.instance.content_time == "102030"
    assert extracted.study.patient_sex is None
    assert extracted.study.timezone_offset is None
    assert extracted.series.series_number is None
    assert extracted.instance.instance_number == 7
    assert "StudyDate is not a valid date" in extracted.notes
    assert "SeriesNumber is not an integer" in extracted.notes


def _set_bad_values(ds: Dataset) -> None:
    ds.StudyDate = "20231345"
    ds.SeriesDate = "yesterday"
    ds.StudyTime = "256161"
    ds.PatientBirthDate = "1970.02.03"
    ds.ContentTime = "10:20:30"
    ds.PatientSex = "X"
    ds.TimezoneOffsetFromUTC = "CET"
    ds.add_new(0x00200011, "IS", "99")  # SeriesNumber, made invalid in the bytes below
    ds.add_new(0x00200013, "IS", "7")  # InstanceNumber


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("20240229", "20240229"),
        ("20230229", None),
        ("2024.02.29", "20240229"),
        ("2024-02-29", None),
        (" 19991231 ", "19991231"),
        ("", None),
        (None, None),
    ],
)
def test_dates_are_normalised_to_yyyymmdd(value: str | None, expected: str | None) -> None:
    assert normalise_date(value) == expected


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("0830", "0830"),
        ("083015.123", "083015.123"),
        ("08:30:15", "083015"),
        ("2460", None),
        ("ab", None),
    ],
)
def test_times_are_normalised(value: str, expected: str | None) -> None:
    assert normalise_time(value) == expected


def test_names_are_decoded_with_the_specific_character_set() -> None:
    ds = _ds()
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.PatientName = "LE GALL^Marie-Hélène"
    ds.ReferringPhysicianName = "DE LA FONTAINE^Noël^^Dr"
    extracted = _extract(ds)
    assert extracted.study.patient_name == "LE GALL^Marie-Hélène"  # type: ignore[attr-defined]
    assert extracted.study.referring_physician_name == "DE LA FONTAINE^Noël^^Dr"  # type: ignore[attr-defined]
    assert extracted.study.specific_character_set == "ISO_IR 100"  # type: ignore[attr-defined]


def test_a_name_with_bytes_invalid_in_its_character_set_does_not_crash() -> None:
    ds = _ds()
    ds.SpecificCharacterSet = "ISO_IR 192"
    data = _part10(ds)
    # Append a Patient's Name whose bytes are Latin-1, not the declared UTF-8.
    ds2 = pydicom.dcmread(io.BytesIO(data))
    ds2.add_new(0x00100010, "PN", b"H\xe9l\xe8ne^Z")
    raw = io.BytesIO()
    ds2.save_as(raw)
    extracted = extract(read_header(raw.getvalue()), STRUCTURE)
    name = extracted.study.patient_name
    assert name is not None
    assert name.startswith("H")
    assert name.endswith("^Z")


def test_multi_component_person_names_keep_their_groups() -> None:
    ds = _ds()
    ds.SpecificCharacterSet = "ISO_IR 192"
    ds.PatientName = "Yamada^Tarou=山田^太郎=やまだ^たろう"
    extracted = _extract(ds)
    assert extracted.study.patient_name == "Yamada^Tarou=山田^太郎=やまだ^たろう"  # type: ignore[attr-defined]

"""Validate a parsed header and extract what `InstanceStored` carries downstream.

Required: the four UIDs (SOP Class, SOP Instance, Study, Series), a storage SOP Class, a
patient identity, and pixel data when the object describes an image. Everything else is
optional and normalised leniently: a bad optional value becomes None and a note, never a
rejection.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime
from typing import Final, NoReturn

from pydicom.uid import UID, MediaStorageDirectoryStorage

from krypton.contracts.ingest.v1 import (
    InstanceAttributes,
    PatientIdentity,
    SeriesAttributes,
    StudyAttributes,
)
from krypton.dicom._values import ValueSource, collect_warnings, element_value, text
from krypton.dicom.errors import DicomRejection, FailureReasonValues
from krypton.dicom.header import Header
from krypton.dicom.identity import resolve_identity
from krypton.dicom.quick import QuickHeader

__all__ = [
    "DEFAULT_MAX_FRAMES",
    "Extracted",
    "check_frames",
    "check_sop_class",
    "check_study",
    "extract",
    "normalise_date",
    "normalise_time",
    "validate_uid",
]

_UID_MAX: Final = 64
DEFAULT_MAX_FRAMES: Final = 100_000
_PIXEL_DATA: Final = 0x7FE00010
_UID = re.compile(r"[0-9]+(?:\.[0-9]+)*")
_LEADING_ZERO = re.compile(r"(?:^|\.)0[0-9]")  # a component of several digits starting with 0
_TIME = re.compile(r"[0-9]{2}(?:[0-9]{2}(?:[0-9]{2}(?:\.[0-9]{1,6})?)?)?")
_TIMEZONE = re.compile(r"[+-](?:0[0-9]|1[0-4])[0-5][0-9]")
_SEXES: Final = frozenset({"M", "F", "O"})


@dataclass(frozen=True, slots=True, kw_only=True)
class Extracted:
    """What ingest publishes about one instance, plus the notes gathered while extracting."""

    patient: PatientIdentity
    study: StudyAttributes
    series: SeriesAttributes
    instance: InstanceAttributes
    notes: tuple[str, ...] = ()


def validate_uid(value: object, name: str, notes: list[str] | None = None) -> str:
    """Check that `value` is a usable DICOM UID and return it as a string.

    Present, at most 64 characters, digits and dots only, no empty component. A component
    with a leading zero is forbidden by PS3.5 9.1 but common in the wild: it is accepted and
    noted.

    Args:
        value: the attribute value (str, UID, or None).
        name: the attribute keyword, for the reason.
        notes: where to record leniencies, if wanted.

    Returns:
        The UID without padding.

    Raises:
        DicomRejection: DATASET_DOES_NOT_MATCH_SOP_CLASS with the precise reason.
    """
    uid = "" if value is None else str(value).strip(" \0")
    if not uid:
        _reject_attribute(f"{name} is missing")
    if len(uid) > _UID_MAX:
        _reject_attribute(f"{name} is longer than 64 characters")
    if not _UID.fullmatch(uid):
        if set(uid) <= set("0123456789."):
            _reject_attribute(f"{name} has an empty component")
        _reject_attribute(f"{name} has characters other than digits and dots")
    if notes is not None and _LEADING_ZERO.search(uid):
        notes.append(f"{name} has a component with a leading zero")
    return uid


def check_sop_class(sop_class_uid: str, notes: list[str] | None = None) -> None:
    """Refuse SOP Classes that are not storage classes.

    A standard UID must name a storage SOP Class (pydicom's UID dictionary); the Media
    Storage Directory (DICOMDIR) is refused. Private SOP Classes are accepted (vendors store
    real objects under them) and noted.

    Raises:
        DicomRejection: SOP_CLASS_NOT_SUPPORTED.
    """
    uid = UID(sop_class_uid)
    if uid.is_private:
        if notes is not None:
            notes.append("private SOP Class")
        return
    if uid == MediaStorageDirectoryStorage:
        _reject(FailureReasonValues.SOP_CLASS_NOT_SUPPORTED, "a DICOMDIR is not an instance")
    if uid.type != "SOP Class" or "Storage" not in uid.name:
        _reject(
            FailureReasonValues.SOP_CLASS_NOT_SUPPORTED,
            f"SOP Class {sop_class_uid} is not a supported storage SOP Class",
        )


def check_study(study_uid: str, expected_study_uid: str | None) -> None:
    """Refuse an instance sent to `/studies/{expected}` that belongs to another study.

    Raises:
        DicomRejection: STUDY_UID_MISMATCH.
    """
    if expected_study_uid is not None and study_uid != expected_study_uid.strip():
        _reject(
            FailureReasonValues.STUDY_UID_MISMATCH,
            "StudyInstanceUID does not match the study in the request",
        )


def extract(
    header: Header | QuickHeader,
    structure: str,
    *,
    expected_study_uid: str | None = None,
    max_frames: int = DEFAULT_MAX_FRAMES,
) -> Extracted:
    """Validate `header` and extract the patient, study, series and instance attributes.

    Args:
        header: the parsed header.
        structure: FINESS of the producing structure, from the uploader's token.
        expected_study_uid: the study named in the STOW-RS URL, if any.
        max_frames: the most frames an instance may declare (NumberOfFrames).

    Returns:
        The attributes and notes.

    Raises:
        DicomRejection: missing/invalid UIDs or Patient ID, SOP Instance UID differing from
            the file meta's, unsupported SOP Class, study mismatch, image without pixel data,
            NumberOfFrames invalid or above `max_frames`, pixel data shorter than declared.
    """
    ds = header.dataset
    notes: list[str] = list(header.notes)
    with collect_warnings(notes):
        sop_class_uid = validate_uid(element_value(ds, "SOPClassUID", notes), "SOPClassUID", notes)
        sop_instance_uid = validate_uid(
            element_value(ds, "SOPInstanceUID", notes), "SOPInstanceUID", notes
        )
        study_uid = validate_uid(
            element_value(ds, "StudyInstanceUID", notes), "StudyInstanceUID", notes
        )
        series_uid = validate_uid(
            element_value(ds, "SeriesInstanceUID", notes), "SeriesInstanceUID", notes
        )
        _check_file_meta(ds, sop_class_uid, sop_instance_uid, notes)
        check_sop_class(sop_class_uid, notes)
        check_study(study_uid, expected_study_uid)
        rows = _int(ds, "Rows", notes)
        columns = _int(ds, "Columns", notes)
        # Image Pixel attributes without the pixel data: a truncated or stripped image (JPIP
        # transfer syntaxes reference their pixels instead of carrying them).
        referenced_pixels = header.transfer_syntax_uid.keyword.startswith("JPIP")
        is_image = rows is not None and columns is not None
        if is_image and not header.has_pixel_data and not referenced_pixels:
            _reject_attribute("the image has Rows and Columns but no Pixel Data")
        check_frames(header, max_frames, notes)
        resolved = resolve_identity(ds, structure)
        notes.extend(n for n in resolved.notes if n not in notes)

        study = StudyAttributes(
            study_uid=study_uid,
            study_date=_date(ds, "StudyDate", notes),
            study_time=_time(ds, "StudyTime", notes),
            accession_number=text(ds, "AccessionNumber", notes),
            study_id=text(ds, "StudyID", notes),
            study_description=text(ds, "StudyDescription", notes),
            referring_physician_name=text(ds, "ReferringPhysicianName", notes),
            patient_name=text(ds, "PatientName", notes),
            patient_birth_date=_date(ds, "PatientBirthDate", notes),
            patient_sex=_sex(ds, notes),
            timezone_offset=_timezone(ds, notes),
            specific_character_set=text(ds, "SpecificCharacterSet", notes),
        )
        series = SeriesAttributes(
            series_uid=series_uid,
            modality=text(ds, "Modality", notes),
            series_number=_int(ds, "SeriesNumber", notes),
            series_description=text(ds, "SeriesDescription", notes),
            series_date=_date(ds, "SeriesDate", notes),
            series_time=_time(ds, "SeriesTime", notes),
            body_part_examined=text(ds, "BodyPartExamined", notes),
            performed_procedure_step_start_date=_date(ds, "PerformedProcedureStepStartDate", notes),
            performed_procedure_step_start_time=_time(ds, "PerformedProcedureStepStartTime", notes),
            institution_name=text(ds, "InstitutionName", notes),
            station_name=text(ds, "StationName", notes),
            manufacturer=text(ds, "Manufacturer", notes),
        )
        instance = InstanceAttributes(
            sop_instance_uid=sop_instance_uid,
            sop_class_uid=sop_class_uid,
            transfer_syntax_uid=str(header.transfer_syntax_uid),
            instance_number=_int(ds, "InstanceNumber", notes),
            rows=rows,
            columns=columns,
            bits_allocated=_int(ds, "BitsAllocated", notes),
            number_of_frames=_int(ds, "NumberOfFrames", notes),
            photometric_interpretation=text(ds, "PhotometricInterpretation", notes),
            content_date=_date(ds, "ContentDate", notes),
            content_time=_time(ds, "ContentTime", notes),
        )
    return Extracted(
        patient=resolved.identity,
        study=study,
        series=series,
        instance=instance,
        notes=tuple(notes),
    )


def normalise_date(value: str | None) -> str | None:
    """A DA value as `YYYYMMDD` if it is a real calendar date, else None.

    Accepts the ACR-NEMA form `YYYY.MM.DD` still written by old modalities.
    """
    if value is None:
        return None
    candidate = value.strip()
    if len(candidate) == 10 and candidate[4] == "." and candidate[7] == ".":
        candidate = candidate.replace(".", "")
    if len(candidate) != 8 or not (candidate.isascii() and candidate.isdigit()):
        return None
    try:
        # What strptime("%Y%m%d") checks for 8 ASCII digits, at a tenth of its cost.
        datetime(int(candidate[:4]), int(candidate[4:6]), int(candidate[6:]))
    except ValueError:
        return None
    return candidate


def normalise_time(value: str | None) -> str | None:
    """A TM value as `HH[MM[SS[.F]]]` if valid, else None; `HH:MM:SS` (ACR-NEMA) is accepted."""
    if value is None:
        return None
    candidate = value.strip().replace(":", "")
    match = _TIME.fullmatch(candidate)
    if match is None:
        return None
    hours, minutes, seconds = candidate[:2], candidate[2:4] or "00", candidate[4:6] or "00"
    # 60 is allowed for leap seconds (PS3.5 Table 6.2-1).
    if int(hours) > 23 or int(minutes) > 59 or int(seconds) > 60:
        return None
    return candidate


def check_frames(
    header: Header | QuickHeader, max_frames: int, notes: list[str] | None = None
) -> None:
    """Refuse a frame count that is invalid, too large, or that the pixel data cannot hold.

    NumberOfFrames (IS) must be a positive integer of at most `max_frames`. Native pixel data
    must hold Rows x Columns x SamplesPerPixel x BitsAllocated x frames bits (a file whose
    pixels were cut, or whose header claims a billion frames, is refused before any reader
    trusts those attributes); encapsulated pixel data needs at least one fragment per frame
    (PS3.5 A.4).

    Raises:
        DicomRejection: DATASET_DOES_NOT_MATCH_SOP_CLASS for an invalid count, OUT_OF_RESOURCES
            above `max_frames`, CANNOT_UNDERSTAND when the pixel data is too short.
    """
    ds = header.dataset
    scratch: list[str] = [] if notes is None else notes
    frames = 1
    if "NumberOfFrames" in ds:
        raw = element_value(ds, "NumberOfFrames", scratch)
        value = _int(ds, "NumberOfFrames", scratch) if raw not in (None, "") else 1
        if value is None or value < 1:
            _reject_attribute("NumberOfFrames is not a positive integer")
        frames = value
    if frames > max_frames:
        _reject(
            FailureReasonValues.OUT_OF_RESOURCES,
            f"NumberOfFrames {frames} is above the limit of {max_frames}",
        )
    location = header.pixel_data
    if location is None or location.tag != _PIXEL_DATA:
        return
    if location.length is None:
        fragments = max(len(location.items) - 1, 0)  # the first item is the offset table
        if fragments < frames:
            _reject(
                FailureReasonValues.CANNOT_UNDERSTAND,
                f"{frames} frames declared but the pixel data has {fragments} fragments",
            )
        return
    dims = [_int(ds, k, scratch) for k in ("Rows", "Columns", "BitsAllocated")]
    samples = _int(ds, "SamplesPerPixel", scratch) if "SamplesPerPixel" in ds else 1
    if any(d is None or d < 1 for d in dims) or samples is None or samples < 1:
        return  # not an image description we can check; readers refuse it later
    rows, columns, bits = (d for d in dims if d is not None)
    if samples == 3 and text(ds, "PhotometricInterpretation", scratch) == "YBR_FULL_422":
        samples = 2  # chroma subsampled horizontally: two samples per pixel (PS3.3 C.7.6.3.1.2)
    needed = (rows * columns * samples * bits * frames + 7) // 8
    if location.length < needed:
        _reject(
            FailureReasonValues.CANNOT_UNDERSTAND,
            f"pixel data holds {location.length} bytes; {frames} frame(s) of "
            f"{rows}x{columns}x{samples} at {bits} bits need {needed}",
        )


def _date(ds: ValueSource, keyword: str, notes: list[str]) -> str | None:
    raw = text(ds, keyword, notes)
    value = normalise_date(raw)
    if raw is not None and value is None:
        notes.append(f"{keyword} is not a valid date")
    return value


def _time(ds: ValueSource, keyword: str, notes: list[str]) -> str | None:
    raw = text(ds, keyword, notes)
    value = normalise_time(raw)
    if raw is not None and value is None:
        notes.append(f"{keyword} is not a valid time")
    return value


def _int(ds: ValueSource, keyword: str, notes: list[str]) -> int | None:
    """An integer attribute (IS, US, UL...) as int, None when absent, multi-valued or invalid."""
    raw = element_value(ds, keyword, notes)
    if raw is None or raw == "":
        return None
    try:
        if isinstance(raw, int | float):
            value = int(raw)
            if value != raw:
                raise ValueError
            return value
        return int(str(raw).strip())
    except (TypeError, ValueError):
        notes.append(f"{keyword} is not an integer")
        return None


def _sex(ds: ValueSource, notes: list[str]) -> str | None:
    raw = text(ds, "PatientSex", notes)
    if raw is None:
        return None
    value = raw.upper()
    if value not in _SEXES:
        notes.append("PatientSex is not M, F or O")
        return None
    return value


def _timezone(ds: ValueSource, notes: list[str]) -> str | None:
    raw = text(ds, "TimezoneOffsetFromUTC", notes)
    if raw is not None and not _TIMEZONE.fullmatch(raw):
        notes.append("TimezoneOffsetFromUTC is not &ZZXX")
        return None
    return raw


def _check_file_meta(
    ds: ValueSource, sop_class_uid: str, sop_instance_uid: str, notes: list[str]
) -> None:
    """The file meta must describe the same instance as the data set (PS3.10 7.1)."""
    file_meta = getattr(ds, "file_meta", None)
    if file_meta is None:
        return
    media_instance = text(file_meta, "MediaStorageSOPInstanceUID", notes)
    if media_instance is not None and media_instance != sop_instance_uid:
        _reject_attribute("MediaStorageSOPInstanceUID differs from SOPInstanceUID")
    media_class = text(file_meta, "MediaStorageSOPClassUID", notes)
    if media_class is not None and media_class != sop_class_uid:
        notes.append("MediaStorageSOPClassUID differs from SOPClassUID")


def _reject_attribute(reason: str) -> NoReturn:
    _reject(FailureReasonValues.DATASET_DOES_NOT_MATCH_SOP_CLASS, reason)


def _reject(code: FailureReasonValues, reason: str) -> NoReturn:
    raise DicomRejection(code, reason)

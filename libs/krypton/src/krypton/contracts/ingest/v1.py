"""Ingest events, v1. Additive changes only: new fields get defaults, never retype a field."""

from __future__ import annotations

import msgspec

from krypton.contracts.common.v1 import Actor

__all__ = [
    "IngestReceived",
    "IngestResult",
    "InstanceAttributes",
    "InstanceRejected",
    "InstanceStored",
    "PatientIdentity",
    "SeriesAttributes",
    "StudyAttributes",
]


class IngestReceived(msgspec.Struct, frozen=True, kw_only=True):
    """An uploaded object is in staging and waits for ingest (claim check: bytes are not here)."""

    staging_key: str
    structure: str  # producing structure, from the uploader's token, never from the file
    sha256: str
    size: int
    received_at: str  # ISO 8601 UTC
    actor: Actor
    expected_study_uid: str | None = None  # STOW to /studies/{study}
    reply_to: str | None = None  # core NATS subject where the gateway waits for the verdict
    request_id: str | None = None
    # Linux boot id of the host that staged the bytes without fsync (filesystem store). Ingest
    # on the same host and boot knows the page cache still holds exactly the staged bytes (only
    # a kernel crash or power cut loses it, and either changes the boot id), so it can skip
    # re-hashing them; otherwise it checks them against `sha256` before any verdict.
    staged_boot_id: str | None = None


class PatientIdentity(msgspec.Struct, frozen=True, kw_only=True):
    """The normalised patient identity of an instance.

    `key` is what the platform links on: `INS:<ins>` for a qualified national identity,
    `IPP:<structure>:<id>` for a structure's local identifier.
    """

    key: str
    patient_id: str
    issuer: str | None = None
    ins: str | None = None
    ins_oid: str | None = None


class StudyAttributes(msgspec.Struct, frozen=True, kw_only=True):
    """Study-level attributes as found in an instance (DICOM JSON values, keyword-keyed)."""

    study_uid: str
    study_date: str | None = None  # YYYYMMDD
    study_time: str | None = None
    accession_number: str | None = None
    study_id: str | None = None
    study_description: str | None = None
    referring_physician_name: str | None = None
    patient_name: str | None = None  # DICOM PN string form (Alphabetic=...)
    patient_birth_date: str | None = None
    patient_sex: str | None = None
    timezone_offset: str | None = None
    specific_character_set: str | None = None


class SeriesAttributes(msgspec.Struct, frozen=True, kw_only=True):
    """Series-level attributes as found in an instance."""

    series_uid: str
    modality: str | None = None
    series_number: int | None = None
    series_description: str | None = None
    series_date: str | None = None
    series_time: str | None = None
    body_part_examined: str | None = None
    performed_procedure_step_start_date: str | None = None
    performed_procedure_step_start_time: str | None = None
    institution_name: str | None = None
    station_name: str | None = None
    manufacturer: str | None = None


class InstanceAttributes(msgspec.Struct, frozen=True, kw_only=True):
    """Instance-level attributes as found in an instance."""

    sop_instance_uid: str
    sop_class_uid: str
    transfer_syntax_uid: str
    instance_number: int | None = None
    rows: int | None = None
    columns: int | None = None
    bits_allocated: int | None = None
    number_of_frames: int | None = None
    photometric_interpretation: str | None = None
    content_date: str | None = None
    content_time: str | None = None


class InstanceStored(msgspec.Struct, frozen=True, kw_only=True):
    """A DICOM instance reached canonical storage; everything downstream needs, no pixels."""

    structure: str
    object_key: str
    sha256: str
    size: int
    stored_at: str  # ISO 8601 UTC
    patient: PatientIdentity
    study: StudyAttributes
    series: SeriesAttributes
    instance: InstanceAttributes
    pixel_data_offset: int | None = None  # byte offset of the Pixel Data element's value
    request_id: str | None = None


class InstanceRejected(msgspec.Struct, frozen=True, kw_only=True):
    """An uploaded object was refused and kept in quarantine with its reason."""

    structure: str
    quarantine_key: str
    sha256: str
    reason: str
    failure_code: int  # DICOM failure reason (e.g. 0xC000, 0xA900)
    rejected_at: str
    sop_instance_uid: str | None = None
    sop_class_uid: str | None = None
    study_uid: str | None = None
    request_id: str | None = None


class IngestResult(msgspec.Struct, frozen=True, kw_only=True):
    """Ingest's verdict on one staged object, sent to the gateway waiting on `reply_to`."""

    staging_key: str
    ok: bool
    sop_instance_uid: str | None = None
    sop_class_uid: str | None = None
    study_uid: str | None = None
    series_uid: str | None = None
    failure_code: int | None = None
    warning_code: int | None = None
    reason: str | None = None

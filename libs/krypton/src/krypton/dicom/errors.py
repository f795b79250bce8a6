"""Why an uploaded DICOM object is refused: DICOM failure reasons and the rejection error.

The values are the Failure Reason (0008,1197) codes of the STOW-RS Store Instances Response
(PS3.18 Annex I, Table I.2-2), completed with the C-STORE statuses they mirror (PS3.4 B.2.3,
PS3.7 Annex C). Where the standard only gives a range (A7xx, A9xx, Cxxx) the base of the range
is used, except for `STUDY_UID_MISMATCH`, see its comment.
"""

from __future__ import annotations

from enum import IntEnum

from krypton.core.errors import KryptonError

__all__ = ["DicomRejection", "FailureReasonValues"]


class FailureReasonValues(IntEnum):
    """Failure Reason (0008,1197) values that ingest sends back to the uploader."""

    # 0110H "Processing failure": a general failure in processing the operation (PS3.18 I.2-2).
    PROCESSING_FAILURE = 0x0110
    # 0111H "Duplicate SOP Instance" (PS3.7 C.5.8): a different object is already stored under
    # this SOP Instance UID. Re-sending the identical object is not a failure.
    DUPLICATE_SOP_INSTANCE = 0x0111
    # 0122H "Referenced SOP Class not supported" (PS3.18 I.2-2): the SOP Class is not a storage
    # class the platform accepts (e.g. a DICOMDIR, a Verification UID).
    SOP_CLASS_NOT_SUPPORTED = 0x0122
    # A7xx "Refused: Out of Resources" (PS3.18 I.2-2, PS3.4 B.2-1): e.g. a header larger than
    # the configured bound, storage full.
    OUT_OF_RESOURCES = 0xA700
    # A9xx "Error: Data Set does not match SOP Class" (PS3.18 I.2-2): required attributes missing
    # or invalid (UIDs, Patient ID).
    DATASET_DOES_NOT_MATCH_SOP_CLASS = 0xA900
    # PS3.18 (2024) defines no Failure Reason of its own for an instance whose Study Instance
    # UID differs from the study named in the request URL: 10.5.3.1 only says such a "Study
    # Instance UID mismatch" is a 409 Conflict, and I.2.2 says implementation-specific codes may
    # be added and must be documented in the conformance statement. We use a value inside the
    # A9xx "Data Set does not match SOP Class" range (so a generic client classifies it
    # correctly) that stays distinct from the base value (so our gateway can tell it apart).
    # dcm4chee-arc uses C409 for the same case.
    STUDY_UID_MISMATCH = 0xA901
    # Cxxx "Error: Cannot understand" (PS3.18 I.2-2): not DICOM, not Part 10, truncated,
    # unparsable.
    CANNOT_UNDERSTAND = 0xC000
    # C122H "Referenced Transfer Syntax not supported" (PS3.18 I.2-2).
    TRANSFER_SYNTAX_NOT_SUPPORTED = 0xC122


class DicomRejection(KryptonError, ValueError):  # noqa: N818 - the name the services use
    """An uploaded object cannot be accepted.

    Attributes:
        code: the DICOM Failure Reason (0008,1197) to report, a `FailureReasonValues` member.
        reason: a human explanation, safe to show the uploader (no patient data in it).
    """

    def __init__(self, code: FailureReasonValues | int, reason: str) -> None:
        self.code = int(code)
        self.reason = reason
        try:
            label = FailureReasonValues(self.code).name
        except ValueError:
            label = "UNKNOWN"
        super().__init__(f"{label} (0x{self.code:04X}): {reason}")

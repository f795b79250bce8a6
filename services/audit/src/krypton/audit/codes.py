"""How each Krypton audit event maps onto DICOM PS3.15 A.5 / FHIR AuditEvent codes.

Event IDs and event type codes are DICOM Controlled Terminology (PS3.16, scheme ``DCM``):
110100 Application Activity, 110101 Audit Log Used, 110103 DICOM Instances Accessed,
110104 DICOM Instances Transferred, 110110 Patient Record, 110112 Query, 110113 Security Alert,
110114 User Authentication; types 110122 Login, 110127 Emergency Override Started,
110129 Security Configuration, 110144 Authorization Decision.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from krypton.contracts.audit.v1 import AuditEventTypeValues as T, AuditOutcomeValues

__all__ = ["DCM", "Code", "EventCodes", "codes_for", "outcome_indicator"]

DCM: Final = "DCM"


@dataclass(frozen=True, slots=True)
class Code:
    """A coded value: (code, scheme, meaning)."""

    code: str
    meaning: str
    scheme: str = DCM


@dataclass(frozen=True, slots=True)
class EventCodes:
    """EventID, EventActionCode and optional EventTypeCode of one kind of event."""

    event_id: Code
    action: str  # C create, R read, U update, D delete, E execute
    type_code: Code | None = None


_AUTH = Code("110114", "User Authentication")
_LOGIN = Code("110122", "Login")
_QUERY = Code("110112", "Query")
_ACCESSED = Code("110103", "DICOM Instances Accessed")
_TRANSFERRED = Code("110104", "DICOM Instances Transferred")
_EXPORT = Code("110106", "Export")
_PATIENT_RECORD = Code("110110", "Patient Record")
_SECURITY_ALERT = Code("110113", "Security Alert")

_TABLE: Final = {
    T.AUTH_SUCCESS: EventCodes(_AUTH, "E", _LOGIN),
    T.AUTH_FAILURE: EventCodes(_AUTH, "E", _LOGIN),
    T.SEARCH: EventCodes(_QUERY, "E"),
    T.RETRIEVE_METADATA: EventCodes(_ACCESSED, "R"),
    T.RETRIEVE_INSTANCE: EventCodes(_EXPORT, "R"),
    T.RETRIEVE_RENDERED: EventCodes(_EXPORT, "R"),
    T.RETRIEVE_REPORT: EventCodes(_PATIENT_RECORD, "R"),
    T.STORE: EventCodes(_TRANSFERRED, "C"),
    T.ACCESS_DENIED: EventCodes(_SECURITY_ALERT, "E", Code("110144", "Authorization Decision")),
    T.SHARECODE_CREATED: EventCodes(_PATIENT_RECORD, "C"),
    T.SHARECODE_USED: EventCodes(_PATIENT_RECORD, "R"),
    T.SHARECODE_REVOKED: EventCodes(_PATIENT_RECORD, "D"),
    T.OPPOSITION_SET: EventCodes(_PATIENT_RECORD, "U"),
    T.OPPOSITION_LIFTED: EventCodes(_PATIENT_RECORD, "U"),
    T.CARE_CHANGED: EventCodes(_PATIENT_RECORD, "U"),
    T.BTG_OPENED: EventCodes(_SECURITY_ALERT, "E", Code("110127", "Emergency Override Started")),
    T.ADMIN_CHANGE: EventCodes(_SECURITY_ALERT, "E", Code("110129", "Security Configuration")),
    T.AUDIT_VIEWED: EventCodes(Code("110101", "Audit Log Used"), "R"),
}


def codes_for(event_type: T) -> EventCodes:
    """The DICOM coding of `event_type`."""
    return _TABLE[event_type]


def outcome_indicator(outcome: AuditOutcomeValues) -> str:
    """EventOutcomeIndicator: 0 success, 4 minor failure (denied), 8 serious failure."""
    return {
        AuditOutcomeValues.SUCCESS: "0",
        AuditOutcomeValues.DENIED: "4",
        AuditOutcomeValues.FAILURE: "8",
    }[outcome]

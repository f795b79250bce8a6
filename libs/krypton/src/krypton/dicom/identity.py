"""Patient identity: the INS (Identifiant National de Santé) and the structure's local identifier.

An INS is the 13-character NIR (or NIA) followed by its 2-digit control key,
`97 - (NIR mod 97)`, where the Corsican departments 2A and 2B count as 19 and 18. French
producers carry it in two ways (domain reference §1.6):

- in Patient ID (0010,0020), qualified by Issuer of Patient ID (0010,0021)
  `ASIP-SANTE-INS-NIR` and/or Issuer of Patient ID Qualifiers Sequence (0010,0024) with a
  Universal Entity ID that is one of the INS OIDs (type ISO);
- as an item of Other Patient IDs Sequence (0010,1002) with such an issuer, Patient ID then
  holding the structure's local identifier (IPP).

A valid INS gives the platform-wide key `INS:<ins>`; otherwise the patient is known by
`IPP:<structure>:<Patient ID>`. An identifier that claims to be an INS but fails the key check
is not trusted. Identity qualification (RNIV status) is not carried by DICOM headers and is
not checked here.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final

from krypton.contracts.ingest.v1 import PatientIdentity
from krypton.dicom._values import ValueSource, collect_warnings, items, text
from krypton.dicom.errors import DicomRejection, FailureReasonValues

__all__ = [
    "INS_ISSUER_NAMESPACE",
    "INS_NIA_OID",
    "INS_NIR_DEMO_OID",
    "INS_NIR_OID",
    "INS_NIR_TEST_OID",
    "INS_OIDS",
    "ResolvedIdentity",
    "ins_key",
    "is_valid_ins",
    "normalise_identity",
    "resolve_identity",
]

# OIDs of the INS assigning authorities (ANS); these are HL7/ISO OIDs, not DICOM UIDs.
INS_NIR_OID: Final = "1.2.250.1.213.1.4.8"
INS_NIA_OID: Final = "1.2.250.1.213.1.4.9"
INS_NIR_TEST_OID: Final = "1.2.250.1.213.1.4.10"
INS_NIR_DEMO_OID: Final = "1.2.250.1.213.1.4.11"
INS_OIDS: Final = frozenset({INS_NIR_OID, INS_NIA_OID, INS_NIR_TEST_OID, INS_NIR_DEMO_OID})
# The namespace ID of the HL7 v2 CX-4 assigning authority, what producers put in (0010,0021).
INS_ISSUER_NAMESPACE: Final = "ASIP-SANTE-INS-NIR"

# Issuer of Patient ID values seen without an OID. The namespace name alone cannot tell the
# production NIR from the test one (both use ASIP-SANTE-INS-NIR), so it maps to production.
_ISSUER_NAMES: Final = {
    INS_ISSUER_NAMESPACE: INS_NIR_OID,
    "ASIP-SANTE-INS-NIA": INS_NIA_OID,
    "INS-NIR": INS_NIR_OID,
    "INS-NIA": INS_NIA_OID,
    "INS-NIR-TEST": INS_NIR_TEST_OID,
    "INS-NIR-DEMO": INS_NIR_DEMO_OID,
}
# Sex digit, year, month, department (two digits or 2A/2B), commune, order number.
_NIR = re.compile(r"[1-8][0-9]{4}(?:[0-9]{2}|2[AB])[0-9]{6}")
_INS = re.compile(rf"(?P<nir>{_NIR.pattern})(?P<key>[0-9]{{2}})")
_CORSICA: Final = {"2A": "19", "2B": "18"}


@dataclass(frozen=True, slots=True)
class ResolvedIdentity:
    """A normalised identity and what was noticed on the way (never patient data)."""

    identity: PatientIdentity
    notes: tuple[str, ...] = ()


def ins_key(nir13: str) -> str:
    """The 2-digit control key of a 13-character NIR/NIA.

    Args:
        nir13: the NIR without its key; departments 2A/2B allowed (upper or lower case).

    Returns:
        `97 - (NIR mod 97)` on two digits, 2A and 2B counting as 19 and 18.

    Raises:
        ValueError: `nir13` is not a 13-character NIR.
    """
    nir = nir13.upper()
    if not _NIR.fullmatch(nir):
        msg = "not a 13-character NIR"
        raise ValueError(msg)
    department = nir[5:7]
    number = nir[:5] + _CORSICA.get(department, department) + nir[7:]
    return f"{97 - int(number) % 97:02d}"


def is_valid_ins(value: str | None) -> bool:
    """Whether `value` is a 15-character INS (NIR or NIA) whose key is right.

    Spaces are ignored (some producers print the INS in groups) and letters may be lower case.
    """
    if not value:
        return False
    candidate = _compact(value)
    match = _INS.fullmatch(candidate)
    return match is not None and ins_key(match["nir"]) == match["key"]


def normalise_identity(ds: ValueSource, structure: str) -> PatientIdentity:
    """The platform identity of the patient of `ds`; see `resolve_identity`."""
    return resolve_identity(ds, structure).identity


def resolve_identity(ds: ValueSource, structure: str) -> ResolvedIdentity:
    """Find the patient's INS if a trusted one is present, else use the local identifier.

    Looks, in order, at Patient ID qualified by an INS issuer, then at each item of Other
    Patient IDs Sequence qualified by an INS issuer. The first valid INS wins.

    Args:
        ds: the instance's data set.
        structure: FINESS of the producing structure (from the uploader's token).

    Returns:
        The identity (key `INS:<ins>` or `IPP:<structure>:<Patient ID>`) and notes.

    Raises:
        DicomRejection: DATASET_DOES_NOT_MATCH_SOP_CLASS when there is neither an INS nor a
            Patient ID.
    """
    notes: list[str] = []
    with collect_warnings(notes):
        patient_id = text(ds, "PatientID", notes)
        issuer = text(ds, "IssuerOfPatientID", notes)
        candidates: list[tuple[str, ValueSource]] = [("PatientID", ds)]
        candidates += [
            (f"OtherPatientIDsSequence[{index}]", item)
            for index, item in enumerate(items(ds, "OtherPatientIDsSequence", notes))
        ]
        primary_is_ins_issued = _ins_oid(ds, notes) is not None
        for where, item in candidates:
            oid = _ins_oid(item, notes)
            if oid is None:
                continue
            value = text(item, "PatientID", notes)
            if value is None:
                notes.append(f"{where} has an INS issuer but no value")
                continue
            if not is_valid_ins(value):
                notes.append(f"{where} has an INS issuer but is not a valid INS (bad key or form)")
                continue
            ins = _compact(value)
            identity = PatientIdentity(
                key=f"INS:{ins}",
                patient_id=patient_id or ins,
                issuer=issuer or (oid if patient_id is None or item is ds else structure),
                ins=ins,
                ins_oid=oid,
            )
            return ResolvedIdentity(identity, tuple(notes))

    if patient_id is None:
        raise DicomRejection(
            FailureReasonValues.DATASET_DOES_NOT_MATCH_SOP_CLASS, "PatientID is missing"
        )
    if primary_is_ins_issued:
        # The value claimed to be an INS and is not one: it is only the structure's identifier,
        # and an INS issuer name would mislead whoever reads the identity.
        issuer = None
    identity = PatientIdentity(
        key=f"IPP:{structure}:{patient_id}",
        patient_id=patient_id,
        issuer=issuer or structure,
    )
    return ResolvedIdentity(identity, tuple(notes))


def _ins_oid(item: ValueSource, notes: list[str]) -> str | None:
    """The INS OID that qualifies the Patient ID of `item` (data set or Other Patient IDs item)."""
    for qualifiers in items(item, "IssuerOfPatientIDQualifiersSequence", notes):
        universal_id = text(qualifiers, "UniversalEntityID", notes)
        if universal_id in INS_OIDS:
            return universal_id
    issuer = text(item, "IssuerOfPatientID", notes)
    if issuer is None:
        return None
    # HL7 v2 CX-4 form, `namespace&oid&ISO`, which some producers copy verbatim.
    parts = [part.strip() for part in issuer.split("&")]
    for part in parts[1:2] + parts[:1]:
        if part in INS_OIDS:
            return part
    return _ISSUER_NAMES.get(parts[0].upper())


def _compact(value: str) -> str:
    return "".join(value.split()).upper()

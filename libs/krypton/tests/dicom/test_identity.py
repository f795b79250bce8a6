"""INS key computation and the choice between INS and the structure's local identifier."""

from __future__ import annotations

import pytest
from pydicom.dataset import Dataset

from krypton.dicom.errors import DicomRejection, FailureReasonValues
from krypton.dicom.identity import (
    INS_ISSUER_NAMESPACE,
    INS_NIA_OID,
    INS_NIR_OID,
    INS_NIR_TEST_OID,
    ins_key,
    is_valid_ins,
    normalise_identity,
    resolve_identity,
)

STRUCTURE = "330781196"


def _hand_key(nir13: str) -> str:
    """The key computed the way the INSEE documents it for Corsica: A/B -> 0, minus 1e6/2e6."""
    number = int(nir13.replace("A", "0").replace("B", "0"))
    if "A" in nir13:
        number -= 1_000_000
    elif "B" in nir13:
        number -= 2_000_000
    return f"{97 - number % 97:02d}"


@pytest.mark.parametrize(
    ("nir", "key"),
    [
        ("2550814168025", "38"),  # the classic textbook example
        ("1841276451089", "46"),
        ("1551299999001", f"{97 - 1551299999001 % 97:02d}"),
    ],
)
def test_ins_key_matches_known_examples(nir: str, key: str) -> None:
    assert ins_key(nir) == key


@pytest.mark.parametrize("nir", ["185052A123456", "290112B045012", "1850520123456"])
def test_corsican_departments_count_as_19_and_18(nir: str) -> None:
    assert ins_key(nir) == _hand_key(nir)
    assert ins_key(nir.lower()) == ins_key(nir)


def test_corsica_2a_differs_from_department_20() -> None:
    assert ins_key("185052A123456") != ins_key("1850520123456")
    assert ins_key("185052A123456") == ins_key("1850519123456")
    assert ins_key("185052B123456") == ins_key("1850518123456")


@pytest.mark.parametrize("bad", ["", "123", "12345678901234", "9850514168025", "2550814X68025"])
def test_ins_key_refuses_what_is_not_a_nir(bad: str) -> None:
    with pytest.raises(ValueError, match="NIR"):
        ins_key(bad)


def test_is_valid_ins_checks_form_and_key() -> None:
    assert is_valid_ins("255081416802538")
    assert is_valid_ins("2 55 08 14 168 025 38")
    assert is_valid_ins("185052a123456" + ins_key("185052A123456"))
    assert not is_valid_ins("255081416802539")
    assert not is_valid_ins("2550814168025")
    assert not is_valid_ins(None)
    assert not is_valid_ins("")


VALID_INS = "255081416802538"
BAD_KEY_INS = "255081416802599"


def _qualified(item: Dataset, oid: str) -> None:
    qualifiers = Dataset()
    qualifiers.UniversalEntityID = oid
    qualifiers.UniversalEntityIDType = "ISO"
    item.IssuerOfPatientIDQualifiersSequence = [qualifiers]


def test_ins_in_patient_id_with_qualifier_oid_is_the_key() -> None:
    ds = Dataset()
    ds.PatientID = VALID_INS
    ds.IssuerOfPatientID = INS_ISSUER_NAMESPACE
    _qualified(ds, INS_NIR_TEST_OID)
    identity = normalise_identity(ds, STRUCTURE)
    assert identity.key == f"INS:{VALID_INS}"
    assert identity.ins == VALID_INS
    assert identity.ins_oid == INS_NIR_TEST_OID
    assert identity.patient_id == VALID_INS
    assert identity.issuer == INS_ISSUER_NAMESPACE


def test_ins_issuer_name_alone_means_the_production_authority() -> None:
    ds = Dataset()
    ds.PatientID = VALID_INS
    ds.IssuerOfPatientID = "INS-NIR"
    assert normalise_identity(ds, STRUCTURE).ins_oid == INS_NIR_OID


def test_hl7_style_issuer_with_oid_is_understood() -> None:
    ds = Dataset()
    ds.PatientID = VALID_INS
    ds.IssuerOfPatientID = f"ASIP-SANTE-INS-NIA&{INS_NIA_OID}&ISO"
    identity = normalise_identity(ds, STRUCTURE)
    assert identity.key == f"INS:{VALID_INS}"
    assert identity.ins_oid == INS_NIA_OID


def test_ins_in_other_patient_ids_wins_over_the_local_id() -> None:
    ds = Dataset()
    ds.PatientID = "IPP000123"
    ds.IssuerOfPatientID = "CHU-BDX"
    item = Dataset()
    item.PatientID = VALID_INS
    item.IssuerOfPatientID = INS_ISSUER_NAMESPACE
    _qualified(item, INS_NIR_TEST_OID)
    other = Dataset()
    other.PatientID = "OTHER-1"
    other.IssuerOfPatientID = "SOMEWHERE"
    ds.OtherPatientIDsSequence = [other, item]
    identity = normalise_identity(ds, STRUCTURE)
    assert identity.key == f"INS:{VALID_INS}"
    assert identity.patient_id == "IPP000123"
    assert identity.issuer == "CHU-BDX"
    assert identity.ins_oid == INS_NIR_TEST_OID


def test_an_ins_with_a_bad_key_is_not_trusted_and_the_ipp_is_used() -> None:
    ds = Dataset()
    ds.PatientID = "IPP000123"
    item = Dataset()
    item.PatientID = BAD_KEY_INS
    item.IssuerOfPatientID = INS_ISSUER_NAMESPACE
    ds.OtherPatientIDsSequence = [item]
    resolved = resolve_identity(ds, STRUCTURE)
    assert resolved.identity.key == f"IPP:{STRUCTURE}:IPP000123"
    assert resolved.identity.ins is None
    assert resolved.identity.issuer == STRUCTURE
    assert any("not a valid INS" in note for note in resolved.notes)
    assert all(BAD_KEY_INS not in note for note in resolved.notes)  # no patient data in notes


def test_a_bad_ins_in_patient_id_falls_back_to_a_structure_identifier() -> None:
    ds = Dataset()
    ds.PatientID = BAD_KEY_INS
    ds.IssuerOfPatientID = INS_ISSUER_NAMESPACE
    _qualified(ds, INS_NIR_TEST_OID)
    identity = normalise_identity(ds, STRUCTURE)
    assert identity.key == f"IPP:{STRUCTURE}:{BAD_KEY_INS}"
    assert identity.issuer == STRUCTURE


def test_an_ins_looking_value_without_an_ins_issuer_is_a_local_id() -> None:
    ds = Dataset()
    ds.PatientID = VALID_INS
    ds.IssuerOfPatientID = "CHU-BDX"
    identity = normalise_identity(ds, STRUCTURE)
    assert identity.key == f"IPP:{STRUCTURE}:{VALID_INS}"
    assert identity.issuer == "CHU-BDX"


def test_the_local_identifier_is_keyed_by_structure() -> None:
    ds = Dataset()
    ds.PatientID = "  12345  "
    identity = normalise_identity(ds, STRUCTURE)
    assert identity.key == f"IPP:{STRUCTURE}:12345"
    assert identity.patient_id == "12345"
    assert identity.issuer == STRUCTURE


def test_an_ins_only_in_other_ids_is_enough_without_patient_id() -> None:
    ds = Dataset()
    item = Dataset()
    item.PatientID = VALID_INS
    _qualified(item, INS_NIR_OID)
    ds.OtherPatientIDsSequence = [item]
    identity = normalise_identity(ds, STRUCTURE)
    assert identity.key == f"INS:{VALID_INS}"
    assert identity.patient_id == VALID_INS


@pytest.mark.parametrize("value", [None, "", "   "])
def test_no_patient_id_and_no_ins_is_rejected(value: str | None) -> None:
    ds = Dataset()
    if value is not None:
        ds.PatientID = value
    with pytest.raises(DicomRejection) as caught:
        normalise_identity(ds, STRUCTURE)
    assert caught.value.code == FailureReasonValues.DATASET_DOES_NOT_MATCH_SOP_CLASS
    assert caught.value.reason == "PatientID is missing"

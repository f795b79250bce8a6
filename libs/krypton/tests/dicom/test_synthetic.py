"""Synthetic population: determinism, realism of identities, instances that ingest accepts."""

from __future__ import annotations

import io
import struct
from collections import Counter
from itertools import islice

import pydicom
import pytest
from pydicom.uid import ExplicitVRLittleEndian

from krypton.dicom.extract import extract
from krypton.dicom.header import read_header
from krypton.dicom.identity import INS_ISSUER_NAMESPACE, INS_NIR_TEST_OID, is_valid_ins
from krypton.dicom.synthetic import (
    DEPARTMENTS,
    IdentityStyle,
    Population,
    SyntheticStudy,
    render_instances,
)

MODALITIES = {"CT", "MR", "CR", "DX", "MG", "US", "NM", "PT"}


@pytest.fixture(scope="module")
def population() -> Population:
    return Population(seed=7, n_patients=500, structures=20)


@pytest.fixture(scope="module")
def studies(population: Population) -> list[SyntheticStudy]:
    return list(population.iter_studies(400, max_instances_per_series=3))


def _luhn_ok(number: str) -> bool:
    total = 0
    for position, char in enumerate(reversed(number)):
        digit = int(char) * (2 if position % 2 else 1)
        total += digit - 9 if digit > 9 else digit
    return total % 10 == 0


def test_the_same_seed_gives_the_same_population_and_bytes() -> None:
    first = Population(seed=1, n_patients=50, structures=5)
    second = Population(seed=1, n_patients=50, structures=5)
    assert first.structures == second.structures
    assert list(first.iter_studies(20)) == list(second.iter_studies(20))
    study = next(first.iter_studies(1, max_instances_per_series=2))
    assert list(render_instances(study)) == list(render_instances(study))


def test_another_seed_gives_another_population() -> None:
    first = next(Population(seed=1, n_patients=50).iter_studies(1))
    other = next(Population(seed=2, n_patients=50).iter_studies(1))
    assert first.study_uid != other.study_uid


def test_studies_are_derived_by_index(population: Population) -> None:
    ten = list(population.iter_studies(10))
    assert ten[:4] == list(population.iter_studies(4))
    assert ten[5:] == list(population.iter_studies(5, start=5))


def test_structures_have_finess_numbers_of_the_region(population: Population) -> None:
    finess = [s.finess for s in population.structures]
    assert len(set(finess)) == len(finess)
    for structure in population.structures:
        assert len(structure.finess) == 9
        assert structure.finess.isdigit()
        assert structure.finess[:2] == structure.department
        assert structure.department in DEPARTMENTS
        assert _luhn_ok(structure.finess)
    assert {s.department for s in population.structures} == set(DEPARTMENTS)
    assert {s.identity_style for s in population.structures} == set(IdentityStyle)


def test_most_patients_have_a_valid_test_ins_and_some_only_an_ipp(population: Population) -> None:
    patients = [population.patient(i) for i in range(population.n_patients)]
    with_ins = [p for p in patients if p.ins is not None]
    assert 0.7 * len(patients) < len(with_ins) < len(patients)
    assert all(p.ins is not None and is_valid_ins(p.ins) for p in with_ins)
    # The NIR starts with the sex digit and the birth year and month.
    for patient in with_ins:
        assert patient.ins is not None
        assert patient.ins[0] == ("1" if patient.sex == "M" else "2")
        assert patient.ins[1:5] == patient.birth_date.strftime("%y%m")
    assert any(p.ins is not None and p.ins[5:7] in ("2A", "2B") for p in with_ins)


def test_names_are_french_with_accents_and_compounds(population: Population) -> None:
    patients = [population.patient(i) for i in range(population.n_patients)]
    names = [p.dicom_name for p in patients]
    assert any(ch in name for name in names for ch in "éèëïçÉÈ")
    assert any("-" in p.given_name for p in patients)
    assert any(" " in p.family_name for p in patients)
    assert all(name.count("^") == 1 for name in names)
    assert all(p.family_name == p.family_name.upper() for p in patients)


def test_the_modality_mix_covers_every_modality(studies: list[SyntheticStudy]) -> None:
    modalities = Counter(m for study in studies for m in study.modalities)
    assert set(modalities) == MODALITIES
    assert modalities["DX"] > modalities["PT"]
    years = {study.study_date.year for study in studies}
    assert len(years) >= 8
    for study in studies:
        assert study.study_date >= study.patient.birth_date
        assert study.accession_number
        assert study.referring_physician.endswith("^^Dr")
        assert len(study.study_uid) <= 64


def test_a_realistic_ct_has_hundreds_of_images(population: Population) -> None:
    cts = [s for s in population.iter_studies(200) if s.modalities[0] == "CT"]
    assert cts
    assert max(s.instance_count for s in cts) > 100


def _study_with(studies: list[SyntheticStudy], style: IdentityStyle, ins: bool) -> SyntheticStudy:
    return next(
        s
        for s in studies
        if s.structure.identity_style is style and (s.patient.ins is not None) == ins
    )


@pytest.mark.parametrize("style", list(IdentityStyle))
@pytest.mark.parametrize("ins", [True, False])
def test_rendered_instances_parse_back_with_matching_attributes(
    studies: list[SyntheticStudy], style: IdentityStyle, ins: bool
) -> None:
    study = _study_with(studies, style, ins)
    files = list(render_instances(study))
    assert len(files) == study.instance_count
    seen_uids = set()
    for data, series in zip(
        files, (s for s in study.series for _ in range(s.instance_count)), strict=True
    ):
        header = read_header(data)
        assert header.transfer_syntax_uid == ExplicitVRLittleEndian
        offset = header.pixel_data_offset
        assert offset is not None
        assert data[offset : offset + 4] == struct.pack("<HH", 0x7FE0, 0x0010)
        extracted = extract(header, study.structure.finess)
        assert extracted.patient.key == study.identity_key
        assert extracted.study.study_uid == study.study_uid
        assert extracted.study.patient_name == study.patient.dicom_name
        assert extracted.study.patient_sex == study.patient.sex
        assert extracted.study.accession_number == study.accession_number
        assert extracted.study.study_date == study.study_date.strftime("%Y%m%d")
        assert extracted.series.series_uid == series.series_uid
        assert extracted.series.modality == series.modality
        assert extracted.instance.sop_class_uid == series.sop_class_uid
        assert extracted.instance.rows == 64
        assert not [n for n in extracted.notes if "leading zero" not in n]
        seen_uids.add(extracted.instance.sop_instance_uid)
    assert len(seen_uids) == len(files)


def test_identity_is_written_the_way_french_producers_do(
    studies: list[SyntheticStudy],
) -> None:
    study = _study_with(studies, IdentityStyle.INS_IN_PATIENT_ID, ins=True)
    ds = pydicom.dcmread(io.BytesIO(next(render_instances(study))))
    assert ds.PatientID == study.patient.ins
    assert ds.IssuerOfPatientID == INS_ISSUER_NAMESPACE
    qualifiers = ds.IssuerOfPatientIDQualifiersSequence[0]
    assert qualifiers.UniversalEntityID == INS_NIR_TEST_OID
    assert qualifiers.UniversalEntityIDType == "ISO"
    assert ds.OtherPatientIDsSequence[0].PatientID == study.ipp

    study = _study_with(studies, IdentityStyle.IPP_WITH_OTHER_IDS, ins=True)
    ds = pydicom.dcmread(io.BytesIO(next(render_instances(study))))
    assert ds.PatientID == study.ipp
    other = ds.OtherPatientIDsSequence[0]
    assert other.PatientID == study.patient.ins
    assert other.IssuerOfPatientID == INS_ISSUER_NAMESPACE
    assert other.IssuerOfPatientIDQualifiersSequence[0].UniversalEntityID == INS_NIR_TEST_OID


@pytest.mark.parametrize("bits", [8, 16])
def test_pixels_decode_with_the_declared_geometry(studies: list[SyntheticStudy], bits: int) -> None:
    study = studies[0]
    data = next(render_instances(study, rows=32, cols=48, bits=bits))
    ds = pydicom.dcmread(io.BytesIO(data))
    pixels = ds.pixel_array
    assert pixels.shape == (32, 48)
    assert pixels.dtype.itemsize == bits // 8
    assert pixels.max() > 0


def test_every_modality_renders_a_valid_file(studies: list[SyntheticStudy]) -> None:
    by_modality: dict[str, SyntheticStudy] = {}
    for study in studies:
        for series in study.series:
            by_modality.setdefault(series.modality, study)
    assert set(by_modality) == MODALITIES
    for modality, study in by_modality.items():
        for data in islice(render_instances(study), 2):
            ds = pydicom.dcmread(io.BytesIO(data))
            assert ds.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID
            assert ds.file_meta.MediaStorageSOPClassUID == ds.SOPClassUID
            extract(read_header(data), study.structure.finess)
        assert modality in study.modalities


def test_character_sets_encode_accented_names(population: Population) -> None:
    charsets = {s.character_set for s in population.structures}
    assert charsets == {"ISO_IR 100", "ISO_IR 192"}
    for study in population.iter_studies(60, max_instances_per_series=1):
        data = next(render_instances(study))
        ds = pydicom.dcmread(io.BytesIO(data))
        assert ds.SpecificCharacterSet == study.structure.character_set
        assert str(ds.PatientName) == study.patient.dicom_name

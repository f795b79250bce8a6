"""A deterministic synthetic regional population, for demo data and benchmarks.

`Population(seed, n_patients, structures)` describes a Nouvelle-Aquitaine-like region:
producing structures (FINESS numbers of the region's departments), patients with French
names, sexes and birth dates, most of them with an INS (test authority, valid key) and the
others known only by each structure's local identifier (IPP). `iter_studies` yields plain
study metadata spread over several years with a realistic modality mix; `render_instances`
turns one study into valid DICOM Part 10 files (Explicit VR Little Endian, small pixel data).

Everything derives from the seed: the same seed gives the same patients, studies, UIDs and
bytes, on any machine. Studies and patients are derived by index, so `iter_studies(10)` is
the prefix of `iter_studies(1000)` and a population of millions costs nothing until used.

The objects are realistic in what the platform reads (identity as French producers write it,
UIDs, dates, descriptions, modality-specific attributes), not complete IODs.
"""

from __future__ import annotations

import hashlib
import random
import struct
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import date, timedelta
from enum import StrEnum
from functools import lru_cache
from typing import Final

import numpy as np
from pydicom.charset import convert_encodings
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_data_element
from pydicom.uid import (
    PYDICOM_IMPLEMENTATION_UID,
    PYDICOM_ROOT_UID,
    ComputedRadiographyImageStorage,
    CTImageStorage,
    DigitalMammographyXRayImageStorageForPresentation,
    DigitalXRayImageStorageForPresentation,
    ExplicitVRLittleEndian,
    MRImageStorage,
    NuclearMedicineImageStorage,
    PositronEmissionTomographyImageStorage,
    UltrasoundImageStorage,
    generate_uid,
)

from krypton.dicom._synthetic_data import (
    ACCESSION_PREFIX,
    DEPARTMENTS,
    FAMILY_NAMES,
    FEMALE_NAMES,
    MALE_NAMES,
    MANUFACTURERS,
    OTHER_BIRTH_DEPARTMENTS,
    PROTOCOLS,
    UNIVERSITY_TOWNS,
)
from krypton.dicom.identity import INS_ISSUER_NAMESPACE, INS_NIR_TEST_OID, ins_key

__all__ = [
    "DEPARTMENTS",
    "IdentityStyle",
    "Population",
    "Structure",
    "SyntheticPatient",
    "SyntheticSeries",
    "SyntheticStudy",
    "render_instances",
]


class IdentityStyle(StrEnum):
    """How a structure writes the patient identity in its DICOM headers."""

    # INS in Patient ID, Issuer ASIP-SANTE-INS-NIR + qualifier OID; IPP in Other Patient IDs.
    INS_IN_PATIENT_ID = "ins-in-patient-id"
    # IPP in Patient ID; INS in an Other Patient IDs Sequence item with its issuer.
    IPP_WITH_OTHER_IDS = "ipp-with-other-ids"


@dataclass(frozen=True, slots=True)
class Structure:
    """A producing structure (health institution or imaging practice)."""

    finess: str
    name: str
    department: str
    town: str
    identity_style: IdentityStyle
    character_set: str  # "ISO_IR 100" (Latin-1) or "ISO_IR 192" (UTF-8)
    manufacturer: str


@dataclass(frozen=True, slots=True)
class SyntheticPatient:
    """A patient of the population."""

    index: int
    family_name: str
    given_name: str
    sex: str  # "M" or "F"
    birth_date: date
    department: str  # where the patient lives
    ins: str | None  # 15 characters, test authority; None for patients known by IPP only

    @property
    def dicom_name(self) -> str:
        """The Patient's Name value, `FAMILY^Given`."""
        return f"{self.family_name}^{self.given_name}"


@dataclass(frozen=True, slots=True)
class SyntheticSeries:
    """One series of a synthetic study."""

    series_uid: str
    number: int
    modality: str
    sop_class_uid: str
    description: str
    body_part: str
    instance_count: int


@dataclass(frozen=True, slots=True)
class SyntheticStudy:
    """One synthetic study: everything needed to render its instances, no pixels."""

    index: int
    study_uid: str
    patient: SyntheticPatient
    structure: Structure
    ipp: str  # the patient's identifier at this structure
    study_date: date
    study_time: str  # HHMMSS
    timezone_offset: str  # +0100 / +0200
    accession_number: str
    study_id: str
    description: str
    referring_physician: str  # PN
    station_name: str
    frame_of_reference_uid: str
    series: tuple[SyntheticSeries, ...]

    @property
    def modalities(self) -> tuple[str, ...]:
        """Distinct modalities of the series, in series order."""
        return tuple(dict.fromkeys(s.modality for s in self.series))

    @property
    def instance_count(self) -> int:
        """Number of instances `render_instances` yields."""
        return sum(s.instance_count for s in self.series)

    @property
    def patient_id(self) -> str:
        """Patient ID (0010,0020) as the structure writes it."""
        if self.patient.ins and self.structure.identity_style is IdentityStyle.INS_IN_PATIENT_ID:
            return self.patient.ins
        return self.ipp

    @property
    def identity_key(self) -> str:
        """The platform key ingest must derive (`INS:...` or `IPP:<finess>:<ipp>`)."""
        if self.patient.ins:
            return f"INS:{self.patient.ins}"
        return f"IPP:{self.structure.finess}:{self.ipp}"


_SOP_CLASSES: Final = {
    "CT": CTImageStorage,
    "MR": MRImageStorage,
    "CR": ComputedRadiographyImageStorage,
    "DX": DigitalXRayImageStorageForPresentation,
    "MG": DigitalMammographyXRayImageStorageForPresentation,
    "US": UltrasoundImageStorage,
    "NM": NuclearMedicineImageStorage,
    "PT": PositronEmissionTomographyImageStorage,
}
_INS_SHARE: Final = 0.85  # patients with an INS; the others are known by IPP only
_INS_STYLE_SHARE: Final = 0.6  # structures that put the INS in Patient ID


class Population:
    """A deterministic region: structures, patients, and their studies.

    Args:
        seed: everything derives from it.
        n_patients: size of the population.
        structures: how many producing structures to create (the first twelve cover the
            twelve departments), or the structures themselves.
        years: first and last year of study dates (fixed, so output never depends on today).
    """

    def __init__(
        self,
        seed: int,
        n_patients: int,
        structures: int | Sequence[Structure] = 12,
        *,
        years: tuple[int, int] = (2016, 2025),
    ) -> None:
        if n_patients < 1:
            msg = "a population needs at least one patient"
            raise ValueError(msg)
        self.seed = seed
        self.n_patients = n_patients
        self.years = years
        if isinstance(structures, int):
            self.structures: tuple[Structure, ...] = _make_structures(seed, structures)
        else:
            self.structures = tuple(structures)
        if not self.structures:
            msg = "a population needs at least one structure"
            raise ValueError(msg)
        self._by_department: dict[str, list[Structure]] = {}
        for structure in self.structures:
            self._by_department.setdefault(structure.department, []).append(structure)
        self._patients = lru_cache(maxsize=65536)(self._make_patient)

    def _rng(self, *parts: object) -> random.Random:
        # String seeds are hashed with SHA-512 by `random`, stable across runs and machines.
        return random.Random(":".join(str(p) for p in (self.seed, *parts)))

    def _uid(self, *parts: object) -> str:
        return str(
            generate_uid(
                prefix=PYDICOM_ROOT_UID, entropy_srcs=[str(p) for p in (self.seed, *parts)]
            )
        )

    def patient(self, index: int) -> SyntheticPatient:
        """Patient `index` (0-based, below `n_patients`)."""
        return self._patients(index)

    def _make_patient(self, index: int) -> SyntheticPatient:
        rng = self._rng("patient", index)
        sex = rng.choice("MF")
        given = rng.choice(MALE_NAMES if sex == "M" else FEMALE_NAMES)
        family = rng.choice(FAMILY_NAMES)
        # Imaging patients are older than the population: about 60% over 50.
        age = int(
            rng.choices(
                (rng.randint(0, 17), rng.randint(18, 49), rng.randint(50, 95)), (10, 30, 60)
            )[0]
        )
        birth = date(self.years[1] - age, 1, 1) + timedelta(days=rng.randint(0, 364))
        department = rng.choices(list(DEPARTMENTS), [v[0] for v in DEPARTMENTS.values()])[0]
        ins = None
        if rng.random() < _INS_SHARE:
            born_in = department if rng.random() < 0.7 else rng.choice(OTHER_BIRTH_DEPARTMENTS)
            nir = (
                f"{1 if sex == 'M' else 2}{birth.year % 100:02d}{birth.month:02d}{born_in}"
                f"{rng.randint(1, 999):03d}{rng.randint(1, 999):03d}"
            )
            ins = nir + ins_key(nir)
        return SyntheticPatient(
            index=index,
            family_name=family,
            given_name=given,
            sex=sex,
            birth_date=birth,
            department=department,
            ins=ins,
        )

    def ipp(self, patient: SyntheticPatient, structure: Structure) -> str:
        """The patient's local identifier (IPP) at `structure`: stable, 8 or 10 digits."""
        rng = self._rng("ipp", patient.index, structure.finess)
        digits = 8 if int(structure.finess[-1]) % 2 else 10
        return f"{rng.randrange(10 ** (digits - 1), 10**digits)}"

    def iter_studies(
        self, n: int, *, start: int = 0, max_instances_per_series: int | None = None
    ) -> Iterator[SyntheticStudy]:
        """Studies `start` to `start + n - 1`.

        Args:
            n: how many studies.
            start: index of the first study (studies are derived by index).
            max_instances_per_series: cap on instances per series (realistic CT/MR/PET series
                hold hundreds), for quick demos and benchmarks.
        """
        for index in range(start, start + n):
            yield self.study(index, max_instances_per_series=max_instances_per_series)

    def study(self, index: int, *, max_instances_per_series: int | None = None) -> SyntheticStudy:
        """Study `index`; see `iter_studies`."""
        rng = self._rng("study", index)
        # A third of the studies go to a tenth of the patients: follow-up, with priors.
        frequent = max(1, self.n_patients // 10)
        if rng.random() < 0.33:
            patient = self.patient(rng.randrange(frequent))
        else:
            patient = self.patient(rng.randrange(self.n_patients))
        local = self._by_department.get(patient.department)
        structure = rng.choice(local if local and rng.random() < 0.85 else self.structures)

        protocol = rng.choices(PROTOCOLS, [p.weight for p in PROTOCOLS])[0]
        age_now = self.years[1] - patient.birth_date.year
        if protocol.modality == "MG" and (patient.sex == "M" or age_now < 40):
            protocol = PROTOCOLS[0]
        description, body_part, series_names = rng.choice(protocol.descriptions)

        first = max(date(self.years[0], 1, 1), patient.birth_date + timedelta(days=30))
        last = date(self.years[1], 12, 31)
        study_date = first + timedelta(days=rng.randint(0, max((last - first).days, 0)))
        while study_date.weekday() == 6 and study_date < last:  # Sunday: emergencies only
            study_date += timedelta(days=1)
        minutes = rng.randint(7 * 60 + 30, 19 * 60 + 30)
        study_time = f"{minutes // 60:02d}{minutes % 60:02d}{rng.randint(0, 59):02d}"

        study_uid = self._uid("study", index)
        count = rng.randint(*protocol.series_count)
        series: list[SyntheticSeries] = []
        for number in range(1, count + 1):
            name = series_names[(number - 1) % len(series_names)]
            modality = protocol.modality
            if protocol.modality == "PT" and "TDM" in name:
                modality = "CT"  # PET-CT: the CT of the hybrid acquisition is its own series
            low, high = protocol.instances_per_series
            instances = rng.randint(low, high)
            if name in ("Topogramme",):
                instances = rng.randint(1, 2)
            if max_instances_per_series is not None:
                instances = max(1, min(instances, max_instances_per_series))
            series.append(
                SyntheticSeries(
                    series_uid=self._uid("series", index, number),
                    number=number,
                    modality=modality,
                    sop_class_uid=str(_SOP_CLASSES[modality]),
                    description=name,
                    body_part=body_part,
                    instance_count=instances,
                )
            )

        physician = self._rng("physician", structure.finess, rng.randrange(40))
        referring = (
            f"{physician.choice(FAMILY_NAMES)}^{physician.choice(MALE_NAMES + FEMALE_NAMES)}^^Dr"
        )
        prefix = ACCESSION_PREFIX.get(protocol.modality, "RX")
        return SyntheticStudy(
            index=index,
            study_uid=study_uid,
            patient=patient,
            structure=structure,
            ipp=self.ipp(patient, structure),
            study_date=study_date,
            study_time=study_time,
            timezone_offset=_paris_offset(study_date),
            accession_number=f"{prefix}{study_date.year % 100:02d}{rng.randrange(10**7):07d}",
            study_id=f"{rng.randrange(10**6):06d}",
            description=description,
            referring_physician=referring,
            station_name=f"{protocol.modality}{rng.randint(1, 3):02d}{structure.finess[-4:]}",
            frame_of_reference_uid=self._uid("frame", index),
            series=tuple(series),
        )


def render_instances(
    study: SyntheticStudy, *, rows: int = 64, cols: int = 64, bits: int = 16
) -> Iterator[bytes]:
    """The instances of `study` as DICOM Part 10 files, series by series.

    Study-level and series-level elements are encoded once; each instance only encodes its
    own few elements and pixels, then the fragments are joined in tag order.

    Args:
        study: from `Population.iter_studies`.
        rows: image height.
        cols: image width.
        bits: 8 or 16 bits per pixel (unsigned, MONOCHROME2).

    Yields:
        One file per instance, Explicit VR Little Endian, with its File Meta Information.
    """
    if bits not in (8, 16):
        msg = "bits must be 8 or 16"
        raise ValueError(msg)
    encodings = convert_encodings([study.structure.character_set])
    study_fragments = _encode(_study_dataset(study), encodings)
    preamble = b"\0" * 128 + b"DICM"
    meta_static = _encode(_meta_dataset(), encodings)
    for series in study.series:
        series_fragments = _encode(_series_dataset(study, series, rows, cols, bits), encodings)
        fragments = {**study_fragments, **series_fragments}
        images = _series_images(series.series_uid, rows, cols, bits)
        for number in range(1, series.instance_count + 1):
            sop_instance_uid = str(
                generate_uid(
                    prefix=PYDICOM_ROOT_UID,
                    entropy_srcs=[series.series_uid, str(number)],
                )
            )
            instance = dict(fragments)
            instance.update(_instance_elements(series, number, sop_instance_uid))
            pixels = np.roll(images, number, axis=1).tobytes()
            instance[0x7FE00010] = _element(0x7FE00010, b"OW", pixels)
            meta = dict(meta_static)
            meta[0x00020002] = _element(0x00020002, b"UI", series.sop_class_uid.encode())
            meta[0x00020003] = _element(0x00020003, b"UI", sop_instance_uid.encode())
            meta_body = b"".join(meta[tag] for tag in sorted(meta))
            group_length = _element(0x00020000, b"UL", struct.pack("<L", len(meta_body)))
            body = b"".join(instance[tag] for tag in sorted(instance))
            yield preamble + group_length + meta_body + body


def _make_structures(seed: int, count: int) -> tuple[Structure, ...]:
    """`count` structures: one per department first (most populated first), then by weight."""
    rng = random.Random(f"{seed}:structures")
    departments = sorted(DEPARTMENTS, key=lambda d: -DEPARTMENTS[d][0])
    weights = [DEPARTMENTS[d][0] for d in departments]
    used_finess: set[str] = set()
    per_department: dict[str, int] = {}
    structures: list[Structure] = []
    for index in range(count):
        department = (
            departments[index] if index < len(departments) else rng.choices(departments, weights)[0]
        )
        rank = per_department.get(department, 0)
        per_department[department] = rank + 1
        towns = DEPARTMENTS[department][1]
        town = towns[rank % len(towns)]
        if rank == 0 and department in UNIVERSITY_TOWNS:
            name = f"CHU de {UNIVERSITY_TOWNS[department]}"
            town = UNIVERSITY_TOWNS[department]
        elif rank == 0:
            name = f"Centre hospitalier {_of(town)}"
        else:
            kind = rng.choice(
                ("Clinique Saint-{saint}", "Centre d'imagerie médicale {of_town}",
                 "Cabinet de radiologie {family}", "Polyclinique {of_town}")
            )  # fmt: skip
            name = kind.format(
                saint=rng.choice(("Augustin", "Jean", "Hilaire", "Martin", "Front")),
                of_town=_of(town),
                family=rng.choice(FAMILY_NAMES).title(),
            )
            if rank >= len(towns):
                name = f"{name} {rank // len(towns) + 1}"
        finess = ""
        while not finess or finess in used_finess:
            body = f"{department}{rng.randrange(10**6):06d}"
            finess = body + _luhn_digit(body)
        used_finess.add(finess)
        structures.append(
            Structure(
                finess=finess,
                name=name,
                department=department,
                town=town,
                identity_style=(
                    IdentityStyle.INS_IN_PATIENT_ID
                    if rng.random() < _INS_STYLE_SHARE
                    else IdentityStyle.IPP_WITH_OTHER_IDS
                ),
                character_set="ISO_IR 100" if rng.random() < 0.7 else "ISO_IR 192",
                manufacturer=rng.choice(MANUFACTURERS),
            )
        )
    return tuple(structures)


def _of(town: str) -> str:
    """French "de <town>" with elision before a vowel: "d'Angoulême", "de Pau"."""
    return f"d'{town}" if town[0] in "AEIOUYÂÉÈÊÎÔ" else f"de {town}"


def _luhn_digit(body: str) -> str:
    """The Luhn check digit that ends a FINESS number."""
    total = 0
    for position, char in enumerate(reversed(body)):
        digit = int(char)
        if position % 2 == 0:  # doubled: the rightmost digit of the body, then every other
            digit *= 2
            digit -= 9 if digit > 9 else 0
        total += digit
    return str((10 - total % 10) % 10)


def _paris_offset(day: date) -> str:
    """UTC offset of metropolitan France on `day` (EU summer time: last Sundays of Mar/Oct)."""

    def last_sunday(month: int) -> date:
        last = date(day.year, month, 31)
        return last - timedelta(days=(last.weekday() + 1) % 7)

    return "+0200" if last_sunday(3) <= day < last_sunday(10) else "+0100"


def _study_dataset(study: SyntheticStudy) -> Dataset:
    """Patient, study and structure-level elements, identical for every instance."""
    patient = study.patient
    structure = study.structure
    ds = Dataset()
    ds.SpecificCharacterSet = structure.character_set
    ds.StudyDate = study.study_date.strftime("%Y%m%d")
    ds.StudyTime = study.study_time
    ds.AccessionNumber = study.accession_number
    ds.Manufacturer = structure.manufacturer
    ds.InstitutionName = structure.name
    ds.ReferringPhysicianName = study.referring_physician
    ds.StationName = study.station_name
    ds.StudyDescription = study.description
    ds.TimezoneOffsetFromUTC = study.timezone_offset
    ds.PatientName = patient.dicom_name
    ds.PatientBirthDate = patient.birth_date.strftime("%Y%m%d")
    ds.PatientSex = patient.sex
    age = (
        study.study_date.year
        - patient.birth_date.year
        - (
            (study.study_date.month, study.study_date.day)
            < (patient.birth_date.month, patient.birth_date.day)
        )
    )
    ds.PatientAge = f"{age:03d}Y"
    local_issuer = f"FINESS-{structure.finess}"
    if patient.ins and structure.identity_style is IdentityStyle.INS_IN_PATIENT_ID:
        ds.PatientID = patient.ins
        ds.IssuerOfPatientID = INS_ISSUER_NAMESPACE
        ds.IssuerOfPatientIDQualifiersSequence = [_ins_qualifiers()]
        ds.OtherPatientIDsSequence = [_other_id(study.ipp, local_issuer)]
    else:
        ds.PatientID = study.ipp
        ds.IssuerOfPatientID = local_issuer
        if patient.ins:
            item = _other_id(patient.ins, INS_ISSUER_NAMESPACE)
            item.IssuerOfPatientIDQualifiersSequence = [_ins_qualifiers()]
            ds.OtherPatientIDsSequence = [item]
    ds.StudyInstanceUID = study.study_uid
    ds.StudyID = study.study_id
    ds.FrameOfReferenceUID = study.frame_of_reference_uid
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.PixelRepresentation = 0
    return ds


def _ins_qualifiers() -> Dataset:
    item = Dataset()
    item.UniversalEntityID = INS_NIR_TEST_OID
    item.UniversalEntityIDType = "ISO"
    return item


def _other_id(value: str, issuer: str) -> Dataset:
    item = Dataset()
    item.PatientID = value
    item.IssuerOfPatientID = issuer
    item.TypeOfPatientID = "TEXT"
    return item


def _series_dataset(
    study: SyntheticStudy, series: SyntheticSeries, rows: int, cols: int, bits: int
) -> Dataset:
    """Series-level and per-series constant image elements."""
    ds = Dataset()
    axial = series.modality in ("CT", "PT")
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"] if axial else ["ORIGINAL", "PRIMARY"]
    ds.SOPClassUID = series.sop_class_uid
    ds.SeriesDate = ds.ContentDate = study.study_date.strftime("%Y%m%d")
    minutes = int(study.study_time[:2]) * 60 + int(study.study_time[2:4]) + 2 * series.number
    series_time = f"{min(minutes // 60, 23):02d}{minutes % 60:02d}{study.study_time[4:6]}"
    ds.SeriesTime = ds.ContentTime = series_time
    ds.Modality = series.modality
    ds.SeriesDescription = series.description
    ds.BodyPartExamined = series.body_part
    ds.SeriesInstanceUID = series.series_uid
    ds.SeriesNumber = series.number
    ds.Rows = rows
    ds.Columns = cols
    ds.BitsAllocated = bits
    ds.BitsStored = 12 if bits == 16 else 8
    ds.HighBit = ds.BitsStored - 1
    if series.modality in ("CT", "MR", "PT", "NM"):
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.PixelSpacing = [f"{400 / cols:.4g}", f"{400 / rows:.4g}"]
        ds.SliceThickness = "2.5" if series.modality == "CT" else "4"
    if series.modality == "CT":
        ds.KVP = "120"
        ds.RescaleIntercept = "-1024"
        ds.RescaleSlope = "1"
        ds.RescaleType = "HU"
    if series.modality == "MR":
        ds.MagneticFieldStrength = "1.5"
        ds.ScanningSequence = "SE"
        ds.SequenceVariant = "NONE"
    if series.modality == "PT":
        ds.Units = "BQML"
        ds.CorrectedImage = ["ATTN", "DECY"] if "NAC" not in series.description else ["DECY"]
        ds.DecayCorrection = "START"
        ds.SeriesType = ["WHOLE BODY", "IMAGE"]
    if series.modality == "NM":
        ds.NumberOfFrames = 1
        ds.FrameIncrementPointer = 0x00540080
    if series.modality in ("CR", "DX", "MG"):
        ds.PresentationIntentType = "FOR PRESENTATION"
        ds.ViewPosition = "PA" if series.modality != "MG" else ""
    if series.modality == "MG":
        ds.BreastImplantPresent = "NO"
    return ds


def _instance_elements(
    series: SyntheticSeries, number: int, sop_instance_uid: str
) -> dict[int, bytes]:
    """The few elements that differ from one instance of a series to the next, encoded."""
    elements = {
        0x00080018: _element(0x00080018, b"UI", sop_instance_uid.encode()),  # SOPInstanceUID
        0x00200013: _element(0x00200013, b"IS", str(number).encode()),  # InstanceNumber
    }
    if series.modality in ("CT", "MR", "PT", "NM"):
        z = f"{-2.5 * number:.1f}".encode()
        elements[0x00200032] = _element(0x00200032, b"DS", b"-200\\-200\\" + z)  # Position
        elements[0x00201041] = _element(0x00201041, b"DS", z)  # SliceLocation
    if series.modality == "MG":
        laterality = b"R" if number % 2 else b"L"
        elements[0x00200062] = _element(0x00200062, b"CS", laterality)  # ImageLaterality
    return elements


def _meta_dataset() -> Dataset:
    meta = Dataset()
    meta.FileMetaInformationVersion = b"\x00\x01"
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    meta.ImplementationVersionName = "KRYPTON_SYNTH"
    return meta


def _series_images(series_uid: str, rows: int, cols: int, bits: int) -> np.ndarray:
    """A body-like ellipse with organs and noise; instances shift it so none are identical."""
    seed = int.from_bytes(hashlib.sha256(series_uid.encode()).digest()[:8], "little")
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:rows, 0:cols]
    cy, cx = rows / 2, cols / 2
    body = ((y - cy) / (0.42 * rows)) ** 2 + ((x - cx) / (0.47 * cols)) ** 2 <= 1
    organ = ((y - cy * 0.9) / (0.12 * rows)) ** 2 + ((x - cx * 1.2) / (0.1 * cols)) ** 2 <= 1
    top = 4095 if bits == 16 else 255
    image = np.where(body, 0.25 * top, 0.0) + np.where(organ, 0.35 * top, 0.0)
    image += rng.normal(0.0, 0.03 * top, size=(rows, cols))
    dtype = np.uint16 if bits == 16 else np.uint8
    result: np.ndarray = np.clip(image, 0, top).astype(dtype)
    return result


def _encode(ds: Dataset, encodings: list[str]) -> dict[int, bytes]:
    """Each element of `ds` encoded on its own (Explicit VR Little Endian), keyed by tag."""
    return {int(element.tag): _encode_one(element, encodings) for element in ds}


def _element(tag: int, vr: bytes, value: bytes) -> bytes:
    """One Explicit VR Little Endian element with an ASCII or binary value (PS3.5 7.1.2).

    Used only for the handful of per-instance values, where pydicom's general encoder (value
    validation, conversions) costs more than everything else put together.
    """
    if len(value) % 2:
        value += b"\0" if vr in (b"UI", b"OB") else b" "
    if vr in (b"OB", b"OW", b"UN", b"SQ", b"UT"):
        return struct.pack("<HH2s2xL", tag >> 16, tag & 0xFFFF, vr, len(value)) + value
    return struct.pack("<HH2sH", tag >> 16, tag & 0xFFFF, vr, len(value)) + value


def _encode_one(element: DataElement, encodings: list[str] | None = None) -> bytes:
    fp = DicomBytesIO()
    fp.is_little_endian = True
    fp.is_implicit_VR = False
    write_data_element(fp, element, encodings)
    return fp.getvalue()

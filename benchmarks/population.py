"""A regional population at scale (up to 18 million studies), bulk-loaded by COPY.

Generates studies, series and (capped) instance rows straight into the ``index`` schema, the
access projection the index's SQL joins (``index.access_grants``, ``index.oppositions``) and
the authorize service's source tables (``authz.structures``, ``professionals``,
``memberships``, ``care_relationships``, ``share_codes``, ``oppositions``), so that the
platform's services started on the same database (`common.started_platform`) answer QIDO and
WADO over it with the access policy applied.

Everything is a pure function of (seed, index) — a splitmix64 hash of the index per field,
vectorised with numpy — so chunks are independent: they are generated in worker processes as
PostgreSQL text COPY data, loaded one transaction per chunk together with a row in
``population.chunks``, and a rerun skips the chunks already there (resumable, exactly once).

The region: ``--studies`` studies, ``studies / 3.6`` patients (a third of the studies go to a
tenth of the patients: follow-up with priors), 85 % of them with an INS (test authority, valid
NIR key), the others known by each structure's IPP; 116 structures (FINESS with Luhn key, the
twelve departments of Nouvelle-Aquitaine, `krypton.dicom.synthetic`); French names with
accents, compound family names (``LE GALL-MARTIN``) and double given names; study dates over
ten years (2016-2025); the modality mix, descriptions and series/instance counts of
`krypton.dicom._synthetic_data.PROTOCOLS` (PET-CT has a CT series); accession numbers with a
modality prefix. Instance rows are capped at ``--instances-per-series`` per series (default 1;
18M studies at ~150 instances each would be billions of rows), while the study and series rows
carry the realistic counts and sizes.

Access policy: ``--professionals`` professionals (IDNPS subjects, each a member of one
structure) with ``--care`` care relationships each (a tenth ended or expired) on patients of
random studies, a share code redeemed by one professional in ten (half of them for one study),
and ``--opposition-share`` of the patients with an INS opposing sharing.

Objects: only the first ``--objects`` studies have real DICOM files (rendered by
`krypton.dicom.synthetic.render_instances`, ``--object-instances`` per series), written through
the ingest path's own functions (`read_header` + `extract`, the object store, then
`krypton.index.store.upsert_batch`); WADO benchmarks use those (`object_studies`).

Secondary indexes of the three big tables are dropped before the first chunk and rebuilt after
the last (``--keep-indexes`` to load with them); their definitions are kept in
``population.meta`` so an interrupted run still rebuilds them.

    .venv/bin/python benchmarks/population.py --studies 1000000 [--state-dir .state/bench-1000000]
    .venv/bin/python benchmarks/population.py --studies 18000000 --workers 2
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import io
import json
import sys
import time
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from datetime import UTC, date, datetime, timedelta
from functools import cached_property, lru_cache
from pathlib import Path
from typing import Any, Final

import asyncpg
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import log
from krypton.dicom._synthetic_data import (
    ACCESSION_PREFIX,
    DEPARTMENTS,
    FAMILY_NAMES,
    FEMALE_NAMES,
    MALE_NAMES,
    OTHER_BIRTH_DEPARTMENTS,
    PROTOCOLS,
)
from krypton.dicom.identity import INS_ISSUER_NAMESPACE, ins_key
from krypton.dicom.synthetic import Population, Structure
from krypton.index.store import normalise_pn
from krypton.storage.keys import instance_key

__all__ = ["Config", "Region", "load_population", "object_studies"]

ROOT: Final = "1.2.826.0.1.3680043.8.498"  # pydicom's UID root, as krypton.dicom.synthetic
YEARS: Final = (2016, 2025)
# Policy windows are placed around the day of the load (the access rule reads the database
# clock), at offsets that derive from the seed.
NOW: Final = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
_EPOCH: Final = date(1970, 1, 1)
_SOP_CLASS: Final = {
    "CT": "1.2.840.10008.5.1.4.1.1.2",
    "MR": "1.2.840.10008.5.1.4.1.1.4",
    "CR": "1.2.840.10008.5.1.4.1.1.1",
    "DX": "1.2.840.10008.5.1.4.1.1.1.1",
    "MG": "1.2.840.10008.5.1.4.1.1.1.2",
    "US": "1.2.840.10008.5.1.4.1.1.6.1",
    "NM": "1.2.840.10008.5.1.4.1.1.20",
    "PT": "1.2.840.10008.5.1.4.1.1.128",
}
# Typical image size per modality: rows, columns, bytes per instance.
_IMAGE: Final = {
    "CT": (512, 512, 526_000),
    "MR": (256, 256, 132_000),
    "CR": (2500, 2000, 10_000_000),
    "DX": (3000, 2500, 15_000_000),
    "MG": (3328, 2560, 17_000_000),
    "US": (600, 800, 1_440_000),
    "NM": (256, 256, 132_000),
    "PT": (200, 200, 80_000),
}
_STUDY_COLUMNS: Final = (
    "study_uid", "structure", "patient_key", "patient_id", "issuer_of_patient_id",
    "patient_ins", "patient_name", "patient_name_search", "patient_birth_date", "patient_sex",
    "study_date", "study_time", "accession_number", "study_id", "study_description",
    "referring_physician_name", "referring_physician_search", "modalities", "num_series",
    "num_instances", "size_bytes", "timezone_offset", "specific_character_set",
)  # fmt: skip
_SERIES_COLUMNS: Final = (
    "series_uid", "study_uid", "structure", "modality", "series_number", "series_description",
    "series_date", "series_time", "body_part_examined", "institution_name", "station_name",
    "manufacturer", "num_instances", "size_bytes",
)  # fmt: skip
_INSTANCE_COLUMNS: Final = (
    "sop_instance_uid", "series_uid", "study_uid", "structure", "sop_class_uid",
    "transfer_syntax_uid", "instance_number", "rows", "columns", "bits_allocated",
    "photometric_interpretation", "content_date", "content_time", "object_key", "sha256", "size",
    "pixel_data_offset", "stored_at",
)  # fmt: skip
_BIG_TABLES: Final = ("studies", "series", "instances")
# The 70 common family names of krypton.dicom.synthetic cover 40 % of the patients; the long
# tail is made of French-sounding syllables (~6,000 names), so that a name prefix is about as
# selective as in a real region (the commonest French name, MARTIN, is ~0.4 % of people).
_COMMON_NAME_SHARE: Final = 0.4
_NAME_HEADS: Final = (
    "BEL", "BON", "CHA", "DE", "DU", "FAU", "GAR", "LA", "LE", "MAR", "MON", "PER", "RO",
    "SAU", "TES", "VIL", "BOU", "CAS", "ESC", "GRAN", "JOU", "LAB", "MES", "POU", "RIV",
    "SÉG", "TOU", "VAL", "BRÉ", "CHÂ",
)  # fmt: skip
_NAME_MIDDLES: Final = ("", "TI", "RI", "NE", "LO", "MA", "VER", "GUE", "SA", "BA", "CO")
_NAME_TAILS: Final = (
    "AUD", "ARD", "EAU", "ET", "IER", "OT", "ON", "AT", "ÈRE", "ÉE", "AC", "AN", "ENS", "IN",
    "OUX", "ERT", "AIS", "OUSE", "ÉRY",
)  # fmt: skip
LONG_TAIL: Final = tuple(
    f"{h}{m}{t}" for h in _NAME_HEADS for m in _NAME_MIDDLES for t in _NAME_TAILS
)


@dataclass(frozen=True)
class Config:
    """What the population is; stored with it, a rerun must match."""

    studies: int
    seed: int = 2025
    patients: int = 0  # 0: studies / 3.6
    structures: int = 116
    instances_per_series: int = 1
    chunk: int = 50_000
    professionals: int = 2000
    care: int = 200
    opposition_share: float = 0.01
    objects: int = 20
    object_instances: int = 3
    object_size: int = 256
    # Series and instance rows for one study in `detail_every` (1: all). At 18M studies full
    # detail needs ~85 GB of disk; study searches read only `index.studies` (its series and
    # instance counts and modalities are denormalised there), so a sparser detail keeps them
    # exact while series/instance searches and WADO use the studies that have it.
    detail_every: int = 1

    @property
    def n_patients(self) -> int:
        """Patients of the region."""
        return self.patients or max(100, round(self.studies / 3.6))

    @property
    def n_chunks(self) -> int:
        """Study chunks (the unit of work and of resumption)."""
        return -(-self.studies // self.chunk)


# --- hashing: one independent uniform stream per field, pure functions of the index ---------


def _salt(seed: int, name: str) -> np.uint64:
    digest = hashlib.blake2b(f"{seed}:{name}".encode(), digest_size=8).digest()
    return np.uint64(int.from_bytes(digest, "little"))


def _mix(index: np.ndarray, salt: np.uint64) -> np.ndarray:
    """splitmix64 of ``index + salt``: uint64, uniform, independent per salt."""
    with np.errstate(over="ignore"):
        z = index.astype(np.uint64) * np.uint64(0x9E3779B97F4A7C15) + salt
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return z ^ (z >> np.uint64(31))


def _days(values: np.ndarray) -> list[date]:
    """Days since 1970 → dates."""
    return [_EPOCH + timedelta(days=int(d)) for d in values]


@lru_cache(maxsize=200_000)
def _search(name: str) -> str | None:
    return normalise_pn(name)


class Region:
    """The population's structures, patients, studies and policy, by index."""

    def __init__(self, config: Config) -> None:
        """Derive the structures (the same as `krypton.dicom.synthetic.Population`'s)."""
        self.config = config
        self.seed = config.seed
        self.structures: tuple[Structure, ...] = Population(
            config.seed, 1, config.structures
        ).structures
        self._by_department: dict[str, list[int]] = {}
        for i, s in enumerate(self.structures):
            self._by_department.setdefault(s.department, []).append(i)
        self._departments = list(DEPARTMENTS)
        weights = np.array([DEPARTMENTS[d][0] for d in self._departments], dtype=np.float64)
        self._department_cdf = np.cumsum(weights) / weights.sum()
        protocol_weights = np.array([p.weight for p in PROTOCOLS], dtype=np.float64)
        self._protocol_cdf = np.cumsum(protocol_weights) / protocol_weights.sum()

    def _u(self, index: np.ndarray, name: str) -> np.ndarray:
        return (_mix(index, _salt(self.seed, name)) >> np.uint64(11)).astype(np.float64) * (
            2.0**-53
        )

    def _int(self, index: np.ndarray, name: str, low: int, high: int) -> np.ndarray:
        """Uniform integers in [low, high]."""
        span = np.uint64(high - low + 1)
        return (_mix(index, _salt(self.seed, name)) % span).astype(np.int64) + low

    # --- patients ------------------------------------------------------------------------

    def patients(self, index: np.ndarray) -> dict[str, Any]:
        """Name, sex, birth date, department and INS of the patients `index`."""
        female = self._u(index, "sex") < 0.5
        n = len(index)
        family_a = self._family(index, "family")
        family_b = self._family(index, "family2")
        compound = self._u(index, "compound") < 0.12
        given_a = self._int(index, "given", 0, 10**6)
        given_b = self._int(index, "given2", 0, 10**6)
        double = self._u(index, "double-given") < 0.2
        bucket = self._u(index, "age-bucket")
        age = np.where(
            bucket < 0.1,
            self._int(index, "age0", 0, 17),
            np.where(
                bucket < 0.4, self._int(index, "age1", 18, 49), self._int(index, "age2", 50, 95)
            ),
        )
        years = YEARS[1] - age
        birth = (years - 1970).astype("datetime64[Y]").astype("datetime64[D]").astype(
            np.int64
        ) + self._int(index, "birth-day", 0, 364)
        department = np.searchsorted(self._department_cdf, self._u(index, "department"))
        department = np.minimum(department, len(self._departments) - 1)
        has_ins = self._u(index, "has-ins") < 0.85
        local_birth = self._u(index, "born-local") < 0.7
        born_other = self._int(index, "born-in", 0, len(OTHER_BIRTH_DEPARTMENTS) - 1)
        commune = self._int(index, "commune", 1, 999)
        order = self._int(index, "order", 1, 999)
        births = _days(birth)
        names: list[str] = []
        ins_list: list[str | None] = []
        for k in range(n):
            given_names = FEMALE_NAMES if female[k] else MALE_NAMES
            family = family_a[k]
            if compound[k] and family_b[k] != family:
                family = f"{family}-{family_b[k]}"
            given = given_names[given_a[k] % len(given_names)]
            if double[k]:
                second = given_names[given_b[k] % len(given_names)]
                if second != given:
                    given = f"{given} {second}"
            names.append(f"{family}^{given}")
            if has_ins[k]:
                b = births[k]
                born_in = (
                    self._departments[department[k]]
                    if local_birth[k]
                    else OTHER_BIRTH_DEPARTMENTS[born_other[k]]
                )
                nir = (
                    f"{2 if female[k] else 1}{b.year % 100:02d}{b.month:02d}{born_in}"
                    f"{commune[k]:03d}{order[k]:03d}"
                )
                ins_list.append(nir + ins_key(nir))
            else:
                ins_list.append(None)
        return {
            "name": names,
            "sex": ["F" if f else "M" for f in female],
            "female": female,
            "birth": birth,
            "birth_date": births,
            "age": age,
            "department": department,
            "ins": ins_list,
        }

    def _family(self, index: np.ndarray, name: str) -> list[str]:
        common = self._u(index, f"{name}-common") < _COMMON_NAME_SHARE
        pick = self._int(index, name, 0, 10**9).tolist()
        return [
            FAMILY_NAMES[p % len(FAMILY_NAMES)] if c else LONG_TAIL[p % len(LONG_TAIL)]
            for c, p in zip(common.tolist(), pick, strict=True)
        ]

    def ipp(self, patient: int, structure: int) -> str:
        """The patient's local identifier at a structure (8 or 10 digits)."""
        return self.ipps(np.array([patient]), np.array([structure]))[0]

    def ipps(self, patient: np.ndarray, structure: np.ndarray) -> list[str]:
        """`ipp` of each (patient, structure) pair."""
        values = _mix(patient * 131 + structure, _salt(self.seed, "ipp")).tolist()
        out = []
        for value, s in zip(values, structure.tolist(), strict=True):
            digits = 8 if int(self.structures[s].finess[-1]) % 2 else 10
            out.append(str(10 ** (digits - 1) + value % (9 * 10 ** (digits - 1))))
        return out

    # --- studies -------------------------------------------------------------------------

    def study_uid(self, index: int) -> str:
        """Study Instance UID of study `index`."""
        return f"{ROOT}.{self.seed}.{index + 1}"

    def _assign(self, index: np.ndarray) -> tuple[np.ndarray, dict[str, Any], np.ndarray]:
        """Patient (index and attributes) and structure (index) of the studies `index`."""
        n_patients = self.config.n_patients
        frequent = max(1, n_patients // 10)
        patient = np.where(
            self._u(index, "follow-up") < 0.33,
            self._int(index, "patient-f", 0, frequent - 1),
            self._int(index, "patient", 0, n_patients - 1),
        )
        p = self.patients(patient)
        local = self._u(index, "local") < 0.85
        pick = self._int(index, "structure", 0, 10**6)
        structure = np.empty(len(index), dtype=np.int64)
        for k in range(len(index)):
            choices = self._by_department.get(self._departments[p["department"][k]])
            if local[k] and choices:
                structure[k] = choices[pick[k] % len(choices)]
            else:
                structure[k] = pick[k] % len(self.structures)
        return patient, p, structure

    def patient_keys(self, studies: np.ndarray) -> list[str]:
        """The platform patient key of each study of `studies` (any indices)."""
        patient, p, structure = self._assign(studies)
        return [
            f"INS:{ins}" if ins else
            f"IPP:{self.structures[s].finess}:{ipp}"
            for ins, ipp, s in zip(
                p["ins"], self.ipps(patient, structure), structure.tolist(), strict=True
            )
        ]  # fmt: skip

    def studies(self, start: int, count: int) -> dict[str, Any]:
        """Columns of studies ``start .. start + count - 1`` and of their series."""
        index = np.arange(start, start + count, dtype=np.int64)
        patient, p, structure = self._assign(index)
        protocol = np.minimum(
            np.searchsorted(self._protocol_cdf, self._u(index, "protocol")), len(PROTOCOLS) - 1
        )
        # Mammography only for women of 40 and over (as Population does).
        mg = np.array([pr.modality == "MG" for pr in PROTOCOLS])[protocol]
        protocol = np.where(mg & (~p["female"] | (p["age"] < 40)), 0, protocol)
        first = np.maximum(
            (np.datetime64(f"{YEARS[0]}-01-01") - np.datetime64("1970-01-01")).astype(np.int64),
            p["birth"] + 30,
        )
        last = (np.datetime64(f"{YEARS[1]}-12-31") - np.datetime64("1970-01-01")).astype(np.int64)
        span = np.maximum(last - first, 0) + 1
        day = first + (_mix(index, _salt(self.seed, "date")) % span.astype(np.uint64)).astype(
            np.int64
        )
        day = np.where(((day + 3) % 7 == 6) & (day < last), day + 1, day)  # Sundays: few exams
        minutes = self._int(index, "minutes", 7 * 60 + 30, 19 * 60 + 30)
        seconds = self._int(index, "seconds", 0, 59)
        accession = self._int(index, "accession", 0, 10**8 - 1)
        study_id = self._int(index, "study-id", 0, 10**6 - 1)
        description = self._int(index, "description", 0, 10**6)
        physician = self._int(index, "physician", 0, 39)
        series_pick = self._int(index, "series-count", 0, 10**6)
        station = self._int(index, "station", 1, 3)
        dates = _days(day)
        ipps = self.ipps(patient, structure)
        # One hash per possible series (at most 8 per study) for the instance counts.
        series_hash = _mix(
            index[:, None] * 16 + np.arange(1, 9, dtype=np.int64)[None, :],
            _salt(self.seed, "instances"),
        ).tolist()
        out: dict[str, list[Any]] = {c: [] for c in _STUDY_COLUMNS}
        out["patient"] = patient.tolist()
        out["structure_index"] = structure.tolist()
        out["series"] = []
        for k in range(count):
            i = start + k
            s = self.structures[structure[k]]
            pr = PROTOCOLS[protocol[k]]
            study_uid = self.study_uid(i)
            ins = p["ins"][k]
            ipp = ipps[k]
            ins_in_id = ins is not None and s.identity_style == "ins-in-patient-id"
            text, body_part, series_names = pr.descriptions[description[k] % len(pr.descriptions)]
            d = dates[k]
            m = minutes[k]
            study_time = f"{m // 60:02d}:{m % 60:02d}:{seconds[k]:02d}"
            referring = self._physician(s.finess, int(physician[k]))
            low, high = pr.series_count
            n_series = low + series_pick[k] % (high - low + 1)
            series_rows = []
            modalities = set()
            total_instances = total_bytes = 0
            for number in range(1, n_series + 1):
                name = series_names[(number - 1) % len(series_names)]
                modality = "CT" if pr.modality == "PT" and "TDM" in name else pr.modality
                lo, hi = pr.instances_per_series
                h = series_hash[k][number - 1]
                instances = lo + h % (hi - lo + 1)
                if name == "Topogramme":
                    instances = 1 + h % 2
                size = instances * _IMAGE[modality][2]
                modalities.add(modality)
                total_instances += instances
                total_bytes += size
                series_rows.append((number, modality, name, instances, size))
            out["series"].append(
                (d, study_time, body_part, s, pr.modality, station[k], series_rows)
            )
            out["study_uid"].append(study_uid)
            out["structure"].append(s.finess)
            out["patient_key"].append(f"INS:{ins}" if ins else f"IPP:{s.finess}:{ipp}")
            out["patient_id"].append(ins if ins_in_id else ipp)
            out["issuer_of_patient_id"].append(
                INS_ISSUER_NAMESPACE if ins_in_id else f"FINESS-{s.finess}"
            )
            out["patient_ins"].append(ins)
            out["patient_name"].append(p["name"][k])
            out["patient_name_search"].append(_search(p["name"][k]))
            out["patient_birth_date"].append(p["birth_date"][k])
            out["patient_sex"].append(p["sex"][k])
            out["study_date"].append(d)
            out["study_time"].append(study_time)
            prefix = ACCESSION_PREFIX.get(pr.modality, "RX")
            out["accession_number"].append(f"{prefix}{d.year % 100:02d}{accession[k]:08d}")
            out["study_id"].append(f"{study_id[k]:06d}")
            out["study_description"].append(text)
            out["referring_physician_name"].append(referring)
            out["referring_physician_search"].append(_search(referring))
            out["modalities"].append(sorted(modalities))
            out["num_series"].append(n_series)
            out["num_instances"].append(total_instances)
            out["size_bytes"].append(total_bytes)
            out["timezone_offset"].append("+0200" if 4 <= d.month <= 10 else "+0100")
            out["specific_character_set"].append(s.character_set)
        return out

    @lru_cache(maxsize=8192)  # noqa: B019 - one Region per process, bounded
    def _physician(self, finess: str, number: int) -> str:
        h = int(_mix(np.array([number]), _salt(self.seed, f"physician:{finess}"))[0])
        given = (MALE_NAMES + FEMALE_NAMES)[h % (len(MALE_NAMES) + len(FEMALE_NAMES))]
        return f"{FAMILY_NAMES[(h >> 20) % len(FAMILY_NAMES)]}^{given}^^Dr"

    # --- policy --------------------------------------------------------------------------

    @cached_property
    def professionals(self) -> list[tuple[str, str]]:
        """(IDNPS subject, member structure FINESS) of every professional."""
        out = []
        for k in range(self.config.professionals):
            rpps = f"10{(k * 7919 + self.seed) % 10**9:09d}"
            out.append((f"8{rpps}", self.structures[k % len(self.structures)].finess))
        return out

    def grants(self) -> list[dict[str, Any]]:
        """Care relationships and redeemed share codes, as projected grants (and their source)."""
        config = self.config
        n = config.professionals * config.care
        slot = np.arange(n, dtype=np.int64)
        study = self._int(slot, "care-study", 0, config.studies - 1)
        starts = self._int(slot, "care-start", 0, 365)
        length = self._int(slot, "care-length", 30, 730)
        state = self._u(slot, "care-state")
        grants = []
        keys = self.patient_keys(study)
        for k in range(n):
            start = NOW - timedelta(days=int(starts[k]))
            end = start + timedelta(days=int(length[k]))
            ended = state[k] < 0.05  # ended by the structure
            grants.append({
                "id": _uuid(self.seed, "care", k),
                "study": int(study[k]),
                "basis": "care",
                "actor_sub": self.professionals[k // config.care][0],
                "patient_key": keys[k],
                "study_uid": None,
                "valid_from": start,
                "valid_until": min(end, NOW - timedelta(days=1)) if ended else end,
                "active": not ended,
            })  # fmt: skip
        codes = config.professionals // 10
        slot = np.arange(codes, dtype=np.int64)
        study = self._int(slot, "code-study", 0, config.studies - 1)
        keys = self.patient_keys(study)
        for k in range(codes):
            start = NOW - timedelta(days=int(study[k] % 30))
            grants.append({
                "id": _uuid(self.seed, "code", k),
                "study": int(study[k]),
                "basis": "share_code",
                "actor_sub": self.professionals[(k * 10) % config.professionals][0],
                "patient_key": keys[k],
                "study_uid": self.study_uid(int(study[k])) if k % 2 else None,
                "valid_from": start,
                "valid_until": start + timedelta(days=90),
                "active": True,
            })  # fmt: skip
        return grants

    def opposed(self, start: int, count: int) -> list[str]:
        """Patient keys (INS) with an opposition among patients ``start .. start+count-1``."""
        index = np.arange(start, start + count, dtype=np.int64)
        chosen = index[self._u(index, "opposition") < self.config.opposition_share]
        if not len(chosen):
            return []
        return [f"INS:{ins}" for ins in self.patients(chosen)["ins"] if ins]


def _uuid(seed: int, kind: str, k: int) -> str:
    digest = hashlib.md5(f"{seed}:{kind}:{k}".encode(), usedforsecurity=False).hexdigest()
    return f"{digest[:8]}-{digest[8:12]}-4{digest[13:16]}-8{digest[17:20]}-{digest[20:32]}"


# --- COPY text ------------------------------------------------------------------------------


def _text(value: Any) -> str:
    if value is None:
        return "\\N"
    if isinstance(value, list):
        return "{" + ",".join(value) + "}"
    return str(value)  # generated values never hold tab, newline or backslash


def chunk_copy_data(config: Config, chunk: int) -> tuple[int, dict[str, bytes], dict[str, int]]:
    """Generate one chunk as text COPY data per table (runs in a worker process)."""
    region = _region(config)
    start = chunk * config.chunk
    count = min(config.chunk, config.studies - start)
    cols = region.studies(start, count)
    studies: list[str] = []
    series: list[str] = []
    instances: list[str] = []
    per_series = config.instances_per_series
    for k in range(count):
        if start + k < config.objects:
            continue  # rendered as real objects by the objects step
        studies.append("\t".join(_text(cols[c][k]) for c in _STUDY_COLUMNS))
        if (start + k) % config.detail_every:
            continue
        study_uid = cols["study_uid"][k]
        day, study_time, body_part, s, _, station, rows = cols["series"][k]
        for number, modality, name, count_i, size in rows:
            series_uid = f"{study_uid}.{number}"
            series.append(
                f"{series_uid}\t{study_uid}\t{s.finess}\t{modality}\t{number}\t{name}\t{day}\t"
                f"{study_time}\t{body_part}\t{s.name}\t{modality}{station:02d}{s.finess[-4:]}\t"
                f"{s.manufacturer}\t{count_i}\t{size}"
            )
            rows_px, cols_px, per_instance = _IMAGE[modality]
            for n in range(1, min(per_series, count_i) + 1):
                sop = f"{series_uid}.{n}"
                digest = hashlib.blake2b(sop.encode(), digest_size=32).hexdigest()
                instances.append(
                    f"{sop}\t{series_uid}\t{study_uid}\t{s.finess}\t{_SOP_CLASS[modality]}\t"
                    f"1.2.840.10008.1.2.1\t{n}\t{rows_px}\t{cols_px}\t16\tMONOCHROME2\t{day}\t"
                    f"{study_time}\t{instance_key(study_uid, series_uid, sop)}\t{digest}\t"
                    f"{per_instance}\t1500\t{day} {study_time}+00"
                )
    data = {
        "studies": ("\n".join(studies) + "\n").encode() if studies else b"",
        "series": ("\n".join(series) + "\n").encode() if series else b"",
        "instances": ("\n".join(instances) + "\n").encode() if instances else b"",
    }
    return (
        chunk,
        data,
        {"studies": len(studies), "series": len(series), "instances": len(instances)},
    )


_REGIONS: dict[Config, Region] = {}


def _region(config: Config) -> Region:
    if config not in _REGIONS:
        _REGIONS[config] = Region(config)
    return _REGIONS[config]


# --- database -------------------------------------------------------------------------------

_STATE_SQL: Final = """
CREATE SCHEMA IF NOT EXISTS population;
CREATE TABLE IF NOT EXISTS population.meta (key text PRIMARY KEY, value jsonb NOT NULL);
CREATE TABLE IF NOT EXISTS population.chunks (
    chunk integer PRIMARY KEY, studies integer NOT NULL, series integer NOT NULL,
    instances integer NOT NULL, seconds real NOT NULL, loaded_at timestamptz NOT NULL DEFAULT now()
);
"""


async def migrate(conn: asyncpg.Connection) -> None:
    """Create the index and authz schemas as the services would (their own migrations)."""
    from krypton.authorize.schema import migrate as migrate_authz
    from krypton.index.schema import migrate as migrate_index

    await migrate_index(conn)
    await migrate_authz(conn)
    await conn.execute(_STATE_SQL)


async def _meta(conn: asyncpg.Connection, key: str) -> Any:
    value = await conn.fetchval("SELECT value FROM population.meta WHERE key = $1", key)
    return None if value is None else json.loads(value)


async def _set_meta(conn: asyncpg.Connection, key: str, value: Any) -> None:
    await conn.execute(
        "INSERT INTO population.meta VALUES ($1, $2::jsonb)"
        " ON CONFLICT (key) DO UPDATE SET value = excluded.value",
        key,
        json.dumps(value),
    )


async def drop_secondary_indexes(conn: asyncpg.Connection) -> list[str]:
    """Drop the big tables' non-constraint indexes; return their definitions (also saved)."""
    rows = await conn.fetch(
        """SELECT i.indexrelid::regclass::text AS name, pg_get_indexdef(i.indexrelid) AS def
             FROM pg_index i JOIN pg_class c ON c.oid = i.indrelid
             JOIN pg_namespace n ON n.oid = c.relnamespace
            WHERE n.nspname = 'index' AND c.relname = ANY($1::text[])
              AND NOT EXISTS (SELECT 1 FROM pg_constraint k WHERE k.conindid = i.indexrelid)""",
        list(_BIG_TABLES),
    )
    saved = (await _meta(conn, "dropped_indexes")) or []
    defs = saved + [r["def"] for r in rows]
    await _set_meta(conn, "dropped_indexes", defs)
    for r in rows:
        await conn.execute(f"DROP INDEX {r['name']}")
    return defs


async def rebuild_indexes(conn: asyncpg.Connection) -> dict[str, float]:
    """Recreate what `drop_secondary_indexes` dropped; seconds per index."""
    defs = (await _meta(conn, "dropped_indexes")) or []
    timings = {}
    await conn.execute("SET maintenance_work_mem = '512MB'")
    for definition in defs:
        t = time.perf_counter()
        await conn.execute(definition.replace("CREATE INDEX", "CREATE INDEX IF NOT EXISTS", 1))
        timings[definition.split(" ON ")[0].split()[-1]] = round(time.perf_counter() - t, 2)
        log(f"  index {definition[:90]}… {timings[definition.split(' ON ')[0].split()[-1]]} s")
    await conn.execute("DELETE FROM population.meta WHERE key = 'dropped_indexes'")
    return timings


async def _copy_chunk(
    conn: asyncpg.Connection, chunk: int, data: dict[str, bytes], counts: dict[str, int]
) -> None:
    columns = {"studies": _STUDY_COLUMNS, "series": _SERIES_COLUMNS, "instances": _INSTANCE_COLUMNS}
    started = time.perf_counter()
    async with conn.transaction():
        for table in _BIG_TABLES:
            if data[table]:
                await conn.copy_to_table(
                    table,
                    schema_name="index",
                    source=io.BytesIO(data[table]),
                    columns=list(columns[table]),
                    format="text",
                )
        await conn.execute(
            "INSERT INTO population.chunks (chunk, studies, series, instances, seconds)"
            " VALUES ($1, $2, $3, $4, $5)",
            chunk,
            counts["studies"],
            counts["series"],
            counts["instances"],
            time.perf_counter() - started,  # COPY seconds of the chunk
        )


async def load_studies(conn: asyncpg.Connection, config: Config, workers: int) -> dict[str, Any]:
    """COPY every chunk not loaded yet; generation runs in `workers` processes."""
    done = {r["chunk"] for r in await conn.fetch("SELECT chunk FROM population.chunks")}
    todo = [c for c in range(config.n_chunks) if c not in done]
    totals = {"studies": 0, "series": 0, "instances": 0}
    copy_s = 0.0
    started = time.perf_counter()
    if not todo:
        return {"chunks_loaded": 0, "already_loaded": len(done)}
    loop = asyncio.get_running_loop()
    with ProcessPoolExecutor(max_workers=max(1, workers)) as executor:
        pending: list[asyncio.Future[Any]] = []
        queue = iter(todo)
        for chunk in queue:
            pending.append(loop.run_in_executor(executor, chunk_copy_data, config, chunk))
            if len(pending) >= workers + 1:
                break
        while pending:
            finished, _ = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
            for future in finished:
                pending.remove(future)
                chunk, data, counts = future.result()
                t = time.perf_counter()
                await _copy_chunk(conn, chunk, data, counts)
                copy_s += time.perf_counter() - t
                for key in totals:
                    totals[key] += counts[key]
                next_chunk = next(queue, None)
                if next_chunk is not None:
                    pending.append(
                        loop.run_in_executor(executor, chunk_copy_data, config, next_chunk)
                    )
                wall = time.perf_counter() - started
                rows = sum(totals.values())
                log(
                    f"  chunk {chunk}: {totals['studies']} studies this run, "
                    f"{rows / wall:,.0f} rows/s, {totals['studies'] / wall:,.0f} studies/s "
                    f"({len(done) + 1}/{config.n_chunks} chunks)"
                )
                done.add(chunk)
    wall = time.perf_counter() - started
    rows = sum(totals.values())
    return {
        "chunks_loaded": len(todo),
        **totals,
        "wall_s": round(wall, 2),
        "copy_s": round(copy_s, 2),
        "rows_per_s": round(rows / wall),
        "studies_per_s": round(totals["studies"] / wall),
    }


async def load_policy(conn: asyncpg.Connection, region: Region) -> dict[str, Any]:
    """Structures, professionals, grants and oppositions (authz tables and index projection)."""
    if await _meta(conn, "policy_loaded"):
        return {"already_loaded": True}
    started = time.perf_counter()
    config = region.config
    grants = region.grants()
    opposed: list[str] = []
    for start in range(0, config.n_patients, 200_000):
        opposed.extend(region.opposed(start, min(200_000, config.n_patients - start)))
    opposed = sorted(set(opposed))
    async with conn.transaction():
        await conn.copy_records_to_table(
            "structures",
            schema_name="authz",
            records=[(s.finess, s.name) for s in region.structures],
            columns=["finess", "name"],
        )
        await conn.copy_records_to_table(
            "professionals",
            schema_name="authz",
            records=[
                (sub, sub[1:], f"Professionnel {k}", "10")
                for k, (sub, _) in enumerate(region.professionals)
            ],
            columns=["sub", "rpps", "name", "profession"],
        )
        await conn.copy_records_to_table(
            "memberships",
            schema_name="authz",
            records=region.professionals,
            columns=["professional", "structure"],
        )
        care = [g for g in grants if g["basis"] == "care"]
        await conn.copy_records_to_table(
            "care_relationships",
            schema_name="authz",
            records=[
                (
                    g["id"],
                    g["actor_sub"],
                    g["patient_key"],
                    "declared_by_structure",
                    g["valid_from"],
                    g["valid_until"] if g["active"] else g["valid_from"] + timedelta(days=730),
                    "bench-population",
                    None if g["active"] else g["valid_until"],
                )
                for g in care
            ],
            columns=[
                "id",
                "actor_sub",
                "patient_key",
                "basis",
                "starts_at",
                "ends_at",
                "declared_by",
                "ended_at",
            ],
        )
        codes = [g for g in grants if g["basis"] == "share_code"]
        await conn.copy_records_to_table(
            "share_codes",
            schema_name="authz",
            records=[
                (
                    g["id"],
                    g["id"][:8].upper(),
                    hashlib.sha256(g["id"].encode()).digest(),
                    g["patient_key"],
                    "study" if g["study_uid"] else "patient",
                    g["study_uid"],
                    g["valid_from"],
                    g["valid_until"],
                    "bench-population",
                    "patient",
                    g["actor_sub"],
                    g["valid_from"],
                )
                for g in codes
            ],
            columns=[
                "id",
                "lookup",
                "secret_hash",
                "patient_key",
                "scope",
                "study_uid",
                "valid_from",
                "valid_until",
                "created_by",
                "created_by_role",
                "bound_to",
                "bound_at",
            ],
        )
        await conn.copy_records_to_table(
            "oppositions",
            schema_name="authz",
            records=[
                (_uuid(config.seed, "opp", k), key, NOW - timedelta(days=k % 700), "patient")
                for k, key in enumerate(opposed)
            ],
            columns=["id", "patient_key", "set_at", "set_by"],
        )
        prefix = {"care": "care", "share_code": "code"}
        await conn.copy_records_to_table(
            "access_grants",
            schema_name="index",
            records=[
                (
                    f"{prefix[g['basis']]}:{g['id']}",
                    g["actor_sub"],
                    g["patient_key"],
                    g["study_uid"],
                    g["valid_from"],
                    g["valid_until"],
                    g["basis"],
                    g["active"],
                    1,
                )
                for g in grants
            ],
            columns=[
                "grant_id",
                "actor_sub",
                "patient_key",
                "study_uid",
                "valid_from",
                "valid_until",
                "basis",
                "active",
                "version",
            ],
        )
        await conn.copy_records_to_table(
            "oppositions",
            schema_name="index",
            records=[(key, _uuid(config.seed, "opp", k), True, 1) for k, key in enumerate(opposed)],
            columns=["patient_key", "opposition_id", "active", "version"],
        )
        await _set_meta(conn, "policy_loaded", True)
    return {
        "grants": len(grants),
        "oppositions": len(opposed),
        "professionals": len(region.professionals),
        "seconds": round(time.perf_counter() - started, 2),
    }


# --- objects --------------------------------------------------------------------------------


def object_studies(config: Config) -> list[int]:
    """Indices of the studies that have real DICOM objects (the first ``config.objects``)."""
    return list(range(min(config.objects, config.studies)))


def synthetic_study(region: Region, index: int, max_instances: int) -> Any:
    """Study `index` as a `krypton.dicom.synthetic.SyntheticStudy` (for `render_instances`)."""
    from krypton.dicom.synthetic import SyntheticPatient, SyntheticSeries, SyntheticStudy

    cols = region.studies(index, 1)
    p = region.patients(np.array([cols["patient"][0]]))
    family, given = cols["patient_name"][0].split("^")
    day, study_time, body_part, structure, _, station, rows = cols["series"][0]
    study_uid = cols["study_uid"][0]
    patient = SyntheticPatient(
        index=cols["patient"][0],
        family_name=family,
        given_name=given,
        sex=p["sex"][0],
        birth_date=p["birth_date"][0],
        department=structure.department,
        ins=p["ins"][0],
    )
    ipp = cols["patient_id"][0] if not cols["patient_key"][0].startswith("INS:") else None
    return SyntheticStudy(
        index=index,
        study_uid=study_uid,
        patient=patient,
        structure=structure,
        ipp=ipp or region.ipp(cols["patient"][0], cols["structure_index"][0]),
        study_date=day,
        study_time=study_time.replace(":", ""),
        timezone_offset=cols["timezone_offset"][0],
        accession_number=cols["accession_number"][0],
        study_id=cols["study_id"][0],
        description=cols["study_description"][0],
        referring_physician=cols["referring_physician_name"][0],
        station_name=f"{rows[0][1]}{station:02d}{structure.finess[-4:]}",
        frame_of_reference_uid=f"{study_uid}.0",
        series=tuple(
            SyntheticSeries(
                series_uid=f"{study_uid}.{number}",
                number=number,
                modality=modality,
                sop_class_uid=_SOP_CLASS[modality],
                description=name,
                body_part=body_part,
                instance_count=max(1, min(count, max_instances)),
            )
            for number, modality, name, count, _ in rows
        ),
    )


async def load_objects(dsn: str, objects_root: Path, region: Region) -> dict[str, Any]:
    """Render the object studies and store + index them with the platform's own write path."""
    from krypton.contracts.ingest.v1 import InstanceStored
    from krypton.core.clock import utc_now_iso
    from krypton.dicom.extract import extract
    from krypton.dicom.header import read_header
    from krypton.dicom.synthetic import render_instances
    from krypton.index.store import upsert_batch
    from krypton.storage.fs import FileSystemStore

    config = region.config
    pool = await asyncpg.create_pool(dsn, min_size=1, max_size=1)
    try:
        if await pool.fetchval("SELECT value FROM population.meta WHERE key = 'objects_loaded'"):
            return {"already_loaded": True}
        started = time.perf_counter()
        store = FileSystemStore(objects_root)
        events = []
        for index in object_studies(config):
            study = synthetic_study(region, index, config.object_instances)
            size = config.object_size
            for data in render_instances(study, rows=size, cols=size):
                header = read_header(data)
                x = extract(header, study.structure.finess)
                key = instance_key(
                    x.study.study_uid, x.series.series_uid, x.instance.sop_instance_uid
                )
                await store.put_bytes(key, data)
                events.append(
                    InstanceStored(
                        structure=study.structure.finess,
                        object_key=key,
                        sha256=hashlib.sha256(data).hexdigest(),
                        size=len(data),
                        stored_at=utc_now_iso(),
                        patient=x.patient,
                        study=x.study,
                        series=x.series,
                        instance=x.instance,
                        pixel_data_offset=header.pixel_data_offset,
                    )
                )
        await upsert_batch(pool, events)
        await store.close()
        await pool.execute(
            "INSERT INTO population.meta VALUES ('objects_loaded', 'true'::jsonb)"
            " ON CONFLICT (key) DO NOTHING"
        )
        return {
            "studies": len(object_studies(config)),
            "instances": len(events),
            "seconds": round(time.perf_counter() - started, 2),
        }
    finally:
        await pool.close()


# --- entry points ---------------------------------------------------------------------------


def open_database(state_dir: Path, dsn: str | None) -> str:
    """The DSN to load into: `dsn`, or the embedded PostgreSQL of `state_dir` (started here)."""
    if dsn:
        return dsn
    from krypton.testing.servers import start_postgres

    return start_postgres(state_dir.resolve() / "pg")


async def load_population(
    dsn: str, state_dir: Path, config: Config, *, workers: int = 2, keep_indexes: bool = False
) -> dict[str, Any]:
    """Load (or finish loading) the population; return its figures."""
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute("SET synchronous_commit = off")
        await migrate(conn)
        known = await _meta(conn, "config")
        if known is not None:
            known.setdefault("detail_every", 1)  # stored before the field existed
        if known is None:
            await _set_meta(conn, "config", asdict(config))
        elif known != asdict(config):
            msg = f"{state_dir} holds another population ({known}); use another --state-dir"
            raise SystemExit(msg)
        region = Region(config)
        figures: dict[str, Any] = {"config": asdict(config)}
        loaded = await conn.fetchval("SELECT count(*) FROM population.chunks")
        if loaded < config.n_chunks and not keep_indexes:
            figures["dropped_indexes"] = len(await drop_secondary_indexes(conn))
        log(f"loading {config.studies} studies in {config.n_chunks} chunks ({loaded} done)")
        figures["studies"] = await load_studies(conn, config, workers)
        log(f"  {figures['studies']}")
        if await _meta(conn, "dropped_indexes"):
            t = time.perf_counter()
            figures["index_build_s"] = await rebuild_indexes(conn)
            figures["index_build_total_s"] = round(time.perf_counter() - t, 2)
        log("policy: structures, professionals, grants, oppositions")
        figures["policy"] = await load_policy(conn, region)
        log(f"  {figures['policy']}")
        if not await _meta(conn, "analysed"):
            t = time.perf_counter()
            await conn.execute("VACUUM (ANALYZE) index.studies, index.series, index.instances")
            await conn.execute("ANALYZE index.access_grants, index.oppositions")
            await _set_meta(conn, "analysed", True)
            figures["vacuum_analyze_s"] = round(time.perf_counter() - t, 2)
        figures["tables"] = {
            r["relname"]: {"rows": r["n_live_tup"], "mib": round(r["bytes"] / 1024**2, 1)}
            for r in await conn.fetch(
                """SELECT relname, n_live_tup, pg_total_relation_size(relid) AS bytes
                     FROM pg_stat_user_tables WHERE schemaname IN ('index', 'authz')
                    ORDER BY relname"""
            )
        }
    finally:
        await conn.close()
    log(f"objects: {config.objects} studies rendered and ingested")
    figures["objects"] = await load_objects(dsn, state_dir / "objects", region)
    return figures


def config_of(args: argparse.Namespace) -> Config:
    """The `Config` named by the command line."""
    return Config(
        studies=args.studies,
        seed=args.seed,
        patients=args.patients,
        instances_per_series=args.instances_per_series,
        chunk=args.chunk,
        professionals=args.professionals,
        care=args.care,
        opposition_share=args.opposition_share,
        objects=args.objects,
        detail_every=args.detail_every,
    )


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The population's flags (shared with the benchmarks that load one)."""
    parser.add_argument("--studies", type=int, default=1_000_000)
    parser.add_argument("--seed", type=int, default=2025)
    parser.add_argument("--patients", type=int, default=0, help="0: studies / 3.6")
    parser.add_argument("--instances-per-series", type=int, default=1)
    parser.add_argument("--chunk", type=int, default=50_000, help="studies per COPY transaction")
    parser.add_argument("--professionals", type=int, default=2000)
    parser.add_argument("--care", type=int, default=200, help="care relationships per professional")
    parser.add_argument("--opposition-share", type=float, default=0.01)
    parser.add_argument(
        "--detail-every",
        type=int,
        default=1,
        help="series/instance rows for one study in N (study searches stay exact; saves disk)",
    )
    parser.add_argument("--objects", type=int, default=20, help="studies with real DICOM files")
    parser.add_argument("--workers", type=int, default=2, help="generator processes")
    parser.add_argument("--keep-indexes", action="store_true", help="COPY with indexes in place")
    parser.add_argument("--state-dir", type=Path, help="default .state/bench-<studies>")
    parser.add_argument(
        "--dsn", help="an existing database instead of the embedded one (objects: --state-dir)"
    )


def state_dir_of(args: argparse.Namespace) -> Path:
    """Where the population's embedded database and objects live."""
    return args.state_dir or Path(".state") / f"bench-{args.studies}"


async def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Load the population named by the command line and print its figures."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    add_arguments(parser)
    args = parser.parse_args(argv)
    state_dir = state_dir_of(args)
    state_dir.mkdir(parents=True, exist_ok=True)
    dsn = open_database(state_dir, args.dsn)
    figures = await load_population(
        dsn, state_dir, config_of(args), workers=args.workers, keep_indexes=args.keep_indexes
    )
    print(json.dumps(figures, indent=2, default=str))
    with contextlib.suppress(OSError):
        (state_dir / "population.json").write_text(json.dumps(figures, indent=2, default=str))
    return figures


if __name__ == "__main__":
    asyncio.run(main())

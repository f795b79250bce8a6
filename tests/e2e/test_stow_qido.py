"""End to end through HTTP and real processes: STOW-RS every pydicom test file, find it with QIDO."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import httpx
import pydicom
import pytest
from pydicom.uid import UID

from krypton.dicom.testfiles import pydicom_test_files

from .conftest import Running
from .helpers import failure_reasons, qido, stow, value, wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.nats, pytest.mark.postgres]

STRUCTURE = "330781196"
CANNOT_UNDERSTAND = 0xC000
DOES_NOT_MATCH = 0xA900
DUPLICATE = 0x0111
STUDY_MISMATCH = 0xA901  # documented in krypton.dicom.errors
REQUIRED_UIDS = ("SOPClassUID", "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID")


@dataclass
class Expected:
    path: Path
    ok: bool
    code: int | None = None
    dataset: pydicom.Dataset | None = None


def _valid_uid(value: object) -> bool:
    text = str(value or "")
    return 0 < len(text) <= 64 and all(p.isdigit() for p in text.split("."))


def expectations(files: list[Path]) -> list[Expected]:
    """An independent model of what ingest must decide, file after file, in order."""
    seen_sop: dict[str, str] = {}
    study_patient: dict[str, str] = {}
    result: list[Expected] = []
    for path in files:
        raw = path.read_bytes()
        # pydicom reads some truncated files without complaint; its corpus names them so.
        if len(raw) < 132 or raw[128:132] != b"DICM" or "truncated" in path.name:
            result.append(Expected(path, False, CANNOT_UNDERSTAND))
            continue
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True)
            ts = UID(ds.file_meta.TransferSyntaxUID)
            if not ts.is_transfer_syntax:
                msg = "unknown transfer syntax"
                raise ValueError(msg)
            uids = {k: str(ds.get(k, "") or "") for k in REQUIRED_UIDS}
            patient_id = str(ds.get("PatientID", "") or "").strip()
        except Exception:
            result.append(Expected(path, False, None))  # unreadable: any failure code will do
            continue
        meta_sop = str(ds.file_meta.get("MediaStorageSOPInstanceUID", "") or "")
        if (
            not all(_valid_uid(v) for v in uids.values())
            or not patient_id
            or (meta_sop and meta_sop != uids["SOPInstanceUID"])
        ):
            result.append(Expected(path, False, DOES_NOT_MATCH))
            continue
        sha = hashlib.sha256(raw).hexdigest()
        sop, study = uids["SOPInstanceUID"], uids["StudyInstanceUID"]
        # Ingest checks the study's patient first, then the SOP Instance UID's content.
        if study in study_patient and study_patient[study] != patient_id:
            result.append(Expected(path, False, DOES_NOT_MATCH))
            continue
        if sop in seen_sop and seen_sop[sop] != sha:
            result.append(Expected(path, False, DUPLICATE))
            continue
        study_patient.setdefault(study, patient_id)
        seen_sop.setdefault(sop, sha)
        result.append(Expected(path, True, dataset=ds))
    return result


async def test_every_pydicom_file_is_stored_and_found_or_refused_with_its_reason(
    platform: Running, http: httpx.AsyncClient
) -> None:
    files = sorted(pydicom_test_files())
    assert len(files) > 60
    headers = platform.producer(STRUCTURE)
    mismatches: list[str] = []
    accepted: list[Expected] = []
    for expected in expectations(files):
        response = await stow(http, platform.url, headers, [expected.path.read_bytes()])
        body = response.json()
        if expected.ok:
            if response.status_code != 200 or "00081199" not in body:
                mismatches.append(f"{expected.path.name}: expected stored, got {body}")
            else:
                accepted.append(expected)
        else:
            codes = failure_reasons(body)
            if response.status_code != 409 or len(codes) != 1:
                mismatches.append(f"{expected.path.name}: expected refusal, got {body}")
            elif expected.code is not None and codes[0] != expected.code:
                mismatches.append(
                    f"{expected.path.name}: expected {expected.code:#06x}, got {codes[0]:#06x}"
                )
    assert not mismatches, "\n".join(mismatches)
    assert len(accepted) >= 20  # pydicom reuses UIDs across files: the others are refused above

    admin = platform.admin()
    for item in accepted:
        ds = item.dataset
        assert ds is not None
        study, series, sop = ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID
        found = await wait_for(http, platform.url, "studies", admin, 1, StudyInstanceUID=study)
        assert len(found) == 1, item.path.name
        assert value(found[0], "0020000D") == study
        assert value(found[0], "00100020") == str(ds.PatientID)
        if ds.get("StudyDate"):
            assert value(found[0], "00080020") == str(ds.StudyDate)
        if ds.get("Modality"):
            modalities = found[0]["00080061"]["Value"]
            assert ds.Modality in modalities
        series_found = await qido(http, platform.url, f"studies/{study}/series", admin)
        assert series in [value(s, "0020000E") for s in series_found], item.path.name
        instances = await wait_for(
            http, platform.url, f"studies/{study}/series/{series}/instances", admin, 1,
            SOPInstanceUID=sop,
        )  # fmt: skip
        assert len(instances) == 1, item.path.name
        assert value(instances[0], "00080016") == str(ds.SOPClassUID)


async def test_resending_an_identical_instance_succeeds_and_stores_nothing_twice(
    platform: Running, http: httpx.AsyncClient
) -> None:
    path = next(p for p in pydicom_test_files() if p.name == "CT_small.dcm")
    ds = pydicom.dcmread(path)
    ds.SOPInstanceUID = "1.2.826.0.1.3680043.8.498.77001"
    ds.StudyInstanceUID = "1.2.826.0.1.3680043.8.498.77000"
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    from io import BytesIO

    buffer = BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    data = buffer.getvalue()
    headers = platform.producer(STRUCTURE)
    first = await stow(http, platform.url, headers, [data])
    again = await stow(http, platform.url, headers, [data])
    assert first.status_code == again.status_code == 200
    ds.PatientName = "CHANGED^Content"
    buffer = BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    conflict = await stow(http, platform.url, headers, [buffer.getvalue()])
    assert conflict.status_code == 409
    assert failure_reasons(conflict.json()) == [DUPLICATE]
    found = await wait_for(
        http, platform.url, "studies", platform.admin(), 1, StudyInstanceUID=ds.StudyInstanceUID
    )
    assert value(found[0], "00201208") == 1  # NumberOfStudyRelatedInstances
    # A search that discloses studies says where its time went.
    timed = await http.get(
        f"{platform.url}/studies",
        params={"StudyInstanceUID": ds.StudyInstanceUID},
        headers=platform.admin(),
    )
    stages = timed.headers["server-timing"]
    assert all(f"{stage};dur=" in stages for stage in ("parse", "index", "audit", "total"))


async def test_an_instance_of_another_study_than_the_url_is_refused(
    platform: Running, http: httpx.AsyncClient
) -> None:
    path = next(p for p in pydicom_test_files() if p.name == "MR_small.dcm")
    response = await stow(
        http, platform.url, platform.producer(STRUCTURE), [path.read_bytes()], study="1.2.3.4"
    )
    assert response.status_code == 409
    assert failure_reasons(response.json()) == [STUDY_MISMATCH]


@pytest.mark.parametrize(
    ("accept", "status"),
    [
        ("application/dicom+json", 200),
        ("application/json;q=0.5, image/png", 200),
        ("*/*", 200),
        ("application/*", 200),
        ("image/png", 406),
        ("application/dicom+json;q=0", 406),  # refused explicitly
        ("not a media range", 406),
    ],
)
async def test_a_search_answers_dicom_json_to_whoever_accepts_it(
    platform: Running, http: httpx.AsyncClient, accept: str, status: int
) -> None:
    response = await http.get(
        f"{platform.url}/studies",
        params={"StudyInstanceUID": "1.2.3.4"},
        headers={**platform.admin(), "Accept": accept},
    )
    assert response.status_code == status
    if status == 200:
        assert response.headers["content-type"] == "application/dicom+json"
        # An empty answer says nothing of where its time went (hidden and absent alike).
        assert "server-timing" not in response.headers
    else:
        assert response.headers["content-type"] == "application/problem+json"

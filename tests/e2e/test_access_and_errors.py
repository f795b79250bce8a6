"""End to end: authentication, the interim access rule (own structure; admin all), clean errors."""

from __future__ import annotations

from io import BytesIO

import httpx
import pydicom
import pytest

from krypton.dicom.testfiles import pydicom_test_files

from .conftest import Running
from .helpers import qido, stow, value, wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.nats, pytest.mark.postgres]

A, B = "330781196", "640780417"


def _instance(study: str, sop: str, patient: str) -> bytes:
    path = next(p for p in pydicom_test_files() if p.name == "CT_small.dcm")
    ds = pydicom.dcmread(path)
    ds.StudyInstanceUID, ds.SOPInstanceUID, ds.PatientID = study, sop, patient
    ds.SeriesInstanceUID = study + ".1"
    ds.file_meta.MediaStorageSOPInstanceUID = sop
    out = BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


async def test_requests_without_a_valid_token_get_401_problem_json(
    platform: Running, http: httpx.AsyncClient
) -> None:
    for headers in ({}, {"Authorization": "Bearer not-a-jwt"}, {"Authorization": "Basic abc"}):
        response = await http.get(f"{platform.url}/studies", headers=headers)
        assert response.status_code == 401
        assert response.headers["content-type"].startswith("application/problem+json")
        assert response.json()["detail"]
        assert "WWW-Authenticate" in response.headers
    health = await http.get(f"{platform.platform.base_url}/healthz")
    assert health.status_code == 200


async def test_a_structure_sees_its_own_studies_only_and_an_admin_sees_all(
    platform: Running, http: httpx.AsyncClient
) -> None:
    study_a, study_b = "1.2.826.0.1.3680043.8.498.880001", "1.2.826.0.1.3680043.8.498.880002"
    r = await stow(
        http, platform.url, platform.producer(A), [_instance(study_a, study_a + ".9", "PA")]
    )
    assert r.status_code == 200, r.text
    r = await stow(
        http, platform.url, platform.producer(B), [_instance(study_b, study_b + ".9", "PB")]
    )
    assert r.status_code == 200, r.text
    admin = platform.admin()
    await wait_for(http, platform.url, "studies", admin, 1, StudyInstanceUID=study_b)
    await wait_for(http, platform.url, "studies", admin, 1, StudyInstanceUID=study_a)

    pro_a = platform.headers("professional", "810000000001", structure=A)
    seen = await qido(http, platform.url, "studies", pro_a, limit=1000)
    uids = {value(s, "0020000D") for s in seen}
    assert study_a in uids
    assert study_b not in uids
    # Hidden and non-existent look the same: an empty answer, never an error that leaks.
    hidden = await qido(http, platform.url, f"studies/{study_b}/series", pro_a)
    missing = await qido(http, platform.url, "studies/1.2.3.999/series", pro_a)
    assert hidden == missing == []
    by_patient = await qido(http, platform.url, "studies", pro_a, PatientID="PB")
    assert by_patient == []
    everything = await qido(http, platform.url, "studies", admin, limit=1000)
    assert {study_a, study_b} <= {value(s, "0020000D") for s in everything}


async def test_another_structure_cannot_add_instances_to_a_study(
    platform: Running, http: httpx.AsyncClient
) -> None:
    study = "1.2.826.0.1.3680043.8.498.880003"
    r = await stow(http, platform.url, platform.producer(A), [_instance(study, study + ".1", "PC")])
    assert r.status_code == 200
    r = await stow(http, platform.url, platform.producer(B), [_instance(study, study + ".2", "PC")])
    assert r.status_code == 409


async def test_bad_queries_get_400_problem_json_never_500(
    platform: Running, http: httpx.AsyncClient
) -> None:
    admin = platform.admin()
    bad = [
        {"StudyDate": "2020-13-45"},
        {"limit": "-1"},
        {"offset": "abc"},
        {"NoSuchAttribute": "x"},
        {"includefield": "ZZZZZZZZ"},
        {"StudyInstanceUID": "not a uid"},
    ]
    for params in bad:
        response = await http.get(f"{platform.url}/studies", params=params, headers=admin)
        assert response.status_code == 400, (params, response.text)
        assert response.headers["content-type"].startswith("application/problem+json")
        assert response.json()["detail"]
    response = await http.get(f"{platform.url}/studies/not..a..uid/series", headers=admin)
    assert response.status_code == 400


async def test_stow_refuses_other_media_types_and_malformed_bodies(
    platform: Running, http: httpx.AsyncClient
) -> None:
    headers = platform.producer(A)
    r = await http.post(
        f"{platform.url}/studies",
        content=b"{}",
        headers={**headers, "Content-Type": "application/json"},
    )
    assert r.status_code == 415
    r = await http.post(
        f"{platform.url}/studies",
        content=b"--x\r\nContent-Type: application/dicom\r\n\r\nabc",
        headers={
            **headers,
            "Content-Type": 'multipart/related; type="application/dicom"; boundary=x',
        },
    )
    assert r.status_code in (400, 409)
    patient = platform.headers("patient", "p-1", ins="123456789012345")
    r = await stow(http, platform.url, patient, [b"x"])
    assert r.status_code == 403

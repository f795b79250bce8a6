"""End to end: every access is audited; the patient reads their trail; kill -9 loses nothing."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from io import BytesIO
from typing import Any

import asyncpg
import httpx
import pydicom
import pytest

from krypton.dicom.identity import ins_key
from krypton.dicom.testfiles import pydicom_test_files

from .conftest import Running
from .helpers import qido, stow, wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.nats, pytest.mark.postgres]

A, B = "330781196", "640780417"
NIR = "1850599123456"
INS = NIR + ins_key(NIR)
OTHER_NIR = "2900175123789"
OTHER_INS = OTHER_NIR + ins_key(OTHER_NIR)
STUDY = "1.2.826.0.1.3680043.8.498.660001"
OTHER_STUDY = "1.2.826.0.1.3680043.8.498.660002"
DOCTOR = "810000000011"


def _instance(study: str, sop: str, ins: str) -> bytes:
    path = next(p for p in pydicom_test_files() if p.name == "CT_small.dcm")
    ds = pydicom.dcmread(path)
    ds.StudyInstanceUID, ds.SOPInstanceUID = study, sop
    ds.PatientID, ds.IssuerOfPatientID = ins, "INS-NIR"
    ds.SeriesInstanceUID = study + ".1"
    ds.file_meta.MediaStorageSOPInstanceUID = sop
    out = BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


def _api(platform: Running, path: str) -> str:
    return f"{platform.platform.base_url}/api/audit/{path}"


async def _events(
    http: httpx.AsyncClient,
    platform: Running,
    path: str,
    headers: dict[str, str],
    expected: int,
    timeout: float = 60.0,
    by: str | None = None,
    **params: Any,
) -> list[dict[str, Any]]:
    """Poll an audit query until it returns at least `expected` records (the log is async).

    With `by`, only the records of that actor count towards `expected` (other actors' events,
    e.g. the fixture's own searches, may land first).
    """
    deadline = time.monotonic() + timeout
    found: list[dict[str, Any]] = []
    while time.monotonic() < deadline:
        response = await http.get(_api(platform, path), headers=headers, params=params)
        if response.status_code != 503:  # audit service restarting
            assert response.status_code == 200, response.text
            found = response.json()
            counted = [r for r in found if by is None or r["event"]["actor"]["sub"] == by]
            if len(counted) >= expected:
                return found
        await asyncio.sleep(0.2)
    return found


@pytest.fixture(scope="module")
async def studies(platform: Running) -> None:
    async with httpx.AsyncClient(timeout=60.0) as http:
        for study, ins in ((STUDY, INS), (OTHER_STUDY, OTHER_INS)):
            r = await stow(
                http, platform.url, platform.producer(A), [_instance(study, study + ".1", ins)]
            )
            assert r.status_code == 200, r.text
            await wait_for(
                http, platform.url, "studies", platform.admin(), 1, StudyInstanceUID=study
            )


def _doctor(platform: Running) -> dict[str, str]:
    return platform.headers(
        "professional", DOCTOR, structure=A, name="Dr Claire Martin", profession="10"
    )


async def test_a_professionals_searches_appear_in_the_patients_access_history(
    platform: Running, http: httpx.AsyncClient, studies: None
) -> None:
    doctor = _doctor(platform)
    found = await qido(http, platform.url, "studies", doctor, PatientID=INS)
    assert len(found) == 1
    await qido(http, platform.url, f"studies/{STUDY}/series", doctor)
    await qido(http, platform.url, "studies", doctor, limit=1000)  # also returns OTHER_STUDY

    patient = platform.headers("patient", "patient-1", ins=INS)
    history = await _events(http, platform, "me", patient, 3, by=DOCTOR, type="search")
    searches = [r["event"] for r in history if r["event"]["actor"]["sub"] == DOCTOR]
    assert len(searches) == 3
    for event in searches:
        assert event["type"] == "search"
        assert event["outcome"] == "success"
        assert event["basis"] == "producing_structure"
        assert event["actor"]["name"] == "Dr Claire Martin"
        assert event["actor"]["profession"] == "10"
        assert event["actor"]["structure"] == A
        # The patient sees their own study only, and no technical details.
        assert event["study_uids"] == [STUDY]
        assert event["client_address"] is None
        assert event["query"] is None
    # The other patient's history does not show the searches that only touched this patient.
    other = platform.headers("patient", "patient-2", ins=OTHER_INS)
    theirs = await _events(http, platform, "me", other, 1, by=DOCTOR, type="search")
    assert len([r for r in theirs if r["event"]["actor"]["sub"] == DOCTOR]) == 1
    assert all(r["event"]["study_uids"] == [OTHER_STUDY] for r in theirs)


async def test_denied_attempts_are_recorded_as_denied(
    platform: Running, http: httpx.AsyncClient, studies: None
) -> None:
    refused = await http.get(_api(platform, "events"), headers=_doctor(platform))
    assert refused.status_code == 403
    bad = await http.get(f"{platform.url}/studies", headers={"Authorization": "Bearer nope"})
    assert bad.status_code == 401

    admin = platform.admin()
    denied = await _events(http, platform, "events", admin, 1, type="access.denied", actor=DOCTOR)
    assert denied[0]["event"]["outcome"] == "denied"
    assert denied[0]["event"]["resource"] == "/api/audit/events"
    failures = await _events(http, platform, "events", admin, 1, type="auth.failure")
    assert failures[0]["event"]["outcome"] == "denied"
    assert failures[0]["event"]["actor"]["sub"] is None
    assert failures[0]["event"]["reason"]


async def test_a_dpo_sees_events_on_their_structures_studies_and_exports_them(
    platform: Running, http: httpx.AsyncClient, studies: None
) -> None:
    await qido(http, platform.url, "studies", _doctor(platform), PatientID=INS)

    def dpo(structure: str) -> dict[str, str]:
        token = platform.issuer.mint(
            role="professional", sub=f"dpo-{structure}", structure=structure,
            extra={"krypton_dpo": True},
        )  # fmt: skip
        return {"Authorization": f"Bearer {token}"}

    mine = await _events(http, platform, "events", dpo(A), 1, by=DOCTOR, type="search", patient=INS)
    assert any(r["event"]["actor"]["sub"] == DOCTOR for r in mine)
    assert all(STUDY in r["event"]["study_uids"] for r in mine)
    elsewhere = await http.get(
        _api(platform, "events"), headers=dpo(B), params={"actor": DOCTOR, "type": "search"}
    )
    assert elsewhere.status_code == 200
    assert elsewhere.json() == []

    fhir = await http.get(
        _api(platform, "events"), headers=dpo(A),
        params={"type": "search", "patient": INS, "format": "fhir", "limit": 1},
    )  # fmt: skip
    assert fhir.status_code == 200
    assert fhir.headers["content-type"].startswith("application/fhir+json")
    resource = fhir.json()["entry"][0]["resource"]
    assert resource["resourceType"] == "AuditEvent"
    assert resource["type"]["code"] == "110112"
    assert resource["outcome"] == "0"

    xml = await http.get(
        _api(platform, "events"), headers=dpo(A),
        params={"type": "search", "patient": INS, "format": "dicom", "limit": 1},
    )  # fmt: skip
    assert xml.status_code == 200
    assert b'csd-code="110112"' in xml.content
    assert b"<AuditMessage>" in xml.content


async def _restarted(platform: Running, restarts: int) -> None:
    """Wait until the supervisor has started a new audit process after the kill."""
    await platform.platform.supervisor.wait_restarted("audit", restarts)
    await asyncio.sleep(1.0)  # let it reconnect and resume consuming


def _verify(platform: Running) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "KRYPTON_PG_DSN": str(platform.platform.pg_dsn)}
    return subprocess.run(
        [sys.executable, "-m", "krypton.audit.verify", "verify"],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )


async def test_killing_the_audit_service_during_reads_loses_no_event_and_duplicates_none(
    platform: Running, http: httpx.AsyncClient, studies: None
) -> None:
    reader = "810000000099"
    headers = platform.headers("professional", reader, structure=A)
    answered = 0

    async def read(n: int) -> None:
        nonlocal answered
        response = await http.get(f"{platform.url}/studies", headers=headers, params={"limit": 5})
        assert response.status_code == 200, response.text
        answered += 1

    supervisor = platform.platform.supervisor
    restarts = supervisor.children["audit"].restarts
    for round_ in range(6):
        if round_ in (1, 3):
            # Kill -9 while this round's reads are being answered (and audited).
            burst = asyncio.gather(*(read(n) for n in range(25)))
            await asyncio.sleep(0.05)
            supervisor.kill("audit", signal.SIGKILL)
            await burst
            restarts += 1
            await _restarted(platform, restarts)  # back before the next kill
        else:
            await asyncio.gather(*(read(n) for n in range(25)))
    assert answered == 150
    # Every answered read was audited before it left: the log ends with each exactly once.
    pg = await asyncpg.connect(platform.platform.pg_dsn)
    try:
        deadline = time.monotonic() + 90
        count = 0
        while time.monotonic() < deadline:
            count = await pg.fetchval(
                "SELECT count(*) FROM audit.log WHERE actor_sub = $1 AND event_type = 'search'",
                reader,
            )
            if count >= answered:
                break
            await asyncio.sleep(0.3)
        assert count == answered
        assert await pg.fetchval("SELECT count(DISTINCT event_id) = count(*) FROM audit.log")
        assert supervisor.children["audit"].restarts == restarts
        result = await asyncio.to_thread(_verify, platform)
        assert result.returncode == 0, result.stdout + result.stderr
        assert "audit chain OK" in result.stdout

        # Tamper as a superuser: verify names the broken record and fails; then restore.
        seq, body = await pg.fetchrow(
            "SELECT seq, body FROM audit.log ORDER BY seq LIMIT 1 OFFSET 3"
        )
        await pg.execute(
            "UPDATE audit.log SET body = $2 WHERE seq = $1", seq, body.replace(b"search", b"SEARCH")
        )
        broken = await asyncio.to_thread(_verify, platform)
        assert broken.returncode == 1
        assert f"BROKEN at seq {seq}" in broken.stdout
        await pg.execute("UPDATE audit.log SET body = $2 WHERE seq = $1", seq, body)
    finally:
        await pg.close()

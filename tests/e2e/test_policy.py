"""End to end: the access policy through HTTP with every service running.

A professional of another structure sees nothing; a care relationship opens the patient's
studies; an opposition closes them within about a second (but not to the producer); a share
code opens exactly its scope, binds to its first user, stops when revoked; guessing is locked
out.
"""

from __future__ import annotations

import asyncio
import time
from io import BytesIO
from typing import Any

import httpx
import pydicom
import pytest

from krypton.dicom.identity import ins_key
from krypton.dicom.testfiles import pydicom_test_files

from .conftest import Running
from .helpers import stow, value, wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.nats, pytest.mark.postgres]

A, B, C = "330781196", "640780417", "870000015"
NIR = "2750775123456"
INS = NIR + ins_key(NIR)
STUDY_A, STUDY_B = "1.2.826.0.1.3680043.8.498.770001", "1.2.826.0.1.3680043.8.498.770002"


def _instance(study: str) -> bytes:
    path = next(p for p in pydicom_test_files() if p.name == "CT_small.dcm")
    ds = pydicom.dcmread(path)
    ds.StudyInstanceUID, ds.SOPInstanceUID = study, study + ".9"
    ds.SeriesInstanceUID = study + ".1"
    ds.PatientID, ds.IssuerOfPatientID = INS, "ASIP-SANTE-INS-NIR"
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    out = BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


def pro(platform: Running, sub: str, physician: bool = False) -> dict[str, str]:
    claims = {"structure": C} | ({"profession": "10"} if physician else {})
    return platform.headers("professional", sub, **claims)


def patient(platform: Running) -> dict[str, str]:
    return platform.headers("patient", "patient-e2e", ins=INS)


async def studies(http: httpx.AsyncClient, platform: Running, headers: dict[str, str]) -> set[str]:
    response = await http.get(f"{platform.url}/studies", headers=headers)
    assert response.status_code == 200, response.text
    return {value(item, "0020000D") for item in response.json()}


async def eventually(
    http: httpx.AsyncClient, platform: Running, headers: dict[str, str], expected: set[str]
) -> set[str]:
    """Poll until the studies a caller sees are `expected` (the projection is a consumer)."""
    deadline = time.monotonic() + 10.0
    seen: set[str] = set()
    while time.monotonic() < deadline:
        seen = await studies(http, platform, headers)
        if seen == expected:
            return seen
        await asyncio.sleep(0.05)
    return seen


async def read_status_becomes(
    http: httpx.AsyncClient, url: str, headers: dict[str, str], status: int
) -> int:
    """Poll a WADO-RS read until it answers `status` (the access projection is a consumer)."""
    deadline = time.monotonic() + 15.0
    seen = 0
    while time.monotonic() < deadline:
        seen = (await http.get(url, headers=headers)).status_code
        if seen == status:
            return seen
        await asyncio.sleep(0.05)
    return seen


async def api(
    http: httpx.AsyncClient,
    platform: Running,
    method: str,
    path: str,
    headers: dict[str, str],
    body: dict[str, Any] | None = None,
) -> httpx.Response:
    return await http.request(
        method, f"{platform.platform.base_url}/api{path}", headers=headers, json=body
    )


@pytest.fixture(scope="module")
async def stored(platform: Running) -> Running:
    """One study of the patient at structure A, one at structure B."""
    async with httpx.AsyncClient(timeout=60.0) as http:
        for structure, study in ((A, STUDY_A), (B, STUDY_B)):
            r = await stow(http, platform.url, platform.producer(structure), [_instance(study)])
            assert r.status_code == 200, r.text
        await wait_for(http, platform.url, "studies", platform.admin(), 2, PatientID=INS)
    return platform


async def test_care_relationship_then_opposition(stored: Running, http: httpx.AsyncClient) -> None:
    platform = stored
    doctor = pro(platform, "810000000011")
    assert await studies(http, platform, doctor) == set()

    r = await api(http, platform, "POST", "/care-relationships", platform.producer(B),
                  {"professional": "810000000011", "patient_ins": INS})  # fmt: skip
    assert r.status_code == 201, r.text
    care_id = r.json()["id"]
    assert await eventually(http, platform, doctor, {STUDY_A, STUDY_B}) == {STUDY_A, STUDY_B}

    r = await api(http, platform, "POST", "/opposition", patient(platform), {})
    assert r.status_code == 200, r.text
    assert r.json()["active"] is True
    assert await eventually(http, platform, doctor, set()) == set()
    # The producing structure keeps its own study; the patient keeps theirs.
    assert await studies(http, platform, platform.producer(A)) >= {STUDY_A}
    assert await studies(http, platform, patient(platform)) == {STUDY_A, STUDY_B}
    # Break-the-glass is impossible under opposition.
    r = await api(http, platform, "POST", "/break-the-glass", pro(platform, "810000000099", True),
                  {"patient_ins": INS, "justification": "unconscious patient, head trauma"})  # fmt: skip
    assert r.status_code == 403
    assert r.headers["content-type"].startswith("application/problem+json")

    r = await api(http, platform, "POST", "/opposition/lift", patient(platform), {})
    assert r.status_code == 200, r.text
    assert await eventually(http, platform, doctor, {STUDY_A, STUDY_B}) == {STUDY_A, STUDY_B}
    r = await api(
        http, platform, "POST", f"/care-relationships/{care_id}/end", platform.producer(B)
    )
    assert r.status_code == 200, r.text
    assert await eventually(http, platform, doctor, set()) == set()


async def test_share_code_scope_binding_and_revocation(
    stored: Running, http: httpx.AsyncClient
) -> None:
    platform = stored
    first, second = pro(platform, "810000000021"), pro(platform, "810000000022")
    r = await api(http, platform, "POST", "/share-codes", patient(platform),
                  {"scope": "study", "study_uid": STUDY_B})  # fmt: skip
    assert r.status_code == 201, r.text
    code, code_id = r.json()["code"], r.json()["share_code"]["id"]

    r = await api(http, platform, "POST", "/share-codes/redeem", first, {"code": code})
    assert r.status_code == 200, r.text
    assert r.json()["study_uid"] == STUDY_B
    assert await eventually(http, platform, first, {STUDY_B}) == {STUDY_B}
    r = await api(http, platform, "POST", "/share-codes/redeem", second, {"code": code})
    assert r.status_code == 403
    assert await studies(http, platform, second) == set()

    # Reading one instance again and again (the gateway keeps instance-level locates a short
    # while): the revocation below must still close it.
    instance = f"{platform.url}/studies/{STUDY_B}/series/{STUDY_B}.1/instances/{STUDY_B}.9"
    r = await http.get(f"{platform.url}/studies/{STUDY_B}/metadata", headers=first)
    assert r.status_code == 200, r.text  # also keeps each instance's answer
    for _ in range(3):
        r = await http.get(f"{instance}/metadata", headers=first)
        assert r.status_code == 200, r.text

    listed = await api(http, platform, "GET", "/share-codes", patient(platform))
    assert [c["bound_to"] for c in listed.json() if c["id"] == code_id] == ["810000000021"]
    r = await api(http, platform, "POST", f"/share-codes/{code_id}/revoke", patient(platform))
    assert r.status_code == 200, r.text
    assert await eventually(http, platform, first, set()) == set()
    assert await read_status_becomes(http, f"{instance}/metadata", first, 404) == 404
    assert await read_status_becomes(http, f"{instance}/rendered", first, 404) == 404


async def test_guessing_share_codes_is_locked_out(stored: Running, http: httpx.AsyncClient) -> None:
    platform = stored
    guesser = pro(platform, "810000000031")
    statuses = []
    for n in range(12):
        r = await api(http, platform, "POST", "/share-codes/redeem", guesser,
                      {"code": f"ABCD-EFGH-{n:04d}"})  # fmt: skip
        statuses.append(r.status_code)
    assert set(statuses[:10]) == {403}
    assert statuses[10:] == [429, 429]
    assert "retry-after" in r.headers


async def test_policy_apis_need_a_token_and_the_right_role(
    stored: Running, http: httpx.AsyncClient
) -> None:
    platform = stored
    r = await api(http, platform, "POST", "/share-codes/redeem", {}, {"code": "x"})
    assert r.status_code == 401
    r = await api(http, platform, "POST", "/care-relationships", pro(platform, "810000000041"),
                  {"professional": "810000000041", "patient_ins": INS})  # fmt: skip
    assert r.status_code == 403
    r = await api(http, platform, "POST", "/share-codes", patient(platform), {"scope": "nope"})
    assert r.status_code == 400
    assert r.headers["content-type"].startswith("application/problem+json")


async def _history_until(
    http: httpx.AsyncClient, platform: Running, check: Any, timeout: float = 30.0
) -> list[dict[str, Any]]:
    """The patient's access history, polled until `check(events)` holds (the log is async)."""
    deadline = time.monotonic() + timeout
    events: list[dict[str, Any]] = []
    while time.monotonic() < deadline:
        r = await http.get(
            f"{platform.platform.base_url}/api/audit/me",
            headers=patient(platform),
            params={"limit": 1000},
        )
        if r.status_code == 200:
            events = [record["event"] for record in r.json()]
            if check(events):
                return events
        await asyncio.sleep(0.2)
    return events


async def test_the_patients_history_shows_each_basis_and_each_refusal(
    stored: Running, http: httpx.AsyncClient
) -> None:
    platform = stored
    carer, emergency, holder, other = "810000000051", "810000000052", "810000000053", "810000000054"
    r = await api(http, platform, "POST", "/care-relationships", platform.producer(B),
                  {"professional": carer, "patient_ins": INS})  # fmt: skip
    assert r.status_code == 201, r.text
    # A professional of another structure searches: seen through the care relationship.
    assert await eventually(http, platform, pro(platform, carer), {STUDY_A, STUDY_B})
    # ... and reads the study's metadata (WADO): the same basis is recorded.
    r = await http.get(f"{platform.url}/studies/{STUDY_A}/metadata", headers=pro(platform, carer))
    assert r.status_code == 200, r.text
    justification = "unconscious patient brought to the emergency room"
    r = await api(http, platform, "POST", "/break-the-glass", pro(platform, emergency, True),
                  {"patient_ins": INS, "justification": justification})  # fmt: skip
    assert r.status_code == 201, r.text
    r = await api(http, platform, "POST", "/share-codes", patient(platform), {})
    assert r.status_code == 201, r.text
    code = r.json()["code"]
    r = await api(http, platform, "POST", "/share-codes/redeem", pro(platform, holder),
                  {"code": code})  # fmt: skip
    assert r.status_code == 200, r.text
    r = await api(http, platform, "POST", "/share-codes/redeem", pro(platform, other),
                  {"code": code})  # fmt: skip
    assert r.status_code == 403

    def by(events: list[dict[str, Any]], sub: str, type_: str) -> list[dict[str, Any]]:
        return [e for e in events if e["actor"]["sub"] == sub and e["type"] == type_]

    def complete(events: list[dict[str, Any]]) -> bool:
        return all((
            any(set(e["study_uids"]) == {STUDY_A, STUDY_B} for e in by(events, carer, "search")),
            by(events, carer, "retrieve.metadata"),
            by(events, emergency, "btg.opened"), by(events, holder, "sharecode.used"),
            by(events, other, "sharecode.used"),
        ))  # fmt: skip

    events = await _history_until(http, platform, complete)
    assert complete(events), events
    # `eventually` searched until both studies were visible: earlier searches may show fewer.
    care_searches = [e for e in by(events, carer, "search") if e["study_uids"]]
    assert all(e["basis"] == "care_relationship" for e in care_searches)
    care_search = next(e for e in care_searches if set(e["study_uids"]) == {STUDY_A, STUDY_B})
    assert care_search["actor"]["structure"] == C
    (care_read,) = by(events, carer, "retrieve.metadata")
    assert care_read["basis"] == "care_relationship"
    assert care_read["study_uids"] == [STUDY_A]
    (declared,) = by(events, f"ris-{B}", "care.changed")[:1]
    assert declared["detail"] == {}  # technical details are not shown to the patient
    (btg,) = by(events, emergency, "btg.opened")
    assert (btg["outcome"], btg["basis"]) == ("success", "break_the_glass")
    assert btg["justification"] == justification
    (used,) = by(events, holder, "sharecode.used")
    assert (used["outcome"], used["basis"]) == ("success", "share_code")
    (denied,) = by(events, other, "sharecode.used")
    assert denied["outcome"] == "denied"
    assert denied["reason"] == "share code not valid"
    assert by(events, "patient-e2e", "sharecode.created")
    # The refusal was recorded once, by authorize (with the patient), not again by the gateway.
    admin = await http.get(
        f"{platform.platform.base_url}/api/audit/events", headers=platform.admin(),
        params={"actor": other, "limit": 100},
    )  # fmt: skip
    assert admin.status_code == 200, admin.text
    types = [r["event"]["type"] for r in admin.json()]
    assert [t for t in types if not t.startswith("auth.")] == ["sharecode.used"]


async def test_a_community_sees_a_shared_patient_while_members_belong(
    stored: Running, http: httpx.AsyncClient
) -> None:
    """A tumour board of structure C: members see the patient B shared, until they leave."""
    platform = stored
    board, owner = "rcp-onco-e2e", platform.producer(C)
    member_sub, colleague_sub, outsider_sub = "810000000061", "810000000062", "810000000063"
    member, colleague = pro(platform, member_sub), pro(platform, colleague_sub)
    r = await api(http, platform, "PUT", f"/admin/communities/{board}", platform.admin(),
                  {"name": "RCP oncologie thoracique", "structure": C})  # fmt: skip
    assert r.status_code == 200, r.text
    for sub in (member_sub, colleague_sub):  # the owning structure manages its members
        r = await api(http, platform, "POST", f"/admin/communities/{board}/members", owner,
                      {"sub": sub})  # fmt: skip
        assert r.status_code == 200, r.text
    r = await api(http, platform, "POST", f"/admin/communities/{board}/members",
                  platform.producer(A), {"sub": outsider_sub})  # fmt: skip
    assert r.status_code == 403
    assert await studies(http, platform, member) == set()

    r = await api(http, platform, "POST", f"/communities/{board}/shares", platform.producer(B),
                  {"patient_ins": INS})  # fmt: skip
    assert r.status_code == 201, r.text
    share_id = r.json()["id"]
    both = {STUDY_A, STUDY_B}
    assert await eventually(http, platform, member, both) == both
    assert await eventually(http, platform, colleague, both) == both
    assert await studies(http, platform, pro(platform, outsider_sub)) == set()
    r = await http.get(f"{platform.url}/studies/{STUDY_B}/metadata", headers=member)
    assert r.status_code == 200, r.text
    r = await api(http, platform, "GET", f"/communities/{board}", member)
    assert r.status_code == 200, r.text
    assert [s["id"] for s in r.json()["shares"]] == [share_id]

    # The patient's opposition still wins, and lifting it restores the share.
    r = await api(http, platform, "POST", "/opposition", patient(platform), {})
    assert r.status_code == 200, r.text
    assert await eventually(http, platform, member, set()) == set()
    r = await api(http, platform, "POST", "/opposition/lift", patient(platform), {})
    assert r.status_code == 200, r.text
    assert await eventually(http, platform, member, both) == both

    # A removed member stops seeing the patient; the others keep it until the share ends.
    r = await api(http, platform, "DELETE", f"/admin/communities/{board}/members/{member_sub}",
                  owner)  # fmt: skip
    assert r.status_code == 200, r.text
    assert [m["sub"] for m in r.json()["members"]] == [colleague_sub]
    assert await eventually(http, platform, member, set()) == set()
    assert await studies(http, platform, colleague) == both
    r = await api(http, platform, "POST", f"/communities/{board}/shares/{share_id}/end",
                  platform.producer(B))  # fmt: skip
    assert r.status_code == 200, r.text
    assert await eventually(http, platform, colleague, set()) == set()

    def seen_through_board(events: list[dict[str, Any]]) -> bool:
        return any(
            e["actor"]["sub"] == member_sub and e["type"] == "retrieve.metadata"
            and e["basis"] == "community"
            for e in events
        )  # fmt: skip

    events = await _history_until(http, platform, seen_through_board)
    assert seen_through_board(events), events
    assert any(e["type"] == "care.changed" and e["actor"]["sub"] == f"ris-{B}" for e in events)

"""Hostile input on the read side (issue 9): bad query strings, path traversal, token abuse.

Every answer is a 4xx problem+json or a normal (possibly empty) answer, never a 500; no answer
lets a structure-A user see, count or tell apart structure B's data.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import time
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from .conftest import Running
from .helpers import stow, value, wait_for
from .hostile_corpus import ROOT, valid_instance

pytestmark = [pytest.mark.e2e, pytest.mark.nats, pytest.mark.postgres]

A, B = "330781196", "640780417"
STUDY_A, STUDY_B = f"{ROOT}.101", f"{ROOT}.102"
SERIES_B, SOP_B = f"{STUDY_B}.1", f"{STUDY_B}.7"
MISSING, MISSING_SERIES, MISSING_SOP = f"{ROOT}.999", f"{ROOT}.999.1", f"{ROOT}.999.7"
SQL = ["' OR 1=1 --", "x' UNION SELECT * FROM index.studies --", '"; DROP TABLE x; --', "%' --"]


@pytest.fixture(scope="module")
async def stored(platform: Running) -> Running:
    """One study per structure, indexed."""
    async with httpx.AsyncClient(timeout=60.0) as http:
        for structure, study, patient in ((A, STUDY_A, "PAT-A"), (B, STUDY_B, "PAT-B")):
            data = valid_instance(study, f"{study}.7", patient)
            response = await stow(http, platform.url, platform.producer(structure), [data])
            assert response.status_code == 200, response.text
        admin = platform.admin()
        for study in (STUDY_A, STUDY_B):
            found = await wait_for(http, platform.url, "studies", admin, 1, StudyInstanceUID=study)
            assert len(found) == 1
    return platform


def _pro_a(platform: Running) -> dict[str, str]:
    return platform.headers("professional", "810000000001", structure=A)


def _assert_clean(response: httpx.Response, allowed: set[int]) -> None:
    assert response.status_code in allowed, (response.request.url, response.text[:300])
    if response.status_code >= 400:
        kind = response.headers["content-type"]
        assert kind.startswith("application/problem+json"), (response.request.url, kind)


def _no_b(response: httpx.Response) -> None:
    """A 200 search answer discloses nothing of structure B."""
    if response.status_code == 200:
        assert STUDY_B not in response.text
        assert "PAT-B" not in response.text


async def test_bad_query_strings_get_400_or_an_empty_answer_never_b_data(
    stored: Running, http: httpx.AsyncClient
) -> None:
    headers = _pro_a(stored)
    raw = [
        "PatientName=" + "A" * 2000,
        "PatientID=" + "9" * 2000,
        "StudyInstanceUID=" + "1." * 1000,
        "StudyDate=" + "2" * 2000,
        "includefield=" + "0010,0010," * 200,
        "PatientName=%00",
        "PatientID=abc%00def",
        "%00=1",
        "PatientName=%FF%FE",
        "PatientName=%C3%28",
        "%C3%28=1",
        "PatientID=a%ED%A0%80",
        "&".join(["PatientID=PAT-B"] * 500),
        "&".join([f"PatientID=x{i}" for i in range(500)]),
        "limit=99999999999999999999",
        "offset=99999999999999999999",
        "limit=1e9",
        "limit=0x10",
        "fuzzymatching=maybe",
        "PatientName=*",
        "PatientName=?*",
        "PatientName=\\\\\\",
        "StudyDate=19000101-29991231",
        "StudyInstanceUID=" + ",".join([STUDY_B] * 100),
    ]
    raw += [f"{key}={httpx.QueryParams({'v': sql})['v']}" for sql in SQL for key in ("PatientID",)]
    tried = 0
    for level in ("studies", "series", "instances", f"studies/{STUDY_B}/series"):
        for query in raw:
            response = await http.get(f"{stored.url}/{level}?{query}", headers=headers)
            _assert_clean(response, {200, 400})
            _no_b(response)
            tried += 1
        for sql in SQL:
            for key in ("PatientName", "AccessionNumber", "StudyInstanceUID", "includefield"):
                response = await http.get(
                    f"{stored.url}/{level}", params={key: sql}, headers=headers
                )
                _assert_clean(response, {200, 400})
                _no_b(response)
                # Names are matched on their normalised words, so punctuation alone matches
                # every name the caller may see; other keys match nothing.
                if response.status_code == 200 and key not in {"includefield", "PatientName"}:
                    assert response.json() == [], (key, sql)
                tried += 1
    assert tried > 100
    assert (await http.get(f"{stored.platform.base_url}/readyz")).status_code == 200


_KEYS = st.sampled_from(
    [
        "PatientName",
        "PatientID",
        "StudyDate",
        "StudyInstanceUID",
        "ModalitiesInStudy",
        "AccessionNumber",
        "limit",
        "offset",
        "includefield",
        "fuzzymatching",
        "00100010",
        "0020000D",
    ]
)


async def test_fuzzed_qido_parameters_get_200_or_400(stored: Running) -> None:
    headers = _pro_a(stored)
    url = f"{stored.url}/studies"
    seen: list[int] = []

    @settings(
        max_examples=50,
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(st.dictionaries(_KEYS | st.text(max_size=12), st.text(max_size=80), max_size=4))
    def fuzz(params: dict[str, str]) -> None:
        with httpx.Client(timeout=30.0) as client:
            response = client.get(url, params=params, headers=headers)
        seen.append(response.status_code)
        assert response.status_code in {200, 400}, (params, response.text[:300])
        _no_b(response)

    # Hypothesis drives a synchronous function: run it off the event loop.
    await asyncio.to_thread(fuzz)
    assert len(seen) >= 10


async def test_path_traversal_and_odd_identifiers_in_wado_routes_get_400_or_404(
    stored: Running, http: httpx.AsyncClient
) -> None:
    headers = _pro_a(stored)
    long_uid = "1." + "2" * 5000
    identifiers = [
        "..%2F..%2Fetc",
        "%2e%2e",
        "%2E%2E%2F%2E%2E%2Fetc%2Fpasswd",
        "..%5C..%5Cwindows",
        "1.2.3%00",
        "1.2.3%0d%0aX-Injected:1",
        long_uid,
        "1..2",
        "%C3%28",
        "*",
    ]
    suffixes = [
        "",
        "/metadata",
        "/rendered",
        "/thumbnail",
    ]
    tried = 0
    for bad in identifiers:
        paths = [
            f"studies/{bad}",
            f"studies/{STUDY_A}/series/{bad}",
            f"studies/{STUDY_A}/series/{STUDY_A}.1/instances/{bad}",
        ]
        for path in paths:
            for suffix in suffixes:
                response = await http.get(f"{stored.url}/{path}{suffix}", headers=headers)
                _assert_clean(response, {400, 404})
                tried += 1
        instance = f"studies/{STUDY_A}/series/{STUDY_A}.1/instances/{STUDY_A}.7"
        for tail in (f"frames/{bad}", f"frames/{bad}/rendered", f"bulkdata/{bad}"):
            response = await http.get(f"{stored.url}/{instance}/{tail}", headers=headers)
            _assert_clean(response, {400, 404})
            tried += 1
    instance = f"studies/{STUDY_A}/series/{STUDY_A}.1/instances/{STUDY_A}.7"
    frame_lists: dict[str, set[int]] = {
        "0": set(),
        "-1": set(),
        "99999999999999999999": set(),
        "2": set(),
        "1,,1": set(),
        # A repeated frame would let a short request ask for a thousand copies: refused.
        "1," * 1000 + "1": set(),
        "1,1": set(),
    }
    for frames, tolerated in frame_lists.items():
        response = await http.get(f"{stored.url}/{instance}/frames/{frames}", headers=headers)
        _assert_clean(response, {400, 404, 406} | tolerated)
        tried += 1
    assert tried > 100
    # Literal dot segments, as a raw request line (httpx would normalise them away).
    reader, writer = await asyncio.open_connection(
        *stored.platform.base_url.removeprefix("http://").split(":")
    )
    writer.write(
        b"GET /dicomweb/studies/../../../etc/passwd HTTP/1.1\r\nHost: x\r\n"
        + f"Authorization: {headers['Authorization']}\r\nConnection: close\r\n\r\n".encode()
    )
    await writer.drain()
    status_line = await reader.readline()
    writer.close()
    await writer.wait_closed()
    assert int(status_line.split()[1]) in {400, 404}


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _forge(header: dict[str, Any], claims: dict[str, Any], secret: bytes | None) -> str:
    signing = f"{_b64(json.dumps(header).encode())}.{_b64(json.dumps(claims).encode())}"
    signature = hmac.new(secret, signing.encode(), hashlib.sha256).digest() if secret else b""
    return f"{signing}.{_b64(signature)}"


async def test_abused_tokens_get_401_problem_json(stored: Running, http: httpx.AsyncClient) -> None:
    issuer = stored.issuer
    now = int(time.time())
    claims = {
        "iss": issuer.issuer_url,
        "sub": "admin-1",
        "aud": "krypton",
        "iat": now,
        "nbf": now,
        "exp": now + 600,
        "role": "admin",
    }
    public = issuer.jwks()["keys"][0]
    public_json = json.dumps(public).encode()
    tokens = {
        "alg none": _forge({"alg": "none", "typ": "JWT"}, claims, None),
        "alg none with kid": _forge({"alg": "none", "kid": issuer.kid}, claims, None),
        "HS256 with the public JWK": _forge(
            {"alg": "HS256", "kid": issuer.kid}, claims, public_json
        ),
        "HS256 with the x coordinate": _forge(
            {"alg": "HS256", "kid": issuer.kid}, claims, public["x"].encode()
        ),
        "expired": issuer.mint(role="admin", sub="admin-1", ttl=-600),
        "wrong audience": issuer.mint(role="admin", sub="admin-1", audience="somebody-else"),
        "wrong issuer": issuer.mint(role="admin", sub="admin-1", extra={"iss": "https://evil"}),
        "not yet valid": issuer.mint(role="admin", sub="admin-1", extra={"nbf": now + 3600}),
        "no expiry": issuer.mint(role="admin", sub="admin-1", extra={"exp": None}),
        "signature stripped": issuer.mint(role="admin", sub="admin-1").rsplit(".", 1)[0] + ".",
        "20 KB garbage": "eyJ" + "A" * 20_000,
    }
    for name, token in tokens.items():
        for path in ("studies", f"studies/{STUDY_A}/metadata"):
            response = await http.get(
                f"{stored.url}/{path}", headers={"Authorization": f"Bearer {token}"}
            )
            assert response.status_code == 401, (name, response.status_code, response.text[:200])
            assert response.headers["content-type"].startswith("application/problem+json")


async def test_structure_a_can_neither_read_nor_count_nor_tell_apart_structure_b_data(
    stored: Running, http: httpx.AsyncClient
) -> None:
    headers = _pro_a(stored)
    studies = await http.get(f"{stored.url}/studies", params={"limit": 1000}, headers=headers)
    assert studies.status_code == 200
    uids = {value(s, "0020000D") for s in studies.json()}
    assert STUDY_A in uids
    assert STUDY_B not in uids
    for params in ({"StudyInstanceUID": STUDY_B}, {"PatientID": "PAT-B"}, {"PatientID": "PAT-*"}):
        response = await http.get(f"{stored.url}/studies", params=params, headers=headers)
        assert response.status_code == 200
        assert STUDY_B not in response.text
    hidden = (STUDY_B, SERIES_B, SOP_B)
    missing = (MISSING, MISSING_SERIES, MISSING_SOP)
    templates = [
        "studies/{0}/series",
        "studies/{0}/series/{1}/instances",
        "studies/{0}",
        "studies/{0}/metadata",
        "studies/{0}/rendered",
        "studies/{0}/thumbnail",
        "studies/{0}/series/{1}",
        "studies/{0}/series/{1}/metadata",
        "studies/{0}/series/{1}/instances/{2}",
        "studies/{0}/series/{1}/instances/{2}/metadata",
        "studies/{0}/series/{1}/instances/{2}/rendered",
        "studies/{0}/series/{1}/instances/{2}/frames/1",
        "studies/{0}/series/{1}/instances/{2}/thumbnail",
    ]
    for template in templates:
        seen = await http.get(f"{stored.url}/{template.format(*hidden)}", headers=headers)
        absent = await http.get(f"{stored.url}/{template.format(*missing)}", headers=headers)
        assert seen.status_code == absent.status_code, template
        assert seen.status_code in {200, 404}, (template, seen.text)
        assert seen.content == absent.content, template
        assert STUDY_B not in seen.text
        assert {k: v for k, v in seen.headers.items() if k not in {"date", "x-request-id"}} == {
            k: v for k, v in absent.headers.items() if k not in {"date", "x-request-id"}
        }, template

"""Hostile input on STOW-RS (issue 9): malformed DICOM parts and malformed multipart bodies.

Each input gets a clean answer (a DICOM failure in the store response, or a 4xx problem+json),
never a 500 or a hang; the platform stays ready; a refused part that reached ingest leaves a
quarantine row (found by the SHA-256 of the part's bytes).
"""

from __future__ import annotations

import hashlib
import uuid

import asyncpg
import httpx
import pytest

from .conftest import Running
from .helpers import failure_reasons, multipart, stow
from .hostile_corpus import ROOT, corpus, valid_instance

pytestmark = [pytest.mark.e2e, pytest.mark.nats, pytest.mark.postgres]

A = "330781196"
DICOM_JSON = "application/dicom+json"
# Failure reasons a refused malformed part may carry (processing failure, out of resources,
# data set does not match SOP class, cannot understand).
_REFUSALS = {0x0110, 0xA700, 0xA900, 0xC000, 0xC122}
# Malformed inputs the platform stores on purpose (lenient where real producers are sloppy and
# nothing downstream is misled): a UID component with a leading zero (forbidden by PS3.5 9.1,
# common in the wild, kept as an exact string) and names invalid in their character set
# (decoded with replacement characters). They must still get a clean answer, never a 500.
_TOLERATED = {
    "SOP Instance UID leading zero",
    "Study Instance UID leading zero",
    "Series Instance UID leading zero",
    "PatientName invalid UTF-8",
    "PatientName high bytes in ASCII",
    "PatientName unknown charset",
}
_STOW_TYPE = 'multipart/related; type="application/dicom"; boundary={boundary}'


async def _quarantined(platform: Running, parts: list[bytes]) -> int:
    assert platform.platform.pg_dsn is not None
    conn = await asyncpg.connect(platform.platform.pg_dsn)
    try:
        digests = [hashlib.sha256(p).hexdigest() for p in parts]
        found = await conn.fetchval(
            "select count(distinct sha256) from ingest.quarantine where sha256 = any($1::text[])",
            digests,
        )
    finally:
        await conn.close()
    return int(found)


async def _assert_ready(platform: Running, http: httpx.AsyncClient) -> None:
    response = await http.get(f"{platform.platform.base_url}/readyz")
    assert response.status_code == 200, response.text


def _assert_problem(response: httpx.Response, statuses: set[int]) -> None:
    assert response.status_code in statuses, (response.status_code, response.text)
    assert response.headers["content-type"].startswith("application/problem+json")
    assert response.json()["detail"]


async def test_every_malformed_dicom_part_is_refused_cleanly_and_quarantined(
    platform: Running, http: httpx.AsyncClient
) -> None:
    study = f"{ROOT}.1"
    cases = corpus(study, f"{study}.2")
    headers = platform.producer(A)
    tolerated = set(_TOLERATED)
    unclean: dict[str, object] = {}
    stored: set[str] = set()
    for name, data in cases.items():
        response = await stow(http, platform.url, headers, [data])
        kind = response.headers.get("content-type", "")
        reasons = failure_reasons(response.json()) if kind.startswith(DICOM_JSON) else []
        if response.status_code == 200 and name in tolerated:
            stored.add(name)
            continue
        if response.status_code != 409 or len(reasons) != 1 or reasons[0] not in _REFUSALS:
            unclean[name] = (response.status_code, response.text[:300])
    assert not unclean, unclean
    await _assert_ready(platform, http)
    refused = [data for name, data in cases.items() if name not in stored]
    assert await _quarantined(platform, refused) == len(set(refused))
    # The control: a well-formed instance still goes in afterwards.
    good = await stow(http, platform.url, headers, [valid_instance(study, f"{study}.999")])
    assert good.status_code == 200, good.text


async def test_a_bad_part_among_good_ones_is_refused_alone(
    platform: Running, http: httpx.AsyncClient
) -> None:
    study = f"{ROOT}.2"
    bad = corpus(study, f"{study}.5")["pixel data length 2 GB"]
    parts = [valid_instance(study, f"{study}.1"), bad, valid_instance(study, f"{study}.2")]
    response = await stow(http, platform.url, platform.producer(A), parts)
    assert response.status_code == 202, response.text
    body = response.json()
    assert len(body["00081199"]["Value"]) == 2
    assert len(failure_reasons(body)) == 1
    assert await _quarantined(platform, [bad]) == 1


async def _post(
    platform: Running, http: httpx.AsyncClient, body: bytes, content_type: str
) -> httpx.Response:
    headers = {**platform.producer(A), "Content-Type": content_type}
    return await http.post(f"{platform.url}/studies", content=body, headers=headers)


async def test_malformed_multipart_bodies_get_4xx_problems_never_500(
    platform: Running, http: httpx.AsyncClient
) -> None:
    part = valid_instance(f"{ROOT}.3", f"{ROOT}.3.1")
    body, content_type = multipart([part])
    boundary = content_type.rsplit("=", 1)[1]
    other = uuid.uuid4().hex
    cases: list[tuple[str, bytes, str, set[int]]] = [
        ("missing boundary", body, 'multipart/related; type="application/dicom"', {400}),
        ("empty boundary", body, 'multipart/related; type="application/dicom"; boundary=', {400}),
        ("wrong boundary", body, _STOW_TYPE.format(boundary=other), {400}),
        ("unterminated body", body[: len(body) // 2], content_type, {400}),
        ("no closing boundary", body[: -len(f"--{boundary}--\r\n")], content_type, {400}),
        ("empty body", b"", content_type, {400}),
        ("closing boundary only", f"--{boundary}--\r\n".encode(), content_type, {400}),
        (
            "huge part header",
            f"--{boundary}\r\nX-Filler: {'a' * 100_000}\r\n\r\n".encode() + part + body[-40:],
            content_type,
            {400},
        ),
        (
            "header without colon",
            f"--{boundary}\r\nno colon here\r\n\r\n".encode() + part + b"\r\n--" + b"x",
            content_type,
            {400},
        ),
        ("text/plain", body, "text/plain", {415}),
        ("no content type", body, "", {415}),
        ("json parts", body, _STOW_TYPE.replace("dicom", "json").format(boundary=boundary), {415}),
        ("garbage content type", body, ";;;===", {415}),
    ]
    for name, data, ctype, statuses in cases:
        response = await _post(platform, http, data, ctype)
        _assert_problem(response, statuses)
        assert response.status_code != 500, name
    await _assert_ready(platform, http)


async def test_a_part_that_is_not_application_dicom_is_a_dicom_failure(
    platform: Running, http: httpx.AsyncClient
) -> None:
    boundary = uuid.uuid4().hex
    body = (f"--{boundary}\r\nContent-Type: text/plain\r\n\r\nhello\r\n--{boundary}--\r\n").encode()
    response = await _post(platform, http, body, _STOW_TYPE.format(boundary=boundary))
    assert response.status_code == 409, response.text
    assert len(failure_reasons(response.json())) == 1


async def test_a_thousand_tiny_parts_each_get_a_failure_and_a_quarantine_row(
    platform: Running, http: httpx.AsyncClient
) -> None:
    parts = [f"tiny part {i}".encode() for i in range(1000)]
    response = await stow(http, platform.url, platform.producer(A), parts)
    assert response.status_code == 409, response.text
    assert len(failure_reasons(response.json())) == 1000
    assert await _quarantined(platform, parts) == 1000
    await _assert_ready(platform, http)

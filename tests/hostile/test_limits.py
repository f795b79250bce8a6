"""Limits as settings (issue 9): request size, instance size, frames, per-actor rate.

The platform runs with small limits so that each is reached with small inputs; every refusal
is clean (413/429 problem+json, or a DICOM failure reason with a quarantine row).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import uuid
from collections.abc import AsyncIterator
from io import BytesIO
from typing import Any

import asyncpg
import httpx
import pydicom
import pytest

from krypton.dicom.synthetic import Population, render_instances

from .conftest import Running

pytestmark = [pytest.mark.e2e, pytest.mark.nats, pytest.mark.postgres]

PLATFORM_ENV = {
    "KRYPTON_MAX_INSTANCE_BYTES": "60000",
    "KRYPTON_MAX_REQUEST_BYTES": "200000",
    "KRYPTON_MAX_FRAMES": "4",
    "KRYPTON_RATE_LIMIT_PER_SECOND": "2",
    "KRYPTON_RATE_LIMIT_BURST": "5",
}
STRUCTURE = "330781196"
PROBLEM = "application/problem+json"


def _instances(n: int, seed: int, frames: int = 1, rows: int = 4) -> list[bytes]:
    study = Population(seed, 10).study(0, max_instances_per_series=n)
    out: list[bytes] = []
    for data in render_instances(study, rows=rows, cols=rows, bits=16):
        if frames > 1:
            ds = pydicom.dcmread(BytesIO(data))
            ds.NumberOfFrames = frames
            ds.PixelData = ds.PixelData * frames
            buf = BytesIO()
            ds.save_as(buf, enforce_file_format=True)
            data = buf.getvalue()
        out.append(data)
        if len(out) == n:
            break
    return out


def _multipart(parts: list[bytes]) -> tuple[bytes, str]:
    boundary = uuid.uuid4().hex
    body = b"".join(
        f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode() + p + b"\r\n"
        for p in parts
    )
    return body + f"--{boundary}--\r\n".encode(), (
        f'multipart/related; type="application/dicom"; boundary={boundary}'
    )


def _producer(platform: Running, sub: str) -> dict[str, str]:
    return platform.headers("producer", sub, structure=STRUCTURE)


async def _stow(
    platform: Running, sub: str, parts: list[bytes], *, chunked: bool = False
) -> httpx.Response:
    body, content_type = _multipart(parts)
    headers = {**_producer(platform, sub), "Content-Type": content_type}
    content: Any = body
    if chunked:

        async def chunks() -> AsyncIterator[bytes]:
            for at in range(0, len(body), 16384):
                yield body[at : at + 16384]

        content = chunks()
    async with httpx.AsyncClient(timeout=60.0) as client:
        return await client.post(f"{platform.url}/studies", content=content, headers=headers)


async def _quarantined(platform: Running, data: bytes) -> int:
    assert platform.platform.pg_dsn is not None
    conn = await asyncpg.connect(platform.platform.pg_dsn)
    try:
        found = await conn.fetchval(
            "select count(*) from ingest.quarantine where sha256 = $1",
            hashlib.sha256(data).hexdigest(),
        )
    finally:
        await conn.close()
    return int(found)


def _reasons(response: httpx.Response) -> list[tuple[int, str]]:
    items = response.json().get("00081198", {}).get("Value", [])
    return [(i["00081197"]["Value"][0], i["00000902"]["Value"][0]) for i in items]


async def test_a_request_over_the_size_limit_is_413_with_or_without_a_length(
    platform: Running,
) -> None:
    parts = _instances(1, seed=1, rows=120) * 8  # 8 x 29 KB: each part under 60,000
    assert sum(map(len, parts)) > 200_000
    assert max(map(len, parts)) < 60_000
    for chunked in (False, True):
        response = await _stow(platform, f"big-{chunked}", parts, chunked=chunked)
        assert response.status_code == 413, response.text
        assert response.headers["content-type"].startswith(PROBLEM)


async def test_an_instance_over_the_size_limit_is_a_dicom_failure(platform: Running) -> None:
    (big,) = _instances(1, seed=2, rows=200)  # 200 x 200 x 2 bytes = 80,000 > 60,000
    response = await _stow(platform, "big-instance", [big])
    assert response.status_code == 409, response.text
    assert [code for code, _ in _reasons(response)] == [0xA700]


async def test_too_many_frames_are_refused_with_a_reason_and_quarantined(
    platform: Running,
) -> None:
    (many,) = _instances(1, seed=3, frames=8)
    (few,) = _instances(1, seed=4, frames=4)
    response = await _stow(platform, "frames", [many, few])
    assert response.status_code == 202, response.text
    ((code, reason),) = _reasons(response)
    assert code == 0xA700
    assert "NumberOfFrames" in reason
    assert await _quarantined(platform, many) == 1


async def test_an_actor_over_its_rate_gets_429_with_retry_after(platform: Running) -> None:
    greedy = platform.headers("professional", "810000000777", structure=STRUCTURE)
    other = platform.headers("professional", "810000000778", structure=STRUCTURE)
    statuses: list[int] = []
    async with httpx.AsyncClient(timeout=30.0) as client:
        for _ in range(12):
            response = await client.get(f"{platform.url}/studies", headers=greedy)
            statuses.append(response.status_code)
            if response.status_code == 429:
                assert response.headers["content-type"].startswith(PROBLEM)
                assert int(response.headers["retry-after"]) >= 1
        # Another actor is not held back by the first one's bucket.
        assert (await client.get(f"{platform.url}/studies", headers=other)).status_code == 200
    assert statuses[0] == 200
    assert 429 in statuses


async def test_a_control_byte_in_a_header_gets_a_400_problem(platform: Running) -> None:
    # httpx refuses to send such a header: a raw request line it is.
    host, port = platform.platform.base_url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    token = _producer(platform, "control-byte")["Authorization"]
    writer.write(
        b"POST /dicomweb/studies HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n"
        b"Content-Type: multipart/related\x01; boundary=x\r\n"
        + f"Authorization: {token}\r\nConnection: close\r\n\r\n".encode()
    )
    await writer.drain()
    answer = await reader.read()
    writer.close()
    await writer.wait_closed()
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.split(b"\r\n")[0].split()[1] == b"400", answer[:300]
    assert b"content-type: application/problem+json" in head.lower()
    assert json.loads(body)["status"] == 400

"""Helpers for end-to-end tests: multipart bodies, polling QIDO."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Sequence
from typing import Any

import httpx

STOW_TYPE = 'multipart/related; type="application/dicom"; boundary={boundary}'


def multipart(parts: Sequence[bytes]) -> tuple[bytes, str]:
    """A multipart/related body of application/dicom parts and its Content-Type."""
    boundary = uuid.uuid4().hex
    chunks: list[bytes] = []
    for part in parts:
        chunks.append(f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode())
        chunks.append(part)
        chunks.append(b"\r\n")
    chunks.append(f"--{boundary}--\r\n".encode())
    return b"".join(chunks), STOW_TYPE.format(boundary=boundary)


async def stow(
    client: httpx.AsyncClient,
    url: str,
    headers: dict[str, str],
    parts: Sequence[bytes],
    study: str | None = None,
) -> httpx.Response:
    body, content_type = multipart(parts)
    target = f"{url}/studies" + (f"/{study}" if study else "")
    return await client.post(
        target, content=body, headers={**headers, "Content-Type": content_type}
    )


async def qido(
    client: httpx.AsyncClient, url: str, path: str, headers: dict[str, str], **params: Any
) -> list[dict[str, Any]]:
    response = await client.get(f"{url}/{path}", params=params, headers=headers)
    assert response.status_code == 200, response.text
    result: list[dict[str, Any]] = response.json()
    return result


async def wait_for(
    client: httpx.AsyncClient,
    url: str,
    path: str,
    headers: dict[str, str],
    expected: int,
    timeout: float = 60.0,
    **params: Any,
) -> list[dict[str, Any]]:
    """Poll a QIDO search until it returns `expected` results (the index is eventually consistent)."""
    deadline = time.monotonic() + timeout
    found: list[dict[str, Any]] = []
    while time.monotonic() < deadline:
        response = await client.get(f"{url}/{path}", params=params, headers=headers)
        if response.status_code == 503:  # index restarting: the gateway says retry
            assert "retry-after" in response.headers
        else:
            assert response.status_code == 200, response.text
            found = response.json()
            if len(found) >= expected:
                return found
        await asyncio.sleep(0.1)
    return found


def value(item: dict[str, Any], tag: str) -> Any:
    """First value of a DICOM JSON attribute, or None."""
    element = item.get(tag)
    if not element or "Value" not in element:
        return None
    first = element["Value"][0]
    if isinstance(first, dict) and "Alphabetic" in first:
        return first["Alphabetic"]
    return first


def failure_reasons(body: dict[str, Any]) -> list[int]:
    return [i["00081197"]["Value"][0] for i in body.get("00081198", {}).get("Value", [])]

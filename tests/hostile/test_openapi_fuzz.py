"""Schemathesis against the gateway's own OpenAPI description, with a valid token (issue 9).

Every operation the gateway publishes at `/api/openapi.json` is called with generated path
parameters, query strings and bodies (a few examples each in CI) under an admin token and a
producer token. No answer may be a 5xx, and every 4xx must be problem+json (a STOW-RS refusal
is the DICOM JSON store response instead, by the standard).
"""

from __future__ import annotations

import asyncio
import os
from collections import Counter
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings

from .conftest import Running

pytestmark = [pytest.mark.e2e, pytest.mark.nats, pytest.mark.postgres, pytest.mark.slow]

EXAMPLES_PER_OPERATION = 4
STRUCTURE = "330781196"


def _header(response: Any, name: str) -> str | None:
    for key, value in response.headers.items():
        if key.lower() == name:
            return str(value[0] if isinstance(value, list) else value)
    return None


def _clean(case: Any, response: Any) -> str | None:
    status = response.status_code
    kind = _header(response, "content-type") or ""
    if status >= 500 and status != 503:
        return f"{case.method} {case.formatted_path}: {status} {response.text[:200]}"
    if status == 503 and _header(response, "retry-after") is None:
        return f"{case.method} {case.formatted_path}: 503 without Retry-After"
    if 400 <= status < 500 or status == 503:
        dicom_refusal = case.method == "POST" and kind.startswith("application/dicom+json")
        if not kind.startswith("application/problem+json") and not dicom_refusal:
            return f"{case.method} {case.formatted_path}: {status} as {kind!r}"
    return None


async def test_every_openapi_operation_answers_cleanly(platform: Running) -> None:
    async with httpx.AsyncClient(timeout=30.0) as client:
        spec = (await client.get(f"{platform.platform.base_url}/api/openapi.json")).json()
    schema = schemathesis.openapi.from_dict(spec)
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) > 20
    tokens = [
        platform.headers("admin", "fuzz-admin"),
        platform.headers("producer", "fuzz-producer", structure=STRUCTURE),
    ]
    base_url = platform.platform.base_url
    unclean: list[str] = []
    statuses: Counter[int] = Counter()

    def run() -> None:
        for operation in operations:

            @settings(
                max_examples=EXAMPLES_PER_OPERATION,
                deadline=None,
                database=None,
                # Fixed examples in CI; KRYPTON_FUZZ_RANDOM=1 for fresh ones on every run.
                derandomize=os.environ.get("KRYPTON_FUZZ_RANDOM") != "1",
                suppress_health_check=list(HealthCheck),
            )
            @given(case=operation.as_strategy())
            def call(case: Any) -> None:
                for headers in tokens:
                    response = case.call(base_url=base_url, headers=headers, timeout=30)
                    statuses[response.status_code] += 1
                    if (problem := _clean(case, response)) is not None:
                        unclean.append(problem)

            call()

    # Schemathesis drives synchronous calls: run them off the event loop.
    await asyncio.to_thread(run)
    assert not unclean, unclean[:20]
    assert sum(statuses.values()) >= len(operations)
    async with httpx.AsyncClient(timeout=10.0) as client:
        assert (await client.get(f"{base_url}/readyz")).status_code == 200

"""`krypton demo load`: demo data pushed through the public STOW-RS API, as a producer would.

Two sources: every DICOM file pydicom ships (refused ones are reported, that is part of the
demo), and a synthetic regional population (French names, INS, FINESS, several years, CT MR CR
DX MG US NM PT), each study sent by its own producing structure with that structure's token.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path

import httpx

from krypton.auth.dev_issuer import DevIssuer
from krypton.dicom.synthetic import Population, render_instances
from krypton.dicom.testfiles import pydicom_test_files

__all__ = ["load_demo"]

# pydicom's own files are stored as coming from this structure (CHU de Bordeaux's FINESS).
PYDICOM_STRUCTURE = "330781196"
_CONCURRENCY = 4
_ATTEMPTS = 6


def _multipart(parts: Sequence[bytes]) -> tuple[bytes, str]:
    boundary = uuid.uuid4().hex
    chunks: list[bytes] = []
    for part in parts:
        chunks += [
            f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode(),
            part,
            b"\r\n",
        ]
    chunks.append(f"--{boundary}--\r\n".encode())
    return b"".join(chunks), f'multipart/related; type="application/dicom"; boundary={boundary}'


async def _stow(
    client: httpx.AsyncClient, url: str, token: str, parts: Sequence[bytes]
) -> tuple[int, int]:
    body, content_type = _multipart(parts)
    for attempt in range(_ATTEMPTS):
        try:
            response = await client.post(
                f"{url}/dicomweb/studies",
                content=body,
                headers={"Authorization": f"Bearer {token}", "Content-Type": content_type},
            )
        except httpx.TransportError:
            # A dropped connection (e.g. a pooled keep-alive connection the server closed as
            # it was reused) means "send it again": resending the same bytes is always safe.
            if attempt == _ATTEMPTS - 1:
                raise
            await asyncio.sleep(0.5)
            continue
        if response.status_code != 503:
            break
        # The platform asks to come back later (e.g. a service restarting): resending is safe.
        await asyncio.sleep(float(response.headers.get("retry-after", "2")))
    if response.status_code not in (200, 202, 409):
        msg = f"STOW-RS answered {response.status_code}: {response.text[:300]}"
        raise RuntimeError(msg)
    payload = response.json()
    stored = len(payload.get("00081199", {}).get("Value", []))
    failed = len(payload.get("00081198", {}).get("Value", []))
    return stored, failed


async def load_demo(
    *,
    base_url: str,
    state_dir: Path,
    issuer_url: str,
    patients: int,
    seed: int,
    with_pydicom_files: bool,
    echo: Callable[[str], None] = print,
) -> int:
    """Push the demo data; return 0 when everything that should be stored was."""
    issuer = DevIssuer(state_dir / "issuer", issuer_url)
    tokens: dict[str, str] = {}

    def token_for(structure: str) -> str:
        if structure not in tokens:
            tokens[structure] = issuer.mint(
                role="producer", sub=f"demo-ris-{structure}", structure=structure, ttl=3600
            )
        return tokens[structure]

    started = time.monotonic()
    stored = refused = 0
    async with httpx.AsyncClient(timeout=120.0) as client:
        if with_pydicom_files:
            files = pydicom_test_files()
            for path in files:
                ok, failed = await _stow(
                    client, base_url, token_for(PYDICOM_STRUCTURE), [path.read_bytes()]
                )
                stored += ok
                refused += failed
            echo(f"pydicom test files: {stored} stored, {refused} refused (see the quarantine)")
        population = Population(seed, patients)
        n_studies = patients * 2
        semaphore = asyncio.Semaphore(_CONCURRENCY)
        synthetic = [0, 0]

        async def send(study_index: int) -> None:
            # Made inside the semaphore: rendering every study up front would hold them all in
            # memory and block the loop long enough for idle connections to be closed.
            async with semaphore:
                study = population.study(study_index, max_instances_per_series=4)
                parts = await asyncio.to_thread(lambda: list(render_instances(study)))
                ok, failed = await _stow(client, base_url, token_for(study.structure.finess), parts)
            synthetic[0] += ok
            synthetic[1] += failed

        await asyncio.gather(*(send(i) for i in range(n_studies)))
    elapsed = time.monotonic() - started
    echo(
        f"synthetic population: {n_studies} studies of {patients} patients, "
        f"{synthetic[0]} instances stored, {synthetic[1]} refused, in {elapsed:.1f} s"
    )
    return 0 if synthetic[1] == 0 else 1

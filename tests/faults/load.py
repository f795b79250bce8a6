"""A bounded STOW + QIDO + WADO load that keeps a ledger of what the platform acknowledged.

Writers send synthetic instances (`krypton.dicom.synthetic`) a few per STOW-RS request and
behave like a well-made client: an instance is *acknowledged* only when it is in a store
response's ReferencedSOPSequence; anything else (a 503, a failure reason, a dropped connection,
a verdict that did not come in time) is sent again later, unchanged. Readers search (QIDO-RS)
and retrieve acknowledged instances (WADO-RS), checking the bytes. Every answer is classified:
what a client may legitimately get during a fault (503 with Retry-After, a 4xx problem+json, a
DICOM failure reason asking for a resend, a dropped connection while the gateway itself is
down) is counted; anything else (another 5xx, a 4xx without problem+json, a hang past the
client timeout, wrong bytes) is recorded as *unclean* and fails the test.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import random
import re
import time
import uuid
from collections import Counter, deque
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import httpx

from krypton.dicom.synthetic import Population, render_instances

__all__ = ["Instance", "Ledger", "Load", "make_instances", "parse_multipart"]

PROBLEM = "application/problem+json"
DICOM_JSON = "application/dicom+json"
# Failure reasons that tell a client "not kept this time, send it again": out of resources
# (includes "accepted but not confirmed in time") and processing failure (a staged copy torn by
# a crash). A valid instance refused for any other reason is a bug.
RESEND_REASONS = {0xA700, 0x0110}


@dataclass(frozen=True, slots=True)
class Instance:
    """One synthetic instance and what identifies it."""

    study_uid: str
    series_uid: str
    sop_uid: str
    data: bytes

    @property
    def sha256(self) -> str:
        """Digest of the bytes sent (what a retrieval must give back)."""
        return hashlib.sha256(self.data).hexdigest()


def make_instances(*, seed: int, start: int = 0) -> Iterator[Instance]:
    """Small synthetic instances (32x32 pixels) of consecutive studies of a population, forever."""
    population = Population(seed, 1000)
    index = start
    while True:
        study = population.study(index, max_instances_per_series=3)
        index += 1
        series_uids = [s.series_uid for s in study.series for _ in range(s.instance_count)]
        for series_uid, data in zip(
            series_uids, render_instances(study, rows=32, cols=32, bits=8), strict=True
        ):
            yield Instance(study.study_uid, series_uid, _sop_uid(data), data)


_SOP_TAG = b"\x08\x00\x18\x00UI"


def _sop_uid(data: bytes) -> str:
    """SOP Instance UID (0008,0018) of an Explicit VR Little Endian file, read from its bytes."""
    at = data.index(_SOP_TAG) + len(_SOP_TAG)
    length = int.from_bytes(data[at : at + 2], "little")
    return data[at + 2 : at + 2 + length].rstrip(b"\0 ").decode()


def multipart(parts: Sequence[bytes]) -> tuple[bytes, str]:
    """A STOW-RS multipart/related body and its Content-Type."""
    boundary = uuid.uuid4().hex
    chunks: list[bytes] = []
    for part in parts:
        chunks += [f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode(), part]
        chunks.append(b"\r\n")
    chunks.append(f"--{boundary}--\r\n".encode())
    return b"".join(chunks), f'multipart/related; type="application/dicom"; boundary={boundary}'


def parse_multipart(response: httpx.Response) -> list[bytes]:
    """Bodies of every part of a multipart/related answer."""
    match = re.search(r"boundary=\"?([^\";]+)\"?", response.headers["content-type"])
    assert match, response.headers["content-type"]
    delimiter = b"--" + match.group(1).encode()
    parts = []
    for chunk in response.content.split(delimiter)[1:]:
        if chunk.startswith(b"--"):
            break
        _, _, body = chunk.partition(b"\r\n\r\n")
        parts.append(body[:-2] if body.endswith(b"\r\n") else body)
    return parts


@dataclass
class Ledger:
    """What the clients sent and what they were told."""

    requests: Counter[str] = field(default_factory=Counter)  # per kind: stow, qido, wado
    statuses: Counter[str] = field(default_factory=Counter)  # "stow 503", "wado 200", ...
    failure_reasons: Counter[str] = field(default_factory=Counter)  # hex code -> count
    acked: dict[str, Instance] = field(default_factory=dict)  # SOP UID -> instance
    dropped: int = 0  # connection refused or reset while the gateway process was down
    dropped_otherwise: int = 0  # the same while the gateway was meant to be up (reported)
    gateway_down: bool = False  # set by the test around a kill of the gateway

    def drop(self) -> None:
        """Count a dropped connection."""
        if self.gateway_down:
            self.dropped += 1
        else:
            self.dropped_otherwise += 1

    unclean: list[str] = field(default_factory=list)

    def flag(self, what: str) -> None:
        """Record an answer no client should ever get."""
        if len(self.unclean) < 200:
            self.unclean.append(what)


def _problem_or_flag(ledger: Ledger, kind: str, response: httpx.Response) -> None:
    status = response.status_code
    ledger.statuses[f"{kind} {status}"] += 1
    ctype = response.headers.get("content-type", "")
    if status == 503:
        if "retry-after" not in response.headers:
            ledger.flag(f"{kind} 503 without Retry-After: {response.text[:200]}")
        if not ctype.startswith(PROBLEM):
            ledger.flag(f"{kind} 503 not problem+json: {ctype}")
    elif 400 <= status < 500:
        if not ctype.startswith(PROBLEM):
            ledger.flag(f"{kind} {status} not problem+json: {ctype} {response.text[:200]}")
    elif status >= 500:
        ledger.flag(f"{kind} {status}: {response.text[:200]}")


def _retry_after(response: httpx.Response) -> float:
    try:
        return float(response.headers.get("retry-after", "1"))
    except ValueError:
        return 1.0


@dataclass
class Load:
    """Writers and readers against one platform, until told to stop.

    Args:
        url: DICOMweb root.
        producer: headers of a producer token (writers).
        reader: headers of a token that may read everything written (readers).
        supply: new instances to send, until `stop_supply`.
        rate: new instances per second, all writers together (a sustained, bounded load).
        per_request: instances per STOW request.
        timeout: a client gives up after this long; an answer that late is a hang.
    """

    url: str
    producer: dict[str, str]
    reader: dict[str, str]
    supply: Iterator[Instance]
    rate: float = 10.0
    per_request: int = 4
    timeout: float = 45.0
    writers: int = 2
    readers: int = 1
    ledger: Ledger = field(default_factory=Ledger)
    _todo: deque[Instance] = field(default_factory=deque)
    _stop: asyncio.Event = field(default_factory=asyncio.Event)
    _tasks: list[asyncio.Task[None]] = field(default_factory=list)
    _client: httpx.AsyncClient | None = None
    _in_flight: int = 0
    _supplying: bool = True
    _taken: int = 0
    _started: float = 0.0

    async def start(self) -> None:
        """Start the writer and reader tasks."""
        self._started = time.monotonic()
        self._client = httpx.AsyncClient(timeout=self.timeout)
        self._tasks = [asyncio.create_task(self._write()) for _ in range(self.writers)]
        self._tasks += [asyncio.create_task(self._read(n)) for n in range(self.readers)]

    def stop_supply(self) -> None:
        """Send no new instances from now on; keep resending the unacknowledged ones."""
        self._supplying = False

    @property
    def sent(self) -> int:
        """Distinct instances handed to writers so far."""
        return self._taken

    @property
    def pending(self) -> int:
        """Instances not acknowledged yet (waiting or in a request)."""
        return len(self._todo) + self._in_flight

    async def wait_all_acked(self, timeout: float) -> bool:
        """Wait until every instance is acknowledged (clients keep resending meanwhile)."""
        deadline = time.monotonic() + timeout
        while True:
            if not self.pending or time.monotonic() > deadline:
                return not self.pending
            await asyncio.sleep(0.2)

    async def stop(self) -> None:
        """Stop the tasks after their current request."""
        self._stop.set()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._client is not None:
            await self._client.aclose()

    async def _write(self) -> None:
        assert self._client is not None
        while not self._stop.is_set():
            batch = self._next_batch()
            if not batch:
                await asyncio.sleep(0.1)
                continue
            self._in_flight += len(batch)
            try:
                resend, pause = await self._stow(batch)
            finally:
                self._in_flight -= len(batch)
            self._todo.extend(resend)
            if pause:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stop.wait(), pause)

    def _next_batch(self) -> list[Instance]:
        """Resends first; then new instances, as the rate allows."""
        batch = [self._todo.popleft() for _ in range(min(self.per_request, len(self._todo)))]
        allowed = self.rate * (time.monotonic() - self._started) - self._taken
        while self._supplying and len(batch) < self.per_request and allowed >= 1:
            batch.append(next(self.supply))
            self._taken += 1
            allowed -= 1
        return batch

    async def _stow(self, batch: list[Instance]) -> tuple[list[Instance], float]:
        """Send one request; the instances to send again, and how long to wait first."""
        assert self._client is not None
        ledger = self.ledger
        body, content_type = multipart([i.data for i in batch])
        headers = {**self.producer, "Content-Type": content_type}
        ledger.requests["stow"] += 1
        try:
            response = await self._client.post(f"{self.url}/studies", content=body, headers=headers)
        except httpx.TimeoutException:
            ledger.flag(f"stow hang past {self.timeout} s")
            return batch, 0.5
        except httpx.TransportError:
            ledger.drop()
            return batch, 0.3
        status = response.status_code
        if status in (200, 202, 409) and response.headers.get("content-type", "").startswith(
            DICOM_JSON
        ):
            ledger.statuses[f"stow {status}"] += 1
            body_json: dict[str, Any] = response.json()
            referenced = {
                item["00081155"]["Value"][0]
                for item in body_json.get("00081199", {}).get("Value", [])
            }
            for item in body_json.get("00081198", {}).get("Value", []):
                code = item["00081197"]["Value"][0]
                ledger.failure_reasons[hex(code)] += 1
                if code not in RESEND_REASONS:
                    ledger.flag(f"valid instance refused: {item}")
            by_sop = {i.sop_uid: i for i in batch}
            for sop in referenced:
                if sop in by_sop:
                    ledger.acked[sop] = by_sop[sop]
            return [i for i in batch if i.sop_uid not in referenced], 0.0
        _problem_or_flag(ledger, "stow", response)
        return batch, min(_retry_after(response), 1.0)

    async def _read(self, n: int) -> None:
        assert self._client is not None
        rng = random.Random(n)
        while not self._stop.is_set():
            if rng.random() < 0.5 or not self.ledger.acked:
                await self._get("qido", f"{self.url}/studies", params={"limit": "20"})
            else:
                instance = self.ledger.acked[rng.choice(list(self.ledger.acked))]
                url = (
                    f"{self.url}/studies/{instance.study_uid}/series/{instance.series_uid}"
                    f"/instances/{instance.sop_uid}"
                )
                response = await self._get("wado", url)
                if response is not None and response.status_code == 200:
                    parts = parse_multipart(response)
                    if [hashlib.sha256(p).hexdigest() for p in parts] != [instance.sha256]:
                        self.ledger.flag(f"wado bytes differ for {instance.sop_uid}")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), 0.05)

    async def _get(
        self, kind: str, url: str, params: dict[str, str] | None = None
    ) -> httpx.Response | None:
        assert self._client is not None
        self.ledger.requests[kind] += 1
        try:
            response = await self._client.get(url, params=params, headers=self.reader)
        except httpx.TimeoutException:
            self.ledger.flag(f"{kind} hang past {self.timeout} s")
            return None
        except httpx.TransportError:
            self.ledger.drop()
            await asyncio.sleep(0.3)
            return None
        if response.status_code == 200:
            self.ledger.statuses[f"{kind} 200"] += 1
        else:
            # A 404 on WADO is allowed: the index is eventually consistent, an instance
            # acknowledged a moment ago may not be searchable yet.
            _problem_or_flag(self.ledger, kind, response)
        if response.status_code == 503:
            await asyncio.sleep(min(_retry_after(response), 1.0))
        return response

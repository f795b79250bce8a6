"""Mixed load: searches, retrievals and ingest at the same time, for a bounded duration.

Starts the embedded platform (every service as its own process, loopback only), either on the
cached regional population of `population.py` (``--studies N``: ``.state/bench-<N>``, loaded
the first time exactly as `scale.py` does) or, with ``--studies 0``, on a fresh temporary
state holding a small data set this script stores itself through STOW-RS. Then three streams
run concurrently, each a bounded loop with its own httpx client (``Accept-Encoding:
identity``) until ``--duration`` is over:

- **search**: QIDO-RS study searches of the kinds of `scale.py` (PatientID, fuzzy name, quarter
  + CT, accession, recent studies, limit/offset pages) with the professional, producer and
  admin tokens of `DevIssuer`, picked at random by ``--search-clients`` clients;
- **retrieve**: WADO-RS study metadata, instance metadata, rendered first image, frame 1 and
  the whole instance of the studies that have real objects, by ``--retrieve-clients`` clients;
- **ingest**: STOW-RS of fresh synthetic CT instances of 512x512, 16 bits (`Population` +
  `render_instances`, the body builder of `ingest.py`), ``--per-request`` per request, by
  ``--ingest-clients`` clients, at most ``--ingest-rate`` instances/s when given. The
  instances are generated while the load runs (about 1 ms each, in a thread) with a seed of
  their own per run, so every run stores new studies.

Reported (printed, JSON in ``results/<name>-<UTC>.json`` + ``results/<name>.json``, PNG):

- per stream p50/p95/p99/max, throughput, status counts (any non-2xx is a finding) and the
  p99 of each 10-s window (stable or drifting);
- ingest: instances acknowledged vs indexed at the end of the load, how long after the last
  acknowledgement everything was indexed, the indexing lag over time, and finally the
  instances QIDO counts (searchable) against the acknowledged ones;
- JetStream consumer backlog (pending + unacknowledged) of the ingest, index, render and
  audit durables, every second;
- per service CPU % and memory: RSS every second (PostgreSQL: PSS, as its RSS counts the
  shared buffers once per backend), the peak, ``VmHWM`` (the kernel's peak of one process),
  and a verdict per service: is RSS at the end of the load above what it was in the first
  minute (growing) or not (bounded);
- with ``--alone``, each stream first runs alone for a third of ``--duration``, and the report
  gives the interference ratio (mixed p50/p99 over alone, throughput mixed over alone).

Between phases the pipeline is drained (every durable without backlog, bounded by
``--drain-timeout``). On a cached population the studies ingested by the run are deleted
afterwards (index rows and objects; ``--keep-ingested`` keeps them), so the population stays
the one `scale.py` measures and the disk does not grow by ~0.5 MB per instance each run.

    .venv/bin/python benchmarks/mixed.py --studies 1000000 --duration 90 --alone
    .venv/bin/python benchmarks/mixed.py --studies 0 --duration 30      # smoke, own data set
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import random
import shutil
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import nats
import nats.js.errors
import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent))

import population
import scale
from common import (
    ProcessSampler,
    SystemCpu,
    log,
    machine,
    machine_line,
    platform_groups,
    postgres_version,
    print_table,
    pyplot,
    save_figure,
    started_platform,
    summarise,
    write_result,
)
from ingest import multipart, searchable_count
from krypton.auth.dev_issuer import DevIssuer
from krypton.contracts.subjects import AUDIT_STREAM, INGEST_STREAM, INSTANCES_STREAM
from krypton.dicom.synthetic import Population, Structure, SyntheticStudy, render_instances
from qido import Query

NAME = "mixed"
WINDOW_S = 10.0
MIB = 1024**2
IDENTITY = {"Accept-Encoding": "identity"}
# (label, stream, durable) of every JetStream consumer on the ingest → index path and beside it.
DURABLES = (
    ("ingest", INGEST_STREAM, "ingest"),
    ("index", INSTANCES_STREAM, "index"),
    ("render", INSTANCES_STREAM, "render"),
    ("audit-studies", INSTANCES_STREAM, "audit-studies"),
    ("audit", AUDIT_STREAM, "audit"),
)
RETRIEVE_KINDS = {
    "study_metadata": "application/dicom+json",
    "instance_metadata": "application/dicom+json",
    "rendered": "image/jpeg",
    "frame": 'multipart/related; type="application/octet-stream"',
    "instance": 'multipart/related; type="application/dicom"; transfer-syntax=*',
}
STREAMS = ("search", "retrieve", "ingest")


# --- what the streams record ---------------------------------------------------------------


@dataclass
class Recorder:
    """Every request of one stream in one phase: completion time, latency, kind, status."""

    stream: str
    t0: float
    samples: list[tuple[float, float, str, int]] = field(default_factory=list)
    statuses: Counter[str] = field(default_factory=Counter)
    examples: list[str] = field(default_factory=list)  # the first few errors, for the report

    async def timed(self, kind: str, request: Awaitable[httpx.Response]) -> httpx.Response | None:
        """Await `request`, record its latency and status (0: no answer); the response or None."""
        started = time.perf_counter()
        response: httpx.Response | None
        try:
            response = await request
            status = response.status_code
        except httpx.HTTPError as exc:
            response, status = None, 0
            detail = repr(exc)
        else:
            detail = response.text[:200] if not 200 <= status < 300 else ""
        done = time.perf_counter()
        self.samples.append((done - self.t0, done - started, kind, status))
        self.statuses[str(status)] += 1
        if not 200 <= status < 300 and len(self.examples) < 5:
            self.examples.append(f"{kind}: {status} {detail}")
        return response

    def errors(self) -> int:
        """Requests that did not end in 2xx."""
        return sum(n for s, n in self.statuses.items() if not s.startswith("2"))

    def report(self, elapsed: float) -> dict[str, Any]:
        """Summary, per kind, statuses and the p99 of each 10-s window."""
        kinds: dict[str, list[float]] = {}
        for _, latency, kind, _ in self.samples:
            kinds.setdefault(kind, []).append(latency)
        # 10-s windows by completion time; the last one takes the stragglers of the deadline.
        count = max(1, round(elapsed / WINDOW_S))
        buckets: list[list[float]] = [[] for _ in range(count)]
        for t, latency, _, _ in self.samples:
            buckets[min(int(t // WINDOW_S), count - 1)].append(latency)
        windows = []
        for w, inside in enumerate(buckets):
            span = WINDOW_S if w < count - 1 else max(elapsed - w * WINDOW_S, 1e-3)
            s = summarise(inside, span)
            windows.append(
                {"t0": w * WINDOW_S, "count": s["count"], "p99_ms": s["p99_ms"],
                 "p50_ms": s["p50_ms"], "per_s": s.get("per_s", 0.0)}
            )  # fmt: skip
        return {
            "summary": summarise([s[1] for s in self.samples], elapsed),
            "by_kind": {k: summarise(v, elapsed) for k, v in sorted(kinds.items())},
            "statuses": dict(self.statuses),
            "errors": self.errors(),
            "error_examples": self.examples,
            "windows": windows,
            "drift": drift(windows),
        }


def drift(windows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Is the p99 of the 10-s windows stable? Last full window over first, max over median."""
    p99s = [w["p99_ms"] for w in windows if w["count"] and w["p99_ms"] == w["p99_ms"]]
    if len(p99s) < 2:
        return {"windows": len(p99s), "verdict": "too short to tell"}
    ordered = sorted(p99s)
    median = ordered[len(ordered) // 2]
    last_over_first = p99s[-1] / max(p99s[0], 1e-3)
    max_over_median = ordered[-1] / max(median, 1e-3)
    if last_over_first > 1.5:
        verdict = "drifting up"
    elif max_over_median > 3:
        verdict = "spiky"
    else:
        verdict = "stable"
    return {
        "windows": len(p99s),
        "first_p99_ms": round(p99s[0], 2),
        "last_p99_ms": round(p99s[-1], 2),
        "median_p99_ms": round(median, 2),
        "max_p99_ms": round(ordered[-1], 2),
        "last_over_first": round(last_over_first, 2),
        "max_over_median": round(max_over_median, 2),
        "verdict": verdict,
    }


# --- the platform and what the streams use -------------------------------------------------


@dataclass
class Setup:
    """The running platform, tokens, query pools and retrieval targets."""

    platform: Any
    dsn: str
    issuer: DevIssuer
    headers: dict[str, dict[str, str]]  # professional / producer / admin
    pools: dict[str, list[Query]]
    targets: list[tuple[str, dict[str, str]]]  # instance path, headers (producer of its study)
    structure: Structure  # the professional's and the ingest producer's structure
    data: dict[str, Any]  # how the data set came to be (for the JSON)

    @property
    def url(self) -> str:
        """DICOMweb root."""
        return str(self.platform.dicomweb_url)


def _bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def tokens(issuer: DevIssuer, sub: str, structure: str) -> dict[str, dict[str, str]]:
    """Headers of the three searching tokens."""
    return {
        "professional": _bearer(
            issuer.mint(
                role="professional", sub=sub, structure=structure, profession="10", name="Dr Bench"
            )
        ),
        "producer": _bearer(
            issuer.mint(role="producer", sub=f"ris-{structure}", structure=structure)
        ),
        "admin": _bearer(issuer.mint(role="admin", sub="bench-admin")),
    }


async def instance_targets(
    url: str, studies: Sequence[tuple[str, str]], issuer: DevIssuer
) -> list[tuple[str, dict[str, str]]]:
    """Path of the first instance of each study (`scale.wado_targets`), with its producer token."""

    def producer(finess: str) -> dict[str, str]:
        return _bearer(issuer.mint(role="producer", sub=f"ris-{finess}", structure=finess))

    async with httpx.AsyncClient(timeout=60.0, headers=IDENTITY) as client:
        found = await scale.wado_targets(client, url, studies, producer)
    return [(rendered.removesuffix("/rendered"), h) for _, rendered, h in found]


@contextlib.asynccontextmanager
async def on_population(args: argparse.Namespace) -> AsyncIterator[Setup]:
    """The platform on the cached population of ``--studies`` studies (loaded if needed)."""
    # The same professional and query values as `scale.py`.
    prepared = await scale.prepare(args)
    state_dir, config, region, dsn, load = (
        prepared.state_dir, prepared.config, prepared.region, prepared.dsn, prepared.load
    )  # fmt: skip
    sub, finess, pools = prepared.sub, prepared.structure, prepared.pools
    structure = next(s for s in region.structures if s.finess == finess)
    async with scale._platform(state_dir, args.dsn) as platform:
        issuer = DevIssuer(platform.state_dir / "issuer", platform.issuer_url)
        objects = [
            (region.study_uid(i), region.studies(i, 1)["structure"][0])
            for i in population.object_studies(config)
        ]
        targets = await instance_targets(platform.dicomweb_url, objects, issuer)
        yield Setup(
            platform=platform,
            dsn=dsn,
            issuer=issuer,
            headers=tokens(issuer, sub, finess),
            pools=pools,
            targets=targets,
            structure=structure,
            data={"population": args.studies, "state_dir": str(state_dir), "load": load},
        )


@contextlib.asynccontextmanager
async def on_small_set(args: argparse.Namespace) -> AsyncIterator[Setup]:
    """A fresh platform holding ``--small-studies`` studies stored here through STOW-RS."""
    source = Population(args.seed, max(100, args.small_studies * 4))
    studies = [
        source.study(i, max_instances_per_series=args.small_instances)
        for i in range(args.small_studies)
    ]
    # The professional works where most of the studies come from.
    finess = Counter(s.structure.finess for s in studies).most_common(1)[0][0]
    structure = next(s.structure for s in studies if s.structure.finess == finess)
    with tempfile.TemporaryDirectory(prefix="krypton-bench-mixed-") as tmp:
        log("starting the platform")
        async with started_platform(Path(tmp)) as platform:
            assert platform.pg_dsn is not None
            issuer = DevIssuer(platform.state_dir / "issuer", platform.issuer_url)
            log(f"storing {len(studies)} studies (512x512) through STOW-RS")
            started = time.perf_counter()
            stored = await stow_studies(platform.dicomweb_url, issuer, studies)
            stow_s = time.perf_counter() - started
            await wait_rows(platform.pg_dsn, stored, args.drain_timeout)
            await wait_drained(platform.nats.url, args.drain_timeout)
            own = [
                {
                    "patient_id": s.patient_id,
                    "patient_name": s.patient.dicom_name,
                    "study_date": s.study_date,
                    "accession_number": s.accession_number,
                    "modalities": s.modalities,
                }
                for s in studies
                if s.structure.finess == finess
            ]
            targets = await instance_targets(
                platform.dicomweb_url,
                [(s.study_uid, s.structure.finess) for s in studies],
                issuer,
            )
            yield Setup(
                platform=platform,
                dsn=platform.pg_dsn,
                issuer=issuer,
                headers=tokens(issuer, "bench-dr", finess),
                pools=scale.query_pools(own, args.pool, args.seed),
                targets=targets,
                structure=structure,
                data={
                    "population": 0,
                    "small_studies": len(studies),
                    "small_instances": stored,
                    "stow_s": round(stow_s, 2),
                    "professional_structure_studies": len(own),
                },
            )


async def stow_studies(url: str, issuer: DevIssuer, studies: Sequence[SyntheticStudy]) -> int:
    """Store `studies` (512x512, 16 bits), each with its structure's producer token."""
    stored = 0
    async with httpx.AsyncClient(timeout=300.0, headers=IDENTITY) as client:
        for study in studies:
            body, content_type = multipart(list(render_instances(study, rows=512, cols=512)))
            finess = study.structure.finess
            response = await client.post(
                f"{url}/studies",
                content=body,
                headers={
                    **_bearer(issuer.mint(role="producer", sub=f"ris-{finess}", structure=finess)),
                    "Content-Type": content_type,
                    "Accept": "application/dicom+json",
                },
            )
            if response.status_code != 200:
                msg = f"STOW of the data set: {response.status_code} {response.text[:300]}"
                raise RuntimeError(msg)
            stored += study.instance_count
    return stored


async def wait_rows(dsn: str, expected: int, timeout: float) -> None:
    """Until ``index.instances`` holds `expected` rows (the small data set only)."""
    conn = await asyncpg.connect(dsn)
    try:
        deadline = time.perf_counter() + timeout
        while int(await conn.fetchval("SELECT count(*) FROM index.instances")) < expected:
            if time.perf_counter() > deadline:
                msg = f"the data set was not indexed within {timeout} s"
                raise TimeoutError(msg)
            await asyncio.sleep(0.2)
    finally:
        await conn.close()


# --- JetStream backlog ---------------------------------------------------------------------


async def backlog(js: Any) -> dict[str, int]:
    """Pending + unacknowledged messages of each durable (-1: the consumer does not exist)."""
    out = {}
    for label, stream, durable in DURABLES:
        try:
            info = await js.consumer_info(stream, durable)
        except nats.js.errors.NotFoundError:
            out[label] = -1
            continue
        out[label] = int(info.num_pending or 0) + int(info.num_ack_pending or 0)
    return out


async def wait_drained(nats_url: str, timeout: float, skip: Sequence[str] = ()) -> float | None:
    """Seconds until no durable but those in `skip` has a backlog (None: not within `timeout`)."""
    nc = await nats.connect(nats_url)
    try:
        js = nc.jetstream()
        started = time.perf_counter()
        while time.perf_counter() - started < timeout:
            left = await backlog(js)
            if all(n <= 0 for label, n in left.items() if label not in skip):
                return time.perf_counter() - started
            await asyncio.sleep(0.5)
    finally:
        await nc.close()
    return None


# --- the ingest feed -----------------------------------------------------------------------


class IngestFeed:
    """Fresh CT instances (512x512, 16 bits), `per_request` to a multipart body, on demand.

    Shared by every ingest client of every phase; counts what was acknowledged and when.
    """

    def __init__(self, seed: int, structure: Structure, per_request: int) -> None:
        """Studies of `Population(seed)` whose one structure is the producer's."""
        self.population = Population(seed, 100_000, structures=(structure,))
        self.per_request = per_request
        self._instances = self._generate()
        self._lock = threading.Lock()
        # One thread builds every body: one malloc arena keeps the freed 5 MB bodies, not one
        # per thread of the default executor.
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ingest-feed")
        self.studies: set[str] = set()
        self.series: list[str] = []
        self.acked = 0
        self.failed = 0
        self.ack_times: list[tuple[float, int]] = []  # (perf_counter, acked so far)

    def _generate(self) -> Iterator[tuple[SyntheticStudy, bytes]]:
        index = 0
        while True:
            study = self.population.study(index, max_instances_per_series=25)
            index += 1
            if study.modalities != ("CT",):
                continue
            for data in render_instances(study, rows=512, cols=512, bits=16):
                yield study, data

    def next_body(self) -> tuple[bytes, str, int]:
        """The next body (thread-safe: it runs in a worker thread), its type and size."""
        with self._lock:
            items = [next(self._instances) for _ in range(self.per_request)]
            for study, _ in items:
                if study.study_uid not in self.studies:
                    self.studies.add(study.study_uid)
                    self.series.extend(s.series_uid for s in study.series)
        body, content_type = multipart([data for _, data in items])
        return body, content_type, len(items)

    def record(self, response: httpx.Response | None, count: int) -> None:
        """Count the instances `response` acknowledged (and those it refused)."""
        if response is None or response.status_code not in (200, 202, 409):
            self.failed += count
            return
        payload = response.json()
        self.acked += len(payload.get("00081199", {}).get("Value", []))
        self.failed += len(payload.get("00081198", {}).get("Value", []))
        self.ack_times.append((time.perf_counter(), self.acked))


class Pacer:
    """Spaces requests so that instances go out at `rate` per second at most (0: no limit)."""

    def __init__(self, rate: float) -> None:
        """Nothing is scheduled until the first `wait`."""
        self.rate = rate
        self._next: float | None = None

    async def wait(self, count: int) -> None:
        """Sleep until `count` more instances may go."""
        if not self.rate:
            return
        now = time.perf_counter()
        # A client that fell behind does not earn a burst: at most one second of catch-up.
        if self._next is None or self._next < now - 1.0:
            self._next = now
        due = self._next
        self._next += count / self.rate
        if due > now:
            await asyncio.sleep(due - now)


# --- the streams ---------------------------------------------------------------------------


async def search_stream(
    setup: Setup, clients: int, rec: Recorder, deadline: float, seed: int
) -> None:
    """QIDO study searches, random kind, value and token, until `deadline`."""
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(timeout=120.0, limits=limits, headers=IDENTITY) as client:

        async def worker(k: int) -> None:
            rng = random.Random(seed * 1000 + k)
            kinds = sorted(setup.pools)
            names = sorted(setup.headers)
            while time.perf_counter() < deadline:
                kind, token = rng.choice(kinds), rng.choice(names)
                query = rng.choice(setup.pools[kind])
                await rec.timed(
                    f"{kind}|{token}",
                    client.get(
                        f"{setup.url}/{query.path}",
                        params=list(query.params),
                        headers=setup.headers[token],
                    ),
                )

        await asyncio.gather(*(worker(k) for k in range(clients)))


def retrieve_path(kind: str, instance: str) -> str:
    """The WADO-RS path of `kind` for the instance at `instance` (``studies/../instances/..``)."""
    if kind == "study_metadata":
        return instance.split("/series/", 1)[0] + "/metadata"
    suffix = {"instance_metadata": "/metadata", "rendered": "/rendered", "frame": "/frames/1"}
    return instance + suffix.get(kind, "")


async def retrieve_stream(
    setup: Setup, clients: int, rec: Recorder, deadline: float, seed: int
) -> None:
    """WADO-RS metadata, rendered image, frame and instance of random object studies."""
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(timeout=120.0, limits=limits, headers=IDENTITY) as client:

        async def worker(k: int) -> None:
            rng = random.Random(seed * 1000 + 500 + k)
            kinds = list(RETRIEVE_KINDS)
            while time.perf_counter() < deadline:
                kind = rng.choice(kinds)
                instance, headers = rng.choice(setup.targets)
                await rec.timed(
                    kind,
                    client.get(
                        f"{setup.url}/{retrieve_path(kind, instance)}",
                        headers={**headers, "Accept": RETRIEVE_KINDS[kind]},
                    ),
                )

        await asyncio.gather(*(worker(k) for k in range(clients)))


async def ingest_stream(
    setup: Setup, feed: IngestFeed, clients: int, rate: float, rec: Recorder, deadline: float
) -> None:
    """STOW-RS of fresh instances, paced at `rate` instances/s, until `deadline`."""
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    producer = _bearer(
        setup.issuer.mint(
            role="producer", sub=f"bench-{setup.structure.finess}", structure=setup.structure.finess
        )
    )
    pacer = Pacer(rate)
    async with httpx.AsyncClient(timeout=300.0, limits=limits, headers=IDENTITY) as client:

        async def worker() -> None:
            while time.perf_counter() < deadline:
                # Generation (~1 ms an instance) runs in a thread, off the event loop that
                # times the other streams.
                body, content_type, count = await asyncio.get_running_loop().run_in_executor(
                    feed.executor, feed.next_body
                )
                await pacer.wait(count)
                if time.perf_counter() >= deadline:
                    return
                response = await rec.timed(
                    "stow",
                    client.post(
                        f"{setup.url}/studies",
                        content=body,
                        headers={
                            **producer,
                            "Content-Type": content_type,
                            "Accept": "application/dicom+json",
                        },
                    ),
                )
                feed.record(response, count)

        await asyncio.gather(*(worker() for _ in range(clients)))


async def warm_up(setup: Setup) -> dict[str, Any]:
    """Each retrieval kind of each target once (the first rendering computes and caches)."""
    rec = Recorder("warm-up", time.perf_counter())
    async with httpx.AsyncClient(timeout=120.0, headers=IDENTITY) as client:
        for instance, headers in setup.targets:
            for kind, accept in RETRIEVE_KINDS.items():
                await rec.timed(
                    kind,
                    client.get(
                        f"{setup.url}/{retrieve_path(kind, instance)}",
                        headers={**headers, "Accept": accept},
                    ),
                )
        for kind, queries in setup.pools.items():
            for token, headers in setup.headers.items():
                query = queries[0]
                await rec.timed(
                    f"{kind}|{token}",
                    client.get(
                        f"{setup.url}/{query.path}", params=list(query.params), headers=headers
                    ),
                )
    return {"requests": len(rec.samples), "statuses": dict(rec.statuses), "errors": rec.examples}


# --- sampling during a phase ---------------------------------------------------------------


class MemorySampler(ProcessSampler):
    """`ProcessSampler` that also keeps each group's RSS and PSS at every sample."""

    def __init__(self, groups: dict[str, list[psutil.Process]], interval: float = 1.0) -> None:
        """As `ProcessSampler`; RSS/PSS timelines in MiB."""
        super().__init__(groups, interval)
        self.rss: dict[str, list[float]] = {name: [] for name in groups}
        self.pss: dict[str, list[float]] = {name: [] for name in groups}

    def _sample(self, *, record: bool) -> None:
        super()._sample(record=record)
        if not record:
            return
        for name, group in self.groups.items():
            rss = pss = 0
            for proc in self._members(group):
                try:
                    info = proc.memory_full_info()  # smaps_rollup: PSS splits shared pages
                except psutil.Error:
                    continue
                rss += info.rss
                pss += getattr(info, "pss", info.rss)
            self.rss[name].append(round(rss / MIB, 1))
            self.pss[name].append(round(pss / MIB, 1))


class Monitor:
    """JetStream backlog every second and, with a feed, indexed ingest instances every 2 s."""

    def __init__(self, setup: Setup, feed: IngestFeed | None, t0: float) -> None:
        """Nothing runs until `start`."""
        self.setup = setup
        self.feed = feed
        self.t0 = t0
        self.backlog: list[tuple[float, dict[str, int]]] = []
        self.indexed: list[tuple[float, int]] = []
        self._task: asyncio.Task[None] | None = None
        self._nc: Any = None
        self._conn: asyncpg.Connection | None = None
        self._conn_lock = asyncio.Lock()  # the poller and the end-of-load check share it

    async def start(self) -> None:
        """Connect and start polling."""
        self._nc = await nats.connect(self.setup.platform.nats.url)
        self._conn = await asyncpg.connect(self.setup.dsn)
        self._task = asyncio.create_task(self._run())

    async def indexed_now(self) -> int:
        """Rows in ``index.instances`` of the feed's series (by the series index)."""
        if self.feed is None or self._conn is None or not self.feed.series:
            return 0
        async with self._conn_lock:
            return int(
                await self._conn.fetchval(
                    "SELECT count(*) FROM index.instances WHERE series_uid = ANY($1::text[])",
                    list(self.feed.series),
                )
            )

    async def _run(self) -> None:
        js = self._nc.jetstream()
        tick = 0
        while True:
            now = time.perf_counter() - self.t0
            self.backlog.append((round(now, 2), await backlog(js)))
            if self.feed is not None and tick % 2 == 0:
                self.indexed.append((round(now, 2), await self.indexed_now()))
            tick += 1
            await asyncio.sleep(1.0)

    async def stop(self) -> None:
        """Stop polling and disconnect."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._nc is not None:
            await self._nc.close()
        if self._conn is not None:
            await self._conn.close()


def memory_verdicts(sampler: MemorySampler, duration: float) -> dict[str, dict[str, Any]]:
    """Per group: RSS in the first minute (or third of the run), peak, at the end, and a verdict.

    PostgreSQL is judged on PSS (its RSS sum counts the shared buffers once per backend that
    touched them, which grows with the number of backends, not with a leak).
    """
    t = [x - sampler._start for x in sampler.times]
    first = min(60.0, duration / 3)
    out: dict[str, dict[str, Any]] = {}
    for name in sampler.groups:
        series = sampler.pss[name] if name == "postgres" else sampler.rss[name]
        if not series:
            continue
        early = [v for x, v in zip(t, series, strict=False) if x <= first] or series[:1]
        tail = series[-max(1, len(series) // 20) :]
        end = sum(tail) / len(tail)
        start_max = max(early)
        peak = max(series)
        grows = end > start_max * 1.10 + 8
        half = len(series) // 2
        slope = _slope(t[half:], series[half:]) * 60
        out[name] = {
            "measure": "PSS" if name == "postgres" else "RSS",
            "first_window_s": round(first, 1),
            "first_window_max_mib": round(start_max, 1),
            "peak_mib": round(peak, 1),
            "end_mib": round(end, 1),
            "second_half_slope_mib_per_min": round(slope, 2),
            # Under a minute, warm-up (JetStream's file store, connection pools) looks like
            # growth: only a longer run tells.
            "verdict": "bounded"
            if not grows
            else ("growing" if duration >= 60 else "unclear (run under 60 s)"),
        }
    return out


def _slope(xs: Sequence[float], ys: Sequence[float]) -> float:
    """Least-squares slope of ys over xs (0 with fewer than 2 points)."""
    n = min(len(xs), len(ys))
    if n < 2:
        return 0.0
    mx, my = sum(xs[:n]) / n, sum(ys[:n]) / n
    var = sum((x - mx) ** 2 for x in xs[:n])
    return (
        sum((x - mx) * (y - my) for x, y in zip(xs[:n], ys[:n], strict=True)) / var if var else 0.0
    )


def lag_timeline(
    indexed: Sequence[tuple[float, int]],
    ack_times: Sequence[tuple[float, int]],
    t0: float,
    acked_before: int,
) -> list[tuple[float, float]]:
    """(t, seconds since the n-th instance was acknowledged) for each indexed count n.

    Counts are cumulative over the run; those of earlier phases (up to `acked_before`) are
    skipped.
    """
    out = []
    acks = [(t - t0, n) for t, n in ack_times]
    for t, n in indexed:
        if n <= acked_before:
            continue
        acked_at = next((ta for ta, na in acks if na >= n), None)
        if acked_at is not None:
            out.append((t, round(max(t - acked_at, 0.0), 2)))
    return out


# --- a phase -------------------------------------------------------------------------------


async def run_phase(
    setup: Setup,
    args: argparse.Namespace,
    feed: IngestFeed,
    label: str,
    streams: Sequence[str],
    duration: float,
    *,
    last: bool = False,
) -> dict[str, Any]:
    """Run `streams` together for `duration` s, then drain the pipeline; the phase's figures."""
    log(f"phase {label}: {', '.join(streams)} for {duration:.0f} s")
    sampler = MemorySampler(platform_groups(setup.platform), interval=1.0)
    system = SystemCpu()
    t0 = time.perf_counter()
    deadline = t0 + duration
    acked_before = feed.acked
    acks_before = len(feed.ack_times)
    monitor = Monitor(setup, feed if "ingest" in streams else None, t0)
    recorders = {s: Recorder(s, t0) for s in streams}
    seed = args.seed + len(label)
    runs: dict[str, Callable[[], Awaitable[None]]] = {
        "search": lambda: search_stream(
            setup, args.search_clients, recorders["search"], deadline, seed
        ),
        "retrieve": lambda: retrieve_stream(
            setup, args.retrieve_clients, recorders["retrieve"], deadline, seed
        ),
        "ingest": lambda: ingest_stream(
            setup, feed, args.ingest_clients, args.ingest_rate, recorders["ingest"], deadline
        ),
    }
    await monitor.start()
    system.start()
    sampler.start()
    await asyncio.gather(*(runs[s]() for s in streams))
    elapsed = time.perf_counter() - t0
    await sampler.stop()
    system.stop()
    out: dict[str, Any] = {
        "streams": {s: r.report(elapsed) for s, r in recorders.items()},
        "elapsed_s": round(elapsed, 2),
        # Every request (completion s, latency s) for the plot; not saved in the JSON.
        "raw": {s: [(t, lat) for t, lat, _, _ in r.samples] for s, r in recorders.items()},
    }
    if "ingest" in streams:
        acked = feed.acked - acked_before
        indexed_at_end = await monitor.indexed_now()
        last_ack = feed.ack_times[-1][0] if len(feed.ack_times) > acks_before else t0
        # Everything acknowledged must become searchable: wait for the index to catch up.
        all_indexed_s = None
        deadline_index = time.perf_counter() + args.drain_timeout
        while time.perf_counter() < deadline_index:
            if await monitor.indexed_now() >= feed.acked:
                all_indexed_s = time.perf_counter() - last_ack
                break
            await asyncio.sleep(0.25)
        lags = lag_timeline(monitor.indexed, feed.ack_times[acks_before:], t0, acked_before)
        out["ingest"] = {
            "acked": acked,
            "acked_per_s": round(acked / elapsed, 1),
            "failed": feed.failed,
            "indexed_total_at_end_of_load": indexed_at_end,
            "acked_total": feed.acked,
            "backlog_at_end_of_load": feed.acked - indexed_at_end,
            "all_indexed_s_after_last_ack": round(all_indexed_s, 2)
            if all_indexed_s is not None
            else None,
            "max_lag_s": max((lag for _, lag in lags), default=0.0),
            "lag": lags,
            "acked_timeline": [
                (round(t - t0, 2), n - acked_before) for t, n in feed.ack_times[acks_before:]
            ],
            "indexed_timeline": monitor.indexed,
        }
    # Between phases everything drains, so that a phase does not pay for the previous one's
    # backlog. After the last one the render precompute (thumbnails, HTJ2K copies, at low
    # priority, minutes behind a sustained 512x512 ingest on two cores) is left running: its
    # backlog at that point is reported instead.
    skip = ("render",) if last else ()
    drained = await wait_drained(setup.platform.nats.url, args.drain_timeout, skip)
    await monitor.stop()
    out["drained_s_after_load"] = round(drained, 1) if drained is not None else None
    out["drain_skipped"] = list(skip)
    out["render_backlog_after_drain"] = (
        monitor.backlog[-1][1]["render"] if monitor.backlog else None
    )
    out["backlog"] = {
        "t": [t for t, _ in monitor.backlog],
        "durables": {label: [b[label] for _, b in monitor.backlog] for label, _, _ in DURABLES},
        "max": {
            label: max((b[label] for _, b in monitor.backlog), default=0)
            for label, _, _ in DURABLES
        },
    }
    out["processes"] = sampler.report()
    out["memory"] = memory_verdicts(sampler, elapsed)
    out["system_cpu_pct"] = system.report()
    out["timeline"] = {**sampler.timelines(), "rss_mib": sampler.rss, "pss_mib": sampler.pss}
    return out


def interference(phases: dict[str, Any]) -> dict[str, Any]:
    """Mixed over alone, per stream: latency (p50, p99) and throughput ratios."""
    out = {}
    mixed = phases["mixed"]["streams"]
    for stream in STREAMS:
        alone = phases.get(f"{stream}_alone")
        if alone is None or stream not in mixed:
            continue
        a, m = alone["streams"][stream]["summary"], mixed[stream]["summary"]
        out[stream] = {
            "alone_p50_ms": a["p50_ms"],
            "alone_p99_ms": a["p99_ms"],
            "alone_per_s": a.get("per_s"),
            "mixed_p50_ms": m["p50_ms"],
            "mixed_p99_ms": m["p99_ms"],
            "mixed_per_s": m.get("per_s"),
            "p50_ratio": round(m["p50_ms"] / max(a["p50_ms"], 1e-3), 2),
            "p99_ratio": round(m["p99_ms"] / max(a["p99_ms"], 1e-3), 2),
            "throughput_ratio": round(m.get("per_s", 0) / max(a.get("per_s", 0), 1e-9), 2),
        }
    return out


async def cleanup(setup: Setup, feed: IngestFeed) -> dict[str, Any]:
    """Delete the run's ingested studies from the cached population (index rows, objects)."""
    studies = sorted(feed.studies)
    conn = await asyncpg.connect(setup.dsn)
    try:
        async with conn.transaction():
            counts = {
                table: await conn.fetchval(
                    f"WITH d AS (DELETE FROM index.{table} WHERE study_uid = ANY($1::text[])"
                    " RETURNING 1) SELECT count(*) FROM d",
                    studies,
                )
                for table in ("instances", "series", "studies")
            }
    finally:
        await conn.close()
    objects = Path(setup.platform.state_dir) / "objects"
    removed = 0
    for uid in studies:
        for area in ("dicom", "derived"):
            directory = objects / area / uid
            if directory.is_dir():
                shutil.rmtree(directory, ignore_errors=True)
                removed += 1
    return {"studies": len(studies), "rows": counts, "object_dirs": removed}


# --- report --------------------------------------------------------------------------------


def plot(result: dict[str, Any], raw: dict[str, list[tuple[float, float]]]) -> Path:
    """Mixed phase: latency over time per stream, RSS per service, backlog, ingest progress."""
    plt = pyplot()
    mixed = result["phases"]["mixed"]
    fig, axes = plt.subplots(4, 1, figsize=(12, 16), sharex=True)
    ax = axes[0]
    for stream, data in raw.items():
        if data:
            ax.scatter([p[0] for p in data], [p[1] * 1000 for p in data], s=3, alpha=0.3,
                       label=f"{stream} (each request)")  # fmt: skip
    for stream, report in mixed["streams"].items():
        windows = [w for w in report["windows"] if w["count"]]
        if windows:
            ax.step([w["t0"] for w in windows] + [windows[-1]["t0"] + WINDOW_S],
                    [w["p99_ms"] for w in windows] + [windows[-1]["p99_ms"]],
                    where="post", linewidth=2, label=f"{stream} p99 per 10 s")  # fmt: skip
    ax.set_yscale("log")
    ax.set_ylabel("latency ms")
    p = result["params"]
    ax.set_title(
        f"Mixed load: {p['search_clients']} search, {p['retrieve_clients']} retrieve, "
        f"{p['ingest_clients']} ingest clients (rate {p['ingest_rate'] or 'unlimited'}/s), "
        + (
            f"{result['data']['population']:,} studies"
            if result["data"]["population"]
            else f"own set of {result['data']['small_studies']} studies"
        )
    )
    ax.legend(fontsize="small", ncol=2)
    timeline = mixed["timeline"]
    ax = axes[1]
    for name in timeline["rss_mib"]:
        series = timeline["pss_mib" if name == "postgres" else "rss_mib"][name]
        ax.plot(timeline["t"][: len(series)], series,
                label=f"{name} ({'PSS' if name == 'postgres' else 'RSS'})")  # fmt: skip
    ax.set_ylabel("MiB")
    ax.set_title("memory per service (replicas summed)")
    ax.legend(fontsize="small", ncol=4)
    ax = axes[2]
    backlog = mixed["backlog"]
    for label, values in backlog["durables"].items():
        ax.plot(backlog["t"][: len(values)], [max(v, 0) for v in values], label=label)
    ax.set_ylabel("messages pending")
    ax.set_title("JetStream backlog per durable (pending + unacknowledged)")
    ax.legend(fontsize="small")
    ax = axes[3]
    ingest = mixed.get("ingest")
    if ingest:
        acked = ingest["acked_timeline"]
        ax.plot([a[0] for a in acked], [a[1] for a in acked], label="acknowledged (STOW)")
        base = ingest["acked_total"] - ingest["acked"]
        indexed = ingest["indexed_timeline"]
        ax.plot([i[0] for i in indexed], [i[1] - base for i in indexed], label="indexed (rows)")
        ax2 = ax.twinx()
        ax2.plot([x[0] for x in ingest["lag"]], [x[1] for x in ingest["lag"]], color="grey",
                 linestyle=":", label="indexing lag s")  # fmt: skip
        ax2.set_ylabel("lag s")
        ax2.legend(loc="lower right", fontsize="small")
    ax.set_ylabel("instances")
    ax.set_xlabel("seconds")
    ax.set_title("ingest: acknowledged vs indexed")
    ax.legend(loc="upper left", fontsize="small")
    return save_figure(fig, plt, result["name"], result["machine"])


def report(result: dict[str, Any]) -> None:
    """Readable tables on stdout."""
    p = result["params"]
    print(f"\nMachine: {machine_line(result['machine'])}")
    print(
        f"Data: { {k: v for k, v in result['data'].items() if k != 'load'} }\nLoad: {p['duration_s']:.0f} s, {p['search_clients']} search, "
        f"{p['retrieve_clients']} retrieve, {p['ingest_clients']} ingest clients "
        f"({p['per_request']}/request, rate {p['ingest_rate'] or 'unlimited'}), "
        f"{len(p['retrieval_targets'])} retrieval targets\n"
    )
    phases = result["phases"]
    rows = []
    for phase, data in phases.items():
        for stream, r in data["streams"].items():
            s = r["summary"]
            rows.append([phase, stream, s["count"], s.get("per_s", 0.0), s["p50_ms"],
                         s["p95_ms"], s["p99_ms"], s["max_ms"], r["errors"],
                         r["drift"]["verdict"]])  # fmt: skip
    print_table(
        ["phase", "stream", "requests", "req/s", "p50 ms", "p95", "p99", "max", "errors", "p99 per 10 s"],
        rows,
    )  # fmt: skip
    if result["interference"]:
        print("\nInterference (mixed / alone):")
        print_table(
            ["stream", "alone p99", "mixed p99", "p50 x", "p99 x", "throughput x"],
            [[s, v["alone_p99_ms"], v["mixed_p99_ms"], v["p50_ratio"], v["p99_ratio"],
              v["throughput_ratio"]] for s, v in result["interference"].items()],
        )  # fmt: skip
    mixed = phases["mixed"]
    print("\nMixed, p99 ms per 10-s window:")
    width = max(len(r["windows"]) for r in mixed["streams"].values())
    print_table(
        ["stream", *[f"{int(i * WINDOW_S)}s" for i in range(width)]],
        [[s, *[w["p99_ms"] for w in r["windows"]]] for s, r in mixed["streams"].items()],
    )
    for s, r in mixed["streams"].items():
        if r["statuses"]:
            print(f"  {s} statuses: {r['statuses']}")
        for example in r["error_examples"]:
            print(f"    {example}")
    ingest = mixed.get("ingest")
    if ingest:
        print(
            f"\nIngest (mixed): {ingest['acked']} acked ({ingest['acked_per_s']}/s), "
            f"{ingest['failed']} failed; at the end of the load {ingest['backlog_at_end_of_load']} "
            f"acked but not indexed; all indexed {ingest['all_indexed_s_after_last_ack']} s after "
            f"the last ack; max indexing lag {ingest['max_lag_s']} s"
        )
    print(
        f"Searchable at the end: {result['searchable']['instances']} of "
        f"{result['searchable']['acked']} acknowledged instances (QIDO, admin)"
    )
    print(
        f"Pipeline drained {mixed['drained_s_after_load']} s after the mixed load "
        f"(not waiting for: {', '.join(mixed['drain_skipped']) or 'none'}; render backlog then "
        f"{mixed['render_backlog_after_drain']}); max backlog: "
        + ", ".join(f"{k} {v}" for k, v in mixed["backlog"]["max"].items())
    )
    print(f"Machine CPU (mixed): {mixed['system_cpu_pct']}")
    print("\nMixed: CPU and memory per service")
    print_table(
        ["service", "procs", "mean CPU %", "peak CPU %", "first-min MiB", "peak MiB",
         "end MiB", "slope MiB/min", "VmHWM MiB", "memory"],
        [
            [n, v["processes"], v["cpu_mean_pct"], v["cpu_peak_pct"],
             mixed["memory"].get(n, {}).get("first_window_max_mib", ""),
             mixed["memory"].get(n, {}).get("peak_mib", ""),
             mixed["memory"].get(n, {}).get("end_mib", ""),
             mixed["memory"].get(n, {}).get("second_half_slope_mib_per_min", ""),
             v["max_hwm_mib"],
             f"{mixed['memory'].get(n, {}).get('verdict', '')} "
             f"({mixed['memory'].get(n, {}).get('measure', '')})"]
            for n, v in mixed["processes"].items()
        ],
    )  # fmt: skip
    for n, m in mixed["memory"].items():
        print(
            f"  {n}: memory {m['verdict']}: {m['measure']} at end {m['end_mib']} MiB vs peak "
            f"{m['peak_mib']} vs first {m['first_window_s']:.0f} s {m['first_window_max_mib']}"
        )
    if result["findings"]:
        print("\nFindings:", *result["findings"], sep="\n  ")


def findings(result: dict[str, Any]) -> list[str]:
    """Errors, drift, unbounded memory, unindexed instances: what the lead must look at."""
    out = []
    for phase, data in result["phases"].items():
        for stream, r in data["streams"].items():
            if r["errors"]:
                out.append(f"{phase}/{stream}: {r['errors']} non-2xx {r['statuses']}")
            if r["drift"]["verdict"] not in ("stable", "too short to tell"):
                out.append(f"{phase}/{stream}: p99 {r['drift']['verdict']} {r['drift']}")
        if data.get("drained_s_after_load") is None:
            out.append(f"{phase}: pipeline not drained within the drain timeout")
    for n, m in result["phases"]["mixed"]["memory"].items():
        # The client is this load generator (its body-building threads keep freed arenas).
        if m["verdict"] != "bounded" and n != "client":
            out.append(f"memory of {n} {m['verdict']}: {m}")
    s = result["searchable"]
    if s["instances"] != s["acked"]:
        out.append(f"searchable {s['instances']} != acknowledged {s['acked']}")
    if result["restarts"] and any(result["restarts"].values()):
        out.append(f"service restarts: {result['restarts']}")
    return out


def fixed_mmap_threshold() -> None:
    """Have glibc hand every allocation of 1 MiB or more straight back to the system.

    Its threshold otherwise rises after the first 5 MB STOW body is freed; later bodies then
    come from the heap, which keeps the freed memory, and the client's RSS grows by ~85 MiB a
    minute without any leak (measured: with this, it stays within 180-250 MiB). Same effect as
    ``MALLOC_MMAP_THRESHOLD_=1048576``; nothing happens where there is no glibc.
    """
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").mallopt(-3, 1 << 20)  # -3 = M_MMAP_THRESHOLD


async def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Run the benchmark; return (and save) its result."""
    fixed_mmap_threshold()
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    population.add_arguments(parser)
    parser.set_defaults(studies=0)
    parser.add_argument("--duration", type=float, default=120.0, help="mixed load, seconds")
    parser.add_argument("--search-clients", type=int, default=4)
    parser.add_argument("--retrieve-clients", type=int, default=2)
    parser.add_argument("--ingest-clients", type=int, default=2)
    parser.add_argument("--ingest-rate", type=float, default=0.0, help="instances/s, 0: no limit")
    parser.add_argument("--per-request", type=int, default=10, help="instances per STOW request")
    parser.add_argument(
        "--alone", action="store_true", help="first run each stream alone for duration/3"
    )
    parser.add_argument("--pool", type=int, default=100, help="distinct values per query kind")
    parser.add_argument("--small-studies", type=int, default=24, help="--studies 0: data set")
    parser.add_argument(
        "--small-instances", type=int, default=2, help="--studies 0: instances per series"
    )
    parser.add_argument("--ingest-seed", type=int, default=0, help="0: new studies every run")
    parser.add_argument("--drain-timeout", type=float, default=180.0, help="seconds per drain")
    parser.add_argument(
        "--keep-ingested", action="store_true", help="keep the run's studies in the population"
    )
    parser.add_argument("--name", default=NAME, help="results file name")
    args = parser.parse_args(argv)

    context = on_population(args) if args.studies else on_small_set(args)
    async with context as setup:
        pg_version = await postgres_version(setup.dsn)
        log(f"{len(setup.targets)} retrieval targets; warming up")
        warm = await warm_up(setup)
        ingest_seed = args.ingest_seed or int(time.time())
        feed = IngestFeed(ingest_seed, setup.structure, args.per_request)
        phases: dict[str, Any] = {}
        if args.alone:
            for stream in STREAMS:
                phases[f"{stream}_alone"] = await run_phase(
                    setup, args, feed, f"{stream}_alone", [stream], args.duration / 3
                )
        phases["mixed"] = await run_phase(
            setup, args, feed, "mixed", STREAMS, args.duration, last=True
        )
        feed.executor.shutdown(wait=True)
        log("counting searchable instances")
        searchable = await searchable_count(setup.url, setup.headers["admin"], sorted(feed.studies))
        restarts = {n: c.restarts for n, c in setup.platform.supervisor.children.items()}
        cleaned = None
        if args.studies and not args.keep_ingested:
            log("deleting the run's ingested studies from the population")
            cleaned = await cleanup(setup, feed)
    raw = phases["mixed"].pop("raw")
    for data in phases.values():
        data.pop("raw", None)
    result: dict[str, Any] = {
        "name": args.name,
        "machine": machine(pg_version),
        "command": " ".join(["benchmarks/mixed.py", *(argv if argv is not None else sys.argv[1:])]),
        "params": {
            "duration_s": args.duration,
            "search_clients": args.search_clients,
            "retrieve_clients": args.retrieve_clients,
            "ingest_clients": args.ingest_clients,
            "ingest_rate": args.ingest_rate,
            "per_request": args.per_request,
            "alone": args.alone,
            "ingest_seed": ingest_seed,
            "professional_structure": setup.structure.finess,
            "retrieval_targets": [t for t, _ in setup.targets],
            "query_kinds": sorted(setup.pools),
        },
        "data": setup.data,
        "warm_up": warm,
        "phases": phases,
        "interference": interference(phases) if args.alone else {},
        "searchable": {"instances": searchable, "acked": feed.acked, "studies": len(feed.studies)},
        "restarts": restarts,
        "cleanup": cleaned,
    }
    result["findings"] = findings(result)
    write_result(args.name, result)
    result["plot"] = str(plot(result, raw))
    report(result)
    return result


if __name__ == "__main__":
    asyncio.run(main())

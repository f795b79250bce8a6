"""Retrieval benchmark: WADO-RS latency and throughput, side by side with Orthanc, same data.

Starts the embedded platform (every service as its own process, free ports, temporary state)
and an Orthanc reference server (Debian ``orthanc`` + ``orthanc-dicomweb``), loads the same
instances into both by STOW-RS — a 300-slice CT series of 512x512 16-bit, and one small CT
study per compressed transfer syntax (JPEG 2000, JPEG-LS, RLE and HTJ2K lossless, encoded
before STOW) — waits until Krypton has indexed them and the render service has precomputed
the thumbnails and HTJ2K copies, then measures with one httpx client (``Accept-Encoding:
identity``), one request at a time and with 8 concurrent requests:

- rendered JPEG of one frame: every request another slice and another ``window`` (no cache
  can answer), and the same request repeated (Krypton's render cache);
- instance metadata; whole instance (multipart, stored syntax); frame 1 of each of the 300
  instances (``application/octet-stream``); whole study (MB/s, 3 runs);
- transcode to Explicit VR Little Endian from each compressed syntax (the first request of
  an instance transcodes; a second pass reads the derived object), against the in-process
  ``krypton.dicom.pixels.transcode`` of the same bytes (ratio).

CPU seconds of each process are sampled per scenario (CPU ms per request: which hop pays).

    .venv/bin/python benchmarks/retrieval.py
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import nats
import psutil
from pydicom.uid import (
    ExplicitVRLittleEndian,
    HTJ2KLossless,
    JPEG2000Lossless,
    JPEGLSLossless,
    RLELossless,
)

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (
    ProcessSampler,
    log,
    machine,
    machine_line,
    parse_replicas,
    platform_groups,
    postgres_version,
    print_table,
    pyplot,
    save_figure,
    started_platform,
    summarise,
    write_result,
)
from ingest import multipart
from krypton.auth.dev_issuer import DevIssuer
from krypton.contracts import subjects
from krypton.dicom.pixels import decode_frame, transcode
from krypton.dicom.synthetic import Population, SyntheticStudy, render_instances
from orthanc import Orthanc
from wrk import add_client_argument, run_wrk, stage_means

NAME = "retrieval"
SLICES = 300  # default size of the CT series (``--slices``)
CODECS = {
    "jpeg2000": JPEG2000Lossless,
    "jpeg-ls": JPEGLSLossless,
    "rle": RLELossless,
    "htj2k": HTJ2KLossless,
}
DICOM_ANY = 'multipart/related; type="application/dicom"; transfer-syntax=*'
DICOM_PLAIN = 'multipart/related; type="application/dicom"'
DICOM_ELE = f'multipart/related; type="application/dicom"; transfer-syntax={ExplicitVRLittleEndian}'
OCTETS = 'multipart/related; type="application/octet-stream"'


# --- data ----------------------------------------------------------------------------------


@dataclass
class Study:
    """One loaded study: UIDs, its Part 10 files, and the syntax they are stored in."""

    label: str
    study_uid: str
    series_uid: str
    sops: list[str]
    files: list[bytes]
    syntax: str


def _one_series(study: SyntheticStudy, minimum: int, cap: int) -> SyntheticStudy | None:
    """`study` reduced to its first CT series of at least `minimum` instances, capped."""
    for series in study.series:
        if series.modality == "CT" and series.instance_count >= minimum:
            one = dataclasses.replace(series, instance_count=min(series.instance_count, cap))
            return dataclasses.replace(study, series=(one,))
    return None


def _sop_uids(data: bytes) -> str:
    from krypton.dicom.pixels import read_dataset

    return str(read_dataset(data, pixels=False).SOPInstanceUID)


def generate(seed: int, per_codec: int, slices: int = SLICES) -> list[Study]:
    """The `slices`-slice CT study, then one CT study of `per_codec` instances per codec."""
    population = Population(seed, 1000)
    studies: list[Study] = []
    wanted = ["ct300", *CODECS]
    index = 0
    while wanted and index < 5000:
        label = wanted[0]
        minimum, cap = (slices, slices) if label == "ct300" else (per_codec, per_codec)
        reduced = _one_series(population.study(index), minimum, cap)
        index += 1
        if reduced is None:
            continue
        files = list(render_instances(reduced, rows=512, cols=512, bits=16))
        syntax = str(ExplicitVRLittleEndian)
        if label in CODECS:
            syntax = str(CODECS[label])
            files = [transcode(f, syntax) for f in files]
        studies.append(
            Study(
                label=label,
                study_uid=reduced.study_uid,
                series_uid=reduced.series[0].series_uid,
                sops=[_sop_uids(f) for f in files],
                files=files,
                syntax=syntax,
            )
        )
        wanted.pop(0)
    return studies


def _durable_write_ms(data: bytes, directory: Path) -> float:
    """One write of `data` as the filesystem store does it: file, fsync, rename, fsync dir."""
    t = time.perf_counter()
    tmp, final = directory / "object.tmp", directory / "object.dcm"
    with tmp.open("wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    tmp.replace(final)
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    return (time.perf_counter() - t) * 1000


def direct_render_times(ct: Study, repeat: int) -> dict[str, float]:
    """The render service's own work for one CT frame, in this process on one thread."""
    from krypton.contracts.render.v1 import RenderedMediaValues, VoiFunctionValues, Window
    from krypton.dicom.rendering import encode_image, fit_viewport, to_display

    decode_s, display_s, encode_s = [], [], []
    for i, data in enumerate(ct.files[:repeat]):
        t0 = time.perf_counter()
        arr, ds = decode_frame(data, 0)
        t1 = time.perf_counter()
        window = Window(center=40.0 + i, width=400.0, function=VoiFunctionValues.LINEAR)
        image = fit_viewport(to_display(arr, ds, window), None)
        t2 = time.perf_counter()
        encode_image(image, RenderedMediaValues.JPEG, 90)
        t3 = time.perf_counter()
        decode_s.append(t1 - t0)
        display_s.append(t2 - t1)
        encode_s.append(t3 - t2)
    return {
        "decode_frame_p50_ms": round(statistics.median(decode_s) * 1000, 2),
        "window_p50_ms": round(statistics.median(display_s) * 1000, 2),
        "jpeg_encode_p50_ms": round(statistics.median(encode_s) * 1000, 2),
    }


def direct_codec_times(studies: Sequence[Study], repeat: int) -> dict[str, dict[str, float]]:
    """Per codec, in this process on one thread: the service's transcode and a bare decode.

    ``htj2k_copy_transcode_p50_ms`` is the transcode from the HTJ2K lossless copy the render
    service precomputes for JPEG 2000 originals (what it actually decodes for them);
    ``durable_write_p50_ms`` is one write of the result as the filesystem store makes it.
    """
    out: dict[str, dict[str, float]] = {}
    scratch = Path(tempfile.mkdtemp(prefix="krypton-bench-fsync-"))
    for study in studies:
        if study.label not in CODECS:
            continue
        files = study.files[:repeat]
        transcode_s, decode_s, write_ms, copy_s = [], [], [], []
        for data in files:
            t = time.perf_counter()
            result = transcode(data, ExplicitVRLittleEndian)
            transcode_s.append(time.perf_counter() - t)
            t = time.perf_counter()
            decode_frame(data, 0)
            decode_s.append(time.perf_counter() - t)
            write_ms.append(_durable_write_ms(result, scratch))
            if study.label == "jpeg2000":
                copy = transcode(data, HTJ2KLossless)
                t = time.perf_counter()
                transcode(copy, ExplicitVRLittleEndian)
                copy_s.append(time.perf_counter() - t)
        out[study.label] = {
            "transcode_to_ele_p50_ms": round(statistics.median(transcode_s) * 1000, 2),
            "decode_frame_p50_ms": round(statistics.median(decode_s) * 1000, 2),
            "durable_write_p50_ms": round(statistics.median(write_ms), 2),
            "size_kb": round(statistics.mean(len(f) for f in study.files) / 1024, 1),
        }
        if copy_s:
            out[study.label]["htj2k_copy_transcode_p50_ms"] = round(
                statistics.median(copy_s) * 1000, 2
            )
    for path in scratch.iterdir():
        path.unlink()
    scratch.rmdir()
    return out


# --- load ----------------------------------------------------------------------------------


async def stow(client: httpx.AsyncClient, url: str, headers: dict[str, str], study: Study) -> int:
    """STOW `study` 10 instances per request; instances acknowledged."""
    acked = 0
    for start in range(0, len(study.files), 10):
        body, content_type = multipart(study.files[start : start + 10])
        response = await client.post(
            f"{url}/studies",
            content=body,
            headers={**headers, "Content-Type": content_type, "Accept": "application/dicom+json"},
        )
        if response.status_code in (200, 202):
            acked += len(response.json().get("00081199", {}).get("Value", []))
        else:
            log(f"STOW {study.label}: {response.status_code} {response.text[:200]}")
    return acked


async def wait_krypton_ready(platform: Any, expected: int, timeout: float) -> dict[str, float]:
    """Until ``index.instances`` holds `expected` rows and the render consumer has caught up."""
    started = time.perf_counter()
    out: dict[str, float] = {}
    conn = await asyncpg.connect(platform.pg_dsn)
    nc = await nats.connect(platform.nats.url)
    try:
        js = nc.jetstream()
        deadline = started + timeout
        while time.perf_counter() < deadline:
            if "indexed_s" not in out:
                count = int(await conn.fetchval("select count(*) from index.instances"))
                if count >= expected:
                    out["indexed_s"] = time.perf_counter() - started
            info = await js.consumer_info(subjects.INSTANCES_STREAM, "render")
            if "indexed_s" in out and info.num_pending == 0 and info.num_ack_pending == 0:
                out["precomputed_s"] = time.perf_counter() - started
                break
            await asyncio.sleep(0.25)
    finally:
        await nc.close()
        await conn.close()
    return {k: round(v, 2) for k, v in out.items()}


# --- measuring -----------------------------------------------------------------------------


@dataclass
class Outcome:
    """What one scenario measured on one server at one concurrency."""

    latencies: list[float] = field(default_factory=list)
    bytes: int = 0
    errors: dict[str, int] = field(default_factory=dict)
    elapsed: float = 0.0
    stages: dict[str, list[float]] = field(default_factory=dict)  # Server-Timing, ms

    def add_timing(self, header: str | None) -> None:
        """Remember the stages of one answer's ``Server-Timing`` header (``name;dur=ms``)."""
        for entry in filter(None, (e.strip() for e in (header or "").split(","))):
            name, _, rest = entry.partition(";")
            for param in rest.split(";"):
                key, _, value = param.strip().partition("=")
                if key == "dur":
                    self.stages.setdefault(name.strip(), []).append(float(value))

    def summary(self) -> dict[str, Any]:
        out: dict[str, Any] = summarise(self.latencies, self.elapsed)
        out["mb_per_s"] = round(self.bytes / 1e6 / self.elapsed, 1) if self.elapsed else None
        out["errors"] = self.errors
        if self.stages:
            out["server_timing_mean_ms"] = {
                name: round(statistics.fmean(values), 3) for name, values in self.stages.items()
            }
            # How many answers went through each stage (e.g. locate against locate_cached).
            out["server_timing_count"] = {name: len(v) for name, v in self.stages.items()}
        return out


Request = tuple[str, dict[str, str]]


async def _fetch(
    client: httpx.AsyncClient, url: str, headers: dict[str, str]
) -> tuple[int, int, str | None]:
    """Status, body size and Server-Timing; the body is read in chunks and dropped."""
    size = 0
    async with client.stream("GET", url, headers=headers) as response:
        async for chunk in response.aiter_raw():
            size += len(chunk)
    return response.status_code, size, response.headers.get("server-timing")


async def run_requests(
    client: httpx.AsyncClient, requests: Sequence[Request], concurrency: int
) -> Outcome:
    """Send `requests` with `concurrency` workers; latency until the whole body arrived."""
    outcome = Outcome()
    queue: asyncio.Queue[Request] = asyncio.Queue()
    for r in requests:
        queue.put_nowait(r)

    async def worker() -> None:
        while not queue.empty():
            url, headers = queue.get_nowait()
            t = time.perf_counter()
            try:
                status, size, timing = await _fetch(client, url, headers)
            except httpx.HTTPError as exc:
                key = type(exc).__name__
                outcome.errors[key] = outcome.errors.get(key, 0) + 1
                continue
            elapsed = time.perf_counter() - t
            if status != 200:
                outcome.errors[str(status)] = outcome.errors.get(str(status), 0) + 1
                continue
            outcome.latencies.append(elapsed)
            outcome.add_timing(timing)
            outcome.bytes += size

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    outcome.elapsed = time.perf_counter() - started
    return outcome


@dataclass
class Server:
    """One server under test: its DICOMweb root, auth headers and processes to sample."""

    name: str
    url: str
    auth: dict[str, str]
    groups: Callable[[], dict[str, list[psutil.Process]]]
    floor_url: str
    instance_accept: str = DICOM_ANY


Scenario = tuple[str, Callable[[int], list[Request]]]


def scenarios(server: Server, ct: Study, codecs: Sequence[Study], n: int) -> list[Scenario]:
    """Named request lists of `n` requests; the argument is the run (0: 1 client, 1: 8)."""
    a = server.auth
    mb = sum(len(f) for f in ct.files) / 1e6

    def inst(i: int, study: Study = ct) -> str:
        return (
            f"{server.url}/studies/{study.study_uid}/series/{study.series_uid}"
            f"/instances/{study.sops[i % len(study.sops)]}"
        )

    jpeg = {**a, "Accept": "image/jpeg"}

    def rendered_miss(run: int) -> list[Request]:
        # Another slice and another window every time: no cache can answer.
        base = 40 + 1000 * run
        return [(f"{inst(i)}/rendered?window={base + i},400,linear", jpeg) for i in range(n)]

    def rendered_hit(run: int) -> list[Request]:
        return [(f"{inst(len(ct.sops) // 2)}/rendered", jpeg)] * n

    def metadata(run: int) -> list[Request]:
        return [
            (f"{inst(i)}/metadata", {**a, "Accept": "application/dicom+json"}) for i in range(n)
        ]

    def instance(run: int) -> list[Request]:
        return [(inst(i), {**a, "Accept": server.instance_accept}) for i in range(n)]

    def frames(run: int) -> list[Request]:
        return [(f"{inst(i)}/frames/1", {**a, "Accept": OCTETS}) for i in range(n)]

    def study(run: int) -> list[Request]:
        url = f"{server.url}/studies/{ct.study_uid}"
        return [(url, {**a, "Accept": server.instance_accept})] * (3 if run == 0 else 8)

    def floor(run: int) -> list[Request]:
        return [(server.floor_url, {})] * n

    out: list[Scenario] = [
        ("HTTP floor (healthz|system)", floor),
        ("rendered, no cache", rendered_miss),
        ("rendered, cached", rendered_hit),
        ("instance metadata", metadata),
        ("whole instance", instance),
        (f"frames/1 x {n}", frames),
        (f"whole study ({mb:.0f} MB)", study),
    ]
    for codec in codecs:
        half = len(codec.sops) // 2

        def cold(run: int, codec: Study = codec, half: int = half) -> list[Request]:
            # The first request of each instance transcodes: one half per concurrency.
            picks = range(half) if run == 0 else range(half, len(codec.sops))
            return [(inst(i, codec), {**a, "Accept": DICOM_ELE}) for i in picks]

        def warm(run: int, codec: Study = codec) -> list[Request]:
            return [(inst(i, codec), {**a, "Accept": DICOM_ELE}) for i in range(len(codec.sops))]

        out.append((f"transcode {codec.label}->ELE, first", cold))
        out.append((f"transcode {codec.label}->ELE, again", warm))
    return out


async def _send(
    client: httpx.AsyncClient, requests: Sequence[Request], concurrency: int, use_wrk: bool
) -> dict[str, Any]:
    """The summary of one scenario's requests, sent through wrk or httpx."""
    if not use_wrk:
        return (await run_requests(client, requests, concurrency)).summary()
    got = await run_wrk(requests, concurrency)
    ok = got["statuses"].get("200", 0)  # counted as httpx counts: the 200 answers
    summary = {k: got[k] for k in ("mean_ms", "p50_ms", "p95_ms", "p99_ms", "max_ms")}
    summary["count"] = ok
    summary["per_s"] = round(ok / got["elapsed_s"], 3) if got["elapsed_s"] else None
    summary["mb_per_s"] = (
        round(got["bytes"] / 1e6 / got["elapsed_s"], 1) if got["elapsed_s"] else None
    )
    bad = {code: c for code, c in got["statuses"].items() if code != "200"}
    summary["errors"] = {**bad, **got["errors"]}
    if got["stages"]:
        summary["server_timing_mean_ms"] = stage_means(got)
        summary["server_timing_count"] = {k: c for k, (_, c) in got["stages"].items()}
    summary["client"] = "wrk"
    return summary


async def measure(
    servers: Sequence[Server],
    ct: Study,
    codecs: Sequence[Study],
    n: int,
    client_kind: str = "httpx",
) -> dict[str, Any]:
    """Every scenario at 1 and 8 concurrent requests on each server, with CPU per process.

    The servers take turns scenario by scenario (Krypton, then Orthanc, at each concurrency)
    so that a change in the machine's background load hits both alike.
    """
    results: dict[str, Any] = {server.name: {} for server in servers}
    limits = httpx.Limits(max_connections=8, max_keepalive_connections=8)
    async with httpx.AsyncClient(
        timeout=120.0, limits=limits, headers={"Accept-Encoding": "identity"}
    ) as client:
        plans = {}
        for server in servers:
            # Warm-up: connections, the first import of each code path.
            warm = [
                (f"{server.url}/studies/{ct.study_uid}/series/{ct.series_uid}/instances/{s}/metadata",
                 {**server.auth, "Accept": "application/dicom+json"})
                for s in ct.sops[:8]
            ]  # fmt: skip
            await run_requests(client, warm, 8)
            plans[server.name] = scenarios(server, ct, codecs, n)
        names = [name for name, _ in plans[servers[0].name]]
        for position, name in enumerate(names):
            for run, concurrency in enumerate((1, 8)):
                for server in servers:
                    build = plans[server.name][position][1]
                    requests = build(run)
                    if name.startswith("rendered, cached"):
                        await run_requests(client, requests[:1], 1)  # fill the cache
                    sampler = ProcessSampler(server.groups(), interval=0.5)
                    sampler.start()
                    # The whole-study answers (tens of MB) stay on httpx: wrk's script would copy
                    # each body into Lua.
                    use_wrk = client_kind == "wrk" and not name.startswith("whole study")
                    summary = await _send(client, requests, concurrency, use_wrk)
                    await sampler.stop()
                    ok = max(int(summary["count"]), 1)
                    summary["cpu_ms_per_request"] = {
                        p: round(1000 * v["cpu_seconds"] / ok, 2)
                        for p, v in sampler.report().items()
                    }
                    summary["load_average_1min"] = round(os.getloadavg()[0], 2)
                    results[server.name].setdefault(name, {})[str(concurrency)] = summary
                    log(
                        f"{server.name:8} {name:32} c={concurrency} p50 {summary['p50_ms']:.2f} "
                        f"p99 {summary['p99_ms']:.2f} ms, {summary['mb_per_s']} MB/s "
                        f"{summary['errors'] or ''}"
                    )
    return results


async def orthanc_accept(orthanc: Orthanc, ct: Study) -> str:
    """The instance Accept header Orthanc answers: ``transfer-syntax=*`` when it takes it."""
    url = f"{orthanc.url}/studies/{ct.study_uid}/series/{ct.series_uid}/instances/{ct.sops[0]}"
    async with httpx.AsyncClient(timeout=30.0, headers={"Accept-Encoding": "identity"}) as c:
        for accept in (DICOM_ANY, DICOM_PLAIN):
            if (await c.get(url, headers={"Accept": accept})).status_code == 200:
                return accept
    return DICOM_PLAIN


# --- profiling -----------------------------------------------------------------------------


class Profiler:
    """py-spy sampling of the gateway, render and index processes while the scenarios run.

    Each process is recorded as collapsed stacks (``<dir>/<service>.txt``, flame-graph input);
    `stop` summarises each into the functions with the most samples, own (leaf) and inclusive.
    """

    SERVICES = ("gateway", "render", "index")

    def __init__(self, directory: Path, platform: Any, rate: int = 200) -> None:
        """Start one ``py-spy record`` per service of `platform`."""
        directory.mkdir(parents=True, exist_ok=True)
        self.directory = directory
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        py_spy = Path(sys.executable).parent / "py-spy"
        for service, roots in platform_groups(platform).items():
            if service not in self.SERVICES:
                continue
            out = directory / f"{service}.txt"
            self.procs[service] = subprocess.Popen(
                [str(py_spy), "record", "--pid", str(roots[0].pid), "--rate", str(rate),
                 "--format", "raw", "--output", str(out), "--nonblocking"],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )  # fmt: skip

    async def stop(self, top: int = 25) -> dict[str, Any]:
        """Stop recording; the top functions of each process (own and inclusive samples)."""
        for proc in self.procs.values():
            proc.send_signal(signal.SIGINT)
        for proc in self.procs.values():
            await asyncio.to_thread(proc.wait, 60)
        return {
            service: summarise_stacks(self.directory / f"{service}.txt", top)
            for service in self.procs
        }


def summarise_stacks(path: Path, top: int) -> dict[str, Any]:
    """Own and inclusive sample shares of the busiest functions of a collapsed-stack file."""
    own: dict[str, int] = {}
    inclusive: dict[str, int] = {}
    total = 0
    if not path.exists():
        return {"error": "no profile written"}
    for line in path.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        total += count
        frames = [
            f.split(" (", 1)[0] + " " + f.rsplit("/", 1)[-1].rstrip(")")
            for f in stack.split(";")[1:]
        ]
        if frames:
            own[frames[-1]] = own.get(frames[-1], 0) + count
        for frame in set(frames):
            inclusive[frame] = inclusive.get(frame, 0) + count

    def share(counts: dict[str, int]) -> list[tuple[str, float]]:
        ranked = sorted(counts.items(), key=lambda kv: -kv[1])[:top]
        return [(name, round(100 * c / max(total, 1), 1)) for name, c in ranked]

    return {"samples": total, "own_pct": share(own), "inclusive_pct": share(inclusive)}


# --- run -----------------------------------------------------------------------------------


async def run(args: argparse.Namespace, studies: list[Study]) -> dict[str, Any]:
    """Load both servers, then measure Krypton, then Orthanc."""
    ct, codecs = studies[0], studies[1:]
    total = sum(len(s.files) for s in studies)
    result: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="krypton-bench-retrieval-") as tmp:
        async with started_platform(Path(tmp) / "krypton", args.replicas) as platform:
            result["pg_version"] = await postgres_version(platform.pg_dsn)
            issuer = DevIssuer(platform.state_dir / "issuer", platform.issuer_url)
            structure = Population(args.seed, 1000).structures[0].finess
            producer = {
                "Authorization": "Bearer "
                + issuer.mint(role="producer", sub="bench-producer", structure=structure)
            }
            admin = {"Authorization": "Bearer " + issuer.mint(role="admin", sub="bench-admin")}
            krypton = Server(
                name="krypton",
                url=platform.dicomweb_url,
                auth=admin,
                groups=lambda: platform_groups(platform),
                floor_url=f"{platform.base_url}/healthz",
            )
            async with contextlib.AsyncExitStack() as stack:
                servers = [krypton]
                orthanc: Orthanc | None = None
                if not args.no_orthanc:
                    orthanc = await stack.enter_async_context(Orthanc(Path(tmp) / "orthanc"))
                    assert orthanc.process is not None
                    orthanc_process = orthanc.process
                    reference = Server(
                        name="orthanc",
                        url=orthanc.url,
                        auth={},
                        groups=lambda: {
                            "orthanc": [orthanc_process],
                            "client": [psutil.Process(os.getpid())],
                        },
                        floor_url=f"{orthanc.root}/system",
                    )
                    servers.append(reference)
                log(f"loading {total} instances into {len(servers)} server(s)")
                async with httpx.AsyncClient(
                    timeout=300.0, headers={"Accept-Encoding": "identity"}
                ) as client:
                    t = time.perf_counter()
                    acked_k = [await stow(client, krypton.url, producer, s) for s in studies]
                    stow_k = time.perf_counter() - t
                    t = time.perf_counter()
                    acked_o = [await stow(client, orthanc.url, {}, s) for s in studies if orthanc]
                    stow_o = time.perf_counter() - t
                ready = await wait_krypton_ready(platform, total, timeout=args.ready_timeout)
                log(f"Krypton ready: {ready}")
                result["load"] = {
                    "instances": total,
                    "krypton_acked": sum(acked_k),
                    "krypton_stow_s": round(stow_k, 2),
                    "krypton_ready": ready,
                }
                if orthanc is not None:
                    result["load"].update(
                        orthanc_acked=sum(acked_o),
                        orthanc_stow_s=round(stow_o, 2),
                        orthanc_instances=await orthanc.count_instances(),
                    )
                    reference.instance_accept = await orthanc_accept(orthanc, ct)
                    result["orthanc_instance_accept"] = reference.instance_accept
                result["load_average"] = {"before": os.getloadavg()}
                profiler = Profiler(args.profile, platform) if args.profile else None
                result.update(await measure(servers, ct, codecs, args.requests, args.client))
                if profiler is not None:
                    result["profile"] = await profiler.stop()
                result["load_average"]["after"] = os.getloadavg()
    return result


# --- report --------------------------------------------------------------------------------


def _ratio(k: float | None, o: float | None) -> float | None:
    if not k or not o or k != k or o != o:  # NaN when a side had no successful request
        return None
    return round(k / o, 2)


def table_rows(result: dict[str, Any]) -> list[list[object]]:
    """One row per scenario and concurrency: Krypton and Orthanc p50/p95/p99, ratio."""
    rows: list[list[object]] = []
    for name, by_c in result["krypton"].items():
        for c, k in by_c.items():
            o = result.get("orthanc", {}).get(name, {}).get(c, {})
            ok = not o.get("errors") and o.get("count")
            rows.append(
                [
                    name,
                    c,
                    k["p50_ms"],
                    k["p95_ms"],
                    k["p99_ms"],
                    o.get("p50_ms") if ok else "n/a",
                    o.get("p95_ms") if ok else "n/a",
                    o.get("p99_ms") if ok else f"n/a {o.get('errors')}",
                    _ratio(k["p99_ms"], o.get("p99_ms")) if ok else "n/a",
                    k.get("per_s"),
                    o.get("per_s") if ok else "n/a",
                    k.get("mb_per_s"),
                    o.get("mb_per_s") if ok else "n/a",
                ]
            )
    return rows


HEADERS = [
    "scenario",
    "c",
    "K p50",
    "K p95",
    "K p99",
    "O p50",
    "O p95",
    "O p99",
    "K/O p99",
    "K req/s",
    "O req/s",
    "K MB/s",
    "O MB/s",
]


def report(result: dict[str, Any]) -> None:
    """Readable tables on stdout."""
    print(f"\nMachine: {machine_line(result['machine'])}")
    print(f"Load: {result['load']}")
    print(f"Load average (1, 5, 15 min): {result['load_average']}")
    print(f"Orthanc instance Accept: {result.get('orthanc_instance_accept', 'not run')}")
    print(f"Render work in-process, one frame (p50 ms): {result['direct_render']}\n")
    print_table(HEADERS, table_rows(result))
    print("\nTranscode to Explicit VR Little Endian vs calling the codec directly (1 client):")
    rows = []
    for label, direct in result["direct"].items():
        k = result["krypton"].get(f"transcode {label}->ELE, first", {}).get("1", {})
        again = result["krypton"].get(f"transcode {label}->ELE, again", {}).get("1", {})
        # What the service decodes: the HTJ2K copy for JPEG 2000 originals.
        own = direct.get("htj2k_copy_transcode_p50_ms", direct["transcode_to_ele_p50_ms"])
        extra = (k.get("p50_ms") or 0.0) - (again.get("p50_ms") or 0.0)
        rows.append(
            [
                label,
                direct["size_kb"],
                direct["decode_frame_p50_ms"],
                direct["transcode_to_ele_p50_ms"],
                own,
                direct["durable_write_p50_ms"],
                k.get("p50_ms"),
                again.get("p50_ms"),
                round(extra, 2),
                _ratio(k.get("p50_ms"), own),
                _ratio(extra, own),
            ]
        )
    print_table(
        [
            "codec",
            "KB",
            "decode",
            "transcode",
            "service src",
            "fsync write",
            "HTTP first",
            "HTTP again",
            "first-again",
            "first/codec",
            "(first-again)/codec",
        ],
        rows,
    )
    print("\nWhere Krypton's time goes: gateway Server-Timing stages, mean ms (1 client):")
    stage_names: list[str] = []
    for by_c in result["krypton"].values():
        for name in by_c["1"].get("server_timing_mean_ms", {}):
            if name not in stage_names:
                stage_names.append(name)
    print_table(
        ["scenario", "p50", *stage_names],
        [
            [name, by_c["1"]["p50_ms"],
             *(by_c["1"].get("server_timing_mean_ms", {}).get(s, "") for s in stage_names)]
            for name, by_c in result["krypton"].items()
        ],
    )  # fmt: skip
    for service, summary in result.get("profile", {}).items():
        print(f"\nProfile of {service} ({summary.get('samples')} samples), inclusive %:")
        for function, pct in summary.get("inclusive_pct", [])[:15]:
            print(f"  {pct:5.1f}  {function}")
        print("  own (leaf) %:")
        for function, pct in summary.get("own_pct", [])[:10]:
            print(f"  {pct:5.1f}  {function}")
    print("\nCPU ms per request (8 clients):")
    procs = sorted(
        {p for by_c in result["krypton"].values() for p in by_c["8"]["cpu_ms_per_request"]}
    )
    print_table(
        ["scenario", *procs, "orthanc"],
        [
            [
                name,
                *(by_c["8"]["cpu_ms_per_request"].get(p, 0.0) for p in procs),
                result.get("orthanc", {})
                .get(name, {})
                .get("8", {})
                .get("cpu_ms_per_request", {})
                .get("orthanc", 0.0),
            ]
            for name, by_c in result["krypton"].items()
        ],
    )


def plot(result: dict[str, Any], name: str = NAME) -> Path:
    """p99 per scenario, Krypton against Orthanc, 1 and 8 clients."""
    plt = pyplot()
    names = list(result["krypton"])
    fig, axes = plt.subplots(1, 2, figsize=(14, 7), sharey=True)
    for ax, c in zip(axes, ("1", "8"), strict=True):
        ys = range(len(names))
        k = [result["krypton"][n][c]["p99_ms"] for n in names]
        o = [result.get("orthanc", {}).get(n, {}).get(c, {}).get("p99_ms") or 0.0 for n in names]
        ax.barh([y - 0.2 for y in ys], k, height=0.4, label="Krypton")
        ax.barh([y + 0.2 for y in ys], o, height=0.4, label="Orthanc")
        ax.set_xscale("log")
        ax.set_yticks(list(ys), names, fontsize=8)
        ax.invert_yaxis()
        ax.set_xlabel("p99 ms (log)")
        ax.set_title(f"{c} concurrent request{'s' if c != '1' else ''}")
        ax.legend()
    fig.suptitle("WADO-RS retrieval p99, same data, same client")
    return save_figure(fig, plt, name, result["machine"])


async def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Run the benchmark; return (and save) its result."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--per-codec", type=int, default=16, help="instances per codec study")
    parser.add_argument("--slices", type=int, default=SLICES, help="instances of the CT series")
    parser.add_argument(
        "--requests", type=int, default=0, help="requests per scenario (default: --slices)"
    )
    parser.add_argument(
        "--profile",
        type=Path,
        default=None,
        help="record the gateway, render and index with py-spy into this directory",
    )
    parser.add_argument("--seed", type=int, default=2025)
    parser.add_argument("--ready-timeout", type=float, default=240.0)
    parser.add_argument("--name", default=NAME, help="results file name")
    parser.add_argument(
        "--no-orthanc",
        action="store_true",
        help="measure Krypton alone (no reference server: K/O columns stay n/a)",
    )
    add_client_argument(
        parser,
        "load generator for the latency scenarios (default wrk when installed: "
        "Debian package wrk; httpx costs ~1.8 ms of CPU per request here)",
    )
    parser.add_argument(
        "--replicas",
        type=parse_replicas,
        default={},
        metavar="SERVICE=N,...",
        help="service processes, e.g. gateway=2 (default one of each)",
    )
    args = parser.parse_args(argv)
    args.requests = args.requests or args.slices

    log("generating the CT series and the compressed studies")
    t = time.perf_counter()
    studies = generate(args.seed, args.per_codec, args.slices)
    log(
        f"generated {sum(len(s.files) for s in studies)} instances in {time.perf_counter() - t:.1f} s"
    )
    direct = direct_codec_times(studies, repeat=8)
    render_direct = direct_render_times(studies[0], repeat=16)
    measured = await run(args, studies)
    result: dict[str, Any] = {
        "machine": machine(measured.pop("pg_version")),
        "command": " ".join(["benchmarks/retrieval.py", *(argv or sys.argv[1:])]),
        "params": {
            "client": args.client,
            "replicas": args.replicas,
            "slices": args.slices,
            "requests": args.requests,
            "per_codec": args.per_codec,
            "seed": args.seed,
        },
        "studies": {
            s.label: {"study_uid": s.study_uid, "instances": len(s.files), "syntax": s.syntax}
            for s in studies
        },
        "direct": direct,
        "direct_render": render_direct,
        **measured,
    }
    write_result(args.name, result)
    result["plot"] = str(plot(result, args.name))
    report(result)
    return result


if __name__ == "__main__":
    asyncio.run(main())

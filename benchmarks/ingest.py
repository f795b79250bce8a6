"""Ingest benchmark: STOW-RS through the real platform, end to end until indexed and searchable.

Starts the embedded platform (real nats-server, PostgreSQL and every service as its own
process, free ports, temporary state), pre-generates N synthetic CT instances of 512x512
16-bit (~512 KB each) as multipart bodies of k instances, then sends them with c concurrent
clients and measures:

- STOW acknowledgement latency per request (p50/p95/p99): the gateway answers once ingest
  has stored each instance;
- instances/s acknowledged, and instances/s until the last one is indexed (rows in
  ``index.instances``) and searchable (QIDO ``NumberOfStudyRelatedInstances`` adds up to N);
- how it scales: ``--workers 1,2,4`` runs the whole measurement once per count, on a fresh
  platform with that many ingest and that many index processes;
- where the time goes: CPU seconds (user / kernel), mean and peak CPU % of every service
  (replicas summed), the machine-wide CPU split (``/proc/stat``: kernel threads such as
  page-cache writeback show there), and with ``--profile DIR`` a py-spy profile of each
  service process with its breakdown by category (see ``pyspy.py``);
- memory: peak resident set of each service (sampled sum over its processes) and the largest
  ``VmHWM`` of any one of its processes (the kernel's exact peak);
- when the render service's precompute (thumbnails, HTJ2K copies; off the stored → indexed
  path, at low priority) had caught up.

With ``--orthanc`` the same bodies are then sent, with the same client, to an Orthanc
reference server (Debian ``orthanc`` + ``orthanc-dicomweb``) and the ratios are reported.

    .venv/bin/python benchmarks/ingest.py --instances 2000 --workers 1,2,4 --orthanc
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
import tempfile
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import nats
import nats.js.errors

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (
    ProcessSampler,
    SystemCpu,
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
from krypton.auth.dev_issuer import DevIssuer
from krypton.contracts.subjects import INSTANCES_STREAM
from krypton.dicom.synthetic import Population, render_instances
from orthanc import Orthanc
from pyspy import Profiler

NAME = "ingest"
STRUCTURE_INDEX = 0  # every request is sent by the first structure's producer token


@dataclass
class Workload:
    """Pre-generated request bodies."""

    bodies: list[tuple[bytes, str, int]]  # (body, content type, instances in it)
    instances: int
    bytes_total: int
    studies: dict[str, int]  # study UID → instances
    generate_s: float


def multipart(parts: Sequence[bytes]) -> tuple[bytes, str]:
    """A multipart/related body of application/dicom parts, and its Content-Type."""
    boundary = uuid.uuid4().hex
    chunks: list[bytes] = []
    for part in parts:
        chunks.append(f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode())
        chunks.append(part)
        chunks.append(b"\r\n")
    chunks.append(f"--{boundary}--\r\n".encode())
    content_type = f'multipart/related; type="application/dicom"; boundary={boundary}'
    return b"".join(chunks), content_type


def generate(n: int, per_request: int, max_per_series: int, seed: int) -> Workload:
    """N CT instances (512x512, 16 bits) from synthetic CT studies, grouped k per request."""
    started = time.perf_counter()
    population = Population(seed, max(1000, n))
    instances: list[bytes] = []
    studies: dict[str, int] = {}
    index = 0
    while len(instances) < n:
        study = population.study(index, max_instances_per_series=max_per_series)
        index += 1
        if study.modalities != ("CT",):
            continue
        for data in render_instances(study, rows=512, cols=512, bits=16):
            if len(instances) == n:
                break
            instances.append(data)
            studies[study.study_uid] = studies.get(study.study_uid, 0) + 1
    bodies = []
    for start in range(0, n, per_request):
        chunk = instances[start : start + per_request]
        body, content_type = multipart(chunk)
        bodies.append((body, content_type, len(chunk)))
    return Workload(
        bodies=bodies,
        instances=n,
        bytes_total=sum(len(i) for i in instances),
        studies=studies,
        generate_s=time.perf_counter() - started,
    )


@dataclass
class Run:
    """What one STOW run measured."""

    latencies: list[float] = field(default_factory=list)
    acked: int = 0
    failed: int = 0
    errors: list[str] = field(default_factory=list)
    ack_times: list[tuple[float, int]] = field(default_factory=list)  # (t, acked so far)
    started: float = 0.0
    acked_s: float = 0.0


def _stored_count(response: httpx.Response) -> tuple[int, int]:
    if response.status_code not in (200, 202, 409):
        return 0, -1
    payload = response.json()
    # Krypton answers with keyword-less tags (DICOM JSON); so does Orthanc.
    ok = len(payload.get("00081199", {}).get("Value", []))
    failed = len(payload.get("00081198", {}).get("Value", []))
    return ok, failed


async def send_all(
    url: str, headers: dict[str, str], workload: Workload, concurrency: int, run: Run
) -> None:
    """Send every body with `concurrency` clients pulling from one queue."""
    queue: asyncio.Queue[int] = asyncio.Queue()
    for i in range(len(workload.bodies)):
        queue.put_nowait(i)
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    base_headers = {**headers, "Accept-Encoding": "identity", "Accept": "application/dicom+json"}
    async with httpx.AsyncClient(timeout=300.0, limits=limits) as client:

        async def worker() -> None:
            while True:
                try:
                    i = queue.get_nowait()
                except asyncio.QueueEmpty:
                    return
                body, content_type, count = workload.bodies[i]
                t = time.perf_counter()
                response = await client.post(
                    url, content=body, headers={**base_headers, "Content-Type": content_type}
                )
                run.latencies.append(time.perf_counter() - t)
                ok, failed = _stored_count(response)
                if failed < 0:
                    run.failed += count
                    if len(run.errors) < 5:
                        run.errors.append(f"{response.status_code}: {response.text[:200]}")
                else:
                    run.acked += ok
                    run.failed += failed
                run.ack_times.append((time.perf_counter() - run.started, run.acked))

        run.started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        run.acked_s = time.perf_counter() - run.started


async def wait_indexed(
    dsn: str, expected: int, run: Run, timeout: float
) -> tuple[float | None, list[tuple[float, int]]]:
    """Poll ``index.instances`` until it holds `expected` rows; (seconds from start, timeline)."""
    conn = await asyncpg.connect(dsn)
    timeline: list[tuple[float, int]] = []
    try:
        deadline = time.perf_counter() + timeout
        while time.perf_counter() < deadline:
            count = int(await conn.fetchval("select count(*) from index.instances"))
            now = time.perf_counter() - run.started
            timeline.append((now, count))
            if count >= expected:
                return now, timeline
            await asyncio.sleep(0.1)
    finally:
        await conn.close()
    return None, timeline


async def searchable_count(url: str, headers: dict[str, str], studies: Sequence[str]) -> int:
    """Sum of NumberOfStudyRelatedInstances over `studies`, as QIDO answers it."""
    total = 0
    async with httpx.AsyncClient(timeout=60.0) as client:
        for start in range(0, len(studies), 50):
            uids = ",".join(studies[start : start + 50])
            response = await client.get(
                f"{url}/studies",
                params={"StudyInstanceUID": uids, "limit": "100"},
                headers=headers,
            )
            response.raise_for_status()
            for item in response.json():
                total += int(item.get("00201208", {}).get("Value", [0])[0])
    return total


async def precompute_backlog(nats_url: str) -> int:
    """Messages the render service's precompute consumer has not finished (0 when absent)."""
    nc = await nats.connect(nats_url)
    try:
        info = await nc.jetstream().consumer_info(INSTANCES_STREAM, "render")
    except nats.js.errors.NotFoundError:
        return 0
    finally:
        await nc.close()
    return int(info.num_pending or 0) + int(info.num_ack_pending or 0)


async def wait_precompute(nats_url: str, run: Run, timeout: float) -> float | None:
    """Seconds from the start of sending until precompute has caught up (None: not in time)."""
    deadline = time.perf_counter() + timeout
    while time.perf_counter() < deadline:
        if await precompute_backlog(nats_url) == 0:
            return time.perf_counter() - run.started
        await asyncio.sleep(0.2)
    return None


async def run_krypton(args: argparse.Namespace, workload: Workload, workers: int) -> dict[str, Any]:
    """The benchmark against Krypton's embedded platform with `workers` ingest and index replicas."""
    replicas = {"ingest": workers, "index": workers, **parse_replicas(args.replicas)}
    with tempfile.TemporaryDirectory(prefix="krypton-bench-ingest-") as tmp:
        log(f"starting the platform (replicas {replicas or 'default'})")
        async with started_platform(Path(tmp), replicas) as platform:
            assert platform.pg_dsn is not None
            pg_version = await postgres_version(platform.pg_dsn)
            population = Population(args.seed, max(1000, args.instances))
            structure = population.structures[STRUCTURE_INDEX].finess
            issuer = DevIssuer(platform.state_dir / "issuer", platform.issuer_url)
            producer = {
                "Authorization": "Bearer "
                + issuer.mint(role="producer", sub=f"bench-{structure}", structure=structure)
            }
            admin = {"Authorization": "Bearer " + issuer.mint(role="admin", sub="bench-admin")}
            sampler = ProcessSampler(platform_groups(platform))
            run = Run()
            log(
                f"sending {workload.instances} instances, {args.per_request} per request, "
                f"{args.concurrency} clients"
            )
            profiler = None
            if args.profile:
                pids = {
                    label: child.proc.pid
                    for label, child in platform.supervisor.children.items()
                    if child.proc is not None and label != "issuer"
                }
                profiler = Profiler(pids, Path(args.profile) / f"workers-{workers}")
                profiler.start()
            system = SystemCpu()
            system.start()
            sampler.start()
            sender = asyncio.create_task(
                send_all(
                    f"{platform.dicomweb_url}/studies",
                    producer,
                    workload,
                    args.concurrency,
                    run,
                )
            )
            # The poller starts with the sender so the timeline shows indexing keep up (or not).
            await asyncio.sleep(0)
            indexed_s, index_timeline = await wait_indexed(
                platform.pg_dsn, workload.instances, run, timeout=args.timeout
            )
            await sender
            if indexed_s is None or run.acked < workload.instances:
                # Whatever was acknowledged must still be indexed.
                indexed_s, more = await wait_indexed(
                    platform.pg_dsn, run.acked, run, timeout=args.timeout
                )
                index_timeline += more
            await sampler.stop()
            system.stop()
            profile = await profiler.stop() if profiler is not None else None
            # Precompute (render) is off the stored → indexed path and yields the CPU to it:
            # its backlog once everything is indexed, and how long after the start it had
            # caught up (bounded: at low priority on a busy machine it can take minutes).
            assert platform.nats is not None
            backlog = await precompute_backlog(platform.nats.url)
            precompute_s = await wait_precompute(platform.nats.url, run, args.precompute_wait)
            searchable = await searchable_count(
                platform.dicomweb_url, admin, list(workload.studies)
            )
            searchable_s = time.perf_counter() - run.started
            processes = sampler.report()
            restarts = {n: c.restarts for n, c in platform.supervisor.children.items()}
    requests = len(run.latencies)
    latency = summarise(run.latencies, run.acked_s)
    acked_per_s = run.acked / run.acked_s if run.acked_s else 0.0
    indexed_per_s = run.acked / indexed_s if indexed_s else 0.0
    per_instance_cpu_ms = {
        name: round(1000 * p["cpu_seconds"] / max(run.acked, 1), 2) for name, p in processes.items()
    }
    return {
        "workers": workers,
        "replicas": replicas,
        "pg_version": pg_version,
        "requests": requests,
        "acked": run.acked,
        "failed": run.failed,
        "errors": run.errors,
        "acked_s": round(run.acked_s, 3),
        "indexed_s": round(indexed_s, 3) if indexed_s else None,
        "searchable_checked_s": round(searchable_s, 3),
        "searchable_instances": searchable,
        "acked_instances_per_s": round(acked_per_s, 1),
        "indexed_instances_per_s": round(indexed_per_s, 1),
        "acked_mb_per_s": round(workload.bytes_total / 1e6 / run.acked_s, 1)
        if run.acked_s
        else None,
        "stow_latency": latency,
        "processes": processes,
        "cpu_ms_per_instance": per_instance_cpu_ms,
        "restarts": restarts,
        "system_cpu_pct": system.report(),
        "precompute_backlog_when_indexed": backlog,
        "precompute_caught_up_s": round(precompute_s, 3) if precompute_s else None,
        "profile": profile,
        "timeline": {
            "acked": [(round(t, 3), n) for t, n in run.ack_times],
            "indexed": [(round(t, 3), n) for t, n in index_timeline],
            "cpu": sampler.timelines(),
        },
    }


async def run_orthanc(args: argparse.Namespace, workload: Workload) -> dict[str, Any]:
    """The same bodies, the same client, against Orthanc (STOW-RS answers once indexed)."""
    with tempfile.TemporaryDirectory(prefix="krypton-bench-orthanc-") as tmp:
        async with Orthanc(Path(tmp)) as orthanc:
            sampler = ProcessSampler({"orthanc": [orthanc.process], **orthanc.client_group()})
            run = Run()
            log(f"sending {workload.instances} instances to Orthanc")
            sampler.start()
            await send_all(f"{orthanc.url}/studies", {}, workload, args.concurrency, run)
            await sampler.stop()
            stored = await orthanc.count_instances()
    return {
        "requests": len(run.latencies),
        "acked": run.acked,
        "failed": run.failed,
        "errors": run.errors,
        "stored_instances": stored,
        "acked_s": round(run.acked_s, 3),
        "acked_instances_per_s": round(run.acked / run.acked_s, 1) if run.acked_s else 0.0,
        "stow_latency": summarise(run.latencies, run.acked_s),
        "processes": sampler.report(),
    }


def plot(result: dict[str, Any], name: str) -> Path:
    """Instances/s per worker count (with Orthanc), and the first run's timeline and CPU."""
    plt = pyplot()
    runs = result["scaling"]
    fig, (left, top, bottom) = plt.subplots(3, 1, figsize=(10, 12))
    workers = [r["workers"] for r in runs]
    positions = range(len(runs))
    width = 0.38
    left.bar(
        [x - width / 2 for x in positions],
        [r["acked_instances_per_s"] for r in runs],
        width,
        label="Krypton acknowledged",
    )
    left.bar(
        [x + width / 2 for x in positions],
        [r["indexed_instances_per_s"] for r in runs],
        width,
        label="Krypton indexed + searchable",
    )
    orthanc = result.get("orthanc")
    if orthanc:
        left.axhline(orthanc["acked_instances_per_s"], color="grey", linestyle="--")
        left.text(0, orthanc["acked_instances_per_s"], " Orthanc (same client)", va="bottom")
    left.axhline(500, color="red", linestyle=":", linewidth=1)
    left.set_xticks(list(positions), [f"{w} ingest + {w} index" for w in workers])
    left.set_ylabel("instances/s")
    p = result["params"]
    left.set_title(
        f"STOW-RS of {p['instances']} CT 512x512x16 instances, {p['per_request']}/request, "
        f"{p['concurrency']} clients"
    )
    left.legend(loc="upper right")
    first = runs[0]
    for key, label in (("acked", "acknowledged (STOW)"), ("indexed", "indexed (rows)")):
        points = first["timeline"][key]
        if points:
            top.plot([q[0] for q in points], [q[1] for q in points], label=label)
    top.set_ylabel("instances")
    top.set_title(f"{first['workers']} worker(s): progress and CPU per process")
    top.legend()
    cpu = first["timeline"]["cpu"]
    for proc, values in cpu["cpu_pct"].items():
        bottom.plot(cpu["t"][: len(values)], values, label=proc)
    bottom.set_xlabel("seconds")
    bottom.set_ylabel("CPU % (100 = one core)")
    bottom.legend(ncol=4, fontsize="small")
    return save_figure(fig, plt, name, result["machine"])


def _server_row(label: str, r: dict[str, Any], indexed: float) -> list[object]:
    lat = r["stow_latency"]
    return [label, r["acked"], r["failed"], r["acked_instances_per_s"], indexed,
            lat["p50_ms"], lat["p95_ms"], lat["p99_ms"]]  # fmt: skip


def report(result: dict[str, Any]) -> None:
    """Readable tables on stdout."""
    print(f"\nMachine: {machine_line(result['machine'])}")
    p = result["params"]
    print(
        f"Data: {p['instances']} instances, {result['workload']['mean_instance_kb']} KB each "
        f"({result['workload']['mb_total']} MB), {p['per_request']} per request, "
        f"{p['concurrency']} clients, extra replicas {p['replicas'] or 'none'}\n"
    )
    runs = result["scaling"]
    rows = [
        _server_row(f"krypton, {r['workers']} worker(s)", r, r["indexed_instances_per_s"])
        for r in runs
    ]
    o = result.get("orthanc")
    if o:
        # Orthanc acknowledges once indexed.
        rows.append(_server_row("orthanc", o, o["acked_instances_per_s"]))
    print_table(
        ["server", "acked", "failed", "acked/s", "indexed/s", "p50 ms", "p95 ms", "p99 ms"], rows
    )
    print()
    print_table(
        ["workers", "machine busy %", "of which kernel %", "niced %", "iowait %",
         "precompute backlog", "precompute done s", "x Orthanc"],
        [
            [
                r["workers"],
                r["system_cpu_pct"].get("busy"),
                round(r["system_cpu_pct"].get("system", 0) + r["system_cpu_pct"].get("softirq", 0), 1),
                r["system_cpu_pct"].get("nice"),
                r["system_cpu_pct"].get("iowait"),
                r["precompute_backlog_when_indexed"],
                r["precompute_caught_up_s"],
                r.get("ratio_vs_orthanc"),
            ]
            for r in runs
        ],
    )  # fmt: skip
    for r in runs:
        print(f"\n{r['workers']} worker(s): CPU and memory per service")
        print_table(
            ["service", "procs", "CPU s", "user s", "sys s", "mean CPU %", "peak CPU %",
             "CPU ms/inst", "peak RSS MiB (sum)", "max VmHWM MiB (1 proc)"],
            [
                [
                    name,
                    v.get("processes", ""),
                    v["cpu_seconds"],
                    v.get("cpu_user_seconds", ""),
                    v.get("cpu_system_seconds", ""),
                    v["cpu_mean_pct"],
                    v["cpu_peak_pct"],
                    r["cpu_ms_per_instance"][name],
                    v["peak_rss_mib"],
                    v.get("max_hwm_mib", ""),
                ]
                for name, v in r["processes"].items()
            ],
        )  # fmt: skip
        if r.get("profile"):
            print("  py-spy, share of samples per category:")
            for proc, prof in r["profile"].items():
                shares = ", ".join(f"{k} {v}%" for k, v in list(prof["category_pct"].items())[:8])
                print(f"    {proc} ({prof['samples']} samples): {shares}")
        if r["errors"]:
            print("errors:", *r["errors"], sep="\n  ")
    if o:
        print()
        print_table(
            ["orthanc run", "CPU s", "mean CPU %", "peak CPU %", "peak RSS MiB", "VmHWM MiB"],
            [
                [n, v["cpu_seconds"], v["cpu_mean_pct"], v["cpu_peak_pct"], v["peak_rss_mib"],
                 v.get("max_hwm_mib", "")]
                for n, v in o["processes"].items()
            ],
        )  # fmt: skip
        print(
            f"\nKrypton / Orthanc (indexed/s, best worker count): "
            f"{result['ratio_indexed_vs_orthanc']}x"
        )


def _workers(text: str) -> list[int]:
    counts = [int(item) for item in text.split(",") if item.strip()]
    if not counts or min(counts) < 1:
        msg = "--workers takes positive counts, e.g. 1,2,4"
        raise argparse.ArgumentTypeError(msg)
    return counts


async def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Run the benchmark; return (and save) its result."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--instances", type=int, default=2000)
    parser.add_argument("--per-request", type=int, default=10)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument(
        "--workers",
        type=_workers,
        default=[1],
        help="ingest and index replicas, one platform run per count: e.g. 1,2,4",
    )
    parser.add_argument(
        "--replicas", default="", help="other replica counts, e.g. render=0 (wins over --workers)"
    )
    parser.add_argument("--max-per-series", type=int, default=25, help="instances per series cap")
    parser.add_argument("--seed", type=int, default=2025)
    parser.add_argument("--timeout", type=float, default=600.0, help="indexing deadline, s")
    parser.add_argument(
        "--precompute-wait",
        type=float,
        default=60.0,
        help="seconds to wait, once indexed, for the render precompute to catch up",
    )
    parser.add_argument("--orthanc", action="store_true", help="also measure Orthanc")
    parser.add_argument("--name", default=NAME, help="results file name")
    parser.add_argument(
        "--profile", default="", help="directory for py-spy profiles of every service process"
    )
    args = parser.parse_args(argv)

    log(f"generating {args.instances} CT instances (512x512, 16 bits)")
    workload = generate(args.instances, args.per_request, args.max_per_series, args.seed)
    log(f"generated {workload.bytes_total / 1e6:.0f} MB in {workload.generate_s:.1f} s")
    runs = [await run_krypton(args, workload, workers) for workers in args.workers]
    pg_version = runs[0]["pg_version"]
    for r in runs:
        r.pop("pg_version")
    best = max(runs, key=lambda r: r["indexed_instances_per_s"])
    result: dict[str, Any] = {
        "machine": machine(pg_version),
        "command": " ".join(["benchmarks/ingest.py", *(argv or sys.argv[1:])]),
        "params": {
            "instances": args.instances,
            "per_request": args.per_request,
            "concurrency": args.concurrency,
            "workers": args.workers,
            "replicas": args.replicas,
            "max_per_series": args.max_per_series,
            "seed": args.seed,
        },
        "workload": {
            "studies": len(workload.studies),
            "mb_total": round(workload.bytes_total / 1e6, 1),
            "mean_instance_kb": round(workload.bytes_total / workload.instances / 1024, 1),
            "generate_s": round(workload.generate_s, 2),
        },
        "krypton": best,  # the best worker count (what `run_all.py` summarises)
        "scaling": runs,
    }
    if args.orthanc:
        with contextlib.suppress(KeyboardInterrupt):
            result["orthanc"] = await run_orthanc(args, workload)
            orthanc_rate = result["orthanc"]["acked_instances_per_s"]
            for r in runs:
                r["ratio_vs_orthanc"] = (
                    round(r["indexed_instances_per_s"] / orthanc_rate, 2) if orthanc_rate else None
                )
            result["ratio_indexed_vs_orthanc"] = best.get("ratio_vs_orthanc")
    write_result(args.name, result)
    result["plot"] = str(plot(result, args.name))
    report(result)
    return result


if __name__ == "__main__":
    asyncio.run(main())

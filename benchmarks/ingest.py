"""Ingest benchmark: STOW-RS through the real platform, end to end until indexed and searchable.

Starts the embedded platform (real nats-server, PostgreSQL and every service as its own
process, free ports, temporary state), pre-generates N synthetic CT instances of 512x512
16-bit (~512 KB each) as multipart bodies of k instances, then sends them with c concurrent
clients and measures:

- STOW acknowledgement latency per request (p50/p95/p99): the gateway answers once ingest
  has stored each instance;
- instances/s acknowledged, and instances/s until the last one is indexed (rows in
  ``index.instances``) and searchable (QIDO ``NumberOfStudyRelatedInstances`` adds up to N);
- where the time goes: CPU % and peak RSS of the gateway, ingest, index, nats-server,
  PostgreSQL and the load generator itself.

With ``--orthanc`` the same bodies are then sent, with the same client, to an Orthanc
reference server (Debian ``orthanc`` + ``orthanc-dicomweb``) and the ratio is reported.

    .venv/bin/python benchmarks/ingest.py --instances 2000 --per-request 10 --concurrency 4
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

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (
    ProcessSampler,
    log,
    machine,
    machine_line,
    parse_replicas,
    platform_groups,
    plot_path,
    postgres_version,
    print_table,
    pyplot,
    started_platform,
    summarise,
    write_result,
)
from krypton.auth.dev_issuer import DevIssuer
from krypton.dicom.synthetic import Population, render_instances
from orthanc import Orthanc

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


async def run_krypton(args: argparse.Namespace, workload: Workload) -> dict[str, Any]:
    """The benchmark against Krypton's embedded platform."""
    replicas = parse_replicas(args.replicas)
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


def plot(result: dict[str, Any]) -> Path:
    """Acked and indexed instances over time, and CPU % per process."""
    plt = pyplot()
    krypton = result["krypton"]
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(10, 8), sharex=True)
    for key, label in (("acked", "acknowledged (STOW)"), ("indexed", "indexed (rows)")):
        points = krypton["timeline"][key]
        if points:
            top.plot([p[0] for p in points], [p[1] for p in points], label=label)
    top.set_ylabel("instances")
    top.set_title(
        f"Krypton ingest: {result['params']['instances']} CT 512x512x16 instances, "
        f"{result['params']['per_request']}/request, {result['params']['concurrency']} clients"
    )
    top.legend()
    cpu = krypton["timeline"]["cpu"]
    for name, values in cpu["cpu_pct"].items():
        bottom.plot(cpu["t"][: len(values)], values, label=name)
    bottom.set_xlabel("seconds")
    bottom.set_ylabel("CPU % (100 = one core)")
    bottom.legend(ncol=4, fontsize="small")
    fig.text(0.01, 0.005, machine_line(result["machine"]), fontsize=7)
    fig.tight_layout(rect=(0, 0.02, 1, 1))
    path = plot_path(NAME)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def report(result: dict[str, Any]) -> None:
    """Readable tables on stdout."""
    k = result["krypton"]
    print(f"\nMachine: {machine_line(result['machine'])}")
    p = result["params"]
    print(
        f"Data: {p['instances']} instances, {result['workload']['mean_instance_kb']} KB each "
        f"({result['workload']['mb_total']} MB), {p['per_request']} per request, "
        f"{p['concurrency']} clients, replicas {p['replicas'] or 'default'}\n"
    )
    rows = [
        [
            "krypton",
            k["acked"],
            k["failed"],
            k["acked_instances_per_s"],
            k["indexed_instances_per_s"],
            k["stow_latency"]["p50_ms"],
            k["stow_latency"]["p95_ms"],
            k["stow_latency"]["p99_ms"],
        ]
    ]
    o = result.get("orthanc")
    if o:
        rows.append(
            [
                "orthanc",
                o["acked"],
                o["failed"],
                o["acked_instances_per_s"],
                o["acked_instances_per_s"],  # Orthanc acknowledges once indexed
                o["stow_latency"]["p50_ms"],
                o["stow_latency"]["p95_ms"],
                o["stow_latency"]["p99_ms"],
            ]
        )
    print_table(
        ["server", "acked", "failed", "acked/s", "indexed/s", "p50 ms", "p95 ms", "p99 ms"], rows
    )
    print()
    print_table(
        ["process", "CPU s", "mean CPU %", "peak CPU %", "CPU ms/instance", "peak RSS MiB"],
        [
            [
                name,
                v["cpu_seconds"],
                v["cpu_mean_pct"],
                v["cpu_peak_pct"],
                k["cpu_ms_per_instance"][name],
                v["peak_rss_mib"],
            ]
            for name, v in k["processes"].items()
        ],
    )
    if o:
        print()
        print_table(
            ["orthanc run", "CPU s", "mean CPU %", "peak CPU %", "peak RSS MiB"],
            [
                [n, v["cpu_seconds"], v["cpu_mean_pct"], v["cpu_peak_pct"], v["peak_rss_mib"]]
                for n, v in o["processes"].items()
            ],
        )
        print(f"\nKrypton / Orthanc: {result['ratio_indexed_vs_orthanc']}x (indexed/s vs Orthanc)")
    if k["errors"]:
        print("errors:", *k["errors"], sep="\n  ")


async def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Run the benchmark; return (and save) its result."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--instances", type=int, default=2000)
    parser.add_argument("--per-request", type=int, default=10)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--replicas", default="", help="e.g. ingest=2,index=2")
    parser.add_argument("--max-per-series", type=int, default=25, help="instances per series cap")
    parser.add_argument("--seed", type=int, default=2025)
    parser.add_argument("--timeout", type=float, default=600.0, help="indexing deadline, s")
    parser.add_argument("--orthanc", action="store_true", help="also measure Orthanc")
    parser.add_argument("--name", default=NAME, help="results file name")
    args = parser.parse_args(argv)

    log(f"generating {args.instances} CT instances (512x512, 16 bits)")
    workload = generate(args.instances, args.per_request, args.max_per_series, args.seed)
    log(f"generated {workload.bytes_total / 1e6:.0f} MB in {workload.generate_s:.1f} s")
    krypton = await run_krypton(args, workload)
    result: dict[str, Any] = {
        "machine": machine(krypton.pop("pg_version")),
        "command": " ".join(["benchmarks/ingest.py", *(argv or sys.argv[1:])]),
        "params": {
            "instances": args.instances,
            "per_request": args.per_request,
            "concurrency": args.concurrency,
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
        "krypton": krypton,
    }
    if args.orthanc:
        with contextlib.suppress(KeyboardInterrupt):
            result["orthanc"] = await run_orthanc(args, workload)
            orthanc_rate = result["orthanc"]["acked_instances_per_s"]
            result["ratio_indexed_vs_orthanc"] = (
                round(krypton["indexed_instances_per_s"] / orthanc_rate, 2)
                if orthanc_rate
                else None
            )
    write_result(args.name, result)
    result["plot"] = str(plot(result))
    report(result)
    return result


if __name__ == "__main__":
    asyncio.run(main())

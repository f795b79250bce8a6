"""The standard benchmark set (`make bench`): ingest, QIDO, then search and retrieval at scale.

1. ``ingest.py --instances 2000``: STOW-RS to searchable;
2. ``qido.py --studies 100000``: the query mix over studies loaded by the index's write path,
   one layer at a time (HTTP, NATS, SQL);
3. ``scale.py --studies 1000000``: QIDO with the access policy and WADO over a regional
   population of 1M studies (`population.py`, COPY). The population is kept in
   ``.state/bench-1000000``: the first run loads it (a few minutes), later runs reuse it.
4. ``mixed.py --studies 1000000 --duration 90 --alone --ingest-rate 50``: searches,
   retrievals and ingest at the same time on that population, each stream alone first
   (30 s each) for the interference ratio; the run's ingested studies are deleted afterwards.

Each benchmark runs in its own process (its own platform), one after the other so they never
share the two cores. Results land in ``benchmarks/results/``; this script prints a summary at
the end. About 20-25 minutes on a 2-core machine the first time, less once the population is
cached (add 5-10 minutes with ``--orthanc``); the mixed step takes 5-10 of them.

    .venv/bin/python benchmarks/run_all.py [--orthanc] [--scale-studies 1000000]

The 18M run (22 GB of disk with series and instance rows for one study in 8, which study
searches do not read; 25 min of COPY + 7 min of index builds on 2 busy cores):

    .venv/bin/python benchmarks/population.py --studies 18000000 --detail-every 8
    .venv/bin/python benchmarks/scale.py --studies 18000000 --detail-every 8
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
RESULTS = BENCH_DIR / "results"
TIMEOUT_S = 20 * 60  # a benchmark that runs longer is stuck: stop it
SCALE_TIMEOUT_S = 40 * 60  # the first scale run also loads its population


def _run(script: str, extra: list[str], timeout: int = TIMEOUT_S) -> bool:
    command = [sys.executable, str(BENCH_DIR / script), *extra]
    sys.stderr.write(f"\n=== {' '.join(command)}\n")
    started = time.monotonic()
    try:
        # The child's own tables go straight to our stdout; the platform's logs too.
        code = subprocess.run(command, timeout=timeout, check=False).returncode
    except subprocess.TimeoutExpired:
        sys.stderr.write(f"{script} did not finish within {timeout} s\n")
        return False
    sys.stderr.write(f"=== {script} finished with {code} in {time.monotonic() - started:.0f} s\n")
    return code == 0


def _load(name: str) -> dict[str, Any] | None:
    path = RESULTS / f"{name}.json"
    return json.loads(path.read_text()) if path.exists() else None


def summary() -> str:
    """A few lines with the headline figures of the latest results."""
    lines = []
    ingest = _load("ingest")
    if ingest:
        k = ingest["krypton"]
        p = ingest["params"]
        lines.append(
            f"ingest: {p['instances']} x {ingest['workload']['mean_instance_kb']} KB, "
            f"{p['per_request']}/request, {p['concurrency']} clients: "
            f"{k['acked_instances_per_s']} acked/s, {k['indexed_instances_per_s']} indexed/s, "
            f"STOW p50/p95/p99 {k['stow_latency']['p50_ms']:.0f}/"
            f"{k['stow_latency']['p95_ms']:.0f}/{k['stow_latency']['p99_ms']:.0f} ms"
        )
        busiest = max(k["processes"].items(), key=lambda item: item[1]["cpu_seconds"])
        lines.append(
            f"  busiest process: {busiest[0]} ({busiest[1]['cpu_mean_pct']} % CPU mean, "
            f"{k['cpu_ms_per_instance'][busiest[0]]} ms CPU per instance)"
        )
        if "orthanc" in ingest:
            lines.append(
                f"  Orthanc: {ingest['orthanc']['acked_instances_per_s']} instances/s; "
                f"Krypton/Orthanc {ingest.get('ratio_indexed_vs_orthanc')}x"
            )
        for run in ingest.get("scaling", []):
            lines.append(
                f"  {run['workers']} ingest + {run['workers']} index workers: "
                f"{run['indexed_instances_per_s']} indexed/s"
            )
    qido = _load("qido")
    if qido:
        seq = qido["krypton"]["http_sequential"]
        conc = qido["krypton"]["http_concurrent"]
        lines.append(
            f"qido: {qido['load']['studies']} studies (loaded at "
            f"{qido['load']['studies_per_s']} studies/s); 1 client {seq['ALL']['per_s']:.0f} "
            f"req/s, p99 {seq['ALL']['p99_ms']:.1f} ms; 8 clients {conc['ALL']['per_s']:.0f} "
            f"req/s, p99 {conc['ALL']['p99_ms']:.1f} ms"
        )
        worst = sorted(
            ((key, v["p99_ms"]) for key, v in seq.items() if key != "ALL"),
            key=lambda item: item[1],
            reverse=True,
        )[:3]
        lines.append(
            "  slowest p99 (1 client): " + ", ".join(f"{key} {ms:.1f} ms" for key, ms in worst)
        )
    scale = _load("scale")
    if scale:
        seq = scale["krypton"]["http_sequential"]
        conc = scale["krypton"]["http_concurrent"]
        lines.append(
            f"scale: {scale['params']['studies']:,} studies, policy applied; 1 client "
            f"{seq['ALL']['per_s']:.0f} req/s, p99 {seq['ALL']['p99_ms']:.1f} ms; "
            f"{CLIENTS} clients {conc['ALL']['per_s']:.0f} req/s, p99 {conc['ALL']['p99_ms']:.1f} ms"
        )
        for token in ("professional", "producer", "admin"):
            items = {k.split("|")[0]: v for k, v in seq.items() if k.endswith(f"|{token}")}
            lines.append(
                f"  p99 {token}: "
                + ", ".join(f"{kind} {v['p99_ms']:.1f}" for kind, v in items.items())
                + " ms"
            )
        wado = scale["krypton"]["wado"]["http_sequential"]
        lines.append(
            "  WADO p99: " + ", ".join(f"{kind} {v['p99_ms']:.1f} ms" for kind, v in wado.items())
        )
    mixed = _load("mixed")
    if mixed:
        streams = mixed["phases"]["mixed"]["streams"]
        lines.append(
            f"mixed: {mixed['params']['duration_s']:.0f} s, "
            + ", ".join(
                f"{name} {r['summary'].get('per_s', 0):.0f} req/s p99 {r['summary']['p99_ms']:.0f} ms"
                f" ({r['drift']['verdict']}, {r['errors']} errors)"
                for name, r in streams.items()
            )
        )
        ingest = mixed["phases"]["mixed"].get("ingest")
        if ingest:
            lines.append(
                f"  ingest under load: {ingest['acked_per_s']} instances/s acked, all indexed "
                f"{ingest['all_indexed_s_after_last_ack']} s after the last ack; searchable "
                f"{mixed['searchable']['instances']} of {mixed['searchable']['acked']}"
            )
        if mixed["interference"]:
            lines.append(
                "  p99 mixed / alone: "
                + ", ".join(f"{k} {v['p99_ratio']}x" for k, v in mixed["interference"].items())
            )
        memory = mixed["phases"]["mixed"]["memory"]
        lines.append(
            "  memory: "
            + ", ".join(
                f"{k} {v['verdict']} (peak {v['peak_mib']:.0f} MiB)" for k, v in memory.items()
            )
        )
        lines.append(f"  findings: {len(mixed['findings'])} (see results/mixed.json)")
    return "\n".join(lines)


CLIENTS = 8


def main() -> int:
    """Run the four benchmarks and print the summary; non-zero if one failed."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--orthanc", action="store_true", help="include the Orthanc reference")
    parser.add_argument("--scale-studies", type=int, default=1_000_000)
    args = parser.parse_args()
    extra = ["--orthanc"] if args.orthanc else []
    ok = _run("ingest.py", ["--instances", "2000", "--workers", "1,2,4", *extra])
    ok = _run("qido.py", ["--studies", "100000", *extra]) and ok
    scale_extra = ["--orthanc", "--orthanc-studies", "30000"] if args.orthanc else []
    ok = (
        _run(
            "scale.py",
            ["--studies", str(args.scale_studies), *scale_extra],
            timeout=SCALE_TIMEOUT_S,
        )
        and ok
    )
    ok = (
        _run(
            "mixed.py",
            ["--studies", str(args.scale_studies), "--duration", "90", "--alone",
             "--ingest-rate", "50", "--drain-timeout", "90"],
        )
        and ok
    )  # fmt: skip
    print("\n=== summary\n" + summary())
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())

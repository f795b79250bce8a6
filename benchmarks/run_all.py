"""The standard benchmark set (`make bench`): ingest (2,000 instances) then QIDO (100,000 studies).

Each benchmark runs in its own process (its own platform, PostgreSQL and temporary state),
one after the other so they never share the two cores. Results land in ``benchmarks/results/``;
this script prints a summary of both at the end. About 5 minutes on a 2-core machine (10 with
``--orthanc``).

    .venv/bin/python benchmarks/run_all.py [--orthanc]
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


def _run(script: str, extra: list[str]) -> bool:
    command = [sys.executable, str(BENCH_DIR / script), *extra]
    sys.stderr.write(f"\n=== {' '.join(command)}\n")
    started = time.monotonic()
    try:
        # The child's own tables go straight to our stdout; the platform's logs too.
        code = subprocess.run(command, timeout=TIMEOUT_S, check=False).returncode
    except subprocess.TimeoutExpired:
        sys.stderr.write(f"{script} did not finish within {TIMEOUT_S} s\n")
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
    return "\n".join(lines)


def main() -> int:
    """Run both benchmarks and print the summary; non-zero if one failed."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--orthanc", action="store_true", help="include the Orthanc reference")
    args = parser.parse_args()
    extra = ["--orthanc"] if args.orthanc else []
    ok = _run("ingest.py", ["--instances", "2000", "--workers", "1,2,4", *extra])
    ok = _run("qido.py", ["--studies", "100000", *extra]) and ok
    print("\n=== summary\n" + summary())
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())

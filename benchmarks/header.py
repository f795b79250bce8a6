"""Header benchmark: CPU per instance of ingest's two header paths, in this process only.

Ingest parses each staged instance's header and extracts what `instance.stored` carries. The
full path is `read_header` (pydicom reads every element) + `extract` (pydicom converts about
forty values); the fast path is `read_quick` (a walk of the element headers keeping only the
elements `extract` reads) + the same `extract`. This measures both, per instance, on the
ingest benchmark's synthetic CT instances (512x512, 16 bits) and on pydicom's test files
(how many of those the fast path takes, the rest falling back to the full path).

    .venv/bin/python benchmarks/header.py --instances 200 --repeat 5
"""

from __future__ import annotations

import argparse
import contextlib
import time
from collections.abc import Callable, Sequence
from typing import Any

from common import log, machine, print_table, write_result
from krypton.dicom.extract import extract
from krypton.dicom.header import read_header
from krypton.dicom.quick import read_quick
from krypton.dicom.synthetic import Population, render_instances
from krypton.dicom.testfiles import pydicom_test_files

NAME = "header"
STRUCTURE = "330781196"


def _ct_instances(n: int, seed: int) -> list[bytes]:
    population = Population(seed, max(1000, n))
    out: list[bytes] = []
    index = 0
    while len(out) < n:
        study = population.study(index, max_instances_per_series=25)
        index += 1
        if study.modalities == ("CT",):
            out.extend(render_instances(study, rows=512, cols=512, bits=16))
    return out[:n]


def _full(data: bytes) -> object:
    return extract(read_header(data), STRUCTURE)


def _fast(data: bytes) -> object:
    return extract(read_quick(data) or read_header(data), STRUCTURE)


def _best_us(step: Callable[[bytes], object], files: Sequence[bytes], repeat: int) -> float:
    """Best of `repeat` passes over `files`, in microseconds per file (the least disturbed)."""
    best = float("inf")
    for _ in range(repeat):
        started = time.process_time()
        for data in files:
            # A refused test file costs what it costs.
            with contextlib.suppress(Exception):
                step(data)
        best = min(best, (time.process_time() - started) / len(files) * 1e6)
    return best


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Run the benchmark; return (and save) its result."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--instances", type=int, default=200)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--seed", type=int, default=2025)
    args = parser.parse_args(argv)

    log(f"generating {args.instances} CT instances (512x512, 16 bits)")
    sets = {
        "synthetic CT 512x512": _ct_instances(args.instances, args.seed),
        "pydicom test files": [p.read_bytes() for p in pydicom_test_files()],
    }
    rows = []
    figures: dict[str, Any] = {}
    for name, files in sets.items():
        taken = sum(read_quick(d) is not None for d in files)
        full = _best_us(_full, files, args.repeat)
        fast = _best_us(_fast, files, args.repeat)
        figures[name] = {
            "files": len(files),
            "fast_path_taken": taken,
            "full_us_per_file": round(full, 1),
            "fast_us_per_file": round(fast, 1),
        }
        rows.append([name, len(files), taken, f"{full:.0f}", f"{fast:.0f}", f"{full / fast:.1f}x"])
    print_table(["files", "n", "fast path taken", "full µs/file", "fast µs/file", "speed-up"], rows)
    result = {
        "machine": machine(),
        "parameters": vars(args),
        "figures": figures,
        "note": "CPU time of this process (time.process_time), best of --repeat passes",
    }
    write_result(NAME, result)
    return result


if __name__ == "__main__":
    main()

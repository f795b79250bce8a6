"""Sampling profiles of the platform's Python processes during a benchmark, with py-spy.

``py-spy`` (``uv pip install py-spy``; not a project dependency) samples a running process from
outside, without changing it. `Profiler` records each process of the given groups while a
benchmark runs (collapsed stacks, ``-f raw``), and `breakdown` turns a recording into where the
time went: the share of samples whose stack contains each category's marker (inclusive), and
the hottest leaf frames (self time). Only samples of threads that were running count (py-spy's
default idle filter), so the shares are of CPU time, not of wall time.

    .venv/bin/python benchmarks/ingest.py --instances 1000 --profile results/profile
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import subprocess
from collections import Counter
from pathlib import Path
from typing import Any

__all__ = ["CATEGORIES", "Profiler", "breakdown", "pyspy_available"]

# Where the time goes, by stack marker: the first category whose marker appears in a stack
# takes that sample (so the order matters: the most specific first).
CATEGORIES: dict[str, tuple[str, ...]] = {
    "sha256": ("sha256", "hexdigest", "file_digest", "(hashlib"),
    "fsync": ("fsync", "_fsync_"),
    "file write": ("write (krypton/storage/fs.py", "_put_whole", "VolatileWriter.write"),
    "file read": ("_read_local", "read (krypton/storage/fs.py"),
    "rename": ("move_many", "move_all", "replace"),
    "multipart": ("python_multipart", "_MultipartReader", "_part_data"),
    "dicom header": ("read_header", "dcmread", "pydicom/filereader"),
    "dicom extract": ("extract (krypton/dicom/extract", "krypton/dicom/identity"),
    "render": ("krypton/render", "pydicom/pixels", "simplejpeg", "imagecodecs"),
    "audit": ("krypton/audit", "audit_emit"),
    "jwt": ("jwt", "security.py", "cryptography"),
    "json/msgspec": ("msgspec", "json", "encode (krypton/bus/codec", "decode (krypton/bus/codec"),
    "postgres (asyncpg)": ("asyncpg",),
    "nats": ("nats/", "nats.aio", "nats.js"),
    "http (uvicorn/starlette)": ("uvicorn", "starlette", "fastapi", "httptools", "h11"),
    "http client": ("httpx", "httpcore"),
    "logging": ("structlog", "logging/"),
    "asyncio loop": ("asyncio", "uvloop", "selectors", "run_forever", "_run_once"),
}


def pyspy_available() -> str | None:
    """Path of the py-spy executable, if installed (beside the interpreter or on PATH)."""
    import sys

    beside = Path(sys.executable).parent / "py-spy"
    return str(beside) if beside.exists() else shutil.which("py-spy")


class Profiler:
    """Runs ``py-spy record`` on each named process until `stop`."""

    def __init__(self, pids: dict[str, int], out_dir: Path, rate: int = 50) -> None:
        """Profile `pids` (name → pid) at `rate` samples/s into ``out_dir/<name>.txt``."""
        self.pids = pids
        self.out_dir = out_dir
        self.rate = rate
        self._procs: dict[str, subprocess.Popen[bytes]] = {}

    def start(self) -> None:
        """Start one recorder per process (nonblocking: the target is never paused)."""
        exe = pyspy_available()
        if exe is None:
            msg = "py-spy is not installed: uv pip install py-spy"
            raise RuntimeError(msg)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        for name, pid in self.pids.items():
            self._procs[name] = subprocess.Popen(
                [exe, "record", "--pid", str(pid), "--rate", str(self.rate), "--nonblocking",
                 "--format", "raw", "--output", str(self.out_dir / f"{name}.txt")],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )  # fmt: skip

    async def stop(self) -> dict[str, dict[str, Any]]:
        """Stop the recorders (SIGINT makes py-spy write its file); the breakdown of each."""
        for proc in self._procs.values():
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(2)
        for proc in self._procs.values():
            try:
                await asyncio.to_thread(proc.wait, 30)
            except subprocess.TimeoutExpired:
                proc.kill()
        out = {}
        for name in self._procs:
            path = self.out_dir / f"{name}.txt"
            if path.exists():
                out[name] = breakdown(path)
        return out


def breakdown(path: Path, top: int = 12) -> dict[str, Any]:
    """Samples per category (inclusive, first match wins) and the hottest leaf frames."""
    categories: Counter[str] = Counter()
    leaves: Counter[str] = Counter()
    total = 0
    for line in path.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        total += count
        frames = stack.split(";")
        leaves[frames[-1]] += count
        for name, markers in CATEGORIES.items():
            if any(marker in stack for marker in markers):
                categories[name] += count
                break
        else:
            categories["other"] += count
    share = {n: round(100 * c / total, 1) for n, c in categories.most_common()} if total else {}
    return {
        "samples": total,
        "category_pct": share,
        "top_self": [(frame, round(100 * c / total, 1)) for frame, c in leaves.most_common(top)]
        if total
        else [],
    }

"""Sampling profiles of the platform's Python processes during a benchmark, with py-spy.

``py-spy`` (``uv pip install py-spy``; not a project dependency) samples a running process from
outside, without changing it. `Profiler` records each process of the given groups while a
benchmark runs (collapsed stacks, ``-f raw``), and `breakdown` turns a recording into where the
time went: the share of samples per category (the deepest frame of a stack that matches a
category's marker decides), and the hottest leaf frames (self time). Only samples of threads that were running count (py-spy's
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

# Where the time goes: a sample belongs to the category of the deepest frame (nearest the leaf)
# that contains one of its markers; py-spy writes frames as ``function (package/file.py:line)``.
CATEGORIES: dict[str, tuple[str, ...]] = {
    "sha256": ("sha256", "hexdigest", "file_digest", "_hashlib"),
    "fsync": ("_fsync_file", "_fsync_dir", "fsync"),
    "file write": ("_AtomicWriter.", "VolatileWriter.", "_put_whole", "mkstemp"),
    "file read": ("_read_local", "_read_many", "FileSystemStore.read", "FileSystemStore.stream"),
    "rename": ("move_all", "move_many", "_makedirs_durable", "FileSystemStore.move"),
    "multipart": ("python_multipart", "_MultipartReader"),
    "dicom header": ("(dicom/header.py", "pydicom/filereader"),
    "dicom extract": ("(dicom/extract.py", "(dicom/identity.py", "(dicom/_values.py"),
    "render": ("(render/", "(dicom/pixels.py", "pydicom/pixels", "numpy/", "PIL/"),
    "postgres (asyncpg)": ("asyncpg/",),
    "nats": ("nats/",),
    "token check": ("(auth/", "jwt/", "cryptography/", "authenticate (gateway/security.py"),
    "audit": ("(gateway/audit_emit.py", "(audit/"),
    "json/msgspec": ("msgspec", "(bus/codec.py", "json/"),
    "logging": ("structlog/", "logging/"),
    "http server": ("uvicorn/", "starlette/", "fastapi/", "httptools"),
    "http client": ("httpx/", "httpcore/"),
    "thread pool": ("concurrent/futures", "asyncio/threads.py"),
    "event loop": ("asyncio/", "uvloop", "selectors"),
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
        categories[_category(frames)] += count
    share = {n: round(100 * c / total, 1) for n, c in categories.most_common()} if total else {}
    return {
        "samples": total,
        "category_pct": share,
        "top_self": [(frame, round(100 * c / total, 1)) for frame, c in leaves.most_common(top)]
        if total
        else [],
    }


def _category(frames: list[str]) -> str:
    """The category of the deepest frame that names one, else "other"."""
    for frame in reversed(frames):
        for name, markers in CATEGORIES.items():
            if any(marker in frame for marker in markers):
                return name
    return "other"

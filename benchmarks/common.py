"""Shared helpers for the benchmarks: machine description, statistics, results, plots, sampling.

Every benchmark prints its figures and saves them as JSON (``results/<name>-<UTC>.json`` plus
the latest copy ``results/<name>.json``) with the machine they were measured on, and draws a
PNG next to them. Nothing here asserts a speed: figures are reported, never checked.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import platform as pyplatform
import shutil
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psutil

__all__ = [
    "RESULTS_DIR",
    "ProcessSampler",
    "SystemCpu",
    "free_orthanc_ports",
    "git_commit",
    "machine",
    "machine_line",
    "platform_groups",
    "plot_path",
    "postgres_version",
    "print_table",
    "started_platform",
    "summarise",
    "write_result",
]

BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parent
RESULTS_DIR = BENCH_DIR / "results"


# --- machine -------------------------------------------------------------------------------


def _cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return pyplatform.processor() or "unknown"


def _ram_gib() -> float:
    with contextlib.suppress(OSError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) / 1024**2, 1)
    return round(float(psutil.virtual_memory().total) / 1024**3, 1)


def git_commit() -> str:
    """Short commit of the working tree, with ``+dirty`` when it has uncommitted changes."""
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=REPO,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=REPO,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return commit + ("+dirty" if dirty else "")


async def postgres_version(dsn: str) -> str:
    """``server_version`` of the PostgreSQL behind `dsn`."""
    import asyncpg

    conn = await asyncpg.connect(dsn)
    try:
        return str(await conn.fetchval("show server_version"))
    finally:
        await conn.close()


def machine(pg_version: str | None = None) -> dict[str, Any]:
    """What the figures were measured on."""
    return {
        "cpu": _cpu_model(),
        "cores": os.cpu_count(),
        "ram_gib": _ram_gib(),
        "os": f"{pyplatform.system()} {pyplatform.release()}",
        "python": pyplatform.python_version(),
        "postgresql": pg_version,
        "git_commit": git_commit(),
    }


def machine_line(m: dict[str, Any]) -> str:
    """One readable line for the top of a report."""
    return (
        f"{m['cpu']}, {m['cores']} cores, {m['ram_gib']} GiB RAM, Python {m['python']}, "
        f"PostgreSQL {m['postgresql']}, commit {m['git_commit']}"
    )


# --- statistics ----------------------------------------------------------------------------


def _percentile(ordered: Sequence[float], q: float) -> float:
    """Linear interpolation between closest ranks (numpy's default), on sorted data."""
    if not ordered:
        return float("nan")
    position = (len(ordered) - 1) * q
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def summarise(samples_s: Iterable[float], elapsed_s: float | None = None) -> dict[str, float]:
    """Latency summary in milliseconds (count, mean, p50/p95/p99, max) and throughput per second.

    Args:
        samples_s: latencies in seconds.
        elapsed_s: wall time the samples were taken in; gives ``per_s`` (requests per second).
    """
    ordered = sorted(samples_s)
    n = len(ordered)
    out = {
        "count": n,
        "mean_ms": (sum(ordered) / n * 1000) if n else float("nan"),
        "p50_ms": _percentile(ordered, 0.50) * 1000,
        "p95_ms": _percentile(ordered, 0.95) * 1000,
        "p99_ms": _percentile(ordered, 0.99) * 1000,
        "max_ms": (ordered[-1] * 1000) if n else float("nan"),
    }
    if elapsed_s:
        out["per_s"] = n / elapsed_s
    return {k: round(v, 3) for k, v in out.items()}  # round() keeps the count an int


def print_table(headers: Sequence[str], rows: Iterable[Sequence[object]]) -> str:
    """Print (and return) a plain aligned table."""
    cells = [[str(h) for h in headers]]
    for row in rows:
        cells.append([f"{c:.2f}" if isinstance(c, float) else str(c) for c in row])
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = []
    for index, row in enumerate(cells):
        lines.append(
            "  ".join(
                c.rjust(w) if i else c.ljust(w)
                for i, (c, w) in enumerate(zip(row, widths, strict=True))
            )
        )
        if index == 0:
            lines.append("  ".join("-" * w for w in widths))
    text = "\n".join(lines)
    print(text)
    return text


# --- results -------------------------------------------------------------------------------


def write_result(name: str, payload: dict[str, Any]) -> Path:
    """Save `payload` as ``results/<name>-<UTC>.json`` and as the latest ``results/<name>.json``."""
    RESULTS_DIR.mkdir(exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    payload = {"benchmark": name, "measured_at": datetime.now(UTC).isoformat(), **payload}
    text = json.dumps(payload, indent=2, default=str)
    path = RESULTS_DIR / f"{name}-{stamp}.json"
    path.write_text(text)
    shutil.copyfile(path, RESULTS_DIR / f"{name}.json")
    return path


def plot_path(name: str) -> Path:
    """Where a benchmark's PNG goes (the latest run overwrites it)."""
    RESULTS_DIR.mkdir(exist_ok=True)
    return RESULTS_DIR / f"{name}.png"


def save_figure(fig: Any, plt: Any, name: str, machine_info: dict[str, Any]) -> Path:
    """Sign `fig` with the machine line, save it as results/<name>.png, close it."""
    fig.text(0.01, 0.005, machine_line(machine_info), fontsize=7)
    fig.tight_layout(rect=(0, 0.02, 1, 1))
    path = plot_path(name)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def pyplot() -> Any:
    """matplotlib.pyplot on the Agg backend (no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


# --- processes -----------------------------------------------------------------------------


def platform_groups(platform: Any) -> dict[str, list[psutil.Process]]:
    """Root processes of each part of a running `Platform`, grouped by service.

    Replicas (``ingest-2``) join their service's group; PostgreSQL is its postmaster (its
    backends are found as children at each sample); ``client`` is this benchmark process.
    """
    groups: dict[str, list[psutil.Process]] = {}
    for label, child in platform.supervisor.children.items():
        if child.proc is None:
            continue
        service = label.split("-", 1)[0]
        groups.setdefault(service, []).append(psutil.Process(child.proc.pid))
    if platform.nats is not None and platform.nats.proc is not None:
        groups["nats-server"] = [psutil.Process(platform.nats.proc.pid)]
    pg_dir = str(platform.state_dir / "pg")
    for proc in psutil.process_iter(["name", "cmdline", "ppid"]):
        cmd = " ".join(proc.info["cmdline"] or [])
        if "postgres" in (proc.info["name"] or "") and pg_dir in cmd and "-D" in cmd:
            groups["postgres"] = [proc]
            break
    groups["client"] = [psutil.Process(os.getpid())]
    return groups


@dataclass
class _Group:
    roots: list[psutil.Process]
    with_children: bool
    cpu_by_pid: dict[int, float] = field(default_factory=dict)  # last seen cpu seconds
    cpu_total: float = 0.0
    cpu_user: float = 0.0
    cpu_system: float = 0.0
    user_by_pid: dict[int, float] = field(default_factory=dict)
    peak_rss: int = 0
    hwm_by_pid: dict[int, int] = field(default_factory=dict)  # VmHWM: the kernel's own peak
    timeline: list[float] = field(default_factory=list)  # CPU % per sample


class ProcessSampler:
    """Samples CPU time and RSS of process groups while a benchmark runs.

    CPU % is CPU seconds over wall seconds (100 % = one core busy). Peak RSS is the largest
    sum of the group's resident sets seen at a sample; for PostgreSQL that sum counts shared
    buffers once per backend that touched them, so it is an upper bound.
    """

    def __init__(self, groups: dict[str, list[psutil.Process]], interval: float = 0.5) -> None:
        """Watch `groups` (name → root processes) every `interval` seconds once started."""
        self.interval = interval
        self.groups = {
            name: _Group(roots, with_children=name in ("postgres",))
            for name, roots in groups.items()
        }
        self.times: list[float] = []
        self._task: asyncio.Task[None] | None = None
        self._start = 0.0
        self._stop = 0.0

    def _members(self, group: _Group) -> list[psutil.Process]:
        members = list(group.roots)
        if group.with_children:
            for root in group.roots:
                with contextlib.suppress(psutil.Error):
                    members.extend(root.children(recursive=True))
        return members

    def _sample(self, *, record: bool) -> None:
        now = time.monotonic()
        previous = self.times[-1] if self.times else self._start
        for group in self.groups.values():
            spent = 0.0
            user = 0.0
            rss = 0
            for proc in self._members(group):
                try:
                    with proc.oneshot():
                        times = proc.cpu_times()
                        rss += proc.memory_info().rss
                except psutil.Error:
                    continue
                hwm = _vm_hwm(proc.pid)
                if hwm is not None:
                    group.hwm_by_pid[proc.pid] = max(group.hwm_by_pid.get(proc.pid, 0), hwm)
                seconds = times.user + times.system
                before = group.cpu_by_pid.get(proc.pid)
                before_user = group.user_by_pid.get(proc.pid)
                # A process first seen mid-run counts from zero: its whole life is in the run.
                spent += seconds - (
                    before if before is not None else (seconds if not record else 0.0)
                )
                user += times.user - (
                    before_user if before_user is not None else (times.user if not record else 0.0)
                )
                group.cpu_by_pid[proc.pid] = seconds
                group.user_by_pid[proc.pid] = times.user
            if record:
                group.cpu_total += spent
                group.cpu_user += user
                group.cpu_system += spent - user
                group.timeline.append(100 * spent / max(now - previous, 1e-6))
            group.peak_rss = max(group.peak_rss, rss)
        if record:
            self.times.append(now)

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            self._sample(record=True)

    def start(self) -> None:
        """Take the baseline and start sampling in the background."""
        self._start = time.monotonic()
        self._sample(record=False)
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        """Take a last sample and stop."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self._sample(record=True)
        self._stop = time.monotonic()

    def report(self) -> dict[str, dict[str, float]]:
        """Per group: CPU seconds (user, system), mean and peak CPU %, peak RSS in MiB.

        ``peak_rss_mib`` is the largest sampled sum over the group; ``max_hwm_mib`` is the
        largest ``VmHWM`` (the kernel's exact peak resident set) of any one process of the
        group, i.e. the peak memory of one service process (one replica).
        """
        wall = max(self._stop - self._start, 1e-6)
        out = {}
        for name, group in self.groups.items():
            out[name] = {
                "cpu_seconds": round(group.cpu_total, 2),
                "cpu_user_seconds": round(group.cpu_user, 2),
                "cpu_system_seconds": round(group.cpu_system, 2),
                "cpu_mean_pct": round(100 * group.cpu_total / wall, 1),
                "cpu_peak_pct": round(max(group.timeline, default=0.0), 1),
                "peak_rss_mib": round(group.peak_rss / 1024**2, 1),
                "max_hwm_mib": round(max(group.hwm_by_pid.values(), default=0) / 1024**2, 1),
                "processes": len(group.hwm_by_pid),
            }
        return out

    def timelines(self) -> dict[str, Any]:
        """Sample times (s from start) and CPU % per group, for plots."""
        return {
            "t": [round(t - self._start, 2) for t in self.times],
            "cpu_pct": {n: [round(v, 1) for v in g.timeline] for n, g in self.groups.items()},
        }


def _vm_hwm(pid: int) -> int | None:
    """A process's peak resident set in bytes (``VmHWM`` of ``/proc/<pid>/status``), Linux only."""
    with contextlib.suppress(OSError, ValueError), open(f"/proc/{pid}/status", "rb") as status:
        for line in status:
            if line.startswith(b"VmHWM:"):
                return int(line.split()[1]) * 1024
    return None


class SystemCpu:
    """Machine-wide CPU use between `start` and `stop`, from ``/proc/stat`` (Linux).

    Catches what no process group shows: kernel threads (page-cache writeback, the block
    layer, softirqs of the loopback network) and the other tenants of a shared machine.
    Percentages are of all cores (100 % = every core busy).
    """

    _FIELDS = ("user", "nice", "system", "idle", "iowait", "irq", "softirq", "steal")

    def __init__(self) -> None:
        """Nothing is read until `start`."""
        self._start: list[int] = []
        self._stop: list[int] = []

    @staticmethod
    def _read() -> list[int]:
        try:
            with open("/proc/stat") as stat:
                first = stat.readline().split()
        except OSError:
            return []
        return [int(v) for v in first[1 : 1 + len(SystemCpu._FIELDS)]]

    def start(self) -> None:
        """Take the starting counters."""
        self._start = self._read()

    def stop(self) -> None:
        """Take the final counters."""
        self._stop = self._read()

    def report(self) -> dict[str, float]:
        """Share of all cores' time per state, in percent."""
        if not self._start or not self._stop:
            return {}
        deltas = [b - a for a, b in zip(self._start, self._stop, strict=True)]
        total = sum(deltas) or 1
        out = {n: round(100 * d / total, 1) for n, d in zip(self._FIELDS, deltas, strict=True)}
        out["busy"] = round(100 - out["idle"] - out["iowait"], 1)
        return out


# --- platform ------------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def started_platform(
    state_dir: Path,
    replicas: dict[str, int] | None = None,
    log_level: str = "WARNING",
    extra_env: dict[str, str] | None = None,
) -> AsyncIterator[Any]:
    """A running embedded platform on free ports with its state in `state_dir`."""
    from krypton.cli.platform import Platform, PlatformConfig

    platform = Platform(
        PlatformConfig(
            state_dir=state_dir,
            http_port=0,
            nats_port=0,
            issuer_port=0,
            replicas=replicas or {},
            log_level=log_level,
            extra_env=extra_env or {},
        ),
        colour=False,
    )
    async with platform.running(timeout=120):
        yield platform


def parse_replicas(text: str) -> dict[str, int]:
    """``ingest=2,index=2`` → ``{"ingest": 2, "index": 2}``."""
    out: dict[str, int] = {}
    for item in filter(None, (p.strip() for p in text.split(","))):
        name, _, count = item.partition("=")
        out[name.strip()] = int(count)
    return out


def free_orthanc_ports() -> tuple[int, int]:
    """Two free ports for an Orthanc reference server (HTTP, DIMSE)."""
    from krypton.testing.servers import free_port

    return free_port(), free_port()


def log(message: str) -> None:
    """Progress line on stderr (figures go to stdout)."""
    sys.stderr.write(f"[{time.strftime('%H:%M:%S')}] {message}\n")
    sys.stderr.flush()

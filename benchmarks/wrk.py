"""A request list sent by `wrk` (C, epoll), so that latencies are the server's, not the client's.

On this 2-core machine the Python client (httpx) spends ~1.8 ms of CPU per request, more than
a cached read costs the server; measured through it, a 0.5 ms answer reads as ~2 ms at p50 and
~4 ms at p99. `wrk` (Debian package `wrk`) sends the same requests for a few microseconds
each. Both servers of a comparison are measured with it, in the same run.

The list is sent once (not looped: a "no cache" scenario must not repeat a request), with
`concurrency` connections on one wrk thread; the Lua script stops at the last answer. Up to
``concurrency - 1`` extra requests (a repeat of the last one) may be in flight at that point;
they are not counted. The answers' ``Server-Timing`` stages are summed in the script.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import signal
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

__all__ = ["add_client_argument", "available", "run_wrk", "run_wrk_all_ok", "stage_means"]

_SCRIPT = r"""
local reqs = {}
local n = 0
local i = 0
local answered = 0
local bytes = 0
local statuses = {}
local sums = {}
local counts = {}
result = ""

init = function(args)
  for _, line in ipairs(REQUESTS) do
    n = n + 1
    reqs[n] = wrk.format("GET", line[1], line[2])
  end
end

request = function()
  if i < n then i = i + 1 end
  return reqs[i]
end

local function encode()
  local parts = {}
  for k, v in pairs(statuses) do parts[#parts + 1] = "status:" .. k .. "=" .. v end
  for k, v in pairs(sums) do parts[#parts + 1] = "stage:" .. k .. "=" .. v .. "/" .. counts[k] end
  parts[#parts + 1] = "bytes=" .. bytes
  parts[#parts + 1] = "answered=" .. answered
  return table.concat(parts, ";")
end

response = function(status, headers, body)
  if answered >= n then return end
  answered = answered + 1
  statuses[status] = (statuses[status] or 0) + 1
  bytes = bytes + #body
  local st = headers["server-timing"] or headers["Server-Timing"]
  if st and status == 200 then
    for name, dur in string.gmatch(st, "([%w_%-]+);dur=([%d%.]+)") do
      sums[name] = (sums[name] or 0) + tonumber(dur)
      counts[name] = (counts[name] or 0) + 1
    end
  end
  if answered >= n then
    result = encode()
    io.write("KRYPTON_DONE\n")
    io.flush()
    wrk.thread:stop()
  end
end

local threads = {}
setup = function(thread) threads[#threads + 1] = thread end

done = function(summary, latency, requests)
  local r = threads[1]:get("result")
  io.write(string.format(
    '\nKRYPTON {"p50": %d, "p95": %d, "p99": %d, "max": %d, "mean": %f, "duration_us": %d, ' ..
    '"timeouts": %d, "connect": %d, "read": %d, "write": %d, "result": "%s"}\n',
    latency:percentile(50), latency:percentile(95), latency:percentile(99), latency.max,
    latency.mean, summary.duration, summary.errors.timeout, summary.errors.connect,
    summary.errors.read, summary.errors.write, r))
end
"""


def available() -> bool:
    """Whether the `wrk` binary is on the PATH."""
    return shutil.which("wrk") is not None


def add_client_argument(parser: argparse.ArgumentParser, help_text: str) -> None:
    """``--client wrk|httpx``, wrk by default when it is installed."""
    parser.add_argument(
        "--client",
        choices=("wrk", "httpx"),
        default="wrk" if available() else "httpx",
        help=help_text,
    )


def _lua_string(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


async def run_wrk(
    requests: Sequence[tuple[str, dict[str, str]]], concurrency: int, timeout_s: float = 120.0
) -> dict[str, Any]:
    """Send `requests` (absolute URLs of one server, headers) once; what wrk measured.

    Returns latency percentiles in ms (``p50_ms``, ``p95_ms``, ``p99_ms``, ``max_ms``,
    ``mean_ms``), ``count``, ``elapsed_s``, ``bytes``, ``statuses`` (answers by status code),
    ``errors`` (socket errors and timeouts) and ``stages`` (Server-Timing name: (sum ms, n)).
    """
    base = urlsplit(requests[0][0])
    origin = f"{base.scheme}://{base.netloc}"
    lines = []
    for url, headers in requests:
        parts = urlsplit(url)
        if f"{parts.scheme}://{parts.netloc}" != origin:
            msg = "all requests of one wrk run go to one server"
            raise ValueError(msg)
        path = parts.path + (f"?{parts.query}" if parts.query else "")
        header_table = ", ".join(
            f"[{_lua_string(k)}] = {_lua_string(v)}" for k, v in headers.items()
        )
        lines.append(f"{{{_lua_string(path)}, {{{header_table}}}}}")
    with tempfile.TemporaryDirectory() as tmp:
        script = Path(tmp) / "requests.lua"
        script.write_text("REQUESTS = {\n" + ",\n".join(lines) + "\n}\n" + _SCRIPT)
        proc = await asyncio.create_subprocess_exec(
            "wrk", "-t1", f"-c{concurrency}", f"-d{int(timeout_s)}s",
            f"--timeout={int(timeout_s)}s", "-s", str(script), origin,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        # wrk's main thread sleeps for the whole -d; SIGINT ends that sleep (then done() runs).
        assert proc.stdout is not None
        assert proc.stderr is not None
        collected = []
        while line := await proc.stdout.readline():
            collected.append(line)
            if line.startswith(b"KRYPTON_DONE"):
                proc.send_signal(signal.SIGINT)
        err = await proc.stderr.read()
        await proc.wait()
        out = b"".join(collected)
    summary = next((x for x in out.decode().splitlines() if x.startswith("KRYPTON ")), None)
    if proc.returncode != 0 or summary is None:
        msg = f"wrk failed ({proc.returncode}): {err.decode()[-500:]}"
        raise RuntimeError(msg)
    raw = json.loads(summary.removeprefix("KRYPTON "))
    statuses: dict[str, int] = {}
    stages: dict[str, tuple[float, int]] = {}
    size = answered = 0
    for item in filter(None, raw["result"].split(";")):
        key, _, value = item.partition("=")
        if key.startswith("status:"):
            statuses[key.removeprefix("status:")] = int(value)
        elif key.startswith("stage:"):
            total, _, count = value.partition("/")
            stages[key.removeprefix("stage:")] = (float(total), int(count))
        elif key == "bytes":
            size = int(value)
        elif key == "answered":
            answered = int(value)
    errors = {k: raw[k] for k in ("timeouts", "connect", "read", "write") if raw[k]}
    return {
        "count": answered,
        "p50_ms": raw["p50"] / 1000,
        "p95_ms": raw["p95"] / 1000,
        "p99_ms": raw["p99"] / 1000,
        "max_ms": raw["max"] / 1000,
        "mean_ms": round(raw["mean"] / 1000, 3),
        "elapsed_s": raw["duration_us"] / 1e6,
        "bytes": size,
        "statuses": statuses,
        "errors": errors,
        "stages": stages,
    }


def stage_means(measured: dict[str, Any]) -> dict[str, float]:
    """Mean ms of each Server-Timing stage of a `run_wrk` result, over the answers with it."""
    return {
        name: round(total / count, 3) for name, (total, count) in sorted(measured["stages"].items())
    }


async def run_wrk_all_ok(
    requests: Sequence[tuple[str, dict[str, str]]], concurrency: int, label: str
) -> tuple[dict[str, Any], dict[str, float]]:
    """`run_wrk`, refusing any answer but 200: the latency row (with ``per_s``) and the stages.

    Raises:
        RuntimeError: an answer was not 200, or a socket error or timeout happened.
    """
    measured = await run_wrk(requests, concurrency)
    if measured["statuses"] != {"200": len(requests)} or measured["errors"]:
        msg = f"{label}: {measured['statuses']} {measured['errors']}"
        raise RuntimeError(msg)
    row = {k: measured[k] for k in ("count", "mean_ms", "p50_ms", "p95_ms", "p99_ms", "max_ms")}
    row["per_s"] = round(len(requests) / max(measured["elapsed_s"], 1e-9), 1)
    return row, stage_means(measured)

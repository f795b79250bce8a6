"""Search and retrieval at regional scale: QIDO-RS and WADO-RS over a population of N studies.

Loads (or reuses) the population of `population.py` in ``.state/bench-<N>`` (COPY, resumable;
the first run at 1M studies takes a few minutes, later runs start at once), starts the
embedded platform on that database, and measures through HTTP with the access policy applied:

- QIDO study searches as a professional of a structure who also holds care relationships and
  share codes (the full access rule: own structure OR live grant AND no opposition), as the
  producing structure's system, and as an admin: by PatientID, by name with
  ``fuzzymatching=true`` (``<5 letters of the family name> <3 of the given name>``), by
  StudyDate range (a quarter) + ``ModalitiesInStudy=CT`` (limit 100), by AccessionNumber, the
  structure's recent studies (limit 25), and limit/offset pages (offsets 0, 100, 1000 of 100).
  Values come from studies the token may see (hits), drawn from the population's functions.
- WADO-RS study metadata and the rendered first image of the studies that have real objects
  (``--objects`` of the population), with the producing structure's token.

Each kind is measured one request at a time and with 8 concurrent clients (p50/p95/p99 and
throughput), then ``EXPLAIN (ANALYZE, BUFFERS)`` of the SQL the index runs for each QIDO kind
and token goes into the JSON. ``--orthanc`` loads the first ``--orthanc-studies`` studies of the
same population into an Orthanc reference server (STOW-RS) and times the same kinds there
(no access rule: Orthanc has none), reported as a ratio of p99.

    .venv/bin/python benchmarks/scale.py --studies 1000000 [--orthanc --orthanc-studies 30000]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import random
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import asyncpg
import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))

import population
from common import (
    ProcessSampler,
    log,
    machine,
    machine_line,
    platform_groups,
    postgres_version,
    print_table,
    pyplot,
    save_figure,
    started_platform,
    write_result,
)
from krypton.auth.dev_issuer import DevIssuer
from krypton.contracts.common.v1 import Actor, RoleValues
from krypton.contracts.index.v1 import QidoLevelValues, QidoRequest
from krypton.dicom.qido import parse_qido
from krypton.index.qido_sql import actor_has_grants, build_qido_sql
from qido import (
    Query,
    StageLog,
    measure_concurrent,
    measure_sequential,
    stage_means,
    table_of,
    time_orthanc,
)
from wrk import add_client_argument, run_wrk_all_ok

NAME = "scale"
CLIENTS = 8
STUDY = QidoLevelValues.STUDY


# --- query values from the population ------------------------------------------------------


def _quarter(day: Any) -> str:
    first = 3 * ((day.month - 1) // 3) + 1
    end = {1: "0331", 4: "0630", 7: "0930", 10: "1231"}[first]
    return f"{day.year}{first:02d}01-{day.year}{end}"


def sample_studies(
    region: population.Region, structure: str, granted: Sequence[int], size: int, seed: int
) -> list[dict[str, Any]]:
    """About `size` studies the professional sees: three quarters of their structure's, a
    quarter of other structures' granted ones."""
    rng = random.Random(seed)
    config = region.config
    own: list[dict[str, Any]] = []
    # Study i's structure is a pure function of i: scan random windows until enough are found.
    for _ in range(1000):
        if len(own) >= size * 3 // 4:
            break
        start = rng.randrange(config.objects, max(config.objects + 1, config.studies - 2000))
        cols = region.studies(start, min(2000, config.studies - start))
        for k, finess in enumerate(cols["structure"]):
            if finess == structure and len(own) < size * 3 // 4:
                own.append({c: cols[c][k] for c in cols if c != "series"})
    others: list[dict[str, Any]] = []
    for i in granted:  # the studies the professional's grants were drawn from
        if len(others) >= size // 4:
            break
        cols = region.studies(i, 1)
        if cols["structure"][0] != structure and i >= config.objects:
            others.append({c: cols[c][0] for c in cols if c != "series"})
    return own + others[: size // 4]


def query_pools(studies: Sequence[dict[str, Any]], size: int, seed: int) -> dict[str, list[Query]]:
    """For each kind, `size` requests built from `studies`."""
    rng = random.Random(seed)
    picks = [rng.choice(studies) for _ in range(size)]
    ct = [s for s in studies if "CT" in s["modalities"]] or list(studies)

    def name(s: dict[str, Any]) -> str:
        family, given = s["patient_name"].split("^")
        return f"{family.split('-')[0].split(' ')[0][:5]} {given[:3]}"

    pools = {
        "patient_id": [
            Query("patient_id", STUDY, (("PatientID", s["patient_id"]),)) for s in picks
        ],
        "name_fuzzy": [
            Query("name_fuzzy", STUDY, (("PatientName", name(s)), ("fuzzymatching", "true")))
            for s in picks
        ],
        "quarter_ct": [
            Query(
                "quarter_ct",
                STUDY,
                (
                    ("StudyDate", _quarter(s["study_date"])),
                    ("ModalitiesInStudy", "CT"),
                    ("limit", "100"),
                ),
            )
            for s in (rng.choice(ct) for _ in range(size))
        ],
        "accession": [
            Query("accession", STUDY, (("AccessionNumber", s["accession_number"]),)) for s in picks
        ],
        "recent_25": [Query("recent_25", STUDY, (("limit", "25"),))] * size,
    }
    for offset in (0, 100, 1000):
        pools[f"page_{offset}"] = [
            Query(f"page_{offset}", STUDY, (("limit", "100"), ("offset", str(offset))))
        ] * size
    return pools


# --- WADO ----------------------------------------------------------------------------------


async def wado_targets(
    client: httpx.AsyncClient, url: str, studies: Sequence[tuple[str, str]], headers: Any
) -> list[tuple[str, str, dict[str, str]]]:
    """(metadata path, rendered first image path, headers) of each object study."""
    targets = []
    for study_uid, structure in studies:
        h = headers(structure)
        response = await client.get(
            f"{url}/studies/{study_uid}/instances", params={"limit": "1"}, headers=h
        )
        response.raise_for_status()
        first = response.json()[0]
        series_uid = first["0020000E"]["Value"][0]
        sop_uid = first["00080018"]["Value"][0]
        targets.append(
            (
                f"studies/{study_uid}/metadata",
                f"studies/{study_uid}/series/{series_uid}/instances/{sop_uid}/rendered",
                h,
            )
        )
    return targets


async def measure_wado(
    client: httpx.AsyncClient,
    url: str,
    targets: Sequence[tuple[str, str, dict[str, str]]],
    n: int,
    clients: int,
) -> dict[str, Any]:
    """Study metadata and rendered first image, sequential then `clients` at once."""
    out: dict[str, Any] = {}
    for kind, index, accept in (
        ("metadata", 0, "application/dicom+json"),
        ("rendered", 1, "image/jpeg"),
    ):
        sequential, concurrent = await _measure_wado_kind(
            client, url, targets, index, accept, n, clients
        )
        out[f"{kind}|sequential"] = sequential
        out[f"{kind}|{clients}_clients"] = concurrent
    return out


async def _measure_wado_kind(
    client: httpx.AsyncClient,
    url: str,
    targets: Sequence[tuple[str, str, dict[str, str]]],
    index: int,
    accept: str,
    n: int,
    clients: int,
) -> tuple[dict[str, float], dict[str, float]]:
    work = [targets[i % len(targets)] for i in range(n)]

    async def get(target: tuple[str, str, dict[str, str]]) -> float:
        t = time.perf_counter()
        response = await client.get(
            f"{url}/{target[index]}", headers={**target[2], "Accept": accept}
        )
        seconds = time.perf_counter() - t
        if response.status_code != 200:
            msg = f"{target[index]}: {response.status_code} {response.text[:200]}"
            raise RuntimeError(msg)
        return seconds

    for target in targets:  # the first request of each computes (metadata, rendering) and caches
        await get(target)
    started = time.perf_counter()
    sequential = [await get(t) for t in work]
    sequential_s = time.perf_counter() - started
    iterator = iter(work)
    latencies: list[float] = []

    async def worker() -> None:
        for target in iterator:
            latencies.append(await get(target))

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(clients)))
    return _summary(sequential, sequential_s), _summary(latencies, time.perf_counter() - started)


async def measure_wrk_sequential(
    base_url: str,
    headers: dict[str, dict[str, str]],
    pools: dict[str, list[Query]],
    n: int,
) -> tuple[dict[str, dict[str, Any]], dict[str, dict[str, float]]]:
    """One request at a time through `wrk`, kind after kind (the httpx pass warmed them up).

    Returns the latency table (key ``kind|token``) and each key's Server-Timing means (ms).
    """
    table: dict[str, dict[str, Any]] = {}
    stages: dict[str, dict[str, float]] = {}
    for token, auth in headers.items():
        for kind, pool in pools.items():
            key = f"{kind}|{token}"
            requests = [
                (
                    f"{base_url}/{q.path}?{urlencode(q.params)}",
                    {**auth, "Accept": "application/dicom+json"},
                )
                for q in (pool[i % len(pool)] for i in range(n))
            ]
            table[key], stages[key] = await run_wrk_all_ok(requests, 1, key)
    return table, stages


async def measure_wado_wrk(
    base_url: str, targets: Sequence[tuple[str, str, dict[str, str]]], n: int, clients: int
) -> dict[str, dict[str, Any]]:
    """Study metadata and rendered first image through `wrk` (after the httpx pass)."""
    out: dict[str, dict[str, Any]] = {}
    for kind, index, accept in (
        ("metadata", 0, "application/dicom+json"),
        ("rendered", 1, "image/jpeg"),
    ):
        work = [targets[i % len(targets)] for i in range(n)]
        requests = [(f"{base_url}/{t[index]}", {**t[2], "Accept": accept}) for t in work]
        for concurrency, mode in ((1, "sequential"), (clients, f"{clients}_clients")):
            row, _ = await run_wrk_all_ok(requests, concurrency, kind)
            out.setdefault(mode, {})[kind] = row
    return out


def _summary(latencies: list[float], elapsed: float) -> dict[str, float]:
    from common import summarise

    return summarise(latencies, elapsed)


# --- EXPLAIN -------------------------------------------------------------------------------


async def explain(
    pool: asyncpg.Pool, pools: dict[str, list[Query]], actors: dict[str, Actor], base_url: str
) -> dict[str, Any]:
    """``EXPLAIN (ANALYZE, BUFFERS)`` of the statement the index runs, per kind and token."""
    plans: dict[str, Any] = {}
    grants_of = {token: await actor_has_grants(pool, actor) for token, actor in actors.items()}
    async with pool.acquire() as conn:
        for token, actor in actors.items():
            grants = grants_of[token]
            for kind, queries in pools.items():
                query = queries[0]
                parsed = parse_qido(query.level, list(query.params))
                sql, params = build_qido_sql(
                    QidoRequest(query=parsed, actor=actor, base_url=base_url), grants=grants
                )
                rows = await conn.fetch(f"EXPLAIN (ANALYZE, BUFFERS) {sql}", *params)
                lines = [r[0] for r in rows]
                execution = next((x for x in lines if x.startswith("Execution Time")), "")
                plans[f"{kind}|{token}"] = {
                    "execution_ms": float(execution.split(":")[1].split()[0])
                    if execution
                    else None,
                    "sql": sql,
                    "params": [str(p) for p in params],
                    "plan": lines,
                }
    return plans


# --- Orthanc -------------------------------------------------------------------------------


async def run_orthanc(
    region: population.Region, n: int, args: argparse.Namespace
) -> dict[str, Any]:
    """The first `n` studies (one instance per series) in Orthanc, then the same kinds."""
    from ingest import multipart
    from krypton.dicom.synthetic import render_instances
    from orthanc import Orthanc, stow_to_orthanc

    with tempfile.TemporaryDirectory(prefix="krypton-bench-scale-orthanc-") as tmp:
        async with Orthanc(Path(tmp)) as orthanc:
            log(f"loading {n} studies into Orthanc (STOW-RS, 64x64 images)")
            started = time.perf_counter()
            studies: list[dict[str, Any]] = []
            semaphore = asyncio.Semaphore(4)
            async with httpx.AsyncClient(timeout=120.0) as client:

                async def store(index: int) -> None:
                    study = population.synthetic_study(region, index, 1)
                    body, content_type = multipart(list(render_instances(study, rows=64, cols=64)))
                    async with semaphore:
                        await stow_to_orthanc(client, orthanc.url, body, content_type)
                    cols = region.studies(index, 1)
                    studies.append({c: cols[c][0] for c in cols if c != "series"})

                for start in range(0, n, 200):
                    await asyncio.gather(*(store(i) for i in range(start, min(start + 200, n))))
                load_s = time.perf_counter() - started
                log(f"Orthanc loaded in {load_s:.0f} s; querying")
                pools = query_pools(studies, args.pool, args.seed)
                # Orthanc has no word-prefix fuzzy matching: a family-name prefix is its nearest.
                pools["name_fuzzy"] = [
                    Query(
                        "name_fuzzy",
                        STUDY,
                        (("PatientName", dict(q.params)["PatientName"].split()[0] + "*"),),
                    )
                    for q in pools["name_fuzzy"]
                ]

                timed = await time_orthanc(client, orthanc.url, pools, args, CLIENTS)
    return {"studies": n, "load_s": round(load_s, 1), **timed}


# --- report --------------------------------------------------------------------------------


def plot(result: dict[str, Any]) -> Path:
    """p50/p95/p99 per kind and token, one client and 8 clients."""
    plt = pyplot()
    fig, axes = plt.subplots(2, 1, figsize=(13, 9))
    for ax, key, title in (
        (axes[0], "http_sequential", "one client"),
        (axes[1], "http_concurrent", f"{CLIENTS} clients"),
    ):
        table = {**result["krypton"][key], **result["krypton"]["wado"].get(key, {})}
        order = [*result["krypton"]["http_sequential"], *result["krypton"]["wado"][key]]
        keys = [k for k in order if k != "ALL" and k in table]
        width = 0.27
        for i, q in enumerate(("p50_ms", "p95_ms", "p99_ms")):
            ax.bar(
                [x + (i - 1) * width for x in range(len(keys))],
                [table[k][q] for k in keys],
                width,
                label=q,
            )
        ax.set_xticks(range(len(keys)))
        ax.set_xticklabels(keys, rotation=60, ha="right", fontsize=7)
        ax.set_ylabel("ms")
        ax.set_yscale("log")
        ax.set_title(
            f"Krypton through HTTP, policy applied, {result['params']['studies']:,} studies, {title}"
        )
        ax.legend()
    return save_figure(fig, plt, result["name"], result["machine"])


def report(result: dict[str, Any]) -> None:
    """Readable tables on stdout."""
    k = result["krypton"]
    print(f"\nMachine: {machine_line(result['machine'])}")
    print(
        f"Population: {result['params']['studies']:,} studies; load {result['load'].get('studies')}\n"
    )
    seq, conc, plans = k["http_sequential"], k["http_concurrent"], k["plans"]
    rows = []
    for key in seq:
        if key == "ALL":
            continue
        rows.append([key, seq[key]["mean_results"], seq[key]["p50_ms"], seq[key]["p95_ms"],
                     seq[key]["p99_ms"], conc[key]["p50_ms"], conc[key]["p99_ms"],
                     plans.get(key, {}).get("execution_ms") or 0.0])  # fmt: skip
    print_table(["kind|token", "results", "p50", "p95", "p99", "8c p50", "8c p99", "plan ms"], rows)
    print(
        f"\nQIDO throughput: 1 client {seq['ALL']['per_s']:.0f} req/s, {CLIENTS} clients "
        f"{conc['ALL']['per_s']:.0f} req/s"
    )
    timed = k.get("server_timing_sequential", {})
    if timed:
        names = sorted({n for row in timed.values() for n in row} - {"client", "total"})
        print("\nWhere a search's time goes (1 client, mean ms; `client` is what the client saw):")
        rows = [
            [key, *(row.get(n, 0.0) for n in names), row.get("total", 0.0), row.get("client", 0.0)]
            for key, row in timed.items()
        ]
        print_table(["kind|token", *names, "total", "client"], rows)
    wrk_seq = k.get("wrk_sequential")
    if wrk_seq:
        wrk_timed = k.get("server_timing_wrk_sequential", {})
        print("\nThe same searches through wrk (1 client; the server's latency, not httpx's):")
        print_table(
            ["kind|token", "p50", "p95", "p99", "max", "server total", "index"],
            [
                [key, v["p50_ms"], v["p95_ms"], v["p99_ms"], v["max_ms"],
                 wrk_timed.get(key, {}).get("total", 0.0), wrk_timed.get(key, {}).get("index", 0.0)]
                for key, v in wrk_seq.items()
            ],
        )  # fmt: skip
    for mode, table in k.get("wado_wrk", {}).items():
        print(f"\nWADO through wrk ({mode}):")
        print_table(
            ["kind", "p50", "p95", "p99", "req/s"],
            [[n, v["p50_ms"], v["p95_ms"], v["p99_ms"], v["per_s"]] for n, v in table.items()],
        )
    print()
    print_table(
        ["WADO", "p50", "p95", "p99", "req/s"],
        [
            [f"{key} ({mode})", v["p50_ms"], v["p95_ms"], v["p99_ms"], v.get("per_s", 0.0)]
            for mode, table in k["wado"].items()
            for key, v in table.items()
        ],
    )
    print()
    print_table(
        ["process (8 clients)", "CPU s", "mean CPU %", "peak RSS MiB"],
        [
            [n, v["cpu_seconds"], v["cpu_mean_pct"], v["peak_rss_mib"]]
            for n, v in k["processes"].items()
        ],
    )
    o = result.get("orthanc")
    if o:
        print(f"\nOrthanc, {o['studies']:,} studies (loaded in {o['load_s']} s), p99 ms:")
        print_table(
            ["kind", "orthanc p99", "krypton p99 (admin)", "krypton p99 (professional)", "orthanc/krypton(prof)"],
            [
                [key.split("|")[0], v["p99_ms"], seq[key.replace("|none", "|admin")]["p99_ms"],
                 seq[key.replace("|none", "|professional")]["p99_ms"],
                 round(v["p99_ms"] / max(seq[key.replace("|none", "|professional")]["p99_ms"], 1e-3), 2)]
                for key, v in o["sequential"].items() if key != "ALL"
            ],
        )  # fmt: skip


@dataclass(frozen=True)
class Prepared:
    """A loaded population and the query values drawn from it (shared with `mixed.py`)."""

    state_dir: Path
    config: population.Config
    region: population.Region
    dsn: str
    load: dict[str, Any]
    sub: str  # the measured professional and their structure
    structure: str
    granted: list[int]  # the studies their live patient-wide grants were drawn from
    pools: dict[str, list[Query]]


async def prepare(args: argparse.Namespace) -> Prepared:
    """Load (or reuse) the population of ``--studies`` and draw the query values."""
    state_dir = population.state_dir_of(args).resolve()
    state_dir.mkdir(parents=True, exist_ok=True)
    config = population.config_of(args)
    region = population.Region(config)
    dsn = population.open_database(state_dir, args.dsn)
    log(f"population of {args.studies} studies in {state_dir}")
    load = await population.load_population(
        dsn, state_dir, config, workers=args.workers, keep_indexes=args.keep_indexes
    )
    sub, structure = region.professionals[0]
    granted = [
        g["study"]
        for g in region.grants()
        if g["actor_sub"] == sub and g["active"] and g["study_uid"] is None
        and g["valid_until"] > population.NOW
    ]  # fmt: skip
    log("drawing query values")
    studies = sample_studies(region, structure, granted, args.pool, args.seed)
    pools = query_pools(studies, args.pool, args.seed)
    return Prepared(state_dir, config, region, dsn, load, sub, structure, granted, pools)


@contextlib.asynccontextmanager
async def _platform(state_dir: Path, dsn: str | None) -> AsyncIterator[Any]:
    """The embedded platform on the population's database (`dsn` when it lives elsewhere)."""
    # The services read KRYPTON_PG_DSN; the embedded server the platform also starts idles.
    env = {"KRYPTON_PG_DSN": dsn} if dsn is not None else {}
    async with started_platform(state_dir, extra_env=env) as platform:
        yield platform


async def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Run the benchmark; return (and save) its result."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    population.add_arguments(parser)
    parser.add_argument("--requests", type=int, default=100, help="measured per kind and token")
    parser.add_argument("--warmup", type=int, default=10, help="warm-up per kind and token")
    parser.add_argument("--pool", type=int, default=100, help="distinct values per kind")
    parser.add_argument("--wado-requests", type=int, default=100)
    parser.add_argument("--orthanc", action="store_true", help="also measure Orthanc")
    parser.add_argument("--orthanc-studies", type=int, default=5000)
    parser.add_argument("--name", default=NAME, help="results file name")
    add_client_argument(
        parser,
        "also measure the sequential passes with wrk (default when installed): httpx "
        "itself costs ~1.8 ms of CPU per request on this machine",
    )
    args = parser.parse_args(argv)
    prepared = await prepare(args)
    state_dir, config, region, dsn, load = (
        prepared.state_dir, prepared.config, prepared.region, prepared.dsn, prepared.load
    )  # fmt: skip
    sub, structure, granted, pools = (
        prepared.sub, prepared.structure, prepared.granted, prepared.pools
    )  # fmt: skip

    krypton: dict[str, Any] = {}
    log("starting the platform on the population's database")
    async with _platform(state_dir, args.dsn) as platform:
        pg_version = await postgres_version(dsn)
        issuer = DevIssuer(platform.state_dir / "issuer", platform.issuer_url)
        tokens = {
            "professional": issuer.mint(
                role="professional", sub=sub, structure=structure, profession="10", name="Dr Bench"
            ),
            "producer": issuer.mint(role="producer", sub=f"ris-{structure}", structure=structure),
            "admin": issuer.mint(role="admin", sub="bench-admin"),
        }
        headers = {name: {"Authorization": f"Bearer {t}"} for name, t in tokens.items()}
        actors = {
            "professional": Actor(
                sub=sub,
                role=RoleValues.PROFESSIONAL,
                issuer=platform.issuer_url,
                structure=structure,
            ),
            "producer": Actor(
                sub=f"ris-{structure}",
                role=RoleValues.PRODUCER,
                issuer=platform.issuer_url,
                structure=structure,
            ),
            "admin": Actor(sub="bench-admin", role=RoleValues.ADMIN, issuer=platform.issuer_url),
        }
        limits = httpx.Limits(max_connections=CLIENTS)
        async with httpx.AsyncClient(
            timeout=120.0, limits=limits, headers={"Accept-Encoding": "identity"}
        ) as client:
            from qido import http_sender

            stages: StageLog = {}
            send = http_sender(client, platform.dicomweb_url, headers, stages)
            log("QIDO through HTTP, one client")
            krypton["http_sequential"] = table_of(
                await measure_sequential(send, pools, list(headers), args.requests, args.warmup)
            )
            # Where each search spent its time, by the gateway's Server-Timing (warm-up too).
            krypton["server_timing_sequential"] = stage_means(stages)
            if args.client == "wrk":
                log("QIDO through HTTP, one client, with wrk")
                table, timed = await measure_wrk_sequential(
                    platform.dicomweb_url, headers, pools, args.requests
                )
                krypton["wrk_sequential"], krypton["server_timing_wrk_sequential"] = table, timed
            send = http_sender(client, platform.dicomweb_url, headers)
            log(f"QIDO through HTTP, {CLIENTS} clients")
            sampler = ProcessSampler(platform_groups(platform))
            sampler.start()
            krypton["http_concurrent"] = table_of(
                await measure_concurrent(
                    send, pools, list(headers), args.requests, CLIENTS, args.seed
                )
            )
            await sampler.stop()
            krypton["processes"] = sampler.report()
            log("WADO metadata and rendered first image")

            def producer(finess: str) -> dict[str, str]:
                token = issuer.mint(role="producer", sub=f"ris-{finess}", structure=finess)
                return {"Authorization": f"Bearer {token}"}

            objects = [
                (region.study_uid(i), region.studies(i, 1)["structure"][0])
                for i in population.object_studies(config)
            ]
            targets = await wado_targets(client, platform.dicomweb_url, objects, producer)
            wado = await measure_wado(
                client, platform.dicomweb_url, targets, args.wado_requests, CLIENTS
            )
            krypton["wado"] = {
                "http_sequential": {
                    k.replace("|sequential", ""): v for k, v in wado.items() if "sequential" in k
                },
                "http_concurrent": {k.split("|")[0]: v for k, v in wado.items() if "clients" in k},
            }
            if args.client == "wrk":
                krypton["wado_wrk"] = await measure_wado_wrk(
                    platform.dicomweb_url, targets, args.wado_requests, CLIENTS
                )
        log("EXPLAIN (ANALYZE, BUFFERS)")
        pool = await asyncpg.create_pool(dsn, min_size=1, max_size=1)
        try:
            krypton["plans"] = await explain(pool, pools, actors, platform.dicomweb_url)
        finally:
            await pool.close()
    result: dict[str, Any] = {
        "name": args.name,
        "machine": machine(pg_version),
        "command": " ".join(["benchmarks/scale.py", *(argv if argv is not None else sys.argv[1:])]),
        "params": {
            "studies": args.studies,
            "requests_per_kind_and_token": args.requests,
            "warmup": args.warmup,
            "concurrent_clients": CLIENTS,
            "structure": structure,
            "professional": sub,
            "professional_live_grants": len(granted),
            "seed": args.seed,
            "client": args.client,
        },
        "load": load,
        "krypton": krypton,
    }
    if args.orthanc:
        result["orthanc"] = await run_orthanc(region, min(args.orthanc_studies, args.studies), args)
    write_result(args.name, result)
    result["plot"] = str(plot(result))
    report(result)
    return result


if __name__ == "__main__":
    asyncio.run(main())

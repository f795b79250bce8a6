"""QIDO-RS latency benchmark on a generated archive (default 100,000 studies).

Starts the embedded platform (the index service migrates its schema), generates the studies
of a synthetic regional population (`krypton.dicom.synthetic.Population`) as `InstanceStored`
events (every series of a study, ``--instances-per-series`` instances each, no pixels), and
loads them straight into the index with the service's own write path
(`krypton.index.store.upsert_batch`, batches of 2,000, two writers), reporting the load rate.

Then, with a token of one producing structure (access rule applied) and with an admin token,
it measures a mix of searches through HTTP, one request at a time and with 8 concurrent
clients: by PatientID, AccessionNumber, StudyInstanceUID, PatientName prefix with
``fuzzymatching=true``, a year quarter + ``ModalitiesInStudy=CT`` (limit 100), the most
recent studies (limit 25), paging (offsets 0/100/1000), the series of a study and the
instances of a series. Every value is taken from the generated data (hits, not misses).

To split where the time goes, the same queries are also timed one layer down: straight to
the index service over NATS (no gateway), and as bare SQL on PostgreSQL (the statement
`krypton.index.qido_sql.build_qido_sql` builds); ``EXPLAIN (ANALYZE, BUFFERS)`` of each shape
goes into the JSON.

With ``--orthanc`` the first ``--orthanc-studies`` studies (default 5,000: loading Orthanc
through STOW-RS is far slower than the direct index load) are rendered as small DICOM files,
stored in an Orthanc reference server, and the same kinds of query are timed there.

    .venv/bin/python benchmarks/qido.py --studies 100000
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import random
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import msgspec
import nats

sys.path.insert(0, str(Path(__file__).resolve().parent))

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
    summarise,
    write_result,
)
from krypton.auth.dev_issuer import DevIssuer
from krypton.bus.codec import encode
from krypton.contracts import subjects
from krypton.contracts.common.v1 import Actor, RoleValues
from krypton.contracts.index.v1 import QidoLevelValues, QidoRequest
from krypton.contracts.ingest.v1 import (
    InstanceAttributes,
    InstanceStored,
    PatientIdentity,
    SeriesAttributes,
    StudyAttributes,
)
from krypton.dicom.identity import INS_ISSUER_NAMESPACE, INS_NIR_TEST_OID
from krypton.dicom.qido import parse_qido
from krypton.dicom.synthetic import (
    IdentityStyle,
    Population,
    SyntheticStudy,
    render_instances,
)
from krypton.index.qido_sql import build_qido_sql
from krypton.index.store import upsert_batch
from krypton.storage.keys import instance_key
from orthanc import Orthanc, stow_to_orthanc

NAME = "qido"
BATCH = 2000
WRITERS = 2
CONCURRENT_CLIENTS = 8


# --- generation and load -------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class StudyRef:
    """What the query mix needs to know about one generated study."""

    study_uid: str
    structure: str
    patient_id: str
    accession: str
    family: str
    given: str
    study_date: date
    modalities: tuple[str, ...]
    series_uid: str  # its first series

    @classmethod
    def of(cls, study: SyntheticStudy) -> StudyRef:
        """The reference of a generated study."""
        return cls(
            study_uid=study.study_uid,
            structure=study.structure.finess,
            patient_id=study.patient_id,
            accession=study.accession_number,
            family=study.patient.family_name,
            given=study.patient.given_name,
            study_date=study.study_date,
            modalities=study.modalities,
            series_uid=study.series[0].series_uid,
        )


def _sop_uid(series_uid: str, number: int) -> str:
    # Deterministic, valid (2.25 + decimal of 128 bits), and fast: one sha256, no pydicom.
    digest = hashlib.sha256(f"{series_uid}/{number}".encode()).digest()[:16]
    return f"2.25.{int.from_bytes(digest, 'big')}"


def study_events(study: SyntheticStudy, per_series: int, stored_at: str) -> list[InstanceStored]:
    """The `InstanceStored` events ingest would publish for `study` (no bytes anywhere)."""
    patient = study.patient
    structure = study.structure
    ins_in_id = bool(patient.ins) and structure.identity_style is IdentityStyle.INS_IN_PATIENT_ID
    identity = PatientIdentity(
        key=f"INS:{patient.ins}" if patient.ins else f"IPP:{structure.finess}:{study.ipp}",
        patient_id=study.patient_id,
        issuer=INS_ISSUER_NAMESPACE if ins_in_id else f"FINESS-{structure.finess}",
        ins=patient.ins,
        ins_oid=INS_NIR_TEST_OID if patient.ins else None,
    )
    day = study.study_date.strftime("%Y%m%d")
    attrs = StudyAttributes(
        study_uid=study.study_uid,
        study_date=day,
        study_time=study.study_time,
        accession_number=study.accession_number,
        study_id=study.study_id,
        study_description=study.description,
        referring_physician_name=study.referring_physician,
        patient_name=patient.dicom_name,
        patient_birth_date=patient.birth_date.strftime("%Y%m%d"),
        patient_sex=patient.sex,
        timezone_offset=study.timezone_offset,
        specific_character_set=structure.character_set,
    )
    events = []
    for series in study.series:
        series_attrs = SeriesAttributes(
            series_uid=series.series_uid,
            modality=series.modality,
            series_number=series.number,
            series_description=series.description,
            series_date=day,
            series_time=study.study_time,
            body_part_examined=series.body_part,
            institution_name=structure.name,
            station_name=study.station_name,
            manufacturer=structure.manufacturer,
        )
        for number in range(1, min(per_series, series.instance_count) + 1):
            sop = _sop_uid(series.series_uid, number)
            events.append(
                InstanceStored(
                    structure=structure.finess,
                    object_key=instance_key(study.study_uid, series.series_uid, sop),
                    sha256=hashlib.sha256(sop.encode()).hexdigest(),
                    size=526_000,
                    stored_at=stored_at,
                    patient=identity,
                    study=attrs,
                    series=series_attrs,
                    instance=InstanceAttributes(
                        sop_instance_uid=sop,
                        sop_class_uid=series.sop_class_uid,
                        transfer_syntax_uid="1.2.840.10008.1.2.1",
                        instance_number=number,
                        rows=512,
                        columns=512,
                        bits_allocated=16,
                        photometric_interpretation="MONOCHROME2",
                        content_date=day,
                        content_time=study.study_time,
                    ),
                    pixel_data_offset=1500,
                )
            )
    return events


def make_batch(
    population: Population, start: int, count: int, per_series: int
) -> tuple[list[InstanceStored], list[StudyRef]]:
    """Events and references of studies `start` .. `start + count - 1`."""
    stored_at = datetime.now(UTC).isoformat()
    events: list[InstanceStored] = []
    refs: list[StudyRef] = []
    for study in population.iter_studies(count, start=start):
        events.extend(study_events(study, per_series, stored_at))
        refs.append(StudyRef.of(study))
    return events, refs


async def load(
    dsn: str, population: Population, studies: int, per_series: int
) -> tuple[list[StudyRef], dict[str, Any]]:
    """Generate and upsert every study; return the references and the load figures."""
    pool = await asyncpg.create_pool(dsn, min_size=WRITERS, max_size=WRITERS)
    queue: asyncio.Queue[list[InstanceStored] | None] = asyncio.Queue(maxsize=4)
    refs: list[StudyRef] = []
    figures = {"instances": 0, "generate_s": 0.0, "upsert_s": 0.0}
    # ~2.2 series per study: batches of about BATCH instances.
    studies_per_batch = max(1, BATCH // (2 * per_series))

    async def produce() -> None:
        for start in range(0, studies, studies_per_batch):
            t = time.perf_counter()
            events, batch_refs = await asyncio.to_thread(
                make_batch, population, start, min(studies_per_batch, studies - start), per_series
            )
            figures["generate_s"] += time.perf_counter() - t
            refs.extend(batch_refs)
            await queue.put(events)
            if len(refs) % 20000 < studies_per_batch:
                log(f"  {len(refs)} studies generated")
        for _ in range(WRITERS):
            await queue.put(None)

    async def write() -> None:
        while (events := await queue.get()) is not None:
            t = time.perf_counter()
            figures["instances"] += await upsert_batch(pool, events)
            figures["upsert_s"] += time.perf_counter() - t

    started = time.perf_counter()
    await asyncio.gather(produce(), *(write() for _ in range(WRITERS)))
    wall = time.perf_counter() - started
    async with pool.acquire() as conn:
        t = time.perf_counter()
        await conn.execute("VACUUM ANALYZE index.studies, index.series, index.instances")
        analyse_s = time.perf_counter() - t
        sizes = await conn.fetch(
            """select relname, n_live_tup, pg_total_relation_size(relid) as bytes
                 from pg_stat_user_tables where schemaname = 'index' order by relname"""
        )
    await pool.close()
    return refs, {
        "studies": studies,
        "instances": figures["instances"],
        "wall_s": round(wall, 2),
        "generate_cpu_s": round(figures["generate_s"], 2),
        "upsert_s_summed_over_writers": round(figures["upsert_s"], 2),
        "studies_per_s": round(studies / wall, 1),
        "instances_per_s": round(figures["instances"] / wall, 1),
        "vacuum_analyze_s": round(analyse_s, 2),
        "tables": {
            r["relname"]: {"rows": r["n_live_tup"], "mib": round(r["bytes"] / 1024**2, 1)}
            for r in sizes
        },
    }


# --- the query mix -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Query:
    """One QIDO-RS request: level, path UIDs and parameters."""

    kind: str
    level: QidoLevelValues
    params: tuple[tuple[str, str], ...]
    study_uid: str | None = None
    series_uid: str | None = None

    @property
    def path(self) -> str:
        if self.level is QidoLevelValues.STUDY:
            return "studies"
        if self.level is QidoLevelValues.SERIES:
            return f"studies/{self.study_uid}/series"
        return f"studies/{self.study_uid}/series/{self.series_uid}/instances"


def _quarter(day: date) -> tuple[str, str]:
    first_month = 3 * ((day.month - 1) // 3) + 1
    end_day = {1: "0331", 4: "0630", 7: "0930", 10: "1231"}[first_month]
    return f"{day.year}{first_month:02d}01", f"{day.year}{end_day}"


def query_pools(
    refs: Sequence[StudyRef], structure: str, size: int, seed: int
) -> dict[str, list[Query]]:
    """For each kind of query, `size` requests whose values come from `structure`'s studies."""
    rng = random.Random(seed)
    own = [r for r in refs if r.structure == structure]
    picks = [rng.choice(own) for _ in range(size)]
    ct = [r for r in own if "CT" in r.modalities]
    study = QidoLevelValues.STUDY
    pools: dict[str, list[Query]] = {
        "patient_id": [Query("patient_id", study, (("PatientID", r.patient_id),)) for r in picks],
        "accession": [
            Query("accession", study, (("AccessionNumber", r.accession),)) for r in picks
        ],
        "study_uid": [
            Query("study_uid", study, (("StudyInstanceUID", r.study_uid),)) for r in picks
        ],
        "name_fuzzy": [
            Query(
                "name_fuzzy",
                study,
                (("PatientName", f"{r.family[:5]} {r.given[:3]}"), ("fuzzymatching", "true")),
            )
            for r in picks
        ],
        "quarter_ct": [
            Query(
                "quarter_ct",
                study,
                (
                    ("StudyDate", "-".join(_quarter(r.study_date))),
                    ("ModalitiesInStudy", "CT"),
                    ("limit", "100"),
                ),
            )
            for r in (rng.choice(ct) for _ in range(size))
        ],
        "recent_25": [Query("recent_25", study, (("limit", "25"),))] * size,
    }
    for offset in (0, 100, 1000):
        pools[f"page_{offset}"] = [
            Query(f"page_{offset}", study, (("limit", "100"), ("offset", str(offset))))
        ] * size
    pools["series_of_study"] = [
        Query("series_of_study", QidoLevelValues.SERIES, (), study_uid=r.study_uid) for r in picks
    ]
    pools["instances_of_series"] = [
        Query(
            "instances_of_series",
            QidoLevelValues.INSTANCE,
            (),
            study_uid=r.study_uid,
            series_uid=r.series_uid,
        )
        for r in picks
    ]
    return pools


@dataclass
class Measured:
    """Latencies per (kind, token) and results per request."""

    latencies: dict[str, list[float]]
    results: dict[str, list[int]]
    elapsed_s: float


# (query, token name) → (number of results, seconds until the answer arrived). Decoding the
# answer is left out of the time: it is the load generator's cost, not the server's.
Sender = Callable[[Query, str], Awaitable[tuple[int, float]]]


async def measure_sequential(
    send: Sender, pools: dict[str, list[Query]], tokens: Sequence[str], n: int, warmup: int
) -> Measured:
    """One request at a time, kind after kind."""
    latencies: dict[str, list[float]] = {}
    results: dict[str, list[int]] = {}
    started = time.perf_counter()
    for token in tokens:
        for kind, pool in pools.items():
            for query in pool[:warmup]:
                await send(query, token)
            key = f"{kind}|{token}"
            for i in range(n):
                query = pool[i % len(pool)]
                count, seconds = await send(query, token)
                latencies.setdefault(key, []).append(seconds)
                results.setdefault(key, []).append(count)
    return Measured(latencies, results, time.perf_counter() - started)


async def measure_concurrent(
    send: Sender,
    pools: dict[str, list[Query]],
    tokens: Sequence[str],
    n: int,
    clients: int,
    seed: int,
) -> Measured:
    """`clients` concurrent clients over the whole mix, shuffled."""
    work = [
        (kind, token, pool[i % len(pool)])
        for token in tokens
        for kind, pool in pools.items()
        for i in range(n)
    ]
    random.Random(seed).shuffle(work)
    latencies: dict[str, list[float]] = {}
    results: dict[str, list[int]] = {}
    iterator = iter(work)

    async def client() -> None:
        for kind, token, query in iterator:
            count, seconds = await send(query, token)
            latencies.setdefault(f"{kind}|{token}", []).append(seconds)
            results.setdefault(f"{kind}|{token}", []).append(count)

    started = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(clients)))
    return Measured(latencies, results, time.perf_counter() - started)


def table_of(measured: Measured) -> dict[str, dict[str, float]]:
    """Per key: latency summary plus the mean number of results (0 would mean a miss)."""
    out = {}
    for key, values in measured.latencies.items():
        summary = summarise(values)
        counts = measured.results[key]
        summary["mean_results"] = round(sum(counts) / len(counts), 1)
        out[key] = summary
    all_values = [v for values in measured.latencies.values() for v in values]
    out["ALL"] = summarise(all_values, measured.elapsed_s)
    return out


async def healthz(client: httpx.AsyncClient, base_url: str, n: int) -> dict[str, float]:
    """``GET /healthz`` (no token, no NATS): the HTTP client + server floor under every search."""
    latencies = []
    for _ in range(n):
        t = time.perf_counter()
        (await client.get(f"{base_url}/healthz")).raise_for_status()
        latencies.append(time.perf_counter() - t)
    return summarise(latencies)


# --- senders -------------------------------------------------------------------------------


def server_timing(header: str | None) -> dict[str, float]:
    """A ``Server-Timing`` value as stage → milliseconds (``parse;dur=0.12, total;dur=3.4``)."""
    stages: dict[str, float] = {}
    for part in (header or "").split(","):
        name, _, params = part.strip().partition(";")
        for param in params.split(";"):
            key, _, value = param.strip().partition("=")
            if key == "dur" and name:
                stages[name] = stages.get(name, 0.0) + float(value)
    return stages


StageLog = dict[str, list[dict[str, float]]]


def stage_means(log: StageLog) -> dict[str, dict[str, float]]:
    """Per key, the mean of each server stage over the requests that reported it, in ms."""
    out: dict[str, dict[str, float]] = {}
    for key, rows in log.items():
        names = {name for row in rows for name in row}
        out[key] = {
            name: round(sum(r[name] for r in rows if name in r) / len(rows), 3)
            for name in sorted(names)
        }
    return out


def http_sender(
    client: httpx.AsyncClient,
    url: str,
    headers: dict[str, dict[str, str]],
    stages: StageLog | None = None,
) -> Sender:
    """QIDO-RS through the gateway; each answer's Server-Timing stages go to `stages`."""

    async def send(query: Query, token: str) -> tuple[int, float]:
        t = time.perf_counter()
        response = await client.get(
            f"{url}/{query.path}", params=list(query.params), headers=headers[token]
        )
        seconds = time.perf_counter() - t
        if response.status_code != 200:
            msg = f"{query.kind} {query.path} {query.params}: {response.status_code} {response.text[:200]}"
            raise RuntimeError(msg)
        if stages is not None:
            timed = server_timing(response.headers.get("server-timing"))
            if timed:
                timed["client"] = seconds * 1000
                stages.setdefault(f"{query.kind}|{token}", []).append(timed)
        return len(response.json()), seconds

    return send


def _request(query: Query, actor: Actor, base_url: str) -> QidoRequest:
    parsed = parse_qido(
        query.level, list(query.params), study_uid=query.study_uid, series_uid=query.series_uid
    )
    return QidoRequest(query=parsed, actor=actor, base_url=base_url)


def nats_sender(nc: Any, actors: dict[str, Actor], base_url: str) -> Sender:
    """The index service over NATS, as the gateway asks it (no HTTP, no token check)."""

    async def send(query: Query, token: str) -> tuple[int, float]:
        payload = encode(_request(query, actors[token], base_url))
        t = time.perf_counter()
        reply = await nc.request(subjects.SVC_INDEX_QIDO, payload, timeout=10.0)
        seconds = time.perf_counter() - t
        return len(msgspec.json.decode(reply.data)), seconds

    return send


def sql_sender(pool: asyncpg.Pool, actors: dict[str, Actor], base_url: str) -> Sender:
    """The bare statement on PostgreSQL (asyncpg, prepared): the floor under the service path."""

    async def send(query: Query, token: str) -> tuple[int, float]:
        sql, params = build_qido_sql(_request(query, actors[token], base_url))
        t = time.perf_counter()
        rows = await pool.fetch(sql, *params)
        return len(rows), time.perf_counter() - t

    return send


async def explain(
    pool: asyncpg.Pool, pools: dict[str, list[Query]], actors: dict[str, Actor], base_url: str
) -> dict[str, Any]:
    """EXPLAIN (ANALYZE, BUFFERS) of each query shape with each actor."""
    plans: dict[str, Any] = {}
    async with pool.acquire() as conn:
        for token, actor in actors.items():
            for kind, queries in pools.items():
                sql, params = build_qido_sql(_request(queries[0], actor, base_url))
                entry: dict[str, Any] = {"sql": sql, "params": [str(p) for p in params]}
                # Custom plan (what EXPLAIN with values gives), then the generic plan that a
                # prepared statement (asyncpg's statement cache) may switch to after 5 runs.
                for mode, prefix in (("force_custom_plan", ""), ("force_generic_plan", "generic_")):
                    await conn.execute(f"SET plan_cache_mode = {mode}")
                    rows = await conn.fetch(f"EXPLAIN (ANALYZE, BUFFERS) {sql}", *params)
                    lines = [r[0] for r in rows]
                    execution = next((x for x in lines if x.startswith("Execution Time")), "")
                    entry[f"{prefix}execution_ms"] = (
                        float(execution.split(":")[1].split()[0]) if execution else None
                    )
                    entry[f"{prefix}plan"] = lines
                await conn.execute("RESET plan_cache_mode")
                plans[f"{kind}|{token}"] = entry
    return plans


# --- Orthanc -------------------------------------------------------------------------------


def orthanc_pools(refs: Sequence[StudyRef], size: int, seed: int) -> dict[str, list[Query]]:
    """The same kinds over the studies loaded into Orthanc (any structure: no access rule)."""
    by_structure = Counter(r.structure for r in refs)
    structure = by_structure.most_common(1)[0][0]
    pools = query_pools(refs, structure, size, seed)
    # Orthanc has no word-prefix fuzzy matching; a name prefix wildcard is its nearest.
    pools["name_fuzzy"] = [
        Query(
            "name_fuzzy",
            q.level,
            (("PatientName", f"{dict(q.params)['PatientName'].split()[0]}*"),),
        )
        for q in pools["name_fuzzy"]
    ]
    return pools


async def run_orthanc(args: argparse.Namespace, population: Population) -> dict[str, Any]:
    """Load the first studies into Orthanc through STOW-RS, then time the same query mix."""
    n = min(args.orthanc_studies, args.studies)
    with tempfile.TemporaryDirectory(prefix="krypton-bench-orthanc-") as tmp:
        async with Orthanc(Path(tmp)) as orthanc:
            log(f"loading {n} studies into Orthanc (STOW-RS, small images)")
            refs: list[StudyRef] = []
            started = time.perf_counter()
            limits = httpx.Limits(max_connections=4)
            async with httpx.AsyncClient(timeout=120.0, limits=limits) as client:
                semaphore = asyncio.Semaphore(4)

                async def store(index: int) -> None:
                    study = population.study(
                        index, max_instances_per_series=args.instances_per_series
                    )
                    parts = list(render_instances(study, rows=64, cols=64))
                    from ingest import (
                        multipart,
                    )  # the same multipart writer as the ingest benchmark

                    body, content_type = multipart(parts)
                    async with semaphore:
                        await stow_to_orthanc(client, orthanc.url, body, content_type)
                    refs.append(StudyRef.of(study))

                for start in range(0, n, 500):
                    await asyncio.gather(*(store(i) for i in range(start, min(start + 500, n))))
                load_s = time.perf_counter() - started
                log(f"Orthanc loaded in {load_s:.0f} s; querying")
                pools = orthanc_pools(refs, args.pool, args.seed)
                timed = await time_orthanc(client, orthanc.url, pools, args, CONCURRENT_CLIENTS)
    return {"studies": n, "load_s": round(load_s, 1), **timed}


async def time_orthanc(
    client: httpx.AsyncClient,
    url: str,
    pools: dict[str, list[Query]],
    args: argparse.Namespace,
    clients: int,
) -> dict[str, Any]:
    """The query mix against Orthanc (no token), one client then `clients` concurrent ones."""

    async def send(query: Query, token: str) -> tuple[int, float]:
        t = time.perf_counter()
        response = await client.get(f"{url}/{query.path}", params=list(query.params))
        seconds = time.perf_counter() - t
        response.raise_for_status()
        return len(response.json()), seconds

    sequential = await measure_sequential(send, pools, ["none"], args.requests, args.warmup)
    concurrent = await measure_concurrent(send, pools, ["none"], args.requests, clients, args.seed)
    return {"sequential": table_of(sequential), "concurrent": table_of(concurrent)}


# --- report --------------------------------------------------------------------------------


def plot(result: dict[str, Any], name: str = NAME) -> Path:
    """p50/p95/p99 per kind (sequential, through HTTP) for both tokens, as `<name>.png`."""
    plt = pyplot()
    seq = result["krypton"]["http_sequential"]
    keys = [k for k in seq if k != "ALL"]
    fig, ax = plt.subplots(figsize=(12, 6))
    width = 0.27
    for i, q in enumerate(("p50_ms", "p95_ms", "p99_ms")):
        ax.bar(
            [x + (i - 1) * width for x in range(len(keys))],
            [seq[k][q] for k in keys],
            width,
            label=q,
        )
    ax.set_xticks(range(len(keys)))
    ax.set_xticklabels(keys, rotation=60, ha="right", fontsize=8)
    ax.set_ylabel("ms")
    ax.set_title(f"Krypton QIDO-RS through HTTP, one client, {result['load']['studies']} studies")
    ax.legend()
    return save_figure(fig, plt, name, result["machine"])


def report(result: dict[str, Any]) -> None:
    """Readable tables on stdout."""
    k = result["krypton"]
    load = result["load"]
    print(f"\nMachine: {machine_line(result['machine'])}")
    print(
        f"Data: {load['studies']} studies, {load['instances']} instances; loaded by upsert_batch "
        f"in {load['wall_s']} s ({load['studies_per_s']} studies/s, {load['instances_per_s']} "
        f"instances/s); token structure {result['params']['structure']} "
        f"({result['params']['structure_studies']} studies)\n"
    )
    seq, conc, direct, sql = (
        k["http_sequential"],
        k["http_concurrent"],
        k["nats_sequential"],
        k["sql_sequential"],
    )
    rows = []
    for key in seq:
        if key == "ALL":
            continue
        plan = k["plans"].get(key, {})
        rows.append(
            [
                key,
                seq[key]["mean_results"],
                seq[key]["p50_ms"],
                seq[key]["p95_ms"],
                seq[key]["p99_ms"],
                conc[key]["p50_ms"],
                conc[key]["p99_ms"],
                direct[key]["p50_ms"],
                sql[key]["p50_ms"],
                plan.get("execution_ms") or 0.0,
                plan.get("generic_execution_ms") or 0.0,
            ]
        )
    print_table(
        [
            "kind|token",
            "results",
            "p50",
            "p95",
            "p99",
            "8c p50",
            "8c p99",
            "nats p50",
            "sql p50",
            "plan ms",
            "generic ms",
        ],
        rows,
    )
    h = k["http_healthz"]
    print(f"\nGET /healthz (HTTP floor): p50 {h['p50_ms']} ms, p99 {h['p99_ms']} ms")
    print(
        f"throughput: 1 client {seq['ALL']['per_s']:.0f} req/s, {CONCURRENT_CLIENTS} clients "
        f"{conc['ALL']['per_s']:.0f} req/s; all-kind p99 1 client {seq['ALL']['p99_ms']} ms, "
        f"{CONCURRENT_CLIENTS} clients {conc['ALL']['p99_ms']} ms"
    )
    print()
    print_table(
        ["process (8 clients)", "CPU s", "mean CPU %", "CPU ms/request", "peak RSS MiB"],
        [
            [
                n,
                v["cpu_seconds"],
                v["cpu_mean_pct"],
                round(1000 * v["cpu_seconds"] / conc["ALL"]["count"], 2),
                v["peak_rss_mib"],
            ]
            for n, v in k["processes_concurrent"].items()
        ],
    )
    o = result.get("orthanc")
    if o:
        print(f"\nOrthanc, {o['studies']} studies (loaded in {o['load_s']} s):")
        print_table(
            [
                "kind",
                "orthanc p50",
                "orthanc p99",
                "8c p99",
                "krypton p99 (structure)",
                "ratio p99",
            ],
            [
                [
                    key.split("|")[0],
                    v["p50_ms"],
                    v["p99_ms"],
                    o["concurrent"][key]["p99_ms"],
                    seq[key.replace("|none", "|structure")]["p99_ms"],
                    round(
                        v["p99_ms"] / max(seq[key.replace("|none", "|structure")]["p99_ms"], 1e-3),
                        2,
                    ),
                ]
                for key, v in o["sequential"].items()
                if key != "ALL"
            ],
        )


async def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Run the benchmark; return (and save) its result."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--studies", type=int, default=100_000)
    parser.add_argument("--instances-per-series", type=int, default=1)
    parser.add_argument("--structures", type=int, default=116)
    parser.add_argument(
        "--requests", type=int, default=100, help="measured requests per kind and token"
    )
    parser.add_argument(
        "--warmup", type=int, default=20, help="warm-up requests per kind and token"
    )
    parser.add_argument("--pool", type=int, default=200, help="distinct values per kind")
    parser.add_argument("--seed", type=int, default=2025)
    parser.add_argument("--orthanc", action="store_true", help="also measure Orthanc")
    parser.add_argument("--orthanc-studies", type=int, default=5000)
    parser.add_argument("--name", default=NAME, help="results file name")
    args = parser.parse_args(argv)

    population = Population(args.seed, max(100, args.studies // 3), args.structures)
    with tempfile.TemporaryDirectory(prefix="krypton-bench-qido-") as tmp:
        log("starting the platform")
        async with started_platform(Path(tmp)) as platform:
            assert platform.pg_dsn is not None
            assert platform.nats is not None
            pg_version = await postgres_version(platform.pg_dsn)
            log(f"generating and loading {args.studies} studies")
            refs, load_figures = await load(
                platform.pg_dsn, population, args.studies, args.instances_per_series
            )
            log(f"loaded in {load_figures['wall_s']} s ({load_figures['instances']} instances)")
            structure, structure_studies = Counter(r.structure for r in refs).most_common(1)[0]
            pools = query_pools(refs, structure, args.pool, args.seed)
            issuer = DevIssuer(platform.state_dir / "issuer", platform.issuer_url)
            headers = {
                "structure": {
                    "Authorization": "Bearer "
                    + issuer.mint(role="producer", sub=f"bench-{structure}", structure=structure)
                },
                "admin": {
                    "Authorization": "Bearer " + issuer.mint(role="admin", sub="bench-admin")
                },
            }
            actors = {
                "structure": Actor(
                    sub=f"bench-{structure}",
                    role=RoleValues.PRODUCER,
                    issuer=platform.issuer_url,
                    structure=structure,
                ),
                "admin": Actor(
                    sub="bench-admin", role=RoleValues.ADMIN, issuer=platform.issuer_url
                ),
            }
            tokens = list(headers)
            krypton: dict[str, Any] = {}
            limits = httpx.Limits(max_connections=CONCURRENT_CLIENTS)
            async with httpx.AsyncClient(
                timeout=60.0, limits=limits, headers={"Accept-Encoding": "identity"}
            ) as client:
                send = http_sender(client, platform.dicomweb_url, headers)
                log("HTTP, one client")
                krypton["http_sequential"] = table_of(
                    await measure_sequential(send, pools, tokens, args.requests, args.warmup)
                )
                krypton["http_healthz"] = await healthz(client, platform.base_url, args.requests)
                log(f"HTTP, {CONCURRENT_CLIENTS} clients")
                sampler = ProcessSampler(platform_groups(platform))
                sampler.start()
                krypton["http_concurrent"] = table_of(
                    await measure_concurrent(
                        send, pools, tokens, args.requests, CONCURRENT_CLIENTS, args.seed
                    )
                )
                await sampler.stop()
                krypton["processes_concurrent"] = sampler.report()
            log("NATS straight to the index service, one client")
            nc = await nats.connect(platform.nats.url, name="bench-qido")
            try:
                krypton["nats_sequential"] = table_of(
                    await measure_sequential(
                        nats_sender(nc, actors, platform.dicomweb_url),
                        pools,
                        tokens,
                        args.requests,
                        args.warmup,
                    )
                )
            finally:
                await nc.close()
            log("bare SQL, one client; EXPLAIN (ANALYZE, BUFFERS)")
            pool = await asyncpg.create_pool(platform.pg_dsn, min_size=1, max_size=1)
            try:
                krypton["sql_sequential"] = table_of(
                    await measure_sequential(
                        sql_sender(pool, actors, platform.dicomweb_url),
                        pools,
                        tokens,
                        args.requests,
                        args.warmup,
                    )
                )
                krypton["plans"] = await explain(pool, pools, actors, platform.dicomweb_url)
            finally:
                await pool.close()
    result: dict[str, Any] = {
        "machine": machine(pg_version),
        "command": " ".join(["benchmarks/qido.py", *(argv if argv is not None else sys.argv[1:])]),
        "params": {
            "studies": args.studies,
            "instances_per_series": args.instances_per_series,
            "structures": args.structures,
            "requests_per_kind_and_token": args.requests,
            "warmup": args.warmup,
            "concurrent_clients": CONCURRENT_CLIENTS,
            "structure": structure,
            "structure_studies": structure_studies,
            "seed": args.seed,
        },
        "load": load_figures,
        "krypton": krypton,
    }
    if args.orthanc:
        result["orthanc"] = await run_orthanc(args, population)
    write_result(args.name, result)
    result["plot"] = str(plot(result, args.name))
    report(result)
    return result


if __name__ == "__main__":
    asyncio.run(main())

"""Access policy benchmark: decision latency (cold and cached) and QIDO with versus without policy.

Starts the embedded platform, loads ``--studies`` generated studies straight into the index
(`qido.load`: `krypton.dicom.synthetic` + `krypton.index.store.upsert_batch`), then gives
``--professionals`` professionals of a structure that produces nothing ``--care`` care
relationships and ``--codes`` redeemed share codes each, through the authorize service's own
commands (so the grants reach the index projection by the POLICY stream, as in production).

Measured, one request at a time:

- ``svc.authz.decide`` over NATS: *cold* (every request names another study, so the decision
  cache never answers and the decision reads PostgreSQL) and *cached* (a fixed set of requests
  repeated: served from authorize's decision cache).
- QIDO on the same data, straight to the index over NATS (no gateway, no audit) and through the
  gateway over HTTP (token check and audit included): as admin (no policy: ``TRUE``), as a
  producing structure (structure predicate), and as a professional holding grants (structure
  OR live grant, minus oppositions, plus the per-study basis). Queries: the 25 most recent
  studies, and one granted patient's studies by PatientID.

    .venv/bin/python benchmarks/policy.py --studies 20000
"""

from __future__ import annotations

import argparse
import asyncio
import random
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import msgspec
import nats

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (
    log,
    machine,
    machine_line,
    postgres_version,
    print_table,
    started_platform,
    summarise,
    write_result,
)
from krypton.auth.dev_issuer import DevIssuer
from krypton.bus.codec import encode
from krypton.contracts import subjects
from krypton.contracts.authorize.v1 import AuthzCommand, DecideRequest, DecideResponse
from krypton.contracts.common.v1 import Actor, RoleValues
from krypton.contracts.index.v1 import QidoLevelValues, QidoRequest
from krypton.dicom.qido import parse_qido
from krypton.dicom.synthetic import Population
from qido import load

NAME = "policy"
OUTSIDER = "990000017"  # the professionals' structure: it produced none of the studies
ADMIN = Actor(sub="bench-admin", role=RoleValues.ADMIN, issuer="bench")


async def command(nc: Any, op: str, actor: Actor, body: dict[str, Any]) -> dict[str, Any]:
    """One policy command, as the gateway forwards it; raises on a refusal."""
    payload = encode(AuthzCommand(actor=actor, body=msgspec.Raw(msgspec.json.encode(body))))
    reply = await nc.request(subjects.svc_authz(op), payload, timeout=10.0)
    status = int((reply.headers or {}).get("Krypton-Status", "200"))
    if status >= 300:
        msg = f"{op}: {status} {reply.data!r}"
        raise RuntimeError(msg)
    result: dict[str, Any] = msgspec.json.decode(reply.data)
    return result


async def grant(
    nc: Any, pool: asyncpg.Pool, professionals: int, care: int, codes: int, seed: int
) -> tuple[list[Actor], dict[str, list[str]]]:
    """Professionals with care relationships and redeemed share codes on random patients."""
    rows = await pool.fetch(
        "SELECT DISTINCT patient_ins FROM index.studies WHERE patient_ins IS NOT NULL"
    )
    patients = sorted(r["patient_ins"] for r in rows)
    rng = random.Random(seed)
    actors = [
        Actor(sub=f"8100{n:08d}", role=RoleValues.PROFESSIONAL, issuer="bench",
              structure=OUTSIDER, profession="10")
        for n in range(professionals)
    ]  # fmt: skip
    granted: dict[str, list[str]] = {}
    for actor in actors:
        chosen = rng.sample(patients, care + codes)
        for ins in chosen[:care]:
            await command(
                nc, "care.declare", ADMIN, {"professional": actor.sub, "patient_ins": ins}
            )
        for ins in chosen[care:]:
            created = await command(nc, "code.create", ADMIN, {"patient_ins": ins})
            await command(nc, "code.redeem", actor, {"code": created["code"]})
        granted[actor.sub] = chosen
    return actors, granted


async def wait_projected(pool: asyncpg.Pool, expected: int) -> None:
    """Until the index projection holds every grant (it follows the POLICY stream)."""
    for _ in range(600):
        if await pool.fetchval("SELECT count(*) FROM index.access_grants") >= expected:
            return
        await asyncio.sleep(0.1)
    msg = "the grants did not reach the index projection"
    raise RuntimeError(msg)


Timed = Callable[[], Awaitable[object]]


async def timed(call: Timed, n: int, warmup: int) -> dict[str, float]:
    for _ in range(warmup):
        await call()
    samples = []
    for _ in range(n):
        t = time.perf_counter()
        await call()
        samples.append(time.perf_counter() - t)
    return summarise(samples)


async def measure_decide(
    nc: Any, pool: asyncpg.Pool, actors: Sequence[Actor], granted: dict[str, list[str]], n: int
) -> dict[str, dict[str, float]]:
    """Decision latency: every request new (cold), and a repeated set (cached)."""
    rows = await pool.fetch(
        "SELECT study_uid, structure, patient_key, patient_ins FROM index.studies"
        " WHERE patient_ins IS NOT NULL"
    )
    by_ins: dict[str, list[asyncpg.Record]] = {}
    for r in rows:
        by_ins.setdefault(r["patient_ins"], []).append(r)
    rng = random.Random(7)
    requests = []
    for _ in range(2 * n + 100):
        actor = rng.choice(actors)
        # Half on granted patients (allowed), half on random ones (mostly denied).
        ins = (
            rng.choice(granted[actor.sub])
            if rng.random() < 0.5
            else rng.choice(rows)["patient_ins"]
        )
        study = rng.choice(by_ins[ins])
        requests.append(
            encode(DecideRequest(actor=actor, patient_key=study["patient_key"],
                                 study_uid=study["study_uid"], structure=study["structure"]))
        )  # fmt: skip
    # A study UID is part of the cache key: distinct requests never hit the cache.
    requests = list(dict.fromkeys(requests))
    cold = iter(requests)
    allowed: Counter[bool] = Counter()

    async def decide_cold() -> None:
        reply = await nc.request(subjects.SVC_AUTHZ_DECIDE, next(cold), timeout=5.0)
        allowed[msgspec.json.decode(reply.data, type=DecideResponse).allow] += 1

    hot = requests[-20:]
    turn = iter(range(10**9))

    async def decide_cached() -> None:
        await nc.request(subjects.SVC_AUTHZ_DECIDE, hot[next(turn) % len(hot)], timeout=5.0)

    figures = {
        "decide_cold": await timed(decide_cold, n, 20),
        "decide_cached": await timed(decide_cached, n, len(hot)),
    }
    figures["decide_cold"]["allowed_share"] = round(
        allowed[True] / max(1, sum(allowed.values())), 2
    )
    return figures


async def measure_qido(
    nc: Any, http: httpx.AsyncClient, base: str, issuer: DevIssuer, pool: asyncpg.Pool,
    pro: Actor, granted: list[str], n: int, warmup: int,
) -> dict[str, dict[str, float]]:  # fmt: skip
    """QIDO latency per caller, over NATS (index only) and HTTP (gateway + audit)."""
    producer_structure = await pool.fetchval(
        "SELECT structure FROM index.studies GROUP BY structure ORDER BY count(*) DESC LIMIT 1"
    )
    producer = Actor(sub="bench-ris", role=RoleValues.PRODUCER, issuer="bench",
                     structure=producer_structure)  # fmt: skip
    callers = {"admin (no policy)": ADMIN, "producer": producer, "professional+grants": pro}
    tokens = {
        "admin (no policy)": issuer.mint(role="admin", sub=ADMIN.sub),
        "producer": issuer.mint(role="producer", sub=producer.sub, structure=producer_structure),
        "professional+grants": issuer.mint(role="professional", sub=pro.sub, structure=OUTSIDER,
                                           profession="10"),
    }  # fmt: skip
    queries = {"recent 25": [("limit", "25")], "patient": [("PatientID", granted[0])]}
    out: dict[str, dict[str, float]] = {}
    for qname, params in queries.items():
        for cname, actor in callers.items():
            request = encode(
                QidoRequest(query=parse_qido(QidoLevelValues.STUDY, params), actor=actor)
            )

            async def over_nats(request: bytes = request) -> None:
                await nc.request(subjects.SVC_INDEX_QIDO, request, timeout=10.0)

            headers = {"Authorization": f"Bearer {tokens[cname]}"}

            async def over_http(
                headers: dict[str, str] = headers, params: list[tuple[str, str]] = params
            ) -> None:
                r = await http.get(f"{base}/studies", params=tuple(params), headers=headers)
                r.raise_for_status()  # fmt: skip

            out[f"{qname} | {cname} | index (NATS)"] = await timed(over_nats, n, warmup)
            out[f"{qname} | {cname} | gateway (HTTP+audit)"] = await timed(over_http, n, warmup)
    return out


async def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Run the benchmark; return (and save) its result."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--studies", type=int, default=20_000)
    parser.add_argument("--structures", type=int, default=116)
    parser.add_argument("--professionals", type=int, default=20)
    parser.add_argument("--care", type=int, default=10, help="care relationships each")
    parser.add_argument("--codes", type=int, default=2, help="redeemed share codes each")
    parser.add_argument("--requests", type=int, default=500)
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--seed", type=int, default=2025)
    args = parser.parse_args(argv)

    population = Population(args.seed, max(100, args.studies // 3), args.structures)
    with tempfile.TemporaryDirectory(prefix="krypton-bench-policy-") as tmp:
        log("starting the platform")
        async with started_platform(Path(tmp)) as platform:
            assert platform.pg_dsn is not None
            assert platform.nats is not None
            pg_version = await postgres_version(platform.pg_dsn)
            log(f"loading {args.studies} studies")
            _, load_figures = await load(platform.pg_dsn, population, args.studies, 1)
            nc = await nats.connect(platform.nats.url)
            pool = await asyncpg.create_pool(platform.pg_dsn, min_size=1, max_size=2)
            try:
                log("granting")
                t = time.perf_counter()
                actors, granted = await grant(
                    nc, pool, args.professionals, args.care, args.codes, args.seed
                )
                grants = args.professionals * (args.care + args.codes)
                await wait_projected(pool, grants)
                grant_s = time.perf_counter() - t
                log("measuring decisions")
                decide = await measure_decide(nc, pool, actors, granted, args.requests)
                log("measuring QIDO")
                issuer = DevIssuer(platform.state_dir / "issuer", platform.issuer_url)
                async with httpx.AsyncClient(timeout=30.0) as http:
                    qido = await measure_qido(
                        nc, http, platform.dicomweb_url, issuer, pool, actors[0],
                        granted[actors[0].sub], args.requests // 2, args.warmup,
                    )  # fmt: skip
            finally:
                await pool.close()
                await nc.close()
    result = {
        "machine": machine(pg_version),
        "parameters": vars(args),
        "load": load_figures,
        "grants": {"count": grants, "seconds_incl_projection": round(grant_s, 2)},
        "decide": decide,
        "qido": qido,
    }
    print(machine_line(result["machine"]))
    print(f"{args.studies} studies, {grants} grants of {args.professionals} professionals")
    keys = ("p50_ms", "p95_ms", "p99_ms", "max_ms")
    print_table(["decision", *keys], [[k, *(v[x] for x in keys)] for k, v in decide.items()])
    print_table(["QIDO", *keys], [[k, *(v[x] for x in keys)] for k, v in qido.items()])
    path = write_result(NAME, result)
    log(f"saved {path}")
    return result


if __name__ == "__main__":
    asyncio.run(main())

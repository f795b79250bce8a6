"""Audit benchmark: events persisted per second, and the latency the audit adds to a read.

Starts the embedded platform and loads ``--studies`` generated studies into the index
(`qido.load`). Then:

- **Throughput**: publishes ``--events`` search events on the AUDIT stream as the gateway does
  (`krypton.bus.audit.AuditPublisher`, ``--concurrency`` publishers), and times until the audit
  service has appended every one to its hash-chained log (``audit.log`` row count): events/s
  persisted, end to end (stream → durable consumer → chained INSERT).
- **Latency added to a read**: the audit step of a read is one `AuditPublisher.publish`
  (JetStream publish + stored-ack) before the answer leaves. Timed alone, one at a time, and
  beside the same QIDO search through the gateway (which includes it) and straight to the index
  over NATS (which does not).

    .venv/bin/python benchmarks/audit.py --events 20000
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import asyncpg
import httpx
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
from krypton.bus.audit import AuditPublisher
from krypton.bus.codec import encode
from krypton.contracts import subjects
from krypton.contracts.audit.v1 import (
    AccessBasisValues,
    AuditEventTypeValues,
    AuditPatient,
    new_event,
)
from krypton.contracts.common.v1 import Actor, RoleValues
from krypton.contracts.index.v1 import QidoLevelValues, QidoRequest
from krypton.dicom.qido import parse_qido
from krypton.dicom.synthetic import Population
from qido import load

NAME = "audit"
READER = Actor(
    sub="810000000777", role=RoleValues.PROFESSIONAL, issuer="bench", structure="330781196",
    name="Dr Bench", profession="10", client_address="10.0.0.7",
)  # fmt: skip


def _event(n: int) -> Any:
    return new_event(
        AuditEventTypeValues.SEARCH, READER, basis=AccessBasisValues.PRODUCING_STRUCTURE,
        query=f"PatientID=P{n}", study_uids=[f"1.2.826.0.1.3680043.8.498.{n}"],
        patients=[AuditPatient(patient_id=f"P{n}")], resource="/dicomweb/studies",
    )  # fmt: skip


async def throughput(js: Any, pool: asyncpg.Pool, events: int, concurrency: int) -> dict[str, Any]:
    """Publish `events` and time until the log holds them all."""
    publisher = AuditPublisher(js, timeout=10.0)
    before = await pool.fetchval("SELECT count(*) FROM audit.log")
    queue = iter(range(events))
    started = time.perf_counter()

    async def worker() -> None:
        for n in queue:
            await publisher.publish(_event(n))

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    published_s = time.perf_counter() - started
    # Polling another process's table: there is no event to wait on.
    while await pool.fetchval("SELECT count(*) FROM audit.log") < before + events:  # noqa: ASYNC110
        await asyncio.sleep(0.05)
    persisted_s = time.perf_counter() - started
    return {
        "events": events,
        "publishers": concurrency,
        "published_per_s": round(events / published_s, 1),
        "persisted_per_s": round(events / persisted_s, 1),
        "persisted_s": round(persisted_s, 2),
    }


async def timed(call: Any, n: int, warmup: int = 20) -> dict[str, float]:
    for _ in range(warmup):
        await call()
    samples = []
    for _ in range(n):
        t = time.perf_counter()
        await call()
        samples.append(time.perf_counter() - t)
    return summarise(samples)


async def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Run the benchmark; return (and save) its result."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--studies", type=int, default=5000)
    parser.add_argument("--events", type=int, default=20_000)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--requests", type=int, default=500)
    parser.add_argument("--seed", type=int, default=2025)
    args = parser.parse_args(argv)

    population = Population(args.seed, max(100, args.studies // 3), 20)
    with tempfile.TemporaryDirectory(prefix="krypton-bench-audit-") as tmp:
        log("starting the platform")
        async with started_platform(Path(tmp)) as platform:
            assert platform.pg_dsn is not None
            assert platform.nats is not None
            pg_version = await postgres_version(platform.pg_dsn)
            log(f"loading {args.studies} studies")
            await load(platform.pg_dsn, population, args.studies, 1)
            nc = await nats.connect(platform.nats.url)
            js = nc.jetstream()
            pool = await asyncpg.create_pool(platform.pg_dsn, min_size=1, max_size=2)
            try:
                structure = await pool.fetchval(
                    "SELECT structure FROM index.studies GROUP BY structure"
                    " ORDER BY count(*) DESC LIMIT 1"
                )
                log(f"throughput: {args.events} events")
                rate = await throughput(js, pool, args.events, args.concurrency)
                log("latency")
                publisher = AuditPublisher(js)
                counter = iter(range(10**9))

                async def publish() -> None:
                    await publisher.publish(_event(next(counter)))

                reader = Actor(sub=READER.sub, role=RoleValues.PROFESSIONAL, issuer="bench",
                               structure=structure)  # fmt: skip
                request = encode(
                    QidoRequest(
                        query=parse_qido(QidoLevelValues.STUDY, [("limit", "25")]), actor=reader
                    )
                )

                async def index_only() -> None:
                    await nc.request(subjects.SVC_INDEX_QIDO, request, timeout=10.0)

                issuer = DevIssuer(platform.state_dir / "issuer", platform.issuer_url)
                token = issuer.mint(role="professional", sub=READER.sub, structure=structure)
                async with httpx.AsyncClient(timeout=30.0) as http:

                    async def through_gateway() -> None:
                        r = await http.get(
                            f"{platform.dicomweb_url}/studies",
                            params={"limit": "25"},
                            headers={"Authorization": f"Bearer {token}"},
                        )
                        r.raise_for_status()

                    latency = {
                        "audit publish (added to each read)": await timed(publish, args.requests),
                        "QIDO recent 25, index over NATS (no audit)": await timed(
                            index_only, args.requests
                        ),
                        "QIDO recent 25, gateway HTTP (with audit)": await timed(
                            through_gateway, args.requests
                        ),
                    }
            finally:
                await pool.close()
                await nc.close()
    result = {
        "machine": machine(pg_version),
        "parameters": vars(args),
        "throughput": rate,
        "latency": latency,
    }
    print(machine_line(result["machine"]))
    print(
        f"throughput: {rate['persisted_per_s']} events/s persisted "
        f"({rate['published_per_s']} events/s published, {rate['publishers']} publishers)"
    )
    keys = ("p50_ms", "p95_ms", "p99_ms", "max_ms")
    print_table(["latency", *keys], [[k, *(v[x] for x in keys)] for k, v in latency.items()])
    path = write_result(NAME, result)
    log(f"saved {path}")
    return result


if __name__ == "__main__":
    asyncio.run(main())

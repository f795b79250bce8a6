"""Fault injection under load (issue 9): nothing acknowledged is lost, nothing counted twice.

While writers store synthetic instances (STOW-RS) and readers search and retrieve them, each
service is killed with SIGKILL in turn, nats-server is killed and restarted, PostgreSQL is
crash-stopped and restarted, and the object store refuses writes for a while. Afterwards:

- every acknowledged instance is in the index exactly once (rows and study counters) and comes
  back byte for byte through WADO-RS;
- every audit event on the AUDIT stream is in the audit log exactly once;
- every durable JetStream consumer is idle (nothing pending, nothing unacknowledged);
- every answer a client got was clean (see `load`): no other 5xx, no hang, no wrong bytes.

A second test checks backpressure: with ingest frozen (SIGSTOP), uploads beyond the backlog
limit get 503 + Retry-After instead of piling up, and all of them are stored once it thaws.
"""

from __future__ import annotations

import asyncio
import os
import platform as pyplatform
import subprocess
import time
from collections.abc import Awaitable, Callable
from typing import Any

import httpx
import pytest

from .checks import audit_once, consumers_idle, indexed_once, retrievable
from .conftest import PLATFORM_ENV, REPO, Campaign, Running
from .injectors import Fault, Injector
from .load import Load, make_instances, multipart

pytestmark = [pytest.mark.e2e, pytest.mark.nats, pytest.mark.postgres, pytest.mark.slow]

STRUCTURE = "330781196"
SERVICES = ("gateway", "ingest", "index", "render", "authorize", "audit")


def _faults(injector: Injector) -> list[tuple[str, Callable[[], Awaitable[Fault]]]]:
    def kill(name: str) -> Callable[[], Awaitable[Fault]]:
        return lambda: injector.kill(name)

    faults: list[tuple[str, Callable[[], Awaitable[Fault]]]] = [
        (f"kill {s}", kill(s)) for s in SERVICES
    ]
    faults += [
        ("restart nats", injector.restart_nats),
        ("restart postgres", injector.restart_postgres),
        ("store refuses writes", injector.store_refuses_writes),
    ]
    return faults


async def _until(condition: Callable[[], bool], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.1)
    return True


def _machine() -> dict[str, Any]:
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True
    ).stdout.strip()
    return {
        "cores": os.cpu_count(),
        "python": pyplatform.python_version(),
        "os": f"{pyplatform.system()} {pyplatform.release()}",
        "git_commit": commit,
        # Figures from a loaded machine are pessimistic: say how loaded it was.
        "load_average": [round(x, 2) for x in os.getloadavg()],
    }


async def test_nothing_acknowledged_is_lost_under_faults(
    platform: Running, campaign: Campaign
) -> None:
    injector = Injector(platform.platform, hold=5.0 if campaign.soak else 1.5)
    load = Load(
        url=platform.url,
        producer=platform.headers("producer", f"ris-{STRUCTURE}", structure=STRUCTURE),
        reader=platform.headers("admin", "faults-admin"),
        supply=make_instances(seed=9),
        rate=8.0,
    )
    started = time.monotonic()
    phases: dict[str, float] = {}

    def phase(name: str) -> None:
        phases[name] = round(time.monotonic() - started - sum(phases.values()), 1)

    await load.start()
    try:
        assert await _until(lambda: len(load.ledger.acked) >= 8, 90), load.ledger
        phase("warm-up")
        rounds = 0
        while True:
            for name, inject in _faults(injector):
                before = len(load.ledger.acked)
                load.ledger.gateway_down = name == "kill gateway"
                try:
                    await inject()
                finally:
                    load.ledger.gateway_down = False
                # Some load goes through between two faults (a fault never hides another).
                await _until(lambda b=before: len(load.ledger.acked) >= b + 4, 60)  # type: ignore[misc]
            rounds += 1
            if not campaign.soak or time.monotonic() - started > campaign.seconds:
                break
        phase("faults")
        load.stop_supply()
        all_acked = await load.wait_all_acked(timeout=120)
        phase("resend until acknowledged")
    finally:
        await load.stop()
    ledger = load.ledger
    nats_url = platform.platform.nats.url  # type: ignore[union-attr]
    dsn = platform.platform.pg_dsn
    assert dsn is not None
    consumers = await consumers_idle(nats_url, timeout=180)
    phase("consumers idle")
    index = await indexed_once(dsn, ledger.acked)
    async with httpx.AsyncClient(timeout=60.0) as client:
        wrong = await retrievable(client, platform.url, load.reader, ledger.acked)
    phase("index and retrieval checks")
    audit = await audit_once(nats_url, dsn)
    phase("audit check")

    lost = len(index["missing_from_index"]) + len(wrong)
    requests = sum(ledger.requests.values())
    table = [
        f"{'fault':<34} {'held s':>7} {'recovered s':>12}  note",
        *(f"{f.name:<34} {f.held_s:>7} {f.recovered_s:>12}  {f.note}" for f in injector.done),
        f"rounds {rounds}; requests {requests} ({dict(ledger.requests)}); "
        f"instances sent {load.sent}, acknowledged {len(ledger.acked)}, lost {lost}",
        f"answers {dict(sorted(ledger.statuses.items()))}",
        f"failure reasons (resent) {dict(ledger.failure_reasons)}; dropped connections "
        f"{ledger.dropped} while the gateway was down, {ledger.dropped_otherwise} otherwise; "
        f"unclean {len(ledger.unclean)}",
        f"audit {audit}",
        f"phases (s) {phases}",
    ]
    campaign.record(
        {
            "name": "faults under load" + (" (soak)" if campaign.soak else ""),
            "summary": f"{len(injector.done)} faults, {requests} requests, "
            f"{len(ledger.acked)} acknowledged, {lost} lost",
            "table": table,
            "faults": [vars(f) for f in injector.done],
            "requests": dict(ledger.requests),
            "answers": dict(ledger.statuses),
            "failure_reasons": dict(ledger.failure_reasons),
            "dropped_connections_gateway_down": ledger.dropped,
            "dropped_connections_otherwise": ledger.dropped_otherwise,
            "instances_sent": load.sent,
            "acknowledged": len(ledger.acked),
            "lost": lost,
            "index": {k: v if isinstance(v, int) else len(v) for k, v in index.items()},
            "audit": audit,
            "consumers": consumers,
            "unclean": ledger.unclean,
            "duration_s": round(time.monotonic() - started, 1),
            "phases_s": phases,
            "platform_env": PLATFORM_ENV,
            "machine": _machine(),
        }
    )
    assert not ledger.unclean, ledger.unclean[:20]
    assert all_acked, f"{load.pending} instances never acknowledged"
    assert len(injector.done) >= len(_faults(injector))
    assert not [p for f in injector.done for p in f.problems], injector.done
    assert index["missing_from_index"] == [], index["missing_from_index"][:10]
    assert index["indexed_more_than_once"] == []
    n = len(ledger.acked)
    assert index["ingest_objects"] == n
    assert index["study_counters"] == index["instances_in_studies"] == n
    assert wrong == [], wrong[:10]
    assert audit["log_duplicates"] == 0
    assert audit["events_missing_from_log"] == 0, audit
    stuck = {k: v for k, v in consumers.items() if v["num_pending"] or v["num_ack_pending"]}
    assert not stuck, stuck


async def test_a_stalled_ingest_slows_uploads_down_with_503_and_loses_none(
    platform: Running, campaign: Campaign
) -> None:
    limit = int(PLATFORM_ENV["KRYPTON_INGEST_BACKLOG_LIMIT"])
    injector = Injector(platform.platform)
    producer = platform.headers("producer", f"ris-{STRUCTURE}", structure=STRUCTURE)
    supply = make_instances(seed=10)
    instances = [next(supply) for _ in range(limit * 2)]
    statuses: list[int] = []
    acked: dict[str, Any] = {}

    async with httpx.AsyncClient(timeout=60.0) as client:

        async def send(i: int) -> None:
            body, content_type = multipart([instances[i].data])
            response = await client.post(
                f"{platform.url}/studies",
                content=body,
                headers={**producer, "Content-Type": content_type},
            )
            statuses.append(response.status_code)
            if response.status_code == 503:
                assert "retry-after" in response.headers
                assert response.headers["content-type"].startswith("application/problem+json")
            elif response.status_code == 200:
                acked[instances[i].sop_uid] = instances[i]

        tasks: list[asyncio.Task[None]] = []

        async def flood() -> None:
            # Uploads wait for a verdict that cannot come: the stream fills up until the
            # gateway refuses new ones (a refusal comes back at once).
            for i in range(len(instances)):
                tasks.append(asyncio.create_task(send(i)))
                await asyncio.sleep(0.02)
                if statuses.count(503) >= 3:
                    break
            await _until(lambda: 503 in statuses, 30)

        await injector.pause("ingest", flood)
        await asyncio.gather(*tasks)
        refused = statuses.count(503)
        # A client resends what was refused or not confirmed.
        deadline = time.monotonic() + 120
        while len(acked) < len(instances) and time.monotonic() < deadline:
            missing = [i for i, inst in enumerate(instances) if inst.sop_uid not in acked]
            await asyncio.gather(*(send(i) for i in missing[:8]))
    dsn = platform.platform.pg_dsn
    assert dsn is not None
    index_wait = time.monotonic() + 60
    while True:
        index = await indexed_once(dsn, acked)
        if not index["missing_from_index"] or time.monotonic() > index_wait:
            break
        await asyncio.sleep(0.5)
    campaign.record(
        {
            "name": "backpressure (ingest frozen)",
            "summary": f"limit {limit}: {refused} uploads refused with 503 while ingest was "
            f"frozen; {len(acked)} of {len(instances)} stored after resending, "
            f"{len(index['missing_from_index'])} lost",
            "statuses": {str(s): statuses.count(s) for s in sorted(set(statuses))},
        }
    )
    assert refused >= 1
    assert len(acked) == len(instances)
    assert index["missing_from_index"] == []
    assert index["indexed_more_than_once"] == []

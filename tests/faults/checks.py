"""What must hold after the faults: nothing lost, indexed once, audited once, nobody stuck."""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections import defaultdict
from typing import Any

import asyncpg
import httpx
import msgspec
import nats
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from krypton.contracts import subjects

from .load import Instance, parse_multipart

__all__ = ["audit_once", "consumers_idle", "indexed_once", "retrievable"]


async def consumers_idle(nats_url: str, timeout: float) -> dict[str, dict[str, int]]:
    """Wait until every durable consumer has nothing pending nor unacknowledged.

    Returns:
        Per `stream/consumer`, its last `num_pending` and `num_ack_pending` (all 0 on success)
        and `idle_after_ms`, how long after the call it was first seen idle for good.
    """
    nc = await nats.connect(nats_url, name="faults-check")
    started = time.monotonic()
    idle_at: dict[str, int] = {}
    try:
        js = nc.jetstream()
        deadline = started + timeout
        while True:
            state: dict[str, dict[str, int]] = {}
            for stream in await js.streams_info():
                name = stream.config.name
                assert name is not None
                for consumer in await js.consumers_info(name):
                    if not consumer.config.durable_name:
                        continue
                    state[f"{name}/{consumer.name}"] = {
                        "num_pending": consumer.num_pending or 0,
                        "num_ack_pending": consumer.num_ack_pending or 0,
                        "num_redelivered": consumer.num_redelivered or 0,
                    }
            for key, value in state.items():
                if value["num_pending"] or value["num_ack_pending"]:
                    idle_at.pop(key, None)
                else:
                    idle_at.setdefault(key, int((time.monotonic() - started) * 1000))
                value["idle_after_ms"] = idle_at.get(key, -1)
            busy = any(v["num_pending"] or v["num_ack_pending"] for v in state.values())
            if not busy or time.monotonic() > deadline:
                return state
            await asyncio.sleep(0.5)
    finally:
        await nc.close()


async def indexed_once(dsn: str, acked: dict[str, Instance]) -> dict[str, Any]:
    """Rows of each acknowledged instance in ingest and the index, and the study counters."""
    sops = list(acked)
    studies = list({i.study_uid for i in acked.values()})
    conn = await asyncpg.connect(dsn)
    try:
        index_rows = await conn.fetch(
            """select sop_instance_uid, count(*) as n from index.instances
               where sop_instance_uid = any($1::text[]) group by 1""",
            sops,
        )
        ingest_rows = await conn.fetchval(
            "select count(*) from ingest.objects where sop_instance_uid = any($1::text[])", sops
        )
        counted = await conn.fetchval(
            "select coalesce(sum(num_instances), 0) from index.studies"
            " where study_uid = any($1::text[])",
            studies,
        )
        in_studies = await conn.fetchval(
            "select count(*) from index.instances where study_uid = any($1::text[])", studies
        )
    finally:
        await conn.close()
    counts = {r["sop_instance_uid"]: r["n"] for r in index_rows}
    return {
        "missing_from_index": sorted(set(sops) - set(counts)),
        "indexed_more_than_once": sorted(s for s, n in counts.items() if n != 1),
        "ingest_objects": ingest_rows,
        "study_counters": counted,
        "instances_in_studies": in_studies,
    }


async def retrievable(
    client: httpx.AsyncClient, url: str, headers: dict[str, str], acked: dict[str, Instance]
) -> list[str]:
    """Retrieve every study written (WADO-RS); the acknowledged instances that did not come
    back byte for byte."""
    by_study: dict[str, set[str]] = defaultdict(set)
    for instance in acked.values():
        by_study[instance.study_uid].add(instance.sha256)
    wrong: list[str] = []
    gate = asyncio.Semaphore(4)

    async def check(study: str, digests: set[str]) -> None:
        async with gate:
            response = await client.get(f"{url}/studies/{study}", headers=headers)
        if response.status_code != 200:
            wrong.append(f"{study}: {response.status_code}")
            return
        got = {hashlib.sha256(p).hexdigest() for p in parse_multipart(response)}
        wrong.extend(f"{study}: {d} missing" for d in digests - got)

    await asyncio.gather(*(check(s, d) for s, d in by_study.items()))
    return wrong


async def audit_once(nats_url: str, dsn: str) -> dict[str, int]:
    """Every audit event on the AUDIT stream is in the audit log exactly once."""
    nc = await nats.connect(nats_url, name="faults-audit-check")
    ids: set[str] = set()
    messages = 0
    try:
        js = nc.jetstream()
        sub = await js.pull_subscribe(
            f"{subjects.AUDIT_EVENT}.>",
            stream=subjects.AUDIT_STREAM,
            config=ConsumerConfig(ack_policy=AckPolicy.NONE, deliver_policy=DeliverPolicy.ALL),
        )
        while True:
            try:
                msgs = await sub.fetch(500, timeout=1.0)
            except (nats.errors.TimeoutError, TimeoutError):
                break
            for msg in msgs:
                messages += 1
                ids.add(msgspec.json.decode(msg.data)["event_id"])
        await sub.unsubscribe()
    finally:
        await nc.close()
    conn = await asyncpg.connect(dsn)
    try:
        rows = await conn.fetch("select event_id::text as id from audit.log")
    finally:
        await conn.close()
    logged = [r["id"] for r in rows]
    return {
        "stream_messages": messages,
        "distinct_events": len(ids),
        "log_rows": len(logged),
        "log_duplicates": len(logged) - len(set(logged)),
        "events_missing_from_log": len(ids - set(logged)),
    }

"""The index service in process, on the real nats-server and PostgreSQL of the test session."""

from __future__ import annotations

import asyncio

import asyncpg
import msgspec
import nats
import pytest

from krypton.bus.codec import encode
from krypton.contracts import subjects
from krypton.contracts.common.v1 import Actor, RoleValues
from krypton.contracts.index.v1 import LocateResponse, QidoRequest
from krypton.core.settings import KryptonSettings
from krypton.dicom.qido import parse_qido
from krypton.index.app import build_app

pytestmark = [pytest.mark.nats, pytest.mark.postgres]


async def _until_ready(nc: nats.aio.client.Client) -> None:
    for _ in range(100):  # until the service answers (its lifespan has made the pool)
        try:
            await nc.request(subjects.SVC_INDEX_PING, b"", timeout=0.5)
            return
        except (nats.errors.NoRespondersError, nats.errors.TimeoutError):
            await asyncio.sleep(0.1)


async def test_a_search_waiting_on_the_database_does_not_hold_up_the_next(
    nats_url: str, pg_dsn: str, index_pool: asyncpg.Pool
) -> None:
    app, _ = build_app(KryptonSettings(nats_url=nats_url, pg_dsn=pg_dsn))
    query = parse_qido("study", [])
    professional = Actor(sub="810000000001", role=RoleValues.PROFESSIONAL, issuer="t",
                         structure="330000007")  # fmt: skip
    admin = Actor(sub="admin", role=RoleValues.ADMIN, issuer="t")
    running = asyncio.create_task(app.run())
    nc = await nats.connect(nats_url)
    locker = await asyncpg.connect(pg_dsn)
    try:
        await _until_ready(nc)
        # The professional's search reads the grants, which another session holds locked.
        tx = locker.transaction()
        await tx.start()
        await locker.execute("LOCK TABLE index.access_grants IN ACCESS EXCLUSIVE MODE")
        ask = QidoRequest(query=query, actor=professional)
        waiting = asyncio.create_task(nc.request(subjects.SVC_INDEX_QIDO, encode(ask), timeout=20))
        await asyncio.sleep(0.5)
        # An admin's search (no grant lookup) is answered meanwhile, not after it.
        ask = QidoRequest(query=query, actor=admin)
        reply = await nc.request(subjects.SVC_INDEX_QIDO, encode(ask), timeout=5)
        assert (reply.headers or {}).get("Krypton-Status") == "200"
        assert not waiting.done()
        await tx.rollback()
        answer = await waiting
        assert (answer.headers or {}).get("Krypton-Status") == "200"
    finally:
        await locker.close()
        await nc.close()
        app.exit()
        await running


async def test_malformed_requests_get_a_clear_answer_not_a_timeout(
    nats_url: str, pg_dsn: str, index_pool: asyncpg.Pool
) -> None:
    app, _ = build_app(KryptonSettings(nats_url=nats_url, pg_dsn=pg_dsn))
    running = asyncio.create_task(app.run())
    nc = await nats.connect(nats_url)
    try:
        await _until_ready(nc)
        reply = await nc.request(subjects.SVC_INDEX_QIDO, b'{"query": 1}', timeout=5)
        headers = reply.headers or {}
        assert headers.get("Krypton-Status") == "400"
        assert "malformed search request" in headers.get("Krypton-Reason", "")
        reply = await nc.request(subjects.SVC_INDEX_LOCATE, b"not json", timeout=5)
        assert msgspec.json.decode(reply.data, type=LocateResponse).status == 400
    finally:
        await nc.close()
        app.exit()
        await running

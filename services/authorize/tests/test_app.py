"""The running service answers decisions over NATS, from its cache when it can."""

from __future__ import annotations

import asyncpg
import msgspec
import nats
import pytest

from krypton.authorize.app import AuthorizeService
from krypton.bus.codec import encode
from krypton.contracts import subjects
from krypton.contracts.authorize.v1 import AuthzCommand, DecideRequest, DecideResponse
from krypton.contracts.common.v1 import Actor, RoleValues
from krypton.core.settings import KryptonSettings

pytestmark = [pytest.mark.postgres, pytest.mark.nats]

DR = Actor(sub="dr1", role=RoleValues.PROFESSIONAL, issuer="t", structure="330000004")


async def test_decisions_are_answered_and_cached(
    authz_pool: asyncpg.Pool, pg_dsn: str, nats_url: str
) -> None:
    settings = KryptonSettings(pg_dsn=pg_dsn, nats_url=nats_url)
    service = await AuthorizeService.start(settings)
    nc = await nats.connect(nats_url)
    try:
        request = encode(
            DecideRequest(actor=DR, patient_key="INS:1", study_uid="1.2", structure="330000001")
        )
        for _ in range(2):
            reply = await nc.request(subjects.SVC_AUTHZ_DECIDE, request, timeout=5.0)
            decision = msgspec.json.decode(reply.data, type=DecideResponse)
            assert decision.allow is False
        assert (service.cache.hits, service.cache.misses) == (1, 1)
    finally:
        await nc.close()
        await service.stop()


async def test_a_value_postgresql_refuses_is_a_400_not_an_outage(
    authz_pool: asyncpg.Pool, pg_dsn: str, nats_url: str
) -> None:
    # A NUL byte inside a JSON string is valid JSON but no PostgreSQL text: found by the
    # OpenAPI fuzzer, it used to come back as "policy store unavailable" (503).
    settings = KryptonSettings(pg_dsn=pg_dsn, nats_url=nats_url)
    service = await AuthorizeService.start(settings)
    nc = await nats.connect(nats_url)
    producer = Actor(sub="ris", role=RoleValues.PRODUCER, issuer="t", structure="330000001")
    try:
        command = AuthzCommand(
            actor=producer,
            body=msgspec.Raw(b'{"patient_ipp": "IPP\\u0000"}'),
            resource="/api/opposition/lift",
        )
        reply = await nc.request(
            subjects.svc_authz("opposition.lift"), encode(command), timeout=10.0
        )
        assert reply.headers is not None
        assert reply.headers["Krypton-Status"] == "400"
    finally:
        await nc.close()
        await service.stop()

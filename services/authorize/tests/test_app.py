"""The running service answers decisions over NATS, from its cache when it can."""

from __future__ import annotations

import asyncpg
import msgspec
import nats
import pytest

from krypton.authorize.app import AuthorizeService
from krypton.bus.codec import encode
from krypton.contracts import subjects
from krypton.contracts.authorize.v1 import DecideRequest, DecideResponse
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

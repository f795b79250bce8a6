"""Fixtures for the authorize tests: a migrated, emptied ``authz`` schema and a `Policy`."""

from __future__ import annotations

from collections.abc import AsyncIterator

import asyncpg
import pytest

from krypton.authorize.policy import Policy
from krypton.authorize.schema import migrate
from krypton.authorize.settings import AuthorizeSettings

_TRUNCATE = (
    "TRUNCATE authz.structures, authz.professionals, authz.memberships, authz.patients,"
    " authz.patient_ipps, authz.care_relationships, authz.share_codes, authz.redeem_failures,"
    " authz.oppositions, authz.break_glass, authz.outbox, authz.communities,"
    " authz.community_members, authz.community_shares"
)


@pytest.fixture
async def authz_pool(pg_pool: asyncpg.Pool) -> AsyncIterator[asyncpg.Pool]:
    """The session database with the authz schema migrated and its tables empty."""
    await migrate(pg_pool)
    await pg_pool.execute(_TRUNCATE)
    yield pg_pool
    await pg_pool.execute(_TRUNCATE)


@pytest.fixture
def policy(authz_pool: asyncpg.Pool) -> Policy:
    """The policy with default settings."""
    return Policy(authz_pool, AuthorizeSettings())

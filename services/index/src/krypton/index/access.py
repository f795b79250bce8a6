"""The access projection: authorize's policy events applied to the index's access tables.

The tables are ``index.access_grants`` (a grant is held by one professional, or by a community
whose current members all see through it), ``index.community_members`` and
``index.oppositions``. Each event carries its version (authorize's outbox sequence); a row only
moves forward, so a batch may be redelivered or delivered out of order across replicas and the
projection still ends in the state of the newest event. Events that do not change access (break-the-glass
notifications, share code life cycle, directory changes) are acknowledged and ignored here.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final

import asyncpg

from krypton.contracts.authorize.v1 import (
    CommunityMemberChanged,
    GrantChanged,
    OppositionChanged,
    PolicyEvent,
)

__all__ = ["apply_policy_events"]

_UPSERT_GRANT: Final = """
INSERT INTO index.access_grants AS g (grant_id, actor_sub, patient_key, study_uid, valid_from,
    valid_until, basis, active, version, community_id)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)
ON CONFLICT (grant_id) DO UPDATE SET
    actor_sub = excluded.actor_sub, community_id = excluded.community_id,
    patient_key = excluded.patient_key,
    study_uid = excluded.study_uid, valid_from = excluded.valid_from,
    valid_until = excluded.valid_until, basis = excluded.basis, active = excluded.active,
    version = excluded.version, updated_at = now()
WHERE g.version < excluded.version
"""
_UPSERT_OPPOSITION: Final = """
INSERT INTO index.oppositions AS o (patient_key, opposition_id, active, version)
VALUES ($1, $2, $3, $4)
ON CONFLICT (patient_key) DO UPDATE SET
    opposition_id = excluded.opposition_id, active = excluded.active,
    version = excluded.version, updated_at = now()
WHERE o.version < excluded.version
"""
_UPSERT_MEMBER: Final = """
INSERT INTO index.community_members AS m (community_id, actor_sub, active, version)
VALUES ($1, $2, $3, $4)
ON CONFLICT (community_id, actor_sub) DO UPDATE SET
    active = excluded.active, version = excluded.version, updated_at = now()
WHERE m.version < excluded.version
"""


async def apply_policy_events(pool: asyncpg.Pool, events: Sequence[PolicyEvent]) -> int:
    """Apply a batch in one transaction; returns how many events touched the projection."""
    grants: dict[str, GrantChanged] = {}
    oppositions: dict[str, tuple[str, bool, int]] = {}
    members: dict[tuple[str, str], tuple[bool, int]] = {}
    for event in events:
        if isinstance(event, GrantChanged):
            known = grants.get(event.grant_id)
            if known is None or known.version < event.version:
                grants[event.grant_id] = event
        elif isinstance(event, OppositionChanged):
            for key in event.patient_keys or [event.patient_key]:
                current = oppositions.get(key)
                if current is None or current[2] < event.version:
                    oppositions[key] = (event.opposition_id, event.active, event.version)
        elif isinstance(event, CommunityMemberChanged):
            pair = (event.community_id, event.actor_sub)
            known_member = members.get(pair)
            if known_member is None or known_member[1] < event.version:
                members[pair] = (event.active, event.version)
    if not grants and not oppositions and not members:
        return 0
    async with pool.acquire() as conn, conn.transaction():
        if grants:
            await conn.executemany(
                _UPSERT_GRANT,
                [
                    # A community's grant has no professional of its own (actor_sub NULL).
                    (g.grant_id, None if g.community_id else g.actor_sub, g.patient_key,
                     g.study_uid, g.valid_from, g.valid_until, g.basis.value, g.active,
                     g.version, g.community_id)
                    for g in sorted(grants.values(), key=lambda g: g.grant_id)
                ],
            )  # fmt: skip
        if oppositions:
            await conn.executemany(
                _UPSERT_OPPOSITION,
                [(key, *value) for key, value in sorted(oppositions.items())],
            )
        if members:
            await conn.executemany(
                _UPSERT_MEMBER,
                [(*pair, *value) for pair, value in sorted(members.items())],
            )
    return len(grants) + len(oppositions) + len(members)

"""Communities: named groups of professionals with which a patient's file is shared.

A community (e.g. a tumour board, "réunion de concertation pluridisciplinaire") is created by
an admin, optionally owned by a structure; its members are added and removed by an admin or by
the owning structure's systems. A structure (or an admin) shares a patient's file with a
community for a validity window, and can end the share. Every current member then sees the
patient's studies (`krypton.authorize.policy.Policy.decide`, basis ``community``), unless the
patient opposes sharing: the opposition still wins.

Events: a share is a `GrantChanged` whose holder is the community (``community_id`` set,
``actor_sub`` empty); a membership change is a `CommunityMemberChanged`. The index projects
both, so a membership change reaches QIDO and WADO within a second. Audit: community and
membership changes are ``admin.change``, shares are ``care.changed`` in the patient's history.

Every function is one transaction, and changes of one community are serialised by a lock on
it, so the versions of its events grow in commit order.
"""

from __future__ import annotations

import re
import uuid
from datetime import datetime, timedelta
from typing import Final

import asyncpg

from krypton.auth.claims import FINESS_PATTERN
from krypton.authorize import outbox, trail
from krypton.authorize.errors import PolicyError
from krypton.authorize.policy import (
    Conn,
    Policy,
    _close_once,
    _directory_event,
    _one,
    _require,
    _text,
    _uuid,
)
from krypton.contracts.audit.v1 import AuditEvent, AuditEventTypeValues as AuditType
from krypton.contracts.authorize.v1 import (
    AccessBasisValues,
    Community,
    CommunityMember,
    CommunityMemberAdd,
    CommunityMemberChanged,
    CommunityRecord,
    CommunityShare,
    CommunityShareCreate,
    GrantChanged,
)
from krypton.contracts.common.v1 import Actor, RoleValues

__all__ = [
    "add_member",
    "end_share",
    "get_community",
    "put_community",
    "remove_member",
    "share",
]

_ID: Final = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
_NO_SUCH: Final = "no such community"


def _check_id(community_id: str) -> str:
    if not _ID.fullmatch(community_id):
        raise PolicyError(
            400, "a community id is 1 to 64 letters, digits, '.', '_' or '-', starting alphanumeric"
        )
    return community_id


def _share(row: asyncpg.Record, now: datetime) -> CommunityShare:
    return CommunityShare(
        id=str(row["id"]),
        community_id=row["community_id"],
        patient_key=row["patient_key"],
        valid_from=row["valid_from"],
        valid_until=row["valid_until"],
        shared_by=row["shared_by"],
        structure=row["structure"],
        created_at=row["created_at"],
        ended_at=row["ended_at"],
        ended_by=row["ended_by"],
        active=row["ended_at"] is None and row["valid_from"] <= now < row["valid_until"],
    )


async def _lock(conn: Conn, community_id: str) -> asyncpg.Record:
    """Serialise the changes of one community; its row, or 404."""
    await conn.execute(
        "SELECT pg_advisory_xact_lock(hashtext('authz.community:' || $1))", community_id
    )
    row = await conn.fetchrow("SELECT * FROM authz.communities WHERE id = $1", community_id)
    if row is None:
        raise PolicyError(404, _NO_SUCH)
    return row


def _may_manage_members(actor: Actor, community: asyncpg.Record) -> bool:
    if actor.role is RoleValues.ADMIN:
        return True
    return (
        actor.role is RoleValues.PRODUCER
        and community["structure"] is not None
        and community["structure"] == actor.structure
    )


async def _community(conn: Conn, row: asyncpg.Record) -> Community:
    now: datetime = await conn.fetchval("SELECT now()")
    members = await conn.fetch(
        "SELECT * FROM authz.community_members WHERE community_id = $1 AND removed_at IS NULL"
        " ORDER BY actor_sub",
        row["id"],
    )
    shares = await conn.fetch(
        "SELECT * FROM authz.community_shares WHERE community_id = $1 AND ended_at IS NULL"
        " AND valid_until > now() ORDER BY created_at",
        row["id"],
    )
    return Community(
        id=row["id"],
        name=row["name"],
        structure=row["structure"],
        created_at=row["created_at"],
        updated_at=row["updated_at"],
        members=[
            CommunityMember(sub=m["actor_sub"], added_at=m["added_at"], added_by=m["added_by"])
            for m in members
        ],
        shares=[_share(s, now) for s in shares],
    )


# --- communities and members -------------------------------------------------------------


async def put_community(
    policy: Policy, actor: Actor, community_id: str, body: CommunityRecord
) -> Community:
    """An admin creates or renames a community and sets its owning structure."""
    _require(actor, RoleValues.ADMIN)
    community_id = _check_id(body.id or community_id)
    name = _text(body.name, "name", minimum=1)
    if body.structure is not None and not FINESS_PATTERN.fullmatch(body.structure):
        raise PolicyError(400, "structure must be a 9-character FINESS")
    async with policy.pool.acquire() as conn, conn.transaction():
        await conn.execute(
            "SELECT pg_advisory_xact_lock(hashtext('authz.community:' || $1))", community_id
        )
        row = await _one(
            conn,
            "INSERT INTO authz.communities (id, name, structure) VALUES ($1, $2, $3)"
            " ON CONFLICT (id) DO UPDATE SET name = excluded.name,"
            " structure = excluded.structure, updated_at = now() RETURNING *",
            community_id, name, body.structure,
        )  # fmt: skip
        await _directory_event(conn, "community", community_id, actor)
        return await _community(conn, row)


async def get_community(policy: Policy, actor: Actor, community_id: str) -> Community:
    """A community with its members and live shares (admin, owning structure, members)."""
    async with policy.pool.acquire() as conn:
        row = await conn.fetchrow("SELECT * FROM authz.communities WHERE id = $1", community_id)
        if row is None:
            raise PolicyError(404, _NO_SUCH)
        member = actor.role is RoleValues.PROFESSIONAL and await conn.fetchval(
            "SELECT EXISTS (SELECT 1 FROM authz.community_members WHERE community_id = $1"
            " AND actor_sub = $2 AND removed_at IS NULL)",
            community_id,
            actor.sub,
        )
        if not (member or _may_manage_members(actor, row)):
            raise PolicyError(404, _NO_SUCH)
        return await _community(conn, row)


async def add_member(
    policy: Policy, actor: Actor, community_id: str, body: CommunityMemberAdd
) -> Community:
    """Add a professional (admin, or the owning structure); adding a member again is a no-op."""
    _require(actor, RoleValues.PRODUCER, RoleValues.ADMIN)
    sub = _text(body.sub, "sub", minimum=1)
    assert sub is not None
    async with policy.pool.acquire() as conn, conn.transaction():
        community = await _lock(conn, community_id)
        if not _may_manage_members(actor, community):
            raise PolicyError(403, "only an admin or the owning structure manages the members")
        row = await conn.fetchrow(
            "INSERT INTO authz.community_members AS m (community_id, actor_sub, added_by)"
            " VALUES ($1, $2, $3) ON CONFLICT (community_id, actor_sub) DO UPDATE SET"
            " added_at = now(), added_by = excluded.added_by, removed_at = NULL,"
            " removed_by = NULL WHERE m.removed_at IS NOT NULL RETURNING *",
            community_id, sub, actor.sub,
        )  # fmt: skip
        if row is not None:
            await _member_changed(conn, actor, row, active=True)
        return await _community(conn, community)


async def remove_member(policy: Policy, actor: Actor, community_id: str, sub: str) -> Community:
    """Remove a professional: they stop seeing the community's patients within a second."""
    _require(actor, RoleValues.PRODUCER, RoleValues.ADMIN)
    async with policy.pool.acquire() as conn, conn.transaction():
        community = await _lock(conn, community_id)
        if not _may_manage_members(actor, community):
            raise PolicyError(403, "only an admin or the owning structure manages the members")
        row = await conn.fetchrow(
            "UPDATE authz.community_members SET removed_at = now(), removed_by = $3"
            " WHERE community_id = $1 AND actor_sub = $2 AND removed_at IS NULL RETURNING *",
            community_id, sub, actor.sub,
        )  # fmt: skip
        if row is None:
            raise PolicyError(404, "not a member of this community")
        await _member_changed(conn, actor, row, active=False)
        return await _community(conn, community)


async def _member_changed(conn: Conn, actor: Actor, row: asyncpg.Record, *, active: bool) -> None:
    now: datetime = await conn.fetchval("SELECT now()")
    await outbox.append(
        conn,
        lambda v: CommunityMemberChanged(
            community_id=row["community_id"], actor_sub=row["actor_sub"], version=v,
            active=active, changed_by=actor.sub, at=now,
        ),
    )  # fmt: skip
    await trail.record(
        conn,
        trail.event(
            AuditType.ADMIN_CHANGE, actor,
            detail={"entity": "community_member", "key": row["community_id"],
                    "professional": row["actor_sub"], "action": "added" if active else "removed"},
        ),
    )  # fmt: skip


# --- shares ------------------------------------------------------------------------------


async def share(
    policy: Policy, actor: Actor, community_id: str, body: CommunityShareCreate
) -> CommunityShare:
    """A structure (or an admin) shares a patient's file with a community."""
    _require(actor, RoleValues.PRODUCER, RoleValues.ADMIN)
    settings = policy.settings
    structure = actor.structure if actor.role is RoleValues.PRODUCER else None
    async with policy.pool.acquire() as conn, conn.transaction():
        await _lock(conn, community_id)
        now: datetime = await conn.fetchval("SELECT now()")
        key = await policy._patient_key(conn, actor, body.patient_ins, body.patient_ipp, structure)
        start = body.valid_from or now
        end = body.valid_until or start + timedelta(days=settings.care_default_days)
        if end <= start:
            raise PolicyError(400, "valid_until must be after valid_from")
        if end <= now:
            raise PolicyError(400, "valid_until is in the past")
        if end - start > timedelta(days=settings.care_max_days):
            raise PolicyError(400, f"a share lasts at most {settings.care_max_days} days")
        row = await _one(
            conn,
            "INSERT INTO authz.community_shares (id, community_id, patient_key, valid_from,"
            " valid_until, shared_by, structure) VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING *",
            uuid.uuid4(), community_id, key, start, end, actor.sub, structure,
        )  # fmt: skip
        await outbox.append(conn, lambda v: _grant(row, v))
        await trail.record(conn, _share_audit(actor, row, "shared"))
    return _share(row, now)


async def end_share(
    policy: Policy, actor: Actor, community_id: str, share_id: str
) -> CommunityShare:
    """End a share (the sharing structure or an admin): members stop seeing the patient."""
    _require(actor, RoleValues.PRODUCER, RoleValues.ADMIN)
    async with policy.pool.acquire() as conn, conn.transaction():
        await _lock(conn, community_id)
        now: datetime = await conn.fetchval("SELECT now()")
        row = await conn.fetchrow(
            "SELECT * FROM authz.community_shares WHERE id = $1 AND community_id = $2"
            " FOR UPDATE",
            _uuid(share_id), community_id,
        )  # fmt: skip
        if row is None or not (
            actor.role is RoleValues.ADMIN
            or (row["structure"] is not None and row["structure"] == actor.structure)
        ):
            raise PolicyError(404, "no such share")
        ended = await _close_once(conn, "community_shares", "ended", row, now, actor.sub)
        if ended is not None:
            row = ended
            await outbox.append(conn, lambda v: _grant(ended, v))
            await trail.record(conn, _share_audit(actor, ended, "ended"))
    return _share(row, now)


def _grant(row: asyncpg.Record, version: int) -> GrantChanged:
    return GrantChanged(
        grant_id=f"community:{row['id']}",
        version=version,
        actor_sub="",
        community_id=row["community_id"],
        patient_key=row["patient_key"],
        valid_from=row["valid_from"],
        valid_until=row["ended_at"] if row["ended_at"] is not None else row["valid_until"],
        basis=AccessBasisValues.COMMUNITY,
        active=row["ended_at"] is None,
    )


def _share_audit(actor: Actor, row: asyncpg.Record, action: str) -> AuditEvent:
    return trail.event(
        AuditType.CARE_CHANGED,
        actor,
        patient_key=row["patient_key"],
        detail={
            "action": f"community_share_{action}",
            "share_id": str(row["id"]),
            "community_id": row["community_id"],
            "ends_at": (row["ended_at"] or row["valid_until"]).isoformat(),
        },
    )

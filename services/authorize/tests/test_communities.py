"""Communities: members, shares of a patient's file, their decisions, events and audit."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import asyncpg
import msgspec
import pytest

from krypton.authorize import communities
from krypton.authorize.cache import DecisionCache
from krypton.authorize.errors import PolicyError
from krypton.authorize.handlers import handle_command
from krypton.authorize.outbox import OutboxPublisher
from krypton.authorize.policy import Policy
from krypton.contracts.audit.v1 import AuditEvent
from krypton.contracts.authorize.v1 import (
    AccessBasisValues,
    AuthzCommand,
    CommunityMemberAdd,
    CommunityMemberChanged,
    CommunityRecord,
    CommunityShareCreate,
    DecideRequest,
    DecideResponse,
    GrantChanged,
    OppositionChange,
    PatientIpp,
    PatientRecord,
    PolicyEvent,
)
from krypton.contracts.common.v1 import Actor, RoleValues

pytestmark = pytest.mark.postgres

A, B, D, E = "330000001", "330000002", "330000004", "330000005"
INS1, INS2 = "180017512345678", "280017512345601"
P1 = f"INS:{INS1}"
RIS_A = Actor(sub="ris-a", role=RoleValues.PRODUCER, issuer="t", structure=A)
RIS_B = Actor(sub="ris-b", role=RoleValues.PRODUCER, issuer="t", structure=B)
RIS_E = Actor(sub="ris-e", role=RoleValues.PRODUCER, issuer="t", structure=E)
DR1 = Actor(sub="dr1", role=RoleValues.PROFESSIONAL, issuer="t", structure=D)
DR2 = Actor(sub="dr2", role=RoleValues.PROFESSIONAL, issuer="t", structure=D)
PATIENT1 = Actor(sub="pat1", role=RoleValues.PATIENT, issuer="t", ins=INS1)
ADMIN = Actor(sub="admin", role=RoleValues.ADMIN, issuer="t")
RCP = "rcp-onco"


async def basis(policy: Policy, actor: Actor, patient_key: str = P1) -> str | None:
    """The basis of the decision on a study of `patient_key` made by A, or None when denied."""
    decision = await policy.decide(
        DecideRequest(actor=actor, patient_key=patient_key, study_uid="1.1", structure=A)
    )
    return decision.basis.value if decision.allow and decision.basis else None


async def board(policy: Policy, *members: str, owner: str | None = E) -> None:
    """The tumour board `RCP`, owned by structure `owner`, with `members`."""
    await communities.put_community(
        policy, ADMIN, RCP, CommunityRecord(name="RCP oncologie", structure=owner)
    )
    for sub in members:
        await communities.add_member(policy, ADMIN, RCP, CommunityMemberAdd(sub=sub))


async def policy_events(pool: asyncpg.Pool) -> list[PolicyEvent]:
    rows = await pool.fetch(
        "SELECT payload FROM authz.outbox WHERE subject LIKE '%.policy.changed.%' ORDER BY id"
    )
    return [msgspec.json.decode(r["payload"], type=PolicyEvent) for r in rows]


async def audit_events(pool: asyncpg.Pool) -> list[AuditEvent]:
    rows = await pool.fetch(
        "SELECT payload FROM authz.outbox WHERE subject LIKE '%.audit.event.%' ORDER BY id"
    )
    return [msgspec.json.decode(r["payload"], type=AuditEvent) for r in rows]


async def test_every_current_member_sees_a_patient_shared_with_the_community(
    policy: Policy,
) -> None:
    await board(policy, "dr1")
    assert await basis(policy, DR1) is None
    shared = await communities.share(policy, RIS_B, RCP, CommunityShareCreate(patient_ins=INS1))
    assert (shared.patient_key, shared.structure, shared.active) == (P1, B, True)
    assert await basis(policy, DR1) == "community"
    assert await basis(policy, DR2) is None  # not a member
    assert await basis(policy, DR1, f"INS:{INS2}") is None  # another patient
    # Joining later is enough; leaving ends it.
    await communities.add_member(policy, ADMIN, RCP, CommunityMemberAdd(sub="dr2"))
    assert await basis(policy, DR2) == "community"
    await communities.remove_member(policy, ADMIN, RCP, "dr1")
    assert await basis(policy, DR1) is None
    assert await basis(policy, DR2) == "community"


async def test_an_ended_or_expired_share_opens_nothing(policy: Policy) -> None:
    await board(policy, "dr1")
    shared = await communities.share(policy, RIS_B, RCP, CommunityShareCreate(patient_ins=INS1))
    with pytest.raises(PolicyError) as refused:  # only the sharing structure or an admin
        await communities.end_share(policy, RIS_A, RCP, shared.id)
    assert refused.value.status == 404
    ended = await communities.end_share(policy, RIS_B, RCP, shared.id)
    assert ended.active is False
    assert await basis(policy, DR1) is None
    now = datetime.now(UTC)
    future = CommunityShareCreate(
        patient_ins=INS1, valid_from=now + timedelta(days=1), valid_until=now + timedelta(days=2)
    )
    await communities.share(policy, ADMIN, RCP, future)
    assert await basis(policy, DR1) is None
    with pytest.raises(PolicyError) as past:
        await communities.share(
            policy, RIS_B, RCP, CommunityShareCreate(patient_ins=INS1, valid_until=now)
        )
    assert past.value.status == 400


async def test_an_opposition_hides_the_patient_from_the_community(policy: Policy) -> None:
    await board(policy, "dr1")
    await communities.share(policy, RIS_B, RCP, CommunityShareCreate(patient_ins=INS1))
    await policy.set_opposition(PATIENT1, OppositionChange())
    assert await basis(policy, DR1) is None
    await policy.lift_opposition(PATIENT1, OppositionChange())
    assert await basis(policy, DR1) == "community"


async def test_the_owning_structure_or_an_admin_manages_the_members(policy: Policy) -> None:
    await board(policy)
    await communities.add_member(policy, RIS_E, RCP, CommunityMemberAdd(sub="dr1"))
    for outsider in (RIS_A, DR1):
        with pytest.raises(PolicyError) as refused:
            await communities.add_member(policy, outsider, RCP, CommunityMemberAdd(sub="dr2"))
        assert refused.value.status == 403
    with pytest.raises(PolicyError) as refused:
        await communities.remove_member(policy, RIS_A, RCP, "dr1")
    assert refused.value.status == 403
    # Adding a member again changes nothing.
    again = await communities.add_member(policy, RIS_E, RCP, CommunityMemberAdd(sub="dr1"))
    assert [m.sub for m in again.members] == ["dr1"]
    left = await communities.remove_member(policy, RIS_E, RCP, "dr1")
    assert left.members == []
    with pytest.raises(PolicyError) as missing:
        await communities.remove_member(policy, RIS_E, RCP, "dr1")
    assert missing.value.status == 404
    with pytest.raises(PolicyError) as unknown:
        await communities.add_member(policy, ADMIN, "nope", CommunityMemberAdd(sub="dr1"))
    assert unknown.value.status == 404


async def test_only_an_admin_creates_a_community_with_a_valid_id(policy: Policy) -> None:
    with pytest.raises(PolicyError) as refused:
        await communities.put_community(policy, RIS_E, RCP, CommunityRecord(name="x"))
    assert refused.value.status == 403
    for bad_id, record in (
        ("-bad", CommunityRecord(name="x")),
        (RCP, CommunityRecord(name="x", structure="12")),
        (RCP, CommunityRecord(name=" ")),
    ):
        with pytest.raises(PolicyError) as invalid:
            await communities.put_community(policy, ADMIN, bad_id, record)
        assert invalid.value.status == 400
    created = await communities.put_community(
        policy, ADMIN, RCP, CommunityRecord(name="RCP", structure=E)
    )
    renamed = await communities.put_community(
        policy, ADMIN, RCP, CommunityRecord(name="RCP thorax", structure=E)
    )
    assert (renamed.name, renamed.created_at) == ("RCP thorax", created.created_at)


async def test_members_the_owner_and_admins_read_the_community(policy: Policy) -> None:
    await board(policy, "dr1")
    await communities.share(policy, RIS_B, RCP, CommunityShareCreate(patient_ins=INS1))
    for reader in (ADMIN, RIS_E, DR1):
        seen = await communities.get_community(policy, reader, RCP)
        assert [m.sub for m in seen.members] == ["dr1"]
        assert [s.patient_key for s in seen.shares] == [P1]
    for outsider in (DR2, RIS_A, PATIENT1):
        with pytest.raises(PolicyError) as hidden:
            await communities.get_community(policy, outsider, RCP)
        assert hidden.value.status == 404


async def test_a_structure_shares_a_patient_it_names_by_ipp(policy: Policy) -> None:
    await policy.put_patient(ADMIN, INS1, PatientRecord(ipps=[PatientIpp(structure=B, ipp="L7")]))
    await board(policy, "dr1")
    shared = await communities.share(policy, RIS_B, RCP, CommunityShareCreate(patient_ipp="L7"))
    assert shared.patient_key == P1
    assert await basis(policy, DR1) == "community"


async def test_changes_write_versioned_events_and_audit_records(
    policy: Policy, authz_pool: asyncpg.Pool
) -> None:
    await board(policy, "dr1")
    shared = await communities.share(policy, RIS_B, RCP, CommunityShareCreate(patient_ins=INS1))
    await communities.remove_member(policy, RIS_E, RCP, "dr1")
    await communities.end_share(policy, ADMIN, RCP, shared.id)
    written = await policy_events(authz_pool)
    members = [e for e in written if isinstance(e, CommunityMemberChanged)]
    assert [(m.community_id, m.actor_sub, m.active) for m in members] == [
        (RCP, "dr1", True),
        (RCP, "dr1", False),
    ]
    assert members[0].version < members[1].version
    grants = [e for e in written if isinstance(e, GrantChanged)]
    assert [(g.grant_id, g.community_id, g.actor_sub, g.active) for g in grants] == [
        (f"community:{shared.id}", RCP, "", True),
        (f"community:{shared.id}", RCP, "", False),
    ]
    assert {g.basis for g in grants} == {AccessBasisValues.COMMUNITY}
    assert grants[1].valid_until is not None
    assert grants[1].valid_until <= datetime.now(UTC)
    trail = await audit_events(authz_pool)
    assert [(e.type.value, e.detail.get("entity") or e.detail.get("action")) for e in trail] == [
        ("admin.change", "community"),
        ("admin.change", "community_member"),
        ("care.changed", "community_share_shared"),
        ("admin.change", "community_member"),
        ("care.changed", "community_share_ended"),
    ]
    shared_event = trail[2]
    assert [p.key for p in shared_event.patients] == [P1]
    assert shared_event.detail["community_id"] == RCP


async def test_membership_changes_drop_cached_decisions() -> None:
    cache = DecisionCache(ttl=60)
    request = DecideRequest(actor=DR1, patient_key=P1, study_uid="1.1", structure=A)
    cache.put(request, DecideResponse(allow=False, reason="no grant"))
    now = datetime.now(UTC)
    cache.invalidate(
        CommunityMemberChanged(
            community_id=RCP, actor_sub="dr1", version=1, active=True, changed_by="a", at=now
        )
    )
    assert cache.get(request) is None


async def test_the_commands_are_served_and_refusals_audited(
    policy: Policy, authz_pool: asyncpg.Pool
) -> None:
    class Offline(OutboxPublisher):
        async def flush(self) -> int:
            return 0

    publisher = Offline(authz_pool, None)  # type: ignore[arg-type]

    async def call(actor: Actor, op: str, body: object, **params: str) -> tuple[int, object]:
        command = AuthzCommand(
            actor=actor, body=msgspec.Raw(msgspec.json.encode(body)), params=params
        )
        status, reply, _ = await handle_command(policy, publisher, op, msgspec.json.encode(command))
        return status, msgspec.json.decode(reply)

    status, _ = await call(ADMIN, "admin.community.put", {"name": "RCP", "structure": E}, id=RCP)
    assert status == 200
    status, body = await call(RIS_E, "admin.community.member.add", {"sub": "dr1"}, id=RCP)
    assert status == 200
    assert [m["sub"] for m in body["members"]] == ["dr1"]  # type: ignore[index]
    status, body = await call(RIS_B, "community.share", {"patient_ins": INS1}, id=RCP)
    assert status == 201
    share_id = body["id"]  # type: ignore[index]
    status, _ = await call(DR1, "community.get", {}, id=RCP)
    assert status == 200
    status, _ = await call(RIS_A, "admin.community.member.remove", {}, id=RCP, sub="dr1")
    assert status == 403
    status, _ = await call(RIS_B, "community.share.end", {}, id=RCP, share_id=share_id)
    assert status == 200
    status, _ = await call(RIS_B, "community.share", {"patient_ins": INS1, "x": 1}, id=RCP)
    assert status == 400
    denied = [e for e in await audit_events(authz_pool) if e.outcome == "denied"]
    assert [(e.type.value, e.actor.sub) for e in denied] == [("admin.change", "ris-a")]

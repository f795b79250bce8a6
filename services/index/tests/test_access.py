"""The access projection and the access predicate: every rule, and random event sequences.

The property test applies random sequences of grants (of professionals and of communities),
revocations, community membership changes, oppositions and expiries, delivered in random
batches, out of order and with duplicates, and checks that QIDO answers exactly what a
pure-Python statement of the rules allows.
"""

from __future__ import annotations

import json
import random
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import asyncpg
import msgspec
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from krypton.contracts.authorize.v1 import (
    AccessBasisValues,
    CommunityMemberChanged,
    GrantChanged,
    OppositionChanged,
)
from krypton.contracts.common.v1 import Actor, RoleValues
from krypton.contracts.index.v1 import QidoRequest
from krypton.contracts.ingest.v1 import InstanceStored
from krypton.dicom.qido import parse_qido
from krypton.index.access import apply_policy_events
from krypton.index.qido_sql import GrantHolders, actor_has_grants, run_qido
from krypton.index.store import upsert_batch

pytestmark = pytest.mark.postgres

MakeEvent = Callable[..., InstanceStored]
A, B, C, D = "330000001", "330000002", "330000003", "330000004"
INS1, INS2 = "180017512345678", "280017512345601"
P1, P2 = f"INS:{INS1}", f"INS:{INS2}"
# study uid -> (producing structure, patient key)
STUDIES = {"1.1": (A, P1), "1.2": (B, P1), "1.3": (B, P2), "1.4": (C, P2)}
DR1 = Actor(sub="dr1", role=RoleValues.PROFESSIONAL, issuer="t", structure=A)
DR2 = Actor(sub="dr2", role=RoleValues.PROFESSIONAL, issuer="t", structure=D)
RIS_B = Actor(sub="ris-b", role=RoleValues.PRODUCER, issuer="t", structure=B)
PATIENT1 = Actor(sub="pat1", role=RoleValues.PATIENT, issuer="t", ins=INS1)
ACTORS = (DR1, DR2, RIS_B, PATIENT1)
_TRUNCATE = "TRUNCATE index.access_grants, index.oppositions, index.community_members"
Event = GrantChanged | OppositionChanged | CommunityMemberChanged


@pytest.fixture
async def world(index_pool: asyncpg.Pool, make_event: MakeEvent) -> AsyncIterator[asyncpg.Pool]:
    """Four studies of two patients in three structures; an empty projection."""
    events = [
        make_event(study_uid=uid, structure=structure, ins=key[4:], patient_id=key[4:])
        for uid, (structure, key) in STUDIES.items()
    ]
    await upsert_batch(index_pool, events)
    await index_pool.execute(_TRUNCATE)
    yield index_pool
    await index_pool.execute(_TRUNCATE)


async def visible(pool: asyncpg.Pool, actor: Actor) -> set[str]:
    """Study UIDs a QIDO study search returns to `actor`."""
    query = parse_qido("study", [("limit", "100")])
    response = await run_qido(pool, QidoRequest(query=query, actor=actor))
    assert response.status == 200
    return {item["0020000D"]["Value"][0] for item in json.loads(response.body)}


NOW = datetime.now(UTC)
DAY = timedelta(days=1)
WINDOWS = {
    "current": (NOW - DAY, NOW + DAY),
    "open": (NOW - DAY, None),
    "past": (NOW - 3 * DAY, NOW - 2 * DAY),
    "future": (NOW + 2 * DAY, NOW + 3 * DAY),
}


def grant(
    gid: str,
    version: int,
    actor: str = "dr2",
    patient: str = P1,
    study: str | None = None,
    window: str = "current",
    active: bool = True,
) -> GrantChanged:
    start, end = WINDOWS[window]
    return GrantChanged(
        grant_id=gid, version=version, actor_sub=actor, patient_key=patient, study_uid=study,
        valid_from=start, valid_until=end, basis=AccessBasisValues.CARE, active=active,
    )  # fmt: skip


def community_grant(
    gid: str,
    version: int,
    community: str = "rcp",
    patient: str = P1,
    study: str | None = None,
    window: str = "current",
    active: bool = True,
) -> GrantChanged:
    """A patient's file shared with a community (the grant's holder is the community)."""
    start, end = WINDOWS[window]
    return GrantChanged(
        grant_id=gid, version=version, actor_sub="", community_id=community, patient_key=patient,
        study_uid=study, valid_from=start, valid_until=end, basis=AccessBasisValues.COMMUNITY,
        active=active,
    )  # fmt: skip


def member(
    version: int, sub: str = "dr2", community: str = "rcp", active: bool = True
) -> CommunityMemberChanged:
    return CommunityMemberChanged(
        community_id=community, actor_sub=sub, version=version, active=active, changed_by="x",
        at=NOW,
    )  # fmt: skip


def opposition(version: int, patient: str = P1, active: bool = True) -> OppositionChanged:
    return OppositionChanged(
        opposition_id=f"o-{patient}", version=version, patient_key=patient,
        patient_keys=[patient], active=active, set_at=NOW, set_by="x",
    )  # fmt: skip


# --- the rules, one by one ---------------------------------------------------------------

CASES = {
    "nothing: own structure only": ([], DR2, set()),
    "producer professional sees its structure's studies": ([], DR1, {"1.1"}),
    "producer system sees its structure's studies": ([], RIS_B, {"1.2", "1.3"}),
    "patient sees all their own studies": ([], PATIENT1, {"1.1", "1.2"}),
    "care relationship opens all the patient's studies": ([grant("g", 1)], DR2, {"1.1", "1.2"}),
    "an open-ended grant is live": ([grant("g", 1, window="open")], DR2, {"1.1", "1.2"}),
    "a study-scoped grant opens that study only": ([grant("g", 1, study="1.2")], DR2, {"1.2"}),
    "a study grant for another patient's study opens nothing": (
        [grant("g", 1, study="1.3")], DR2, set()),
    "an expired grant opens nothing": ([grant("g", 1, window="past")], DR2, set()),
    "a future grant opens nothing yet": ([grant("g", 1, window="future")], DR2, set()),
    "a revoked grant opens nothing": ([grant("g", 1), grant("g", 2, active=False)], DR2, set()),
    "an older event never undoes a newer one": (
        [grant("g", 2, active=False), grant("g", 1)], DR2, set()),
    "a grant is the actor's alone": ([grant("g", 1, actor="dr1")], DR2, set()),
    "opposition hides granted studies": ([grant("g", 1), opposition(2)], DR2, set()),
    "opposition spares the producing structure": (
        [grant("g", 1, actor="dr1"), opposition(2)], DR1, {"1.1"}),
    "opposition does not hide from the patient": ([opposition(1)], PATIENT1, {"1.1", "1.2"}),
    "a lifted opposition restores the grant": (
        [grant("g", 1), opposition(2), opposition(3, active=False)], DR2, {"1.1", "1.2"}),
    "an old lift never undoes a newer opposition": (
        [grant("g", 1), opposition(3), opposition(2, active=False)], DR2, set()),
    "an opposition covers one patient only": (
        [grant("g", 1, patient=P2), opposition(2)], DR2, {"1.3", "1.4"}),
    "grants never widen a producer system": ([grant("g", 1, actor="ris-b")], RIS_B, {"1.2", "1.3"}),
    "grants add to a professional's own structure": (
        [grant("g", 1, actor="dr1", patient=P2)], DR1, {"1.1", "1.3", "1.4"}),
    "a community's grant opens the patient's studies to its member": (
        [member(1), community_grant("s", 2)], DR2, {"1.1", "1.2"}),
    "joining after the share is enough": (
        [community_grant("s", 1), member(2)], DR2, {"1.1", "1.2"}),
    "a community's grant is its members' alone": (
        [member(1, sub="dr1"), community_grant("s", 2)], DR2, set()),
    "a member of another community sees nothing": (
        [member(1, community="other"), community_grant("s", 2)], DR2, set()),
    "a removed member sees nothing": (
        [member(1), community_grant("s", 2), member(3, active=False)], DR2, set()),
    "a member added again sees again": (
        [member(1), community_grant("s", 2), member(3, active=False), member(4)], DR2,
        {"1.1", "1.2"}),
    "an old join never undoes a newer removal": (
        [member(3, active=False), member(2), community_grant("s", 1)], DR2, set()),
    "an ended community share opens nothing": (
        [member(1), community_grant("s", 2), community_grant("s", 3, active=False)], DR2, set()),
    "an expired community share opens nothing": (
        [member(1), community_grant("s", 2, window="past")], DR2, set()),
    "a study-scoped community share opens that study only": (
        [member(1), community_grant("s", 2, study="1.2")], DR2, {"1.2"}),
    "opposition hides the patient from the community": (
        [member(1), community_grant("s", 2), opposition(3)], DR2, set()),
    "a community never widens a producer system": (
        [member(1, sub="ris-b"), community_grant("s", 2, patient=P2)], RIS_B, {"1.2", "1.3"}),
}  # fmt: skip


@pytest.mark.parametrize(("events", "actor", "expected"), CASES.values(), ids=CASES.keys())
async def test_each_rule(
    world: asyncpg.Pool,
    events: list[Event],
    actor: Actor,
    expected: set[str],
) -> None:
    for event in events:  # one event per batch, in the listed order
        await apply_policy_events(world, [event])
    assert await visible(world, actor) == expected


async def test_a_batch_applies_its_newest_event_per_grant(world: asyncpg.Pool) -> None:
    await apply_policy_events(
        world, [grant("g", 2, active=False), grant("g", 1), grant("g", 2, active=False)]
    )
    assert await visible(world, DR2) == set()


async def test_opposition_covers_every_key_of_the_patient(
    world: asyncpg.Pool, make_event: MakeEvent
) -> None:
    ipp_key = f"IPP:{C}:LOCAL7"
    await upsert_batch(world, [make_event(study_uid="1.9", structure=C, patient_id="LOCAL7")])
    change = msgspec.structs.replace(opposition(2), patient_keys=[P1, ipp_key])
    await apply_policy_events(world, [grant("g", 1), grant("h", 1, patient=ipp_key), change])
    assert await visible(world, DR2) == set()


async def test_the_index_ignores_policy_events_that_do_not_change_access(
    world: asyncpg.Pool,
) -> None:
    from krypton.contracts.authorize.v1 import DirectoryChanged

    event = DirectoryChanged(entity="structure", key=A, version=1, actor_sub="admin", at=NOW)
    assert await apply_policy_events(world, [event]) == 0


# --- property: random sequences against a statement of the rules ------------------------


@dataclass(frozen=True)
class Op:
    """One policy change: a grant state, a membership state or an opposition state."""

    kind: str
    target: str  # grant id, community id (membership) or patient key
    actor: str = ""
    community: str | None = None  # a grant held by this community (then `actor` is unused)
    patient: str = P1
    study: str | None = None
    window: str = "current"
    active: bool = True


grant_ops = st.builds(
    Op,
    kind=st.just("grant"),
    target=st.sampled_from(["g1", "g2", "g3"]),
    actor=st.sampled_from(["dr1", "dr2", "ris-b"]),
    community=st.sampled_from([None, "c1", "c2"]),
    patient=st.sampled_from([P1, P2]),
    study=st.sampled_from([None, *STUDIES]),
    window=st.sampled_from(list(WINDOWS)),
    active=st.booleans(),
)
member_ops = st.builds(
    Op,
    kind=st.just("member"),
    target=st.sampled_from(["c1", "c2"]),
    actor=st.sampled_from(["dr1", "dr2", "ris-b"]),
    active=st.booleans(),
)
opposition_ops = st.builds(
    Op, kind=st.just("opposition"), target=st.sampled_from([P1, P2]), active=st.booleans()
)


def reference(ops: list[Op], actor: Actor) -> set[str]:
    """The rules, in plain Python, over the final state (the newest change of each target)."""
    grants: dict[str, Op] = {}
    opposed: dict[str, bool] = {}
    members: dict[tuple[str, str], bool] = {}
    for op in ops:  # in version order
        if op.kind == "grant":
            grants[op.target] = op
        elif op.kind == "member":
            members[op.target, op.actor] = op.active
        else:
            opposed[op.target] = op.active

    def holds(g: Op) -> bool:
        if g.community is None:
            return g.actor == actor.sub
        return members.get((g.community, actor.sub), False)

    seen = set()
    for uid, (structure, key) in STUDIES.items():
        if actor.role is RoleValues.PATIENT:
            allowed = key == f"INS:{actor.ins}"
        elif actor.structure == structure:
            allowed = True
        elif actor.role is not RoleValues.PROFESSIONAL or opposed.get(key, False):
            allowed = False
        else:
            allowed = False
            for g in grants.values():
                start, end = WINDOWS[g.window]
                live = g.active and start <= NOW and (end is None or end > NOW)
                covers = g.patient == key and g.study in (None, uid)
                allowed = allowed or (holds(g) and live and covers)
        if allowed:
            seen.add(uid)
    return seen


def to_events(ops: list[Op]) -> list[Event]:
    events: list[Event] = []
    for version, op in enumerate(ops, start=1):
        if op.kind == "grant" and op.community is not None:
            events.append(
                community_grant(
                    op.target, version, op.community, op.patient, op.study, op.window, op.active
                )
            )
        elif op.kind == "grant":
            events.append(
                grant(op.target, version, op.actor, op.patient, op.study, op.window, op.active)
            )
        elif op.kind == "member":
            events.append(member(version, op.actor, op.target, op.active))
        else:
            events.append(opposition(version, op.target, op.active))
    return events


@settings(
    max_examples=80,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    ops=st.lists(st.one_of(grant_ops, member_ops, opposition_ops), min_size=1, max_size=14),
    seed=st.integers(0, 2**16),
)
async def test_no_sequence_shows_what_the_rules_deny(
    world: asyncpg.Pool, ops: list[Op], seed: int
) -> None:
    await world.execute(_TRUNCATE)
    events = to_events(ops)
    # At-least-once, any order: shuffle, duplicate some, cut into random batches.
    rng = random.Random(seed)
    delivered = events + rng.sample(events, k=rng.randint(0, len(events)))
    rng.shuffle(delivered)
    while delivered:
        size = rng.randint(1, 4)
        await apply_policy_events(world, delivered[:size])
        delivered = delivered[size:]
    for actor in ACTORS:
        assert await visible(world, actor) == reference(ops, actor), actor.sub


async def test_qido_tells_why_a_professional_sees_each_study(world: asyncpg.Pool) -> None:
    def basis_grant(gid: str, basis: AccessBasisValues, **kw: object) -> GrantChanged:
        return msgspec.structs.replace(grant(gid, 1, actor="dr1", **kw), basis=basis)  # type: ignore[arg-type]

    await apply_policy_events(
        world,
        [
            basis_grant("care", AccessBasisValues.CARE, patient=P2),
            basis_grant("btg", AccessBasisValues.BREAK_GLASS, patient=P2),
            basis_grant("code", AccessBasisValues.SHARE_CODE, study="1.2"),
        ],
    )
    query = parse_qido("study", [("limit", "100")])
    response = await run_qido(world, QidoRequest(query=query, actor=DR1))
    # Its own structure's study is not listed (producing structure); care ranks before
    # break-the-glass; the rendered answer carries none of it.
    assert response.access == {
        "1.2": "share_code",
        "1.3": "care_relationship",
        "1.4": "care_relationship",
    }
    assert b"__basis" not in response.body
    assert response.count == 4
    series = parse_qido("series", [("limit", "100")])
    by_series = await run_qido(world, QidoRequest(query=series, actor=DR1))
    assert set(by_series.access) <= {"1.2", "1.3", "1.4"}
    none = await run_qido(world, QidoRequest(query=query, actor=RIS_B))
    assert none.access == {}


async def test_qido_tells_when_a_community_opens_a_study(world: asyncpg.Pool) -> None:
    code = msgspec.structs.replace(
        grant("code", 1, actor="dr1", study="1.2"), basis=AccessBasisValues.SHARE_CODE
    )
    btg = msgspec.structs.replace(
        grant("btg", 2, actor="dr1", patient=P2), basis=AccessBasisValues.BREAK_GLASS
    )
    await apply_policy_events(world, [code, btg, member(3, sub="dr1"), community_grant("s", 4)])
    query = parse_qido("study", [("limit", "100")])
    response = await run_qido(world, QidoRequest(query=query, actor=DR1))
    # The community ranks before a share code; its own structure's study has no grant basis.
    assert response.access == {
        "1.2": "community",
        "1.3": "break_the_glass",
        "1.4": "break_the_glass",
    }
    await apply_policy_events(world, [member(5, sub="dr1", active=False)])
    response = await run_qido(world, QidoRequest(query=query, actor=DR1))
    assert response.access == {
        "1.2": "share_code",
        "1.3": "break_the_glass",
        "1.4": "break_the_glass",
    }


async def test_a_member_of_communities_without_live_grants_keeps_the_fast_path(
    world: asyncpg.Pool,
) -> None:
    await apply_policy_events(world, [member(1), community_grant("s", 2, window="past")])
    assert await actor_has_grants(world, DR2) is False
    await apply_policy_events(world, [community_grant("t", 3)])
    assert await actor_has_grants(world, DR2) is True
    await apply_policy_events(world, [member(4, active=False)])
    assert await actor_has_grants(world, DR2) is False


async def test_remembered_grant_holders_never_see_more_than_the_rules_allow(
    world: asyncpg.Pool,
) -> None:
    holders = GrantHolders(ttl=3600)
    query = parse_qido("study", [("limit", "100")])

    async def seen() -> set[str]:
        response = await run_qido(world, QidoRequest(query=query, actor=DR2), holders)
        return {item["0020000D"]["Value"][0] for item in json.loads(response.body)}

    # Not a holder yet: the answer is not kept, so the first grant opens at the next search.
    assert await seen() == set()
    await apply_policy_events(world, [grant("g", 1)])
    assert await seen() == {"1.1", "1.2"}
    # Remembered as a holder (no probe), the revoked grant still opens nothing.
    await apply_policy_events(world, [grant("g", 2, active=False)])
    assert await holders.has_grants(world, DR2) is True
    assert await actor_has_grants(world, DR2) is False
    assert await seen() == set()
    # Others are never remembered: only professionals hold grants.
    assert await holders.has_grants(world, RIS_B) is False


async def test_a_professionals_pages_merge_their_structure_and_their_grants_in_one_order(
    index_pool: asyncpg.Pool, make_event: MakeEvent
) -> None:
    # Own studies (A) and granted ones (B, patient P2) alternate by date; P1's study at B is
    # not granted. Every page must be a slice of the one full order, whatever its offset.
    dated = {"2.1": (A, P1, "20240101"), "2.2": (B, P2, "20240102"), "2.3": (A, P1, "20240103"),
             "2.4": (B, P2, "20240104"), "2.5": (A, P1, "20240105"), "2.6": (B, P2, "20240106"),
             "2.7": (B, P1, "20240107")}  # fmt: skip
    await upsert_batch(
        index_pool,
        [
            make_event(
                study_uid=uid,
                structure=structure,
                ins=key[4:],
                patient_id=key[4:],
                study_study_date=day,
            )
            for uid, (structure, key, day) in dated.items()
        ],
    )
    await index_pool.execute(_TRUNCATE)
    await apply_policy_events(index_pool, [grant("g", 1, actor="dr1", patient=P2)])

    async def page(params: list[tuple[str, str]]) -> tuple[list[str], dict[str, str]]:
        response = await run_qido(
            index_pool, QidoRequest(query=parse_qido("study", params), actor=DR1)
        )
        assert response.status == 200
        return [i["0020000D"]["Value"][0] for i in json.loads(response.body)], response.access

    everything, access = await page([("limit", "100")])
    assert everything == ["2.6", "2.5", "2.4", "2.3", "2.2", "2.1"]
    assert access == {"2.6": "care_relationship", "2.4": "care_relationship",
                      "2.2": "care_relationship"}  # fmt: skip
    for size in (1, 2, 4):
        pages = []
        for offset in range(0, 8, size):
            uids, _ = await page([("limit", str(size)), ("offset", str(offset))])
            pages.extend(uids)
        assert pages == everything
    uids, _ = await page([("StudyDate", "20240102-20240105"), ("limit", "2"), ("offset", "1")])
    assert uids == ["2.4", "2.3"]
    await index_pool.execute(_TRUNCATE)

"""The policy rules and commands against the real PostgreSQL."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import asyncpg
import msgspec
import pytest

from krypton.authorize.errors import PolicyError
from krypton.authorize.policy import Policy
from krypton.authorize.settings import AuthorizeSettings
from krypton.contracts.authorize.v1 import (
    AccessBasisValues,
    BreakGlassOpen,
    BreakGlassReview,
    CareDeclaration,
    DecideRequest,
    GrantChanged,
    OppositionChange,
    OppositionChanged,
    PatientIpp,
    PatientRecord,
    PolicyEvent,
    SelfAttestation,
    ShareCodeCreate,
    ShareCodeRedeem,
    ShareScopeValues,
)
from krypton.contracts.common.v1 import Actor, RoleValues

pytestmark = pytest.mark.postgres

A, B, D = "330000001", "330000002", "330000004"
INS1, INS2 = "180017512345678", "280017512345601"
P1 = f"INS:{INS1}"
RIS_A = Actor(sub="ris-a", role=RoleValues.PRODUCER, issuer="t", structure=A)
RIS_B = Actor(sub="ris-b", role=RoleValues.PRODUCER, issuer="t", structure=B)
DR1 = Actor(sub="dr1", role=RoleValues.PROFESSIONAL, issuer="t", structure=D, profession="10")
DR2 = Actor(sub="dr2", role=RoleValues.PROFESSIONAL, issuer="t", structure=D, profession="10")
NURSE = Actor(sub="n1", role=RoleValues.PROFESSIONAL, issuer="t", structure=D, profession="60")
PATIENT1 = Actor(sub="pat1", role=RoleValues.PATIENT, issuer="t", ins=INS1)
ADMIN = Actor(sub="admin", role=RoleValues.ADMIN, issuer="t")
JUSTIFICATION = "unconscious patient in the emergency room, head trauma"


async def allows(
    policy: Policy, actor: Actor, study: str = "1.1", structure: str = A
) -> str | None:
    """The basis of the decision, or None when denied (study `study` of patient P1)."""
    decision = await policy.decide(
        DecideRequest(actor=actor, patient_key=P1, study_uid=study, structure=structure)
    )
    return decision.basis.value if decision.allow and decision.basis else None


async def events(pool: asyncpg.Pool) -> list[PolicyEvent]:
    rows = await pool.fetch(
        "SELECT payload FROM authz.outbox WHERE subject LIKE '%.policy.changed.%' ORDER BY id"
    )
    return [msgspec.json.decode(r["payload"], type=PolicyEvent) for r in rows]


async def code_for(
    policy: Policy, scope: ShareScopeValues = ShareScopeValues.PATIENT, study: str | None = None
) -> tuple[str, str]:
    created = await policy.create_code(PATIENT1, ShareCodeCreate(scope=scope, study_uid=study))
    return created.code, created.share_code.id


# --- decisions ---------------------------------------------------------------------------


async def test_without_any_policy_only_producer_patient_and_admin_see(policy: Policy) -> None:
    assert await allows(policy, ADMIN) == "admin"
    assert await allows(policy, PATIENT1) == "patient"
    assert await allows(policy, RIS_A) == "producer"
    assert await allows(policy, RIS_B) is None
    assert await allows(policy, DR1) is None
    other = Actor(sub="p2", role=RoleValues.PATIENT, issuer="t", ins=INS2)
    assert await allows(policy, other) is None


async def test_a_care_relationship_opens_the_patients_studies(policy: Policy) -> None:
    care = await policy.declare_care(RIS_B, CareDeclaration(professional="dr1", patient_ins=INS1))
    assert care.active
    assert care.structure == B
    assert await allows(policy, DR1, "1.1") == "care"
    assert await allows(policy, DR1, "1.7", structure=B) == "care"
    assert await allows(policy, DR2) is None
    await policy.end_care(RIS_B, care.id)
    assert await allows(policy, DR1) is None


async def test_only_the_declaring_structure_its_professional_or_admin_end_it(
    policy: Policy,
) -> None:
    care = await policy.declare_care(RIS_B, CareDeclaration(professional="dr1", patient_ins=INS1))
    for outsider in (RIS_A, DR2):
        with pytest.raises(PolicyError) as info:
            await policy.end_care(outsider, care.id)
        assert info.value.status == 404
    ended = await policy.end_care(DR1, care.id)
    assert not ended.active
    assert ended.ended_by == "dr1"
    again = await policy.end_care(ADMIN, care.id)  # idempotent
    assert again.ended_by == "dr1"


async def test_self_attested_care_needs_an_attestation_and_is_short(policy: Policy) -> None:
    with pytest.raises(PolicyError):
        await policy.attest_care(DR1, SelfAttestation(patient_ins=INS1, attestation="yes"))
    far = datetime.now(UTC) + timedelta(days=90)
    with pytest.raises(PolicyError):
        await policy.attest_care(
            DR1, SelfAttestation(patient_ins=INS1, attestation="consultation today", ends_at=far)
        )
    care = await policy.attest_care(
        DR1, SelfAttestation(patient_ins=INS1, attestation="consultation today")
    )
    assert care.basis.value == "self_attested"
    assert await allows(policy, DR1) == "care"


async def test_roles_that_may_not_declare_care_are_refused(policy: Policy) -> None:
    for actor in (DR1, PATIENT1):
        with pytest.raises(PolicyError) as info:
            await policy.declare_care(actor, CareDeclaration(professional="dr1", patient_ins=INS1))
        assert info.value.status == 403


async def test_opposition_overrides_every_grant_but_not_the_producer(policy: Policy) -> None:
    await policy.declare_care(RIS_B, CareDeclaration(professional="dr1", patient_ins=INS1))
    code, _ = await code_for(policy)
    await policy.redeem_code(DR2, ShareCodeRedeem(code=code))
    status = await policy.set_opposition(PATIENT1, OppositionChange())
    assert status.active
    assert await allows(policy, DR1) is None
    assert await allows(policy, DR2) is None
    assert await allows(policy, RIS_A) == "producer"
    assert await allows(policy, PATIENT1) == "patient"
    lifted = await policy.lift_opposition(PATIENT1, OppositionChange())
    assert not lifted.active
    assert len(lifted.history) == 1
    assert await allows(policy, DR1) == "care"


async def test_break_the_glass_is_for_physicians_with_a_justification(policy: Policy) -> None:
    with pytest.raises(PolicyError) as info:
        await policy.open_break_glass(
            NURSE, BreakGlassOpen(patient_ins=INS1, justification=JUSTIFICATION)
        )
    assert info.value.status == 403
    with pytest.raises(PolicyError) as info:
        await policy.open_break_glass(
            DR1, BreakGlassOpen(patient_ins=INS1, justification="  urgent  ")
        )
    assert info.value.status == 400
    session = await policy.open_break_glass(
        DR1, BreakGlassOpen(patient_ins=INS1, justification=JUSTIFICATION)
    )
    assert session.expires_at - session.opened_at <= timedelta(hours=4)
    assert await allows(policy, DR1) == "break_glass"
    assert [s.id for s in await policy.list_break_glass(ADMIN, unreviewed=True)] == [session.id]
    assert [s.id for s in await policy.list_break_glass(PATIENT1, unreviewed=False)] == [session.id]
    await policy.review_break_glass(ADMIN, session.id, BreakGlassReview(note="ok"))
    assert await policy.list_break_glass(ADMIN, unreviewed=True) == []


async def test_break_the_glass_is_impossible_under_opposition(policy: Policy) -> None:
    await policy.set_opposition(RIS_A, OppositionChange(patient_ins=INS1, note="form archived"))
    with pytest.raises(PolicyError) as info:
        await policy.open_break_glass(
            DR1, BreakGlassOpen(patient_ins=INS1, justification=JUSTIFICATION)
        )
    assert info.value.status == 403


async def test_an_opposition_set_later_also_stops_break_the_glass(policy: Policy) -> None:
    await policy.open_break_glass(
        DR1, BreakGlassOpen(patient_ins=INS1, justification=JUSTIFICATION)
    )
    await policy.set_opposition(PATIENT1, OppositionChange())
    assert await allows(policy, DR1) is None


async def test_only_the_collecting_structure_or_the_patient_lifts_an_opposition(
    policy: Policy,
) -> None:
    await policy.set_opposition(RIS_A, OppositionChange(patient_ins=INS1))
    with pytest.raises(PolicyError):
        await policy.lift_opposition(RIS_B, OppositionChange(patient_ins=INS1))
    status = await policy.lift_opposition(PATIENT1, OppositionChange())
    assert not status.active
    assert status.history[0].structure == A


# --- share codes -------------------------------------------------------------------------


async def test_a_share_code_binds_to_the_first_professional(policy: Policy) -> None:
    code, _ = await code_for(policy)
    redeemed = await policy.redeem_code(DR1, ShareCodeRedeem(code=code.lower()))
    assert redeemed.patient_ins == INS1
    assert redeemed.scope is ShareScopeValues.PATIENT
    assert await policy.redeem_code(DR1, ShareCodeRedeem(code=code))  # same professional: fine
    with pytest.raises(PolicyError) as info:
        await policy.redeem_code(DR2, ShareCodeRedeem(code=code))
    assert info.value.status == 403
    assert await allows(policy, DR1) == "share_code"
    assert await allows(policy, DR2) is None


async def test_a_study_code_opens_that_study_only(policy: Policy) -> None:
    code, _ = await code_for(policy, ShareScopeValues.STUDY, "1.1")
    await policy.redeem_code(DR1, ShareCodeRedeem(code=code))
    assert await allows(policy, DR1, "1.1") == "share_code"
    assert await allows(policy, DR1, "1.2") is None


async def test_a_revoked_code_stops_access_and_cannot_be_redeemed(policy: Policy) -> None:
    code, code_id = await code_for(policy)
    await policy.redeem_code(DR1, ShareCodeRedeem(code=code))
    with pytest.raises(PolicyError):
        await policy.revoke_code(RIS_B, code_id)  # not its code
    revoked = await policy.revoke_code(PATIENT1, code_id)
    assert revoked.revoked_at is not None
    assert await allows(policy, DR1) is None
    code2, id2 = await code_for(policy)
    await policy.revoke_code(PATIENT1, id2)
    with pytest.raises(PolicyError):
        await policy.redeem_code(DR2, ShareCodeRedeem(code=code2))


async def test_guessing_is_locked_out_per_professional(authz_pool: asyncpg.Pool) -> None:
    policy = Policy(authz_pool, AuthorizeSettings(redeem_max_failures=3))
    code, _ = await code_for(policy)
    for guess in ("0000-0000-0000", "not a code", "ZZZZ-ZZZZ-ZZZZ"):
        with pytest.raises(PolicyError) as info:
            await policy.redeem_code(DR1, ShareCodeRedeem(code=guess))
        assert info.value.status == 403
    with pytest.raises(PolicyError) as info:
        await policy.redeem_code(DR1, ShareCodeRedeem(code=code))  # even the right one
    assert info.value.status == 429
    assert info.value.retry_after
    assert (await policy.redeem_code(DR2, ShareCodeRedeem(code=code))).patient_ins == INS1


async def test_guessing_one_code_locks_that_code(authz_pool: asyncpg.Pool) -> None:
    policy = Policy(authz_pool, AuthorizeSettings(code_max_failures=3))
    code, code_id = await code_for(policy)
    lookup = code.split("-")[0]
    for n, actor in enumerate((DR1, DR2, NURSE)):
        with pytest.raises(PolicyError):
            await policy.redeem_code(actor, ShareCodeRedeem(code=f"{lookup}-0000-000{n}"))
    with pytest.raises(PolicyError) as info:
        await policy.redeem_code(DR1, ShareCodeRedeem(code=code))
    assert info.value.status == 403
    listed = {c.id: c for c in await policy.list_codes(PATIENT1)}
    assert listed[code_id].locked


async def test_codes_are_stored_hashed_and_scoped(policy: Policy, authz_pool: asyncpg.Pool) -> None:
    code, _ = await code_for(policy)
    row = await authz_pool.fetchrow("SELECT * FROM authz.share_codes")
    assert row is not None
    assert code.replace("-", "")[4:] not in str(dict(row))
    with pytest.raises(PolicyError):
        await policy.create_code(PATIENT1, ShareCodeCreate(scope=ShareScopeValues.STUDY))
    with pytest.raises(PolicyError):
        await policy.create_code(DR1, ShareCodeCreate(patient_ins=INS1))
    with pytest.raises(PolicyError):
        await policy.create_code(RIS_A, ShareCodeCreate())  # names no patient
    on_behalf = await policy.create_code(RIS_A, ShareCodeCreate(patient_ins=INS1))
    assert on_behalf.share_code.patient_key == P1
    too_long = datetime.now(UTC) + timedelta(days=200)
    with pytest.raises(PolicyError):
        await policy.create_code(PATIENT1, ShareCodeCreate(valid_until=too_long))


# --- events ------------------------------------------------------------------------------


async def test_every_change_writes_versioned_events(
    policy: Policy, authz_pool: asyncpg.Pool
) -> None:
    care = await policy.declare_care(RIS_B, CareDeclaration(professional="dr1", patient_ins=INS1))
    await policy.end_care(RIS_B, care.id)
    await policy.put_patient(ADMIN, INS1, PatientRecord(ipps=[PatientIpp(structure=A, ipp="L1")]))
    await policy.set_opposition(RIS_A, OppositionChange(patient_ipp="L1"))
    written = await events(authz_pool)
    grants = [e for e in written if isinstance(e, GrantChanged)]
    assert [(g.grant_id, g.active) for g in grants] == [
        (f"care:{care.id}", True),
        (f"care:{care.id}", False),
    ]
    assert grants[0].version < grants[1].version
    assert grants[0].basis is AccessBasisValues.CARE
    opposition = next(e for e in written if isinstance(e, OppositionChanged))
    assert opposition.patient_key == P1  # the IPP was mapped to the INS
    assert opposition.patient_keys == [P1, f"IPP:{A}:L1"]


async def test_a_structure_may_name_an_unknown_patient_by_ipp(policy: Policy) -> None:
    care = await policy.declare_care(RIS_A, CareDeclaration(professional="dr1", patient_ipp="X9"))
    assert care.patient_key == f"IPP:{A}:X9"

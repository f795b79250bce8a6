"""Policy commands write their audit events in their own transaction (and refusals too)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import asyncpg
import msgspec
import nats
import pytest

from krypton.authorize.errors import PolicyError
from krypton.authorize.handlers import AUDITED_HEADER, handle_command
from krypton.authorize.outbox import OutboxPublisher
from krypton.authorize.policy import Policy
from krypton.bus import streams
from krypton.contracts.audit.v1 import AuditEvent
from krypton.contracts.authorize.v1 import (
    AuthzCommand,
    BreakGlassOpen,
    CareDeclaration,
    OppositionChange,
    ShareCodeCreate,
    ShareCodeRedeem,
    ShareScopeValues,
)
from krypton.contracts.common.v1 import Actor, RoleValues

pytestmark = pytest.mark.postgres

A, D = "330000001", "330000004"
INS1 = "180017512345678"
P1 = f"INS:{INS1}"
RIS_A = Actor(sub="ris-a", role=RoleValues.PRODUCER, issuer="t", structure=A)
DR1 = Actor(sub="dr1", role=RoleValues.PROFESSIONAL, issuer="t", structure=D, profession="10")
DR2 = Actor(sub="dr2", role=RoleValues.PROFESSIONAL, issuer="t", structure=D, profession="10")
NURSE = Actor(sub="n1", role=RoleValues.PROFESSIONAL, issuer="t", structure=D, profession="60")
PATIENT1 = Actor(sub="pat1", role=RoleValues.PATIENT, issuer="t", ins=INS1)
ADMIN = Actor(sub="admin", role=RoleValues.ADMIN, issuer="t")
JUSTIFICATION = "unconscious patient in the emergency room, head trauma"


async def audit_events(pool: asyncpg.Pool) -> list[AuditEvent]:
    rows = await pool.fetch(
        "SELECT payload FROM authz.outbox WHERE subject LIKE '%.audit.event.%' ORDER BY id"
    )
    return [msgspec.json.decode(r["payload"], type=AuditEvent) for r in rows]


async def test_care_changes_are_audited_with_the_patient(
    policy: Policy, authz_pool: asyncpg.Pool
) -> None:
    care = await policy.declare_care(RIS_A, CareDeclaration(professional="dr1", patient_ins=INS1))
    await policy.end_care(RIS_A, care.id)
    declared, ended = await audit_events(authz_pool)
    for event in (declared, ended):
        assert event.type == "care.changed"
        assert event.outcome == "success"
        assert event.service == "authorize"
        assert event.actor.sub == "ris-a"
        assert [(p.key, p.ins) for p in event.patients] == [(P1, INS1)]
        assert event.detail["care_id"] == care.id
        assert event.detail["professional"] == "dr1"
    assert (declared.detail["action"], ended.detail["action"]) == ("declared", "ended")


async def test_share_code_life_and_a_refused_use_are_audited(
    policy: Policy, authz_pool: asyncpg.Pool
) -> None:
    created = await policy.create_code(
        PATIENT1, ShareCodeCreate(scope=ShareScopeValues.STUDY, study_uid="1.2.3")
    )
    await policy.redeem_code(DR1, ShareCodeRedeem(code=created.code))
    with pytest.raises(PolicyError, match="share code not valid") as refused:
        await policy.redeem_code(DR2, ShareCodeRedeem(code=created.code))
    assert refused.value.audited is True
    await policy.revoke_code(PATIENT1, created.share_code.id)
    events = await audit_events(authz_pool)
    assert [(e.type.value, e.outcome.value, e.actor.sub) for e in events] == [
        ("sharecode.created", "success", "pat1"),
        ("sharecode.used", "success", "dr1"),
        ("sharecode.used", "denied", "dr2"),
        ("sharecode.revoked", "success", "pat1"),
    ]
    used, denied = events[1], events[2]
    assert used.basis == "share_code"
    assert used.study_uids == ["1.2.3"]
    assert denied.reason == "share code not valid"
    # The code existed, so the refusal names the patient: it shows in their history.
    assert [p.key for p in denied.patients] == [P1]
    assert all(created.code not in msgspec.json.encode(e).decode() for e in events)


async def test_break_the_glass_is_audited_with_its_justification_even_when_refused(
    policy: Policy, authz_pool: asyncpg.Pool
) -> None:
    await policy.open_break_glass(
        DR1, BreakGlassOpen(patient_ins=INS1, justification=JUSTIFICATION)
    )
    await policy.set_opposition(PATIENT1, OppositionChange())
    with pytest.raises(PolicyError, match="opposes"):
        await policy.open_break_glass(
            DR2, BreakGlassOpen(patient_ins=INS1, justification=JUSTIFICATION)
        )
    opened, opposition, refused = await audit_events(authz_pool)
    assert (opened.type, opened.outcome, opened.basis) == (
        "btg.opened",
        "success",
        "break_the_glass",
    )
    assert opened.justification == JUSTIFICATION
    assert "session_id" in opened.detail
    assert (opposition.type, opposition.actor.sub) == ("opposition.set", "pat1")
    assert (refused.type, refused.outcome, refused.actor.sub) == ("btg.opened", "denied", "dr2")
    assert refused.justification == JUSTIFICATION
    assert [p.key for p in refused.patients] == [P1]


async def test_a_rolled_back_change_leaves_no_audit_event(
    policy: Policy, authz_pool: asyncpg.Pool
) -> None:
    past = datetime.now(UTC) - timedelta(days=1)
    with pytest.raises(PolicyError, match="ends_at"):
        await policy.declare_care(
            RIS_A, CareDeclaration(professional="dr1", patient_ins=INS1, ends_at=past)
        )
    assert await audit_events(authz_pool) == []


async def test_handled_refusals_are_audited_once_with_trace_and_path(
    policy: Policy, authz_pool: asyncpg.Pool, nats_url: str
) -> None:
    nc = await nats.connect(nats_url)
    try:
        js = nc.jetstream()
        await streams.provision(js, (streams.POLICY, streams.AUDIT))
        publisher = OutboxPublisher(authz_pool, js)

        async def call(actor: Actor, op: str, body: object) -> tuple[int, dict[str, str]]:
            command = AuthzCommand(
                actor=actor, body=msgspec.Raw(msgspec.json.encode(body)),
                trace_id="4bf92f3577b34da6a3ce929d0e0e4736", resource=f"/api/{op}",
            )  # fmt: skip
            status, _, headers = await handle_command(
                policy, publisher, op, msgspec.json.encode(command)
            )
            return status, headers

        # The role check refuses before any transaction: the handler records it.
        status, headers = await call(NURSE, "btg.open", {"patient_ins": INS1,
                                                          "justification": JUSTIFICATION})  # fmt: skip
        assert (status, headers.get(AUDITED_HEADER)) == (403, "1")
        # The policy recorded this one itself (with the patient): not written twice.
        await policy.set_opposition(PATIENT1, OppositionChange())
        status, headers = await call(DR1, "btg.open", {"patient_ins": INS1,
                                                        "justification": JUSTIFICATION})  # fmt: skip
        assert (status, headers.get(AUDITED_HEADER)) == (403, "1")
        status, headers = await call(DR1, "care.declare", {"professional": "dr1",
                                                            "patient_ins": INS1})  # fmt: skip
        assert (status, headers.get(AUDITED_HEADER)) == (403, "1")

        events = [e for e in await audit_events(authz_pool) if e.outcome == "denied"]
        assert [(e.type.value, e.actor.sub) for e in events] == [
            ("btg.opened", "n1"),
            ("btg.opened", "dr1"),
            ("care.changed", "dr1"),
        ]
        assert [p.key for p in events[0].patients] == [P1]
        assert events[0].detail["operation"] == "btg.open"
        assert {e.trace_id for e in events} == {"4bf92f3577b34da6a3ce929d0e0e4736"}
        assert [e.resource for e in events] == ["/api/btg.open", "/api/btg.open",
                                                "/api/care.declare"]  # fmt: skip
        # Everything reached the bus before the replies.
        assert not await authz_pool.fetchval(
            "SELECT count(*) FROM authz.outbox WHERE published_at IS NULL"
        )
        info = await js.stream_info("KRYPTON_AUDIT")
        assert info.state.messages >= 3
    finally:
        await nc.close()

"""Audit queries (scopes, filters, patient redaction) and exports, against a real PostgreSQL."""

from __future__ import annotations

import base64
import xml.etree.ElementTree as ET

import asyncpg
import msgspec
import pytest

from krypton.audit import chain
from krypton.audit.export import to_dicom_xml, to_fhir, to_json
from krypton.audit.query import run_query
from krypton.contracts.audit.v1 import (
    AccessBasisValues,
    AuditEventTypeValues,
    AuditOutcomeValues,
    AuditQueryRequest,
    AuditScopeValues,
    new_event,
)
from krypton.contracts.common.v1 import Actor, RoleValues
from krypton.core.errors import ValidationError

A, B = "330000001", "640000002"
INS_1, INS_2 = "185059912345678", "290017512378901"
DOCTOR = Actor(
    sub="810001", role=RoleValues.PROFESSIONAL, issuer="iss", structure=B, name="Dr B",
    profession="10", client_address="10.1.1.1",
)  # fmt: skip
PATIENT_1 = Actor(sub="p1", role=RoleValues.PATIENT, issuer="iss", ins=INS_1)
DPO_A = Actor(sub="dpo", role=RoleValues.PROFESSIONAL, issuer="iss", structure=A)
ADMIN = Actor(sub="admin", role=RoleValues.ADMIN, issuer="iss")


@pytest.fixture
async def log(writer: asyncpg.Pool) -> asyncpg.Pool:
    """Two studies of structure A (patients 1 and 2), and a few events."""
    await writer.execute(
        "INSERT INTO audit.studies VALUES ('1.1', $1, $2, $3), ('2.2', $1, $4, $5)",
        A, f"INS:{INS_1}", INS_1, f"INS:{INS_2}", INS_2,
    )  # fmt: skip
    events = [
        # A search by a doctor of B that returned both patients' studies.
        new_event(
            AuditEventTypeValues.SEARCH, DOCTOR, basis=AccessBasisValues.CARE_RELATIONSHIP,
            study_uids=["1.1", "2.2"], query="PatientName=DUP*", time="2025-01-10T10:00:00+00:00",
        ),
        new_event(
            AuditEventTypeValues.RETRIEVE_INSTANCE, DOCTOR, basis=AccessBasisValues.SHARE_CODE,
            study_uids=["2.2"], instances=12, time="2025-02-10T10:00:00+00:00",
        ),
        new_event(
            AuditEventTypeValues.ACCESS_DENIED, DOCTOR, outcome=AuditOutcomeValues.DENIED,
            reason="no care relationship", study_uids=["1.1"], time="2025-03-10T10:00:00+00:00",
        ),
        new_event(AuditEventTypeValues.AUTH_FAILURE, None, outcome=AuditOutcomeValues.DENIED,
                  reason="expired", client_address="10.9.9.9", time="2025-03-11T10:00:00+00:00"),
    ]  # fmt: skip
    async with writer.acquire() as conn:
        await chain.append(conn, events)
    return writer


async def test_a_patient_sees_accesses_to_their_own_studies_only(log: asyncpg.Pool) -> None:
    records = await run_query(
        log, AuditQueryRequest(actor=PATIENT_1, scope=AuditScopeValues.PATIENT)
    )
    assert [r.event.type for r in records] == [
        AuditEventTypeValues.ACCESS_DENIED,
        AuditEventTypeValues.SEARCH,
    ]
    search = records[1].event
    assert search.study_uids == ["1.1"]  # the other patient's study is not shown
    assert search.query is None
    assert search.client_address is None
    assert search.actor.name == "Dr B"
    assert search.basis is AccessBasisValues.CARE_RELATIONSHIP
    assert records[0].event.outcome is AuditOutcomeValues.DENIED


async def test_a_structures_dpo_sees_events_on_its_studies(log: asyncpg.Pool) -> None:
    records = await run_query(log, AuditQueryRequest(actor=DPO_A, scope=AuditScopeValues.STRUCTURE))
    assert len(records) == 3  # not the anonymous authentication failure
    by_patient = await run_query(
        log,
        AuditQueryRequest(
            actor=DPO_A, scope=AuditScopeValues.STRUCTURE, patient=INS_2, start="2025-02-01"
        ),
    )
    assert [r.event.type for r in by_patient] == [AuditEventTypeValues.RETRIEVE_INSTANCE]


async def test_an_admin_filters_by_actor_period_and_type(log: asyncpg.Pool) -> None:
    everything = await run_query(log, AuditQueryRequest(actor=ADMIN, scope=AuditScopeValues.ALL))
    assert len(everything) == 4
    by_actor = await run_query(
        log,
        AuditQueryRequest(
            actor=ADMIN, scope=AuditScopeValues.ALL, actor_sub="810001",
            start="2025-02-01T00:00:00Z", end="2025-03-11",
        ),
    )  # fmt: skip
    assert [r.event.type for r in by_actor] == [
        AuditEventTypeValues.ACCESS_DENIED,
        AuditEventTypeValues.RETRIEVE_INSTANCE,
    ]
    denied = await run_query(
        log, AuditQueryRequest(actor=ADMIN, scope=AuditScopeValues.ALL, types=["auth.failure"])
    )
    assert len(denied) == 1
    with pytest.raises(ValidationError):
        await run_query(
            log, AuditQueryRequest(actor=ADMIN, scope=AuditScopeValues.ALL, start="yesterday")
        )


async def test_exports_carry_the_standard_codes(log: asyncpg.Pool) -> None:
    records = await run_query(log, AuditQueryRequest(actor=ADMIN, scope=AuditScopeValues.ALL))
    assert len(msgspec.json.decode(to_json(records))) == 4

    bundle = msgspec.json.decode(to_fhir(records))
    assert bundle["resourceType"] == "Bundle"
    resources = {e["resource"]["type"]["code"]: e["resource"] for e in bundle["entry"]}
    assert set(resources) == {"110112", "110106", "110113", "110114"}
    search = resources["110112"]
    assert search["action"] == "E"
    assert search["outcome"] == "0"
    assert search["agent"][0]["requestor"] is True
    assert search["agent"][0]["network"] == {"address": "10.1.1.1", "type": "2"}
    query = next(e for e in search["entity"] if e["role"]["code"] == "24")
    assert base64.b64decode(query["query"]) == b"PatientName=DUP*"
    assert {"system": "http://terminology.hl7.org/CodeSystem/v3-ActReason", "code": "TREAT",
            "display": "treatment"} in search["purposeOfEvent"][0]["coding"]  # fmt: skip
    assert resources["110113"]["outcome"] == "4"
    assert resources["110113"]["subtype"][0]["code"] == "110144"
    retrieve = resources["110106"]
    assert retrieve["action"] == "R"
    assert retrieve["entity"][0]["extension"][0]["valueInteger"] == 12

    root = ET.fromstring(to_dicom_xml(records))
    messages = root.findall("AuditMessage")
    assert len(messages) == 4
    ids = {m.find("EventIdentification/EventID").get("csd-code") for m in messages}  # type: ignore[union-attr]
    assert ids == {"110112", "110106", "110113", "110114"}
    login = next(
        m for m in messages
        if m.find("EventIdentification/EventID").get("csd-code") == "110114"  # type: ignore[union-attr]
    )  # fmt: skip
    ident = login.find("EventIdentification")
    assert ident is not None
    assert ident.get("EventOutcomeIndicator") == "4"
    assert ident.get("EventActionCode") == "E"
    assert ident.find("EventTypeCode").get("csd-code") == "110122"  # type: ignore[union-attr]
    study = next(
        p for m in messages for p in m.findall("ParticipantObjectIdentification")
        if p.get("ParticipantObjectID") == "2.2"
    )  # fmt: skip
    assert study.find("ParticipantObjectIDTypeCode").get("csd-code") == "110180"  # type: ignore[union-attr]

"""A search's audit events carry the access basis of each disclosed study."""

from __future__ import annotations

import msgspec
from starlette.requests import Request

from krypton.contracts.common.v1 import Actor, RoleValues
from krypton.gateway.audit_emit import search_events

DR = Actor(sub="dr", role=RoleValues.PROFESSIONAL, issuer="t", structure="330000001")


def _request() -> Request:
    return Request(
        {
            "type": "http", "method": "GET", "path": "/dicomweb/studies", "query_string": b"",
            "headers": [(b"traceparent", b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")],
            "client": ("10.0.0.1", 5000), "server": ("gw", 80), "scheme": "http",
        }
    )  # fmt: skip


def _answer(*rows: tuple[str, str]) -> bytes:
    return msgspec.json.encode(
        [{"0020000D": {"vr": "UI", "Value": [uid]}, "00100020": {"vr": "LO", "Value": [pid]}}
         for uid, pid in rows]
    )  # fmt: skip


def test_studies_of_the_callers_structure_only_give_one_producer_event() -> None:
    (event,) = search_events(_request(), DR, _answer(("1.1", "P1"), ("1.2", "P2")), {})
    assert event.basis == "producing_structure"
    assert event.study_uids == ["1.1", "1.2"]
    assert [p.patient_id for p in event.patients] == ["P1", "P2"]


def test_mixed_bases_give_one_event_per_basis_with_its_own_patients() -> None:
    body = _answer(("1.1", "P1"), ("1.2", "P2"), ("1.3", "P2"), ("1.4", "P3"))
    access = {"1.2": "care_relationship", "1.3": "care_relationship", "1.4": "share_code"}
    events = search_events(_request(), DR, body, access, detail={"level": "study"})
    by_basis = {e.basis.value: e for e in events}
    assert set(by_basis) == {"producing_structure", "care_relationship", "share_code"}
    care = by_basis["care_relationship"]
    assert care.study_uids == ["1.2", "1.3"]
    assert [p.patient_id for p in care.patients] == ["P2"]
    assert care.detail["level"] == "study"
    assert sorted(e.detail["part"] for e in events) == ["1/3", "2/3", "3/3"]
    assert {e.trace_id for e in events} == {"4bf92f3577b34da6a3ce929d0e0e4736"}
    assert len({e.event_id for e in events}) == 3


def test_an_empty_answer_is_one_event_on_the_callers_basis() -> None:
    (event,) = search_events(_request(), DR, b"[]", {"9.9": "share_code"})
    assert (event.basis, event.study_uids) == ("producing_structure", [])

"""The decision cache: served while fresh, forgotten when a policy event names the patient."""

from __future__ import annotations

import time
from datetime import UTC, datetime

from krypton.authorize.cache import DecisionCache, decode_event
from krypton.bus.codec import encode
from krypton.contracts.authorize.v1 import (
    AccessBasisValues,
    DecideRequest,
    DecideResponse,
    DirectoryChanged,
    GrantChanged,
    OppositionChanged,
)
from krypton.contracts.common.v1 import Actor, RoleValues

DR = Actor(sub="dr1", role=RoleValues.PROFESSIONAL, issuer="t", structure="330000004")
NOW = datetime.now(UTC)
ALLOW = DecideResponse(allow=True, basis=AccessBasisValues.CARE)


def request(patient: str = "INS:1", study: str = "1.2") -> DecideRequest:
    return DecideRequest(actor=DR, patient_key=patient, study_uid=study, structure="330000001")


def test_a_fresh_decision_is_served_and_an_old_one_is_not() -> None:
    cache = DecisionCache(ttl=0.05)
    assert cache.get(request()) is None
    cache.put(request(), ALLOW)
    assert cache.get(request()) == ALLOW
    assert cache.get(request(study="1.3")) is None
    time.sleep(0.06)
    assert cache.get(request()) is None


def test_events_forget_the_decisions_about_their_patient() -> None:
    cache = DecisionCache(ttl=60)
    for patient in ("INS:1", "INS:2", "IPP:330000001:7"):
        cache.put(request(patient), ALLOW)
    grant = GrantChanged(grant_id="care:x", version=1, actor_sub="dr9", patient_key="INS:1",
                         valid_from=NOW, basis=AccessBasisValues.CARE)  # fmt: skip
    cache.invalidate(grant)
    assert cache.get(request("INS:1")) is None
    assert cache.get(request("INS:2")) == ALLOW
    opposition = OppositionChanged(
        opposition_id="o", version=2, patient_key="INS:2",
        patient_keys=["INS:2", "IPP:330000001:7"], active=True, set_at=NOW, set_by="p",
    )  # fmt: skip
    cache.invalidate(decode_event(encode(opposition)) or grant)
    assert len(cache) == 0
    cache.put(request(), ALLOW)
    cache.invalidate(DirectoryChanged(entity="patient", key="INS:9", version=3,
                                      actor_sub="admin", at=NOW))  # fmt: skip
    assert len(cache) == 0


def test_the_cache_is_bounded_and_can_be_off() -> None:
    cache = DecisionCache(ttl=60, max_entries=2)
    for study in ("1", "2", "3"):
        cache.put(request(study=study), ALLOW)
    assert len(cache) == 2
    assert cache.get(request(study="1")) is None
    off = DecisionCache(ttl=0)
    off.put(request(), ALLOW)
    assert off.get(request()) is None
    assert decode_event(b'{"not": "an event"}') is None

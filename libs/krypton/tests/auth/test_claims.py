"""From verified claims to an Actor: required claims per role and value formats."""

from __future__ import annotations

from typing import Any

import pytest

from krypton.auth.claims import actor_from_claims
from krypton.auth.errors import AuthenticationError, PermissionDenied
from krypton.contracts.common.v1 import Actor, RoleValues

ISSUER = "https://issuer.example"


def claims(**overrides: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "iss": ISSUER,
        "sub": "810101201234",
        "krypton_role": "professional",
        "structure": "330781196",
        "name": "Dr Jeanne Martin",
        "profession": "10",
        "jti": "token-1",
    }
    base.update(overrides)
    return {name: value for name, value in base.items() if value is not None}


def test_professional_claims_become_an_actor_with_every_field() -> None:
    actor = actor_from_claims(claims(), ISSUER)

    assert actor == Actor(
        sub="810101201234",
        role=RoleValues.PROFESSIONAL,
        issuer=ISSUER,
        structure="330781196",
        name="Dr Jeanne Martin",
        profession="10",
        token_id="token-1",
    )


def test_generic_role_claim_is_used_when_krypton_role_is_absent() -> None:
    actor = actor_from_claims(claims(krypton_role=None, role="producer"), ISSUER)

    assert actor.role is RoleValues.PRODUCER


def test_krypton_role_wins_over_generic_role() -> None:
    actor = actor_from_claims(claims(krypton_role="admin", role="patient"), ISSUER)

    assert actor.role is RoleValues.ADMIN


def test_patient_actor_carries_the_ins_and_no_structure() -> None:
    actor = actor_from_claims(
        claims(krypton_role="patient", sub="patient-7", ins="279035121518989"), ISSUER
    )

    assert actor.role is RoleValues.PATIENT
    assert actor.ins == "279035121518989"
    assert actor.structure is None


def test_corsican_ins_is_accepted() -> None:
    actor = actor_from_claims(claims(krypton_role="patient", ins="185072A12345678"), ISSUER)

    assert actor.ins == "185072A12345678"


def test_ins_claim_of_a_non_patient_is_ignored() -> None:
    actor = actor_from_claims(claims(ins="279035121518989"), ISSUER)

    assert actor.ins is None


def test_admin_needs_no_structure() -> None:
    actor = actor_from_claims(claims(krypton_role="admin", structure=None), ISSUER)

    assert actor.structure is None


@pytest.mark.parametrize(
    ("overrides", "reason"),
    [
        ({"sub": None}, "missing claim: sub"),
        ({"sub": ""}, "invalid claim: sub"),
        ({"sub": 42}, "invalid claim: sub"),
        ({"sub": "a\nb"}, "invalid claim: sub"),
        ({"sub": "x" * 256}, "invalid claim: sub"),
        ({"krypton_role": None}, "missing claim: krypton_role"),
        ({"krypton_role": "superuser"}, "invalid claim: krypton_role"),
        ({"krypton_role": ["admin"]}, "invalid claim: krypton_role"),
        ({"structure": None}, "missing claim: structure (required for role professional)"),
        (
            {"krypton_role": "producer", "structure": None},
            "missing claim: structure (required for role producer)",
        ),
        ({"structure": "33078119"}, "invalid claim: structure (expected a 9-character FINESS)"),
        ({"structure": "330781196x"}, "invalid claim: structure (expected a 9-character FINESS)"),
        ({"structure": "33078119a"}, "invalid claim: structure (expected a 9-character FINESS)"),
        ({"krypton_role": "patient"}, "missing claim: ins (required for role patient)"),
        (
            {"krypton_role": "patient", "ins": "27903512151898"},
            "invalid claim: ins (expected a 15-character INS)",
        ),
        (
            {"krypton_role": "patient", "ins": "2790351215189X9"},
            "invalid claim: ins (expected a 15-character INS)",
        ),
        ({"name": {"first": "Jeanne"}}, "invalid claim: name"),
        ({"profession": "x" * 101}, "invalid claim: profession"),
        ({"jti": 7}, "invalid claim: jti"),
    ],
    ids=lambda value: str(value) if isinstance(value, str) else None,
)
def test_invalid_claims_are_refused_with_a_reason(overrides: dict[str, Any], reason: str) -> None:
    with pytest.raises(AuthenticationError) as info:
        actor_from_claims(claims(**overrides), ISSUER)

    assert info.value.reason == reason


def test_refusal_reasons_do_not_echo_claim_values() -> None:
    with pytest.raises(AuthenticationError) as info:
        actor_from_claims(claims(structure="<script>"), ISSUER)

    assert "<script>" not in str(info.value)


def test_errors_name_their_http_status_and_challenge() -> None:
    error = AuthenticationError("token expired")

    assert error.http_status == 401
    assert error.www_authenticate == (
        'Bearer realm="krypton", error="invalid_token", error_description="token expired"'
    )
    assert AuthenticationError("missing bearer token").www_authenticate == 'Bearer realm="krypton"'
    assert PermissionDenied().http_status == 403
    assert PermissionDenied().reason == "permission denied"

"""The token claims Krypton reads, and how a verified claim set becomes an `Actor`.

Krypton trusts the standard OIDC claims (`iss`, `sub`, `aud`, `exp`, `nbf`, `iat`, `jti`) and a few
of its own that the issuer (Pro Santé Connect through a broker, a structure's IdP, the development
issuer) maps from its directory:

| claim | meaning |
|---|---|
| `krypton_role` (or `role`) | one of `RoleValues` |
| `structure` | FINESS (9 characters, `[0-9A-Z]`) of the structure the caller acts for; required for producers and professionals |
| `name` | display name |
| `profession` | profession code (e.g. TRE_G15 `10` for a physician) |
| `ins` | the patient's INS (15 characters); required for the patient role |

For professionals the subject is their IDNPS (`8` + RPPS) when the issuer is Pro Santé Connect.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any, Final

from krypton.auth.errors import AuthenticationError
from krypton.contracts.common.v1 import Actor, RoleValues

__all__ = [
    "FINESS_PATTERN",
    "INS_PATTERN",
    "ClaimNames",
    "actor_from_claims",
]

FINESS_PATTERN: Final = re.compile(r"[0-9A-Z]{9}")
# NIR/NIA: sex (1), year (2), month (2), département (2, "2A"/"2B" for Corsica), commune (3),
# order (3), key (2).
INS_PATTERN: Final = re.compile(r"[0-9]{5}(?:[0-9]{2}|2[AB])[0-9]{8}")

_MAX_LENGTHS: Final = {"sub": 255, "name": 200, "profession": 100, "jti": 255}
# C0/C1 controls and line/paragraph separators: never useful in an identifier or a display name,
# and they would corrupt logs and audit lines.
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")
_NEEDS_STRUCTURE: Final = frozenset({RoleValues.PRODUCER, RoleValues.PROFESSIONAL})


class ClaimNames:
    """Names of the claims Krypton reads from a verified token."""

    ISSUER: Final = "iss"
    SUBJECT: Final = "sub"
    AUDIENCE: Final = "aud"
    EXPIRES: Final = "exp"
    NOT_BEFORE: Final = "nbf"
    ISSUED_AT: Final = "iat"
    TOKEN_ID: Final = "jti"
    ROLE: Final = "krypton_role"
    ROLE_FALLBACK: Final = "role"
    STRUCTURE: Final = "structure"
    NAME: Final = "name"
    PROFESSION: Final = "profession"
    INS: Final = "ins"


def _text(claims: Mapping[str, Any], name: str) -> str | None:
    """Read an optional string claim; reject wrong types, control characters and huge values."""
    value = claims.get(name)
    if value is None:
        return None
    if not isinstance(value, str) or not value.strip():
        msg = f"invalid claim: {name}"
        raise AuthenticationError(msg)
    if len(value) > _MAX_LENGTHS.get(name, 255) or _CONTROL.search(value):
        msg = f"invalid claim: {name}"
        raise AuthenticationError(msg)
    return value


def _role(claims: Mapping[str, Any]) -> RoleValues:
    """Read the role, preferring Krypton's own claim over the generic `role`."""
    value = claims.get(ClaimNames.ROLE)
    if value is None:
        value = claims.get(ClaimNames.ROLE_FALLBACK)
    if value is None:
        msg = f"missing claim: {ClaimNames.ROLE}"
        raise AuthenticationError(msg)
    if not isinstance(value, str):
        msg = f"invalid claim: {ClaimNames.ROLE}"
        raise AuthenticationError(msg)
    try:
        return RoleValues(value)
    except ValueError:
        msg = f"invalid claim: {ClaimNames.ROLE}"
        raise AuthenticationError(msg) from None


def actor_from_claims(claims: Mapping[str, Any], issuer: str) -> Actor:
    """Build the caller's identity from the claims of a token whose signature was verified.

    A patient's token has no structure and a non-patient's token has no INS, even when the issuer
    put one there: the authorization policy must never read a stray claim as "acts for this
    structure" or "is this patient".

    Args:
        claims: The verified claim set.
        issuer: The issuer that signed it (already checked against the trusted list).

    Returns:
        The actor, without `client_address` (the gateway adds it).

    Raises:
        AuthenticationError: A required claim is missing or a value is malformed.
    """
    sub = _text(claims, ClaimNames.SUBJECT)
    if sub is None:
        msg = f"missing claim: {ClaimNames.SUBJECT}"
        raise AuthenticationError(msg)
    role = _role(claims)

    structure = _text(claims, ClaimNames.STRUCTURE)
    if role in _NEEDS_STRUCTURE and structure is None:
        msg = f"missing claim: {ClaimNames.STRUCTURE} (required for role {role.value})"
        raise AuthenticationError(msg)
    if structure is not None and not FINESS_PATTERN.fullmatch(structure):
        msg = f"invalid claim: {ClaimNames.STRUCTURE} (expected a 9-character FINESS)"
        raise AuthenticationError(msg)

    ins = _text(claims, ClaimNames.INS)
    if role is RoleValues.PATIENT:
        if ins is None:
            msg = f"missing claim: {ClaimNames.INS} (required for role {role.value})"
            raise AuthenticationError(msg)
        if not INS_PATTERN.fullmatch(ins):
            msg = f"invalid claim: {ClaimNames.INS} (expected a 15-character INS)"
            raise AuthenticationError(msg)
        structure = None
    else:
        ins = None

    return Actor(
        sub=sub,
        role=role,
        issuer=issuer,
        structure=structure,
        name=_text(claims, ClaimNames.NAME),
        profession=_text(claims, ClaimNames.PROFESSION),
        ins=ins,
        token_id=_text(claims, ClaimNames.TOKEN_ID),
    )

"""Bearer token verification: from `Authorization: Bearer <JWT>` to a trusted `Actor`.

The order of the checks matters for safety and cost: size and shape first (cheap, before any
parsing), then the header's algorithm against an allowlist of asymmetric algorithms (so `none` and
HMAC tokens never reach a key), then the unverified `iss` against the trusted issuers (so keys are
never fetched for an issuer a token merely names), then the signature with the issuer's key for
that exact `kid` and algorithm, and only then the claims.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import re
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any, Final

from joserfc import jwt
from joserfc.errors import (
    BadSignatureError,
    ExpiredTokenError,
    InvalidClaimError,
    JoseError,
    MissingClaimError,
)

from krypton.auth.claims import ClaimNames, actor_from_claims
from krypton.auth.errors import MISSING_TOKEN, AuthenticationError
from krypton.auth.jwks import JwksCache
from krypton.contracts.common.v1 import Actor
from krypton.core.errors import ConfigurationError
from krypton.core.settings import AuthSettings

__all__ = [
    "ASYMMETRIC_ALGORITHMS",
    "MAX_TOKEN_BYTES",
    "TokenVerifier",
    "bearer_token",
]

MAX_TOKEN_BYTES: Final = 16 * 1024
# The only algorithms a verifier may ever accept: public-key signatures. HMAC (HS*) is excluded
# because with a JWKS-published key it allows the classic key-confusion forgery, and "none" is
# no signature at all.
ASYMMETRIC_ALGORITHMS: Final = frozenset(
    {"RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512"}
)
_COMPACT_JWS = re.compile(r"[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*")
_BEARER = re.compile(r"[Bb][Ee][Aa][Rr][Ee][Rr] +(\S+) *")
_CLAIM_REASONS: Final = {
    ClaimNames.AUDIENCE: "wrong audience",
    ClaimNames.ISSUER: "unknown issuer",
    ClaimNames.NOT_BEFORE: "token not yet valid",
    ClaimNames.ISSUED_AT: "token issued in the future",
}


def bearer_token(authorization: str | None) -> str:
    """Extract the token from an `Authorization` header value (`Bearer <token>`, RFC 6750).

    Raises:
        AuthenticationError: The header is missing or is not a bearer credential.
    """
    if not authorization:
        msg = MISSING_TOKEN
        raise AuthenticationError(msg)
    if len(authorization) > MAX_TOKEN_BYTES + 64:
        msg = "token too large"
        raise AuthenticationError(msg)
    match = _BEARER.fullmatch(authorization)
    if match is None:
        msg = "authorization is not a bearer token"
        raise AuthenticationError(msg)
    return match.group(1)


def _segment(segment: str, what: str) -> dict[str, Any]:
    """Decode one base64url JSON segment of a compact JWS, before its signature is checked."""
    try:
        raw = base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))
        value = json.loads(raw)
    except (binascii.Error, ValueError):
        msg = f"malformed token {what}"
        raise AuthenticationError(msg) from None
    if not isinstance(value, dict):
        msg = f"malformed token {what}"
        raise AuthenticationError(msg)
    return value


class TokenVerifier:
    """Verifies bearer JWTs from the trusted issuers and turns them into actors.

    Verified tokens are remembered (by SHA-256 of the token) until their expiry or for
    `cache_seconds`, whichever comes first, so a busy gateway verifies each token once a minute
    rather than on every request.

    Args:
        settings: Trusted issuers, audience, algorithms and clock leeway.
        jwks: Where the issuers' keys come from.
        cache_seconds: Longest time a verified token is remembered.
        cache_size: Most tokens remembered; the oldest are forgotten first.
        clock: Wall clock, in seconds since the epoch (tests pass their own to move time).

    Raises:
        ConfigurationError: `settings.algorithms` names a non-asymmetric algorithm (HS*, none) or
            is empty, or no issuer is trusted.
    """

    def __init__(
        self,
        settings: AuthSettings,
        jwks: JwksCache,
        *,
        cache_seconds: float = 60.0,
        cache_size: int = 10_000,
        clock: Callable[[], float] = time.time,
    ) -> None:
        unsafe = sorted(set(settings.algorithms) - ASYMMETRIC_ALGORITHMS)
        if unsafe:
            msg = f"KRYPTON_AUTH__ALGORITHMS may only name public-key algorithms, not {unsafe}"
            raise ConfigurationError(msg)
        if not settings.algorithms:
            msg = "KRYPTON_AUTH__ALGORITHMS is empty"
            raise ConfigurationError(msg)
        if not settings.issuers:
            msg = "KRYPTON_AUTH__ISSUERS is empty: no token could ever be accepted"
            raise ConfigurationError(msg)
        if settings.leeway_seconds < 0:
            msg = "KRYPTON_AUTH__LEEWAY_SECONDS must not be negative"
            raise ConfigurationError(msg)
        self._algorithms = frozenset(settings.algorithms)
        self._issuers = frozenset(settings.issuers)
        self._audience = settings.audience
        self._leeway = settings.leeway_seconds
        self._jwks = jwks
        self._cache_seconds = cache_seconds
        self._cache_size = cache_size
        self._clock = clock
        self._cache: OrderedDict[bytes, tuple[Actor, float]] = OrderedDict()

    async def verify(self, token: str) -> Actor:
        """Verify a bearer token and return who it identifies.

        Args:
            token: The compact JWT, without the `Bearer ` prefix.

        Returns:
            The actor (without `client_address`).

        Raises:
            AuthenticationError: The token is not acceptable; `reason` says why.
            JwksUnavailableError: The issuer's keys cannot be obtained and none are cached.
        """
        if not token:
            msg = MISSING_TOKEN
            raise AuthenticationError(msg)
        if len(token) > MAX_TOKEN_BYTES:
            msg = "token too large"
            raise AuthenticationError(msg)
        if not _COMPACT_JWS.fullmatch(token):
            # Also refuses 5-part JWE tokens: Krypton only accepts signed tokens.
            msg = "malformed token"
            raise AuthenticationError(msg)

        digest = hashlib.sha256(token.encode("ascii")).digest()
        now = self._clock()
        cached = self._cache.get(digest)
        if cached is not None:
            actor, deadline = cached
            if now < deadline:
                self._cache.move_to_end(digest)  # least recently used go first
                return actor
            del self._cache[digest]

        actor, expires = await self._verify(token, now)
        deadline = min(expires, now + self._cache_seconds)
        if deadline > now:
            self._cache[digest] = (actor, deadline)
            while len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)
        return actor

    def forget(self) -> None:
        """Drop every remembered verification (e.g. after a change of trusted issuers)."""
        self._cache.clear()

    async def _verify(self, token: str, now: float) -> tuple[Actor, float]:
        """Verify without the cache; return the actor and the token's expiry time."""
        header_segment, payload_segment, _ = token.split(".")
        header = _segment(header_segment, "header")
        alg = header.get("alg")
        if not isinstance(alg, str) or alg not in self._algorithms:
            msg = "signing algorithm not allowed"
            raise AuthenticationError(msg)
        kid = header.get("kid")
        if kid is not None and not isinstance(kid, str):
            msg = "malformed token header"
            raise AuthenticationError(msg)

        # The issuer is read before the signature is checked only to choose whose keys to use;
        # the verified claims are checked again below.
        issuer = _segment(payload_segment, "payload").get(ClaimNames.ISSUER)
        if not isinstance(issuer, str) or issuer not in self._issuers:
            msg = "unknown issuer"
            raise AuthenticationError(msg)

        key = await self._jwks.find_key(issuer, kid, alg)
        try:
            claims = jwt.decode(token, key, algorithms=[alg]).claims
        except BadSignatureError:
            msg = "invalid signature"
            raise AuthenticationError(msg) from None
        except JoseError:
            # e.g. an unsupported critical header; the library's text may quote the token.
            msg = "invalid token"
            raise AuthenticationError(msg) from None

        registry = jwt.JWTClaimsRegistry(
            now=int(now),
            leeway=self._leeway,
            iss={"essential": True, "value": issuer},
            aud={"essential": True, "value": self._audience},
            sub={"essential": True},
            exp={"essential": True},
        )
        try:
            registry.validate(claims)
        except ExpiredTokenError:
            msg = "token expired"
            raise AuthenticationError(msg) from None
        except MissingClaimError as error:
            msg = f"missing claim: {error.claim}"
            raise AuthenticationError(msg) from None
        except InvalidClaimError as error:
            msg = _CLAIM_REASONS.get(error.claim, f"invalid claim: {error.claim}")
            raise AuthenticationError(msg) from None

        return actor_from_claims(claims, issuer), float(claims[ClaimNames.EXPIRES])

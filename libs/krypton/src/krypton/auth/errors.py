"""Errors of caller authentication and permission checks.

Every `reason` is a short fixed phrase that is safe to return to the caller: it never contains the
token, a claim value or anything else the caller sent.
"""

from __future__ import annotations

from typing import ClassVar

from krypton.core.errors import KryptonError

__all__ = ["MISSING_TOKEN", "AuthenticationError", "JwksUnavailableError", "PermissionDenied"]

MISSING_TOKEN = "missing bearer token"


class AuthenticationError(KryptonError):
    """The bearer token is missing or not acceptable; the gateway answers 401.

    Attributes:
        reason: Why, in words safe to show to the caller (e.g. "token expired").
    """

    http_status: ClassVar[int] = 401

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(reason)

    @property
    def www_authenticate(self) -> str:
        """Value of the `WWW-Authenticate` header for the 401 answer (RFC 6750 §3)."""
        if self.reason == MISSING_TOKEN:
            # RFC 6750 §3.1: a request without credentials gets a bare challenge, no error code.
            return 'Bearer realm="krypton"'
        # The reason is one of our fixed phrases, but quotes would still break the header syntax.
        description = self.reason.replace("\\", "").replace('"', "'")
        return f'Bearer realm="krypton", error="invalid_token", error_description="{description}"'


class PermissionDenied(KryptonError):  # noqa: N818 - the name mirrors HTTP 403, as callers expect
    """The caller is authenticated but may not do this; the gateway answers 403.

    Attributes:
        reason: Why, in words safe to show to the caller.
    """

    http_status: ClassVar[int] = 403

    def __init__(self, reason: str = "permission denied") -> None:
        self.reason = reason
        super().__init__(reason)


class JwksUnavailableError(KryptonError):
    """The signing keys of a trusted issuer cannot be obtained and none are cached.

    This is a fault of the platform or the issuer, not of the caller's token, so the gateway
    answers 503 (retry later) rather than 401 (which would make clients discard a good token).

    Attributes:
        issuer: The issuer whose keys are unavailable.
        reason: What went wrong, without secrets.
    """

    http_status: ClassVar[int] = 503

    def __init__(self, issuer: str, reason: str) -> None:
        self.issuer = issuer
        self.reason = reason
        super().__init__(f"signing keys of issuer {issuer} are unavailable: {reason}")

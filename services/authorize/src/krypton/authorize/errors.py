"""Errors of policy commands: each carries the HTTP status the gateway answers with."""

from __future__ import annotations

from krypton.core.errors import KryptonError

__all__ = ["PolicyError"]


class PolicyError(KryptonError):
    """A policy command was refused; `reason` is safe to show to the caller.

    Attributes:
        status: 400 invalid, 403 not allowed, 404 unknown, 409 conflict, 429 throttled.
        reason: Why, in words that reveal nothing the caller may not know.
        retry_after: Seconds before trying again (429 only).
    """

    def __init__(self, status: int, reason: str, *, retry_after: int | None = None) -> None:
        self.status = status
        self.reason = reason
        self.retry_after = retry_after
        super().__init__(f"{status}: {reason}")

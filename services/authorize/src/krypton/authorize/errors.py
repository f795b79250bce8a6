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
        patient_key: The patient the refused command was about, when known (for the audit).
        audited: True when the policy already wrote the refusal's audit event.
    """

    def __init__(
        self,
        status: int,
        reason: str,
        *,
        retry_after: int | None = None,
        patient_key: str | None = None,
        audited: bool = False,
    ) -> None:
        self.status = status
        self.reason = reason
        self.retry_after = retry_after
        self.patient_key = patient_key
        self.audited = audited
        super().__init__(f"{status}: {reason}")

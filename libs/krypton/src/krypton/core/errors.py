"""Errors shared by every Krypton package: one root, subclasses carry their fields."""

from __future__ import annotations

__all__ = [
    "ConfigurationError",
    "KryptonError",
    "NotFoundError",
    "ValidationError",
]


class KryptonError(Exception):
    """Root of every error Krypton raises on purpose."""


class ConfigurationError(KryptonError, ValueError):
    """A setting is missing or unsafe."""


class ValidationError(KryptonError, ValueError):
    """Input that a caller sent is not acceptable; `reason` is safe to show to the caller."""

    def __init__(self, reason: str, *, field: str | None = None) -> None:
        self.reason = reason
        self.field = field
        super().__init__(reason if field is None else f"{field}: {reason}")


class NotFoundError(KryptonError, LookupError):
    """Nothing the caller may see answers to that identifier."""

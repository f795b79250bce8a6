"""Errors of the database layer."""

from __future__ import annotations

from krypton.core.errors import KryptonError

__all__ = ["MigrationError"]


class MigrationError(KryptonError, RuntimeError):
    """A migration cannot be applied safely (bad file name, edited after being applied)."""

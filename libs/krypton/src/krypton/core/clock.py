"""Time helpers: one way to spell "now" in UTC."""

from __future__ import annotations

from datetime import UTC, datetime

__all__ = ["utc_now", "utc_now_iso"]


def utc_now() -> datetime:
    """The current time, timezone-aware UTC."""
    return datetime.now(UTC)


def utc_now_iso() -> str:
    """The current time as ISO 8601 UTC with microseconds."""
    return utc_now().isoformat()

"""Errors of the database layer."""

from __future__ import annotations

import asyncio

import asyncpg

from krypton.core.errors import KryptonError

__all__ = ["TRANSIENT_DB_ERRORS", "MigrationError"]

#: Failures a later attempt may not meet (server restarting, connection lost, lock conflicts):
#: consumers retry them after a pause instead of treating the message as poison.
TRANSIENT_DB_ERRORS: tuple[type[BaseException], ...] = (
    OSError,
    asyncio.TimeoutError,
    asyncpg.PostgresConnectionError,
    asyncpg.InterfaceError,
    asyncpg.exceptions.CannotConnectNowError,
    asyncpg.exceptions.QueryCanceledError,
    asyncpg.exceptions.DeadlockDetectedError,
    asyncpg.exceptions.SerializationError,
)


class MigrationError(KryptonError, RuntimeError):
    """A migration cannot be applied safely (bad file name, edited after being applied)."""

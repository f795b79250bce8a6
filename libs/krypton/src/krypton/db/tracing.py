"""PostgreSQL spans: an asyncpg connection class whose statements run in CLIENT spans.

Written by hand because `opentelemetry-instrumentation-asyncpg` has no release matching the
installed OpenTelemetry packages; this covers what Krypton calls (execute, executemany, the
fetch family, COPY). `create_pool` uses it for every pool.

A statement runs in a span only inside an existing trace (a request, a consumed message):
background pollers (outbox relay, consumer loops) would otherwise fill the trace store with
one-span traces. The span carries the statement text, which holds `$n` placeholders and never
the parameter values (patient data stays out of traces).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

import asyncpg
from opentelemetry import trace
from opentelemetry.trace import Span, SpanKind

__all__ = ["TracedConnection"]

_tracer = trace.get_tracer("krypton.db")
_MAX_STATEMENT = 2000  # characters of statement text kept on a span
# Set while the pool resets a released connection: its housekeeping statement is no part of
# the caller's work.
_quiet: ContextVar[bool] = ContextVar("krypton_db_quiet", default=False)


def _operation(statement: str) -> str:
    head = statement.lstrip().split(None, 1)
    return head[0].upper() if head else "SQL"


@contextmanager
def _span(name: str, statement: str) -> Iterator[Span | None]:
    if _quiet.get() or not trace.get_current_span().get_span_context().is_valid:
        yield None
        return
    attributes: dict[str, str] = {"db.system.name": "postgresql", "db.operation.name": name}
    attributes["db.query.text"] = statement[:_MAX_STATEMENT]
    with _tracer.start_as_current_span(
        f"postgresql {name}", kind=SpanKind.CLIENT, attributes=attributes
    ) as span:
        yield span


class TracedConnection(asyncpg.Connection):
    """An asyncpg connection that opens a span per statement inside a trace."""

    def get_reset_query(self) -> str:
        """No session reset statement on release to the pool: one round trip saved per use.

        asyncpg's default (``pg_advisory_unlock_all(); CLOSE ALL; UNLISTEN *; RESET ALL``)
        undoes session state, and Krypton keeps none on pooled connections: advisory locks are
        transaction-scoped (``pg_advisory_xact_lock``), settings are ``SET LOCAL`` or startup
        parameters, cursors live inside transactions, nothing LISTENs. An open transaction is
        still rolled back on release (asyncpg does that before asking for this query). Code
        that needs session state takes a connection of its own (`asyncpg.connect`).
        """
        return ""

    async def reset(self, *, timeout: float | None = None) -> None:
        """`asyncpg.Connection.reset` (on release to the pool), without spans."""
        token = _quiet.set(True)
        try:
            await super().reset(timeout=timeout)
        finally:
            _quiet.reset(token)

    async def execute(self, query: str, *args: Any, timeout: float | None = None) -> str:
        """`asyncpg.Connection.execute` in a span."""
        with _span(_operation(query), query):
            return await super().execute(query, *args, timeout=timeout)

    async def executemany(self, command: str, args: Any, *, timeout: float | None = None) -> None:
        """`asyncpg.Connection.executemany` in a span."""
        with _span(_operation(command), command):
            await super().executemany(command, args, timeout=timeout)

    async def fetch(self, query: str, *args: Any, **kwargs: Any) -> list[Any]:
        """`asyncpg.Connection.fetch` in a span."""
        with _span(_operation(query), query):
            return await super().fetch(query, *args, **kwargs)  # type: ignore[no-any-return]

    async def fetchrow(self, query: str, *args: Any, **kwargs: Any) -> Any:
        """`asyncpg.Connection.fetchrow` in a span."""
        with _span(_operation(query), query):
            return await super().fetchrow(query, *args, **kwargs)

    async def fetchval(self, query: str, *args: Any, **kwargs: Any) -> Any:
        """`asyncpg.Connection.fetchval` in a span."""
        with _span(_operation(query), query):
            return await super().fetchval(query, *args, **kwargs)

    async def fetchmany(self, query: str, args: Any, **kwargs: Any) -> list[Any]:
        """`asyncpg.Connection.fetchmany` in a span."""
        with _span(_operation(query), query):
            return await super().fetchmany(query, args, **kwargs)  # type: ignore[no-any-return]

    async def copy_records_to_table(self, table_name: str, **kwargs: Any) -> str:
        """`asyncpg.Connection.copy_records_to_table` (COPY ... FROM STDIN) in a span."""
        with _span("COPY", f"COPY {table_name}"):
            return await super().copy_records_to_table(table_name, **kwargs)

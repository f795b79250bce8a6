"""``krypton audit verify`` and ``krypton audit purge``: maintenance of the audit chain.

verify: checks every retained record (sequence, links, hashes, query columns) and prints the
first broken link; exit status 0 when the chain verifies, 1 when it does not.
purge: removes records older than ``KRYPTON_AUDIT_RETENTION_DAYS`` (or ``--days``), keeping the
rest verifiable from the checkpoint it writes; runs as the schema owner (the service's role
cannot delete). Both read the database from ``KRYPTON_PG_DSN``.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from datetime import timedelta

import asyncpg

from krypton.audit.chain import purge, verify
from krypton.audit.schema import migrate
from krypton.audit.settings import AuditSettings
from krypton.core.settings import KryptonSettings

__all__ = ["add_parser", "main", "run"]


async def _verify(dsn: str) -> int:
    conn = await asyncpg.connect(dsn)
    try:
        await migrate(conn)
        result = await verify(conn)
    finally:
        await conn.close()
    sys.stdout.write(result.describe() + "\n")
    return 0 if result.ok else 1


async def _purge(dsn: str, retention: timedelta) -> int:
    conn = await asyncpg.connect(dsn)
    try:
        await migrate(conn)
        try:
            removed = await purge(conn, retention)
        except RuntimeError as exc:
            sys.stderr.write(f"{exc}\n")
            return 1
        result = await verify(conn)
    finally:
        await conn.close()
    sys.stdout.write(f"purged {removed} records older than {retention.days} days; ")
    sys.stdout.write(result.describe() + "\n")
    return 0 if result.ok else 1


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``audit`` command (``verify``, ``purge``) to a parent parser's subcommands."""
    audit = sub.add_parser("audit", help="audit log maintenance")
    audit_sub = audit.add_subparsers(dest="audit_command", required=True)
    audit_sub.add_parser("verify", help="check the whole hash chain; exit 1 if broken")
    purge_parser = audit_sub.add_parser("purge", help="remove records older than the retention")
    purge_parser.add_argument("--days", type=int, help="retention (KRYPTON_AUDIT_RETENTION_DAYS)")
    audit.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Run the parsed ``audit`` command; return the exit status."""
    dsn = KryptonSettings().pg_dsn.get_secret_value()
    if args.audit_command == "verify":
        return asyncio.run(_verify(dsn))
    days = args.days if args.days is not None else AuditSettings().retention_days
    return asyncio.run(_purge(dsn, timedelta(days=days)))


def main(argv: list[str] | None = None) -> None:
    """Stand-alone entry point: ``python -m krypton.audit.verify {verify,purge}``."""
    parser = argparse.ArgumentParser(prog="krypton")
    add_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["audit", *(sys.argv[1:] if argv is None else argv)])
    raise SystemExit(run(args))


if __name__ == "__main__":
    main()

"""The hash chain against a real PostgreSQL: append, dedupe, concurrency, tamper, purge."""

from __future__ import annotations

import asyncio
import itertools
from datetime import timedelta

import asyncpg
import pytest

from krypton.audit import chain
from krypton.audit.schema import writer_pool
from krypton.contracts.audit.v1 import (
    AccessBasisValues,
    AuditEvent,
    AuditEventTypeValues,
    AuditPatient,
    new_event,
)
from krypton.contracts.common.v1 import Actor, RoleValues

DOCTOR = Actor(
    sub="810001234567",
    role=RoleValues.PROFESSIONAL,
    issuer="https://issuer",
    structure="330000001",
    name="Dr House",
    profession="10",
    client_address="10.0.0.1",
)


def search(n: int = 0) -> AuditEvent:
    return new_event(
        AuditEventTypeValues.SEARCH,
        DOCTOR,
        basis=AccessBasisValues.PRODUCING_STRUCTURE,
        study_uids=[f"1.2.3.{n}"],
        patients=[AuditPatient(key=f"INS:1850{n:011d}", ins=f"1850{n:011d}")],
        query=f"PatientID=P{n}",
    )


async def test_appended_events_form_a_gap_free_chain_that_verifies(
    writer: asyncpg.Pool,
) -> None:
    async with writer.acquire() as conn:
        assert await chain.append(conn, [search(i) for i in range(5)]) == 5
        assert await chain.append(conn, [search(i) for i in range(5, 8)]) == 3
        rows = await conn.fetch("SELECT seq, prev_hash, hash, body FROM audit.log ORDER BY seq")
        result = await chain.verify(conn)
    assert [r["seq"] for r in rows] == list(range(1, 9))
    assert bytes(rows[0]["prev_hash"]) == chain.GENESIS
    for before, after in itertools.pairwise(rows):
        assert after["prev_hash"] == before["hash"]
        assert bytes(after["hash"]) == chain.link(bytes(before["hash"]), bytes(after["body"]))
    assert result.ok
    assert result.checked == 8


async def test_a_redelivered_event_is_recorded_once(writer: asyncpg.Pool) -> None:
    events = [search(i) for i in range(3)]
    async with writer.acquire() as conn:
        assert await chain.append(conn, events) == 3
        assert await chain.append(conn, [events[1], search(9), events[1]]) == 1
        assert await conn.fetchval("SELECT count(*) FROM audit.log") == 4
        assert (await chain.verify(conn)).ok


async def test_concurrent_writers_extend_one_chain(writer: asyncpg.Pool, pg_dsn: str) -> None:
    other = await writer_pool(pg_dsn)
    try:
        events = [search(i) for i in range(200)]

        async def write(pool: asyncpg.Pool, part: list[AuditEvent]) -> None:
            for k in range(0, len(part), 10):
                async with pool.acquire() as conn:
                    await chain.append(conn, part[k : k + 10])

        # Both writers get every event (as two replicas would on redelivery), interleaved.
        await asyncio.gather(
            write(writer, events), write(other, events[::-1]), write(writer, events[50:150])
        )
        async with writer.acquire() as conn:
            assert await conn.fetchval("SELECT count(*) FROM audit.log") == 200
            assert await conn.fetchval("SELECT max(seq) FROM audit.log") == 200
            assert (await chain.verify(conn)).ok
    finally:
        await other.close()


async def test_the_writer_role_can_neither_update_nor_delete(writer: asyncpg.Pool) -> None:
    async with writer.acquire() as conn:
        await chain.append(conn, [search(1)])
        assert await conn.fetchval("SELECT current_user") == "krypton_audit_writer"
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await conn.execute("UPDATE audit.log SET event_type = 'x'")
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await conn.execute("DELETE FROM audit.log")
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await conn.execute("TRUNCATE audit.log")
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await conn.execute("DELETE FROM audit.checkpoints")
    # The role survives the pool's reset between borrowers.
    async with writer.acquire() as conn:
        assert await conn.fetchval("SELECT current_user") == "krypton_audit_writer"


@pytest.mark.parametrize(
    ("tamper", "problem"),
    [
        (
            "UPDATE audit.log SET body = convert_to(replace(convert_from(body, 'UTF8'), 'P4', 'P5'), 'UTF8')"
            " WHERE seq = 5",
            "hash does not match",
        ),
        ("UPDATE audit.log SET actor_sub = 'someone' WHERE seq = 5", "column actor_sub"),
        ("UPDATE audit.log SET study_uids = '{}' WHERE seq = 5", "column study_uids"),
        ("DELETE FROM audit.log WHERE seq = 5", "record missing"),
    ],
    ids=["body", "actor column", "studies column", "deleted row"],
)
async def test_verify_reports_the_first_tampered_record(
    writer: asyncpg.Pool, owner_pool: asyncpg.Pool, tamper: str, problem: str
) -> None:
    async with writer.acquire() as conn:
        await chain.append(conn, [search(i) for i in range(10)])
    await owner_pool.execute(tamper)  # as a superuser: the writer role could not
    async with owner_pool.acquire() as conn:
        result = await chain.verify(conn)
    assert not result.ok
    assert result.broken_seq == 5
    assert result.problem is not None
    assert problem in result.problem
    assert "BROKEN at seq 5" in result.describe()


async def test_a_rewritten_hash_breaks_the_next_link(
    writer: asyncpg.Pool, owner_pool: asyncpg.Pool
) -> None:
    async with writer.acquire() as conn:
        await chain.append(conn, [search(i) for i in range(6)])
    # Rewrite record 3 consistently (body and its own hash): record 4 no longer links to it.
    row = await owner_pool.fetchrow("SELECT prev_hash, body FROM audit.log WHERE seq = 3")
    body = bytes(row["body"]).replace(b"P2", b"P7")
    await owner_pool.execute(
        "UPDATE audit.log SET body = $1, hash = $2 WHERE seq = 3",
        body,
        chain.link(bytes(row["prev_hash"]), body),
    )
    async with owner_pool.acquire() as conn:
        result = await chain.verify(conn)
    assert result.broken_seq == 4
    assert result.problem == "previous hash does not match record before"


async def test_checkpoint_records_the_head_once(writer: asyncpg.Pool) -> None:
    async with writer.acquire() as conn:
        assert await chain.checkpoint(conn) is None  # empty log
        await chain.append(conn, [search(i) for i in range(3)])
        point = await chain.checkpoint(conn)
        assert point is not None
        head = await conn.fetchval("SELECT hash FROM audit.log WHERE seq = 3")
        assert (point.seq, point.hash) == (3, bytes(head).hex())
        assert await chain.checkpoint(conn) is None


async def test_purge_removes_only_old_records_and_the_rest_still_verifies(
    writer: asyncpg.Pool, owner_pool: asyncpg.Pool
) -> None:
    async with writer.acquire() as conn:
        await chain.append(conn, [search(i) for i in range(6)])
    # Age the first four records (as if written 400 days ago), as the superuser.
    await owner_pool.execute(
        "UPDATE audit.log SET recorded_at = recorded_at - interval '400 days' WHERE seq <= 4"
    )
    async with writer.acquire() as conn:
        await chain.append(conn, [search(i) for i in range(6, 8)])
    async with owner_pool.acquire() as conn:
        removed = await chain.purge(conn, timedelta(days=365))
        assert removed == 4
        assert await conn.fetchval("SELECT min(seq) FROM audit.log") == 5
        assert await conn.fetchval("SELECT kind FROM audit.checkpoints WHERE seq = 4") == "purge"
        result = await chain.verify(conn)
        assert result.ok, result.describe()
        assert (result.first_seq, result.last_seq, result.checked) == (5, 8, 4)
        assert await chain.purge(conn, timedelta(days=365)) == 0
    # New records keep extending the same chain after a purge.
    async with writer.acquire() as conn:
        await chain.append(conn, [search(9)])
        assert (await chain.verify(conn)).ok
    # Without the checkpoint, the first retained record is not anchored any more.
    await owner_pool.execute("DELETE FROM audit.checkpoints WHERE seq = 4")
    async with owner_pool.acquire() as conn:
        result = await chain.verify(conn)
    assert result.broken_seq == 5
    assert result.problem == "no checkpoint anchors the first record"


async def test_purge_refuses_a_broken_chain(writer: asyncpg.Pool, owner_pool: asyncpg.Pool) -> None:
    async with writer.acquire() as conn:
        await chain.append(conn, [search(i) for i in range(3)])
    await owner_pool.execute("UPDATE audit.log SET actor_sub = 'x' WHERE seq = 2")
    async with owner_pool.acquire() as conn:
        with pytest.raises(RuntimeError, match="refusing to purge"):
            await chain.purge(conn, timedelta(days=0))
        assert await conn.fetchval("SELECT count(*) FROM audit.log") == 3


async def test_a_fully_purged_chain_continues_from_its_checkpoint(
    writer: asyncpg.Pool, owner_pool: asyncpg.Pool
) -> None:
    async with writer.acquire() as conn:
        await chain.append(conn, [search(i) for i in range(3)])
    async with owner_pool.acquire() as conn:
        assert await chain.purge(conn, timedelta(0), now=None) == 3
    async with writer.acquire() as conn:
        await chain.append(conn, [search(5)])
        assert await conn.fetchval("SELECT seq FROM audit.log") == 4
        assert (await chain.verify(conn)).ok

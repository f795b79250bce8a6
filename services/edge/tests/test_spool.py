"""The spool: durable, ordered, bounded, and honest about its size across restarts."""

from __future__ import annotations

from pathlib import Path

import pytest

from krypton.edge.spool import Spool, SpoolFullError


def test_accepted_instances_are_on_disk_in_arrival_order(tmp_path: Path) -> None:
    spool = Spool(tmp_path, limit_bytes=10_000)
    first = spool.accept(b"a" * 100, "1.2.3")
    second = spool.accept(b"b" * 50, "1.2.4")
    assert [e.sop_instance_uid for e in spool.pending()] == ["1.2.3", "1.2.4"]
    assert first.path.read_bytes() == b"a" * 100
    assert (spool.count, spool.size) == (2, 150)
    spool.release(first)
    assert [e.path for e in spool.pending()] == [second.path]
    assert (spool.count, spool.size) == (1, 50)


def test_a_full_spool_refuses_and_writes_nothing(tmp_path: Path) -> None:
    spool = Spool(tmp_path, limit_bytes=1000)
    spool.accept(b"x" * 600, "1.2.3")
    spool.queued_bytes = 300  # what the box's stream holds counts against the same limit
    with pytest.raises(SpoolFullError):
        spool.accept(b"y" * 200, "1.2.4")
    assert len(spool.pending()) == 1
    assert spool.size == 600


def test_the_alarm_rises_before_the_spool_is_full(tmp_path: Path) -> None:
    spool = Spool(tmp_path, limit_bytes=1000, alarm_ratio=0.5)
    spool.accept(b"x" * 400, "1.2.3")
    assert not spool.alarm
    spool.accept(b"x" * 200, "1.2.4")
    assert spool.alarm


def test_a_restart_finds_the_spool_as_it_was_and_drops_torn_writes(tmp_path: Path) -> None:
    spool = Spool(tmp_path, limit_bytes=10_000)
    spool.accept(b"a" * 10, "1.2.3")
    spool.quarantine(b"junk", "unparseable: InvalidDicomError")
    torn = spool.ready_dir / ".00000000000000000001-000001_1.2.5_x.dcm.tmp"
    torn.write_bytes(b"half")  # a crash in the middle of a write: never acknowledged
    again = Spool(tmp_path, limit_bytes=10_000)
    assert (again.count, again.size, again.quarantined) == (1, 10, 1)
    assert not torn.exists()

"""The box's durable spool: every accepted instance is on disk (fsynced) before C-STORE succeeds.

Layout under `<state_dir>/spool`:

- `ready/<seq>_<sop>_<sha256>.dcm`: accepted instances waiting to be published to the box's
  stream, in arrival order (`seq` is a zero-padded nanosecond clock plus a counter, so the
  lexical order of names is the order of arrival, across restarts too).
- `quarantine/<seq>_<reason>.dcm`: data the box refused (unparseable), kept for an operator.

A file is written under a dot-prefixed temporary name, fsynced, renamed and its directory
fsynced: a power cut leaves either nothing or the whole file, never a torn one under a final
name. The C-STORE handlers write from pynetdicom's association threads, hence the lock around
the counters.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import threading
import time
from dataclasses import dataclass
from pathlib import Path

__all__ = ["Spool", "SpoolEntry", "SpoolFullError"]

_NAME = re.compile(r"(?P<seq>\d{20}-\d{6})_(?P<sop>[0-9.]{1,64})_(?P<sha>[0-9a-f]{64})\.dcm")


class SpoolFullError(Exception):
    """Accepting the instance would take the spool past its limit."""

    def __init__(self, size: int, used: int, limit: int) -> None:
        self.size = size
        self.used = used
        self.limit = limit
        super().__init__(f"spool full: {used} + {size} bytes over the {limit} bytes limit")


@dataclass(frozen=True, slots=True)
class SpoolEntry:
    """One accepted instance in the spool."""

    path: Path
    seq: str
    sop_instance_uid: str
    sha256: str
    size: int

    @property
    def received_ns(self) -> int:
        """When the box accepted it (ns since the epoch)."""
        return int(self.seq.split("-", 1)[0])


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_durable(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as fp:
        fp.write(data)
        fp.flush()
        os.fsync(fp.fileno())
    os.replace(tmp, path)
    _fsync_dir(path.parent)


class Spool:
    """Accepted instances on local disk, with their count and size.

    Args:
        root: The spool directory (created if missing).
        limit_bytes: Most bytes the spool plus the box's stream may hold.
        alarm_ratio: Fraction of `limit_bytes` above which `alarm` is raised.
    """

    def __init__(self, root: Path, limit_bytes: int, alarm_ratio: float = 0.8) -> None:
        self.ready_dir = root / "ready"
        self.quarantine_dir = root / "quarantine"
        for directory in (self.ready_dir, self.quarantine_dir):
            directory.mkdir(parents=True, exist_ok=True)
        self.limit_bytes = limit_bytes
        self.alarm_bytes = int(limit_bytes * alarm_ratio)
        self._lock = threading.Lock()
        self._counter = 0
        # Bytes held downstream of the spool (the box's stream), kept current by the status
        # loop: the limit covers everything not yet in the region.
        self.queued_bytes = 0
        self._count = 0
        self._bytes = 0
        for tmp in self.ready_dir.glob(".*.tmp"):  # a write cut short by a crash: never acked
            tmp.unlink()
        for entry in self.pending():
            self._count += 1
            self._bytes += entry.size
        self.quarantined = sum(1 for p in self.quarantine_dir.iterdir() if p.suffix == ".dcm")

    @property
    def count(self) -> int:
        """Instances waiting in the spool."""
        return self._count

    @property
    def size(self) -> int:
        """Bytes waiting in the spool."""
        return self._bytes

    @property
    def used(self) -> int:
        """Bytes counted against the limit: spool plus the box's stream."""
        return self._bytes + self.queued_bytes

    @property
    def alarm(self) -> bool:
        """Whether the spool is above its alarm threshold."""
        return self.used >= self.alarm_bytes

    def _next_seq(self) -> str:
        with self._lock:
            self._counter = (self._counter + 1) % 1_000_000
            return f"{time.time_ns():020d}-{self._counter:06d}"

    def accept(self, data: bytes, sop_instance_uid: str) -> SpoolEntry:
        """Write `data` durably; return when it is on disk.

        Raises:
            SpoolFullError: The spool has no room for it (nothing is written).
            OSError: The disk refused the write (nothing is left under a final name).
        """
        size = len(data)
        with self._lock:
            if self.used + size > self.limit_bytes:
                raise SpoolFullError(size, self.used, self.limit_bytes)
            # Reserve the room now, so that parallel associations cannot overshoot together.
            self._bytes += size
            self._count += 1
        try:
            sha = hashlib.sha256(data).hexdigest()
            seq = self._next_seq()
            path = self.ready_dir / f"{seq}_{sop_instance_uid}_{sha}.dcm"
            _write_durable(path, data)
        except BaseException:
            with self._lock:
                self._bytes -= size
                self._count -= 1
            raise
        return SpoolEntry(path, seq, sop_instance_uid, sha, size)

    def quarantine(self, data: bytes, reason: str) -> Path:
        """Keep refused data for an operator; return where it went."""
        label = re.sub(r"[^a-z0-9]+", "-", reason.lower()).strip("-")[:40] or "refused"
        path = self.quarantine_dir / f"{self._next_seq()}_{label}.dcm"
        _write_durable(path, data)
        with self._lock:
            self.quarantined += 1
        return path

    def pending(self) -> list[SpoolEntry]:
        """Entries waiting to be published, oldest first."""
        entries = []
        for path in sorted(self.ready_dir.iterdir()):
            match = _NAME.fullmatch(path.name)
            if match is None:
                continue
            with contextlib.suppress(FileNotFoundError):
                entries.append(
                    SpoolEntry(
                        path,
                        match["seq"],
                        match["sop"],
                        match["sha"],
                        path.stat().st_size,
                    )
                )
        return entries

    def release(self, entry: SpoolEntry) -> None:
        """Remove an entry once the box's stream holds it durably."""
        entry.path.unlink(missing_ok=True)
        _fsync_dir(entry.path.parent)
        with self._lock:
            self._bytes -= entry.size
            self._count -= 1
            # Now in the stream: counted there until the status loop reads the stream's size.
            self.queued_bytes += entry.size

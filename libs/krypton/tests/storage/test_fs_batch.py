"""Filesystem store: non-durable staging writes and batched, durable moves."""

from __future__ import annotations

import errno
import hashlib
import threading
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from krypton.storage import fs as fs_module
from krypton.storage.errors import ObjectNotFound, StorageUnavailable
from krypton.storage.fs import FileSystemStore


async def _chunks(*parts: bytes) -> AsyncIterator[bytes]:
    for part in parts:
        yield part


@pytest.mark.parametrize("size", [0, 1000, 3 << 20], ids=["empty", "small", "beyond-buffer"])
async def test_a_non_durable_put_stream_stores_the_same_bytes_and_reports_sha256(
    tmp_path: Path, size: int
) -> None:
    store = FileSystemStore(tmp_path, write_buffer=1 << 20)
    data = bytes(range(256)) * (size // 256) + b"x" * (size % 256)

    info = await store.put_stream(
        "staging/a", _chunks(data[: size // 3], data[size // 3 :]), durable=False
    )

    assert info.size == size
    assert info.sha256 == hashlib.sha256(data).hexdigest()
    assert await store.read("staging/a") == data
    assert [p.name for p in (tmp_path / "staging").iterdir()] == ["a"]  # no temporary left


async def test_move_many_places_every_object_and_reports_each_missing_one_alone(
    tmp_path: Path,
) -> None:
    store = FileSystemStore(tmp_path)
    for name in ("a", "b", "c"):
        await store.put_stream(f"staging/{name}", _chunks(name.encode() * 10), durable=False)

    results = await store.move_many(
        [
            ("staging/a", "dicom/1/a.dcm"),
            ("staging/missing", "dicom/1/m.dcm"),
            ("staging/b", "dicom/2/b.dcm"),
            ("staging/c", "dicom/1/c.dcm"),
        ],
        sync_data=True,
    )

    assert results[0] is None
    assert results[2] is None
    assert results[3] is None
    assert isinstance(results[1], ObjectNotFound)
    assert await store.read("dicom/1/a.dcm") == b"a" * 10
    assert await store.read("dicom/2/b.dcm") == b"b" * 10
    assert await store.read("dicom/1/c.dcm") == b"c" * 10
    assert not await store.exists("staging/a")


async def test_move_many_repeated_after_success_succeeds(tmp_path: Path) -> None:
    store = FileSystemStore(tmp_path)
    await store.put_bytes("staging/a", b"data")
    moves = [("staging/a", "dicom/1/a.dcm")]

    assert await store.move_many(moves, sync_data=True) == [None]
    assert await store.move_many(moves, sync_data=True) == [None]
    assert await store.move_many(moves) == [None]
    assert await store.read("dicom/1/a.dcm") == b"data"


async def test_a_volatile_object_appears_only_when_committed_and_abort_leaves_nothing(
    tmp_path: Path,
) -> None:
    store = FileSystemStore(tmp_path)
    kept = store.open_volatile("staging/kept")
    kept.write(b"abc")
    kept.write(b"def")
    assert not await store.exists("staging/kept")
    info = kept.commit()
    dropped = store.open_volatile("staging/dropped")
    dropped.write(b"xyz")
    dropped.abort()

    assert info.size == 6
    assert info.sha256 == hashlib.sha256(b"abcdef").hexdigest()
    assert await store.read("staging/kept") == b"abcdef"
    assert [p.name for p in (tmp_path / "staging").iterdir()] == ["kept"]


async def test_sync_makes_objects_durable_and_reports_each_missing_one_alone(
    tmp_path: Path,
) -> None:
    store = FileSystemStore(tmp_path)
    writer = store.open_volatile("staging/a")
    writer.write(b"a")
    writer.commit()

    results = await store.sync(["staging/a", "staging/missing"])

    assert results[0] is None
    assert isinstance(results[1], ObjectNotFound)
    assert await store.read("staging/a") == b"a"


def _slow_fsyncs(monkeypatch: pytest.MonkeyPatch, failing: str | None = None) -> list[int]:
    """Make each file fsync take 50 ms (`failing` raises EIO); the list holds the most at once."""
    most = [0]
    in_flight = 0
    lock = threading.Lock()
    real = fs_module._fsync_file

    def slow_fsync(path: Path) -> None:
        nonlocal in_flight
        with lock:
            in_flight += 1
            most[0] = max(most[0], in_flight)
        try:
            time.sleep(0.05)
            if path.name == failing:
                raise OSError(errno.EIO, "input/output error")
            real(path)
        finally:
            with lock:
                in_flight -= 1

    monkeypatch.setattr(fs_module, "_fsync_file", slow_fsync)
    return most


async def test_sync_fsyncs_the_files_of_a_batch_concurrently_each_with_its_own_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = FileSystemStore(tmp_path)
    for name in ("a", "b", "c", "d"):
        await store.put_bytes(f"staging/{name}", name.encode())
    most = _slow_fsyncs(monkeypatch, failing="c")

    results = await store.sync(["staging/a", "staging/b", "staging/c", "staging/d"])

    assert most[0] > 1  # not one after the other
    assert results[0] is None
    assert results[1] is None
    assert isinstance(results[2], StorageUnavailable)
    assert results[3] is None


async def test_move_many_with_sync_data_fsyncs_concurrently_and_still_moves_each(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = FileSystemStore(tmp_path)
    for name in ("a", "b", "c"):
        await store.put_bytes(f"staging/{name}", name.encode())
    most = _slow_fsyncs(monkeypatch)

    results = await store.move_many(
        [(f"staging/{n}", f"dicom/1/{n}.dcm") for n in ("a", "b", "c")]
        + [("staging/missing", "dicom/1/m.dcm")],
        sync_data=True,
    )

    assert most[0] > 1
    assert results[:3] == [None, None, None]
    assert isinstance(results[3], ObjectNotFound)
    assert await store.read("dicom/1/b.dcm") == b"b"

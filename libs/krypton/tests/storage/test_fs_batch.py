"""Filesystem store: non-durable staging writes and batched, durable moves."""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from krypton.storage.errors import ObjectNotFound
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

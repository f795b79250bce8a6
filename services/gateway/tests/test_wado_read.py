"""Reading stored objects for answers: from the page cache in the loop, else through the store."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from krypton.gateway.wado_read import read, read_framed
from krypton.storage.errors import ObjectNotFound
from krypton.storage.fs import FileSystemStore

DATA = bytes(range(256)) * 4096  # 1 MiB, every byte value


def _evict(path: Path) -> None:
    """Drop the file's clean pages from the page cache (the next read must go to disk)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


@pytest.fixture
async def store(tmp_path: Path) -> FileSystemStore:
    fs = FileSystemStore(tmp_path / "objects")
    await fs.put_bytes("originals/a.dcm", DATA)
    return fs


@pytest.mark.parametrize("evicted", [False, True], ids=["cached", "on-disk"])
async def test_read_answers_what_the_store_answers(store: FileSystemStore, evicted: bool) -> None:
    path = store.local_path("originals/a.dcm")
    assert path is not None
    for offset, length in [(0, None), (10, 100), (len(DATA) - 5, 100), (len(DATA) + 10, 5)]:
        if evicted:
            _evict(path)
        assert await read(store, "originals/a.dcm", offset, length) == (
            await store.read("originals/a.dcm", offset, length)
        )


@pytest.mark.parametrize("evicted", [False, True], ids=["cached", "on-disk"])
async def test_read_framed_puts_the_bytes_between_head_and_tail(
    store: FileSystemStore, evicted: bool
) -> None:
    path = store.local_path("originals/a.dcm")
    assert path is not None
    if evicted:
        _evict(path)
    body = await read_framed(store, "originals/a.dcm", 1000, 5000, b"<head>", b"<tail>")
    assert bytes(body) == b"<head>" + DATA[1000:6000] + b"<tail>"


async def test_a_missing_object_is_not_found(store: FileSystemStore) -> None:
    with pytest.raises(ObjectNotFound):
        await read(store, "originals/missing.dcm")
    with pytest.raises(ObjectNotFound):
        await read_framed(store, "originals/missing.dcm", 0, 10, b"", b"")

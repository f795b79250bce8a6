"""Behaviour every object store backend must share, checked on the filesystem and a real S3."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import tracemalloc
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from pydantic import SecretStr

from krypton.core.errors import KryptonError, NotFoundError, ValidationError
from krypton.core.settings import S3Settings, StorageSettings
from krypton.storage import (
    FileSystemStore,
    InvalidKey,
    ObjectNotFound,
    ObjectStore,
    S3Store,
    StorageUnavailable,
    make_store,
    open_store,
)
from krypton.testing.servers import S3Server, free_port

MIB = 1 << 20
S3_PART_SIZE = 5 * MIB  # the S3 minimum, so that a 40 MB upload takes many parts


def s3_settings(server: S3Server, bucket: str | None = None) -> S3Settings:
    return S3Settings(
        endpoint=server.endpoint,
        access_key="test",
        secret_key=SecretStr("test"),
        secure=False,
        bucket=bucket or f"krypton-{uuid.uuid4().hex[:12]}",
    )


@pytest.fixture(params=["fs", pytest.param("s3", marks=pytest.mark.s3)])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[ObjectStore]:
    made: FileSystemStore | S3Store
    if request.param == "fs":
        made = FileSystemStore(tmp_path / "objects")
    else:
        made = S3Store(s3_settings(request.getfixturevalue("s3_server")), part_size=S3_PART_SIZE)
        await made.ensure_bucket()
    try:
        yield made
    finally:
        await made.close()


def pattern(size: int, seed: int = 0) -> bytes:
    """Deterministic bytes that differ at every offset (so range mistakes show)."""
    block = hashlib.sha256(str(seed).encode()).digest()
    return (block * (size // len(block) + 1))[:size]


def pending_uploads(store: ObjectStore) -> int:
    """Multipart uploads begun and neither completed nor aborted (0 for the filesystem)."""
    if not isinstance(store, S3Store):
        return 0
    # No public minio call lists them; the private one is what `mc` uses too.
    return len(store._client._list_multipart_uploads(store.bucket).uploads)


async def chunked(data: bytes, size: int) -> AsyncIterator[bytes]:
    for start in range(0, len(data), size):
        yield data[start : start + size]


async def collect(chunks: AsyncIterator[bytes]) -> bytes:
    return b"".join([chunk async for chunk in chunks])


def names(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir())


def files_under(directory: Path) -> list[Path]:
    return [p for p in directory.rglob("*") if p.is_file()]


async def test_put_bytes_then_read_returns_the_same_bytes(store: ObjectStore) -> None:
    data = pattern(1000)
    info = await store.put_bytes("dicom/1.2/3.4/5.6.dcm", data)

    assert info.key == "dicom/1.2/3.4/5.6.dcm"
    assert info.size == len(data)
    assert info.sha256 == hashlib.sha256(data).hexdigest()
    assert await store.read("dicom/1.2/3.4/5.6.dcm") == data
    stat = await store.stat("dicom/1.2/3.4/5.6.dcm")
    assert stat is not None
    assert stat.size == len(data)
    assert await store.exists("dicom/1.2/3.4/5.6.dcm")


async def test_put_bytes_replaces_an_existing_object(store: ObjectStore) -> None:
    await store.put_bytes("staging/a", b"old contents")
    await store.put_bytes("staging/a", b"new")

    assert await store.read("staging/a") == b"new"


async def test_empty_object_round_trips(store: ObjectStore) -> None:
    info = await store.put_stream("staging/empty", chunked(b"", 1))

    assert info.size == 0
    assert info.sha256 == hashlib.sha256(b"").hexdigest()
    assert await store.read("staging/empty") == b""
    assert await collect(store.stream("staging/empty")) == b""


async def test_streamed_put_of_40_mb_keeps_memory_bounded_and_reports_sha256(
    store: ObjectStore,
) -> None:
    total = 40 * 1000 * 1000
    chunk_size = 64 * 1024
    block = os.urandom(MIB)
    expected = hashlib.sha256()
    produced = 0

    async def produce() -> AsyncIterator[bytes]:
        nonlocal produced
        while produced < total:
            # A fresh bytes object per chunk, as a network reader would hand over.
            chunk = (produced.to_bytes(8, "big") + block)[: min(chunk_size, total - produced)]
            expected.update(chunk)
            produced += len(chunk)
            yield chunk

    tracemalloc.start()
    try:
        info = await store.put_stream("staging/big", produce())
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()

    assert info.size == total
    assert info.sha256 == expected.hexdigest()
    # Far below the object's size: the store never held the whole object.
    assert peak < 24 * MIB
    stat = await store.stat("staging/big")
    assert stat is not None
    assert stat.size == total
    streamed = hashlib.sha256()
    async for chunk in store.stream("staging/big", chunk_size=4 * MIB):
        assert len(chunk) <= 4 * MIB
        streamed.update(chunk)
    assert streamed.hexdigest() == expected.hexdigest()


async def test_read_returns_the_requested_range(store: ObjectStore) -> None:
    data = pattern(10_000)
    await store.put_bytes("staging/r", data)

    assert await store.read("staging/r", offset=100, length=50) == data[100:150]
    assert await store.read("staging/r", offset=9_990) == data[9_990:]
    assert await store.read("staging/r", offset=9_990, length=100) == data[9_990:]
    assert await store.read("staging/r", offset=10_000) == b""
    assert await store.read("staging/r", offset=20_000, length=5) == b""
    assert await store.read("staging/r", offset=5, length=0) == b""


async def test_negative_ranges_are_refused(store: ObjectStore) -> None:
    await store.put_bytes("staging/r", b"abc")

    with pytest.raises(ValueError, match="negative"):
        await store.read("staging/r", offset=-1)
    with pytest.raises(ValueError, match="negative"):
        await store.read("staging/r", length=-1)


async def test_stream_yields_the_requested_range_in_bounded_chunks(store: ObjectStore) -> None:
    data = pattern(100_000, seed=1)
    await store.put_bytes("staging/s", data)

    chunks = [
        c async for c in store.stream("staging/s", offset=1_000, length=50_000, chunk_size=4096)
    ]

    assert b"".join(chunks) == data[1_000:51_000]
    assert all(0 < len(c) <= 4096 for c in chunks)
    assert await collect(store.stream("staging/s", offset=99_000)) == data[99_000:]
    assert await collect(store.stream("staging/s", offset=200_000)) == b""


async def test_stream_stopped_early_can_be_closed_and_the_store_keeps_working(
    store: ObjectStore,
) -> None:
    data = pattern(300_000, seed=2)
    await store.put_bytes("staging/s", data)

    async with contextlib.aclosing(store.stream("staging/s", chunk_size=1024)) as chunks:
        first = await anext(chunks)

    assert first == data[:1024]
    assert await store.read("staging/s", offset=1024, length=10) == data[1024:1034]


async def test_reading_a_missing_object_raises_object_not_found(store: ObjectStore) -> None:
    with pytest.raises(ObjectNotFound) as raised:
        await store.read("dicom/1/2/3.dcm")
    assert raised.value.key == "dicom/1/2/3.dcm"
    assert isinstance(raised.value, NotFoundError)

    with pytest.raises(ObjectNotFound):
        await collect(store.stream("dicom/1/2/3.dcm"))
    with pytest.raises(ObjectNotFound):
        await store.read("dicom/1/2/3.dcm", length=0)


async def test_stat_exists_and_delete_accept_a_missing_object(store: ObjectStore) -> None:
    assert await store.stat("staging/missing") is None
    assert not await store.exists("staging/missing")
    await store.delete("staging/missing")


async def test_delete_removes_the_object(store: ObjectStore) -> None:
    await store.put_bytes("staging/d", b"x")

    await store.delete("staging/d")

    assert not await store.exists("staging/d")
    with pytest.raises(ObjectNotFound):
        await store.read("staging/d")


async def test_move_relocates_the_object_and_is_idempotent(store: ObjectStore) -> None:
    await store.put_bytes("staging/2024/01/02/up1", b"dicom bytes")

    await store.move("staging/2024/01/02/up1", "dicom/1.2/3.4/5.6.dcm")

    assert not await store.exists("staging/2024/01/02/up1")
    assert await store.read("dicom/1.2/3.4/5.6.dcm") == b"dicom bytes"
    # A redelivered message moves again: the source is gone, the destination is there.
    await store.move("staging/2024/01/02/up1", "dicom/1.2/3.4/5.6.dcm")
    assert await store.read("dicom/1.2/3.4/5.6.dcm") == b"dicom bytes"


async def test_move_replaces_an_existing_destination(store: ObjectStore) -> None:
    await store.put_bytes("staging/new", b"new")
    await store.put_bytes("dicom/1/2/3.dcm", b"old")

    await store.move("staging/new", "dicom/1/2/3.dcm")

    assert await store.read("dicom/1/2/3.dcm") == b"new"


async def test_move_of_a_missing_object_raises_object_not_found(store: ObjectStore) -> None:
    with pytest.raises(ObjectNotFound) as raised:
        await store.move("staging/nothing", "dicom/1/2/3.dcm")
    assert raised.value.key == "staging/nothing"


async def test_list_yields_the_keys_under_a_prefix_in_order(store: ObjectStore) -> None:
    keys = [
        "dicom/1.2/3/4.dcm",
        "dicom/1.2/3/5.dcm",
        "dicom/1.2/30/1.dcm",
        "dicom/1.20/1/1.dcm",
        "staging/2024/01/01/a",
        "x/a-b",
        "x/a.b",
        "x/a/b",
    ]
    for key in reversed(keys):
        await store.put_bytes(key, b"k")

    assert [k async for k in store.list()] == sorted(keys)
    assert [k async for k in store.list("dicom/1.2/")] == keys[:3]
    assert [k async for k in store.list("dicom/1.2")] == keys[:4]
    assert [k async for k in store.list("dicom/1.2/3/")] == keys[:2]
    assert [k async for k in store.list("x/a")] == keys[5:]
    assert [k async for k in store.list("nothing/")] == []


BAD_KEYS = [
    "",
    "../outside",
    "a/../../outside",
    "/etc/passwd",
    "a\\b",
    "a\x00b",
    "a//b",
    "a/",
    ".hidden",
    "a/./b",
    "a/b c",
    "x" * 2000,
]


@pytest.mark.parametrize("key", BAD_KEYS, ids=repr)
async def test_keys_that_could_escape_the_store_are_refused(
    store: ObjectStore, key: str, tmp_path: Path
) -> None:
    await store.put_bytes("staging/ok", b"ok")

    with pytest.raises(InvalidKey):
        await store.put_bytes(key, b"x")
    with pytest.raises(InvalidKey):
        await store.put_stream(key, chunked(b"x", 1))
    with pytest.raises(InvalidKey):
        await store.read(key)
    with pytest.raises(InvalidKey):
        await collect(store.stream(key))
    with pytest.raises(InvalidKey):
        await store.stat(key)
    with pytest.raises(InvalidKey):
        await store.exists(key)
    with pytest.raises(InvalidKey):
        await store.delete(key)
    with pytest.raises(InvalidKey):
        await store.move("staging/ok", key)
    with pytest.raises(InvalidKey):
        await store.move(key, "staging/ok")
    with pytest.raises(InvalidKey):
        store.local_path(key)
    assert await store.read("staging/ok") == b"ok"
    assert names(tmp_path) in ([], ["objects"])


@pytest.mark.parametrize("prefix", ["../", "/", "a//", ".", "a\\"])
async def test_list_refuses_prefixes_no_key_can_have(store: ObjectStore, prefix: str) -> None:
    with pytest.raises(InvalidKey):
        [key async for key in store.list(prefix)]


async def test_invalid_key_is_a_validation_error() -> None:
    assert issubclass(InvalidKey, ValidationError)
    assert issubclass(StorageUnavailable, KryptonError)


async def test_a_put_stream_that_fails_midway_leaves_nothing_at_the_key(
    store: ObjectStore, tmp_path: Path
) -> None:
    async def broken() -> AsyncIterator[bytes]:
        for _ in range(12):  # 12 MiB: past the first S3 part, so a multipart upload began
            yield pattern(MIB)
        msg = "client went away"
        raise ConnectionResetError(msg)

    with pytest.raises(ConnectionResetError):
        await store.put_stream("staging/partial", broken())

    assert not await store.exists("staging/partial")
    assert [k async for k in store.list()] == []
    assert pending_uploads(store) == 0
    if isinstance(store, FileSystemStore):
        assert files_under(store.root) == []


async def test_a_failed_overwrite_keeps_the_previous_object(store: ObjectStore) -> None:
    await store.put_bytes("dicom/1/2/3.dcm", b"complete")

    async def broken() -> AsyncIterator[bytes]:
        yield b"partial"
        msg = "client went away"
        raise ConnectionResetError(msg)

    with pytest.raises(ConnectionResetError):
        await store.put_stream("dicom/1/2/3.dcm", broken())

    assert await store.read("dicom/1/2/3.dcm") == b"complete"


async def test_a_cancelled_put_stream_leaves_nothing_at_the_key(store: ObjectStore) -> None:
    halfway = asyncio.Event()

    async def stalled() -> AsyncIterator[bytes]:
        for _ in range(6):
            yield pattern(MIB)
        halfway.set()
        await asyncio.Event().wait()  # the client stops sending
        yield b"never"

    task = asyncio.create_task(store.put_stream("staging/cancelled", stalled()))
    await halfway.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task

    assert not await store.exists("staging/cancelled")
    assert [k async for k in store.list()] == []
    assert pending_uploads(store) == 0


async def test_ping_succeeds_on_a_working_store(store: ObjectStore) -> None:
    await store.ping()


async def test_local_path_names_the_file_only_on_the_filesystem(store: ObjectStore) -> None:
    await store.put_bytes("dicom/1/2/3.dcm", b"abc")

    path = store.local_path("dicom/1/2/3.dcm")

    if isinstance(store, FileSystemStore):
        assert path == store.root / "dicom" / "1" / "2" / "3.dcm"
        assert path.read_bytes() == b"abc"
    else:
        assert path is None


async def test_filesystem_ping_fails_when_the_root_is_gone(tmp_path: Path) -> None:
    store = FileSystemStore(tmp_path / "objects")
    (tmp_path / "objects").rmdir()

    with pytest.raises(StorageUnavailable):
        await store.ping()


@pytest.mark.s3
async def test_s3_ping_fails_when_the_bucket_is_missing(s3_server: S3Server) -> None:
    store = S3Store(s3_settings(s3_server))
    try:
        with pytest.raises(StorageUnavailable, match="does not exist"):
            await store.ping()
    finally:
        await store.close()


async def test_s3_ping_fails_when_nothing_listens() -> None:
    settings = S3Settings(
        endpoint=f"127.0.0.1:{free_port()}",
        access_key="test",
        secret_key=SecretStr("test"),
        secure=False,
        region="us-east-1",
    )
    store = S3Store(settings, connect_timeout=2)
    try:
        with pytest.raises(StorageUnavailable):
            await store.ping()
    finally:
        await store.close()


@pytest.mark.s3
async def test_s3_multipart_upload_is_invisible_until_complete(s3_server: S3Server) -> None:
    store = S3Store(s3_settings(s3_server), part_size=S3_PART_SIZE)
    await store.ensure_bucket()
    parts_sent = asyncio.Event()
    finish = asyncio.Event()
    data = pattern(S3_PART_SIZE * 2 + 123)

    async def slow() -> AsyncIterator[bytes]:
        yield data[: S3_PART_SIZE * 2]
        parts_sent.set()
        await finish.wait()
        yield data[S3_PART_SIZE * 2 :]

    try:
        task = asyncio.create_task(store.put_stream("dicom/1/2/3.dcm", slow()))
        await parts_sent.wait()
        assert not await store.exists("dicom/1/2/3.dcm")
        finish.set()
        info = await task
        assert pending_uploads(store) == 0
        assert info.size == len(data)
        assert info.sha256 == hashlib.sha256(data).hexdigest()
        assert await store.read("dicom/1/2/3.dcm") == data
    finally:
        await store.close()


@pytest.mark.s3
async def test_open_store_creates_the_bucket_and_make_store_follows_the_backend(
    s3_server: S3Server, tmp_path: Path
) -> None:
    s3 = StorageSettings(backend="s3", s3=s3_settings(s3_server))
    store = await open_store(s3)
    try:
        assert isinstance(store, S3Store)
        await store.put_bytes("staging/a", b"a")
        assert await store.read("staging/a") == b"a"
    finally:
        await store.close()
    # Opening again finds the bucket already there.
    await (await open_store(s3)).close()

    fs = make_store(StorageSettings(backend="fs", root=tmp_path / "o"))
    assert isinstance(fs, FileSystemStore)
    assert isinstance(fs, ObjectStore)
    assert fs.root == tmp_path / "o"


async def test_filesystem_errors_surface_as_storage_unavailable(tmp_path: Path) -> None:
    store = FileSystemStore(tmp_path / "objects")
    await store.put_bytes("a", b"a file where a directory is needed")

    with pytest.raises(StorageUnavailable):
        await store.put_bytes("a/b", b"x")
    with pytest.raises(StorageUnavailable):
        await store.put_stream("a/b", chunked(b"x", 1))
    assert await store.read("a") == b"a file where a directory is needed"

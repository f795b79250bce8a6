"""Filesystem object store: one file per key under a root directory (the embedded default).

Blocking I/O runs in worker threads, in large batches so that a multi-GB upload does not cost a
thread hop per network chunk. Writes go to a temporary file in the destination directory, are
fsynced, then renamed over the key and the directory is fsynced: a reader sees either nothing or
the whole object, and a returned put survives a power cut.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import stat as stat_mode
import tempfile
import threading
from collections.abc import AsyncGenerator, AsyncIterable, Callable
from pathlib import Path
from typing import BinaryIO, ParamSpec, TypeVar

from krypton.storage.base import DEFAULT_CHUNK_SIZE, ObjectInfo
from krypton.storage.errors import ObjectNotFound, StorageUnavailable
from krypton.storage.keys import validate_key, validate_prefix

__all__ = ["FileSystemStore"]

_BACKEND = "fs"

_P = ParamSpec("_P")
_T = TypeVar("_T")


def _fsync_dir(path: Path) -> None:
    """Make a directory's entries (a rename, a new file or subdirectory) durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _makedirs_durable(path: Path) -> None:
    """Create `path` and missing parents, fsyncing each parent that gained an entry."""
    missing: list[Path] = []
    current = path
    while not current.is_dir():
        missing.append(current)
        current = current.parent
    for directory in reversed(missing):
        try:
            directory.mkdir()
        except FileExistsError:
            continue  # a concurrent writer made it; it fsyncs its parent itself
        _fsync_dir(directory.parent)


class _AtomicWriter:
    """A temporary file that becomes `path` on commit, or disappears on abort.

    The lock serialises a write still running in a worker thread with an abort coming from a
    cancelled coroutine, so the descriptor is never closed under a running write.
    """

    def __init__(self, path: Path) -> None:
        _makedirs_durable(path.parent)
        fd, temp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        self._file: BinaryIO = os.fdopen(fd, "wb", buffering=0)
        self._temp = Path(temp)
        self._path = path
        self._hash = hashlib.sha256()
        self._size = 0
        self._done = False
        self._lock = threading.Lock()

    def write(self, data: bytes | bytearray) -> None:
        with self._lock:
            self._file.write(data)
            # hashlib releases the GIL on large buffers, so hashing here keeps the loop free.
            self._hash.update(data)
            self._size += len(data)

    def commit(self, key: str) -> ObjectInfo:
        with self._lock:
            self._file.flush()
            os.fsync(self._file.fileno())
            self._file.close()
            os.replace(self._temp, self._path)
            self._done = True
            _fsync_dir(self._path.parent)
            return ObjectInfo(key=key, size=self._size, sha256=self._hash.hexdigest())

    def abort(self) -> None:
        with self._lock:
            if self._done:
                return
            self._done = True
            self._file.close()
            self._temp.unlink(missing_ok=True)


class FileSystemStore:
    """Object store in a directory; keys map to relative paths under `root`.

    Args:
        root: Directory holding the objects; created if missing. Staging, canonical and
            quarantine areas all live under it, so moves between them are atomic renames.
        write_buffer: Bytes gathered from a stream before one write in a worker thread.
    """

    def __init__(self, root: Path | str, *, write_buffer: int = 4 << 20) -> None:
        self._root = Path(root).absolute()
        self._root.mkdir(parents=True, exist_ok=True)
        self._write_buffer = write_buffer

    @property
    def root(self) -> Path:
        """The directory holding the objects."""
        return self._root

    def _path(self, key: str) -> Path:
        return self._root / validate_key(key)

    def local_path(self, key: str) -> Path | None:
        """Return the file that holds (or would hold) `key`."""
        return self._path(key)

    async def put_stream(self, key: str, chunks: AsyncIterable[bytes]) -> ObjectInfo:
        """Write `chunks` to a temporary file, then rename it to `key` (see `ObjectStore`)."""
        path = self._path(key)
        writer = await _run(_AtomicWriter, path)
        try:
            buffer = bytearray()
            async for chunk in chunks:
                if not buffer and len(chunk) >= self._write_buffer:
                    await _run(writer.write, chunk)  # already big: skip the copy
                    continue
                buffer += chunk
                if len(buffer) >= self._write_buffer:
                    await _run(writer.write, buffer)
                    buffer = bytearray()
            if buffer:
                await _run(writer.write, buffer)
            return await _run(writer.commit, key)
        except BaseException:
            # Synchronous on purpose: it must also run when the task is being cancelled.
            writer.abort()
            raise

    async def put_bytes(self, key: str, data: bytes) -> ObjectInfo:
        """Store `data` under `key` atomically and durably."""
        path = self._path(key)

        def put() -> ObjectInfo:
            writer = _AtomicWriter(path)
            try:
                writer.write(data)
                return writer.commit(key)
            except BaseException:
                writer.abort()
                raise

        return await _run(put)

    async def read(self, key: str, offset: int = 0, length: int | None = None) -> bytes:
        """Return up to `length` bytes from `offset` (see `ObjectStore.read`)."""
        path = self._path(key)
        _check_range(offset, length)

        def read() -> bytes:
            with _open(path, key) as file:
                file.seek(offset)
                return file.read(-1 if length is None else length)

        return await _run(read)

    async def stream(
        self,
        key: str,
        offset: int = 0,
        length: int | None = None,
        chunk_size: int = DEFAULT_CHUNK_SIZE,
    ) -> AsyncGenerator[bytes, None]:
        """Yield the file's bytes in `chunk_size` pieces, one thread hop per piece."""
        path = self._path(key)
        _check_range(offset, length)
        if chunk_size <= 0:
            msg = "chunk_size must be positive"
            raise ValueError(msg)

        def open_at() -> BinaryIO:
            file = _open(path, key)
            file.seek(offset)
            return file

        file = await _run(open_at)
        try:
            remaining = length
            while remaining is None or remaining > 0:
                size = chunk_size if remaining is None else min(chunk_size, remaining)
                chunk = await _run(file.read, size)
                if not chunk:
                    return
                if remaining is not None:
                    remaining -= len(chunk)
                yield chunk
        finally:
            file.close()  # cheap for a read-only file, and must work from a finaliser too

    async def stat(self, key: str) -> ObjectInfo | None:
        """Return the object's size, or `None` if it is missing."""
        path = self._path(key)

        def size() -> int | None:
            try:
                result = path.stat()
            except (FileNotFoundError, NotADirectoryError):
                return None
            return result.st_size if stat_mode.S_ISREG(result.st_mode) else None

        found = await _run(size)
        return None if found is None else ObjectInfo(key=key, size=found)

    async def exists(self, key: str) -> bool:
        """Tell whether an object is stored under `key`."""
        return await self.stat(key) is not None

    async def move(self, src: str, dst: str) -> None:
        """Rename `src` to `dst` atomically, creating `dst`'s directories (see `ObjectStore`)."""
        src_path, dst_path = self._path(src), self._path(dst)

        def move() -> None:
            if src_path == dst_path:
                if not dst_path.is_file():
                    raise ObjectNotFound(src)
                return
            _makedirs_durable(dst_path.parent)
            try:
                os.replace(src_path, dst_path)
            except (FileNotFoundError, NotADirectoryError):
                if dst_path.is_file():
                    return  # an earlier attempt moved it
                raise ObjectNotFound(src) from None
            _fsync_dir(dst_path.parent)
            if src_path.parent != dst_path.parent:
                _fsync_dir(src_path.parent)

        await _run(move)

    async def delete(self, key: str) -> None:
        """Remove the file at `key`; a missing one is fine."""
        path = self._path(key)

        def delete() -> None:
            try:
                path.unlink()
            except (FileNotFoundError, NotADirectoryError):
                return
            _fsync_dir(path.parent)

        await _run(delete)

    async def list(self, prefix: str = "") -> AsyncGenerator[str, None]:
        """Yield keys starting with `prefix` in lexicographic order, one directory at a time."""
        validate_prefix(prefix)
        # Only the directory named by the prefix's complete segments needs walking.
        base, _, _ = prefix.rpartition("/")
        start = self._root / base if base else self._root
        # Items are (key, directory) for a directory still to scan, (key, None) for an object.
        stack: list[tuple[str, Path | None]] = [(f"{base}/" if base else "", start)]
        while stack:
            key, directory = stack.pop()
            if directory is None:
                yield key
                continue
            children: list[tuple[str, Path | None]] = []
            for name, is_dir in await _run(_scan, directory):
                child = key + name
                if not is_dir:
                    if child.startswith(prefix):
                        children.append((child, None))
                    continue
                child += "/"
                if child.startswith(prefix) or prefix.startswith(child):
                    children.append((child, directory / name))
            # Pushed in reverse so the smallest pops first: a depth-first walk over entries
            # sorted with directories as "name/" yields keys in S3's byte order.
            stack.extend(reversed(children))

    async def ping(self) -> None:
        """Check that the root is a writable directory."""

        def ping() -> bool:
            return self._root.is_dir() and os.access(self._root, os.W_OK | os.X_OK)

        if not await _run(ping):
            msg = f"{self._root} is not a writable directory"
            raise StorageUnavailable(msg, backend=_BACKEND)

    async def close(self) -> None:
        """Nothing to release."""


async def _run(fn: Callable[_P, _T], *args: _P.args, **kwargs: _P.kwargs) -> _T:
    """Run blocking I/O in a worker thread; a failing disk (full, read-only, EIO) is unavailable."""
    try:
        return await asyncio.to_thread(fn, *args, **kwargs)
    except OSError as exc:
        msg = f"{type(exc).__name__}: {exc}"
        raise StorageUnavailable(msg, backend=_BACKEND) from exc


def _check_range(offset: int, length: int | None) -> None:
    if offset < 0 or (length is not None and length < 0):
        msg = "offset and length must not be negative"
        raise ValueError(msg)


def _open(path: Path, key: str) -> BinaryIO:
    try:
        return path.open("rb")
    except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
        raise ObjectNotFound(key) from None


def _scan(directory: Path) -> list[tuple[str, bool]]:
    """Return the visible entries of `directory`, sorted with directories as `name/`."""
    try:
        with os.scandir(directory) as it:
            entries = [
                (entry.name, entry.is_dir(follow_symlinks=False))
                for entry in it
                if not entry.name.startswith(".")  # temporary files of writes in progress
            ]
    except (FileNotFoundError, NotADirectoryError):
        return []
    return sorted(entries, key=lambda entry: entry[0] + "/" if entry[1] else entry[0])

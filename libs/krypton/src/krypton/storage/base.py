"""The object store interface every backend implements, and what it says about an object.

Objects are written once under a key from `krypton.storage.keys` and become visible only when
complete. Bulk bytes stay here; messages on the bus carry keys.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, runtime_checkable

__all__ = ["DEFAULT_CHUNK_SIZE", "ObjectInfo", "ObjectStore"]

DEFAULT_CHUNK_SIZE = 1 << 20
"""Size of the chunks `ObjectStore.stream` yields unless told otherwise (1 MiB)."""


@dataclass(frozen=True, slots=True)
class ObjectInfo:
    """What the store knows about one object.

    Attributes:
        key: The object's key.
        size: Size in bytes.
        sha256: Lower-case hex SHA-256 of the content when known (always after a put; `stat`
            may not know it).
    """

    key: str
    size: int
    sha256: str | None = None


@runtime_checkable
class ObjectStore(Protocol):
    """An object store: filesystem (embedded default) or S3.

    Every method validates its keys with `krypton.storage.keys.validate_key` and raises
    `InvalidKey` before touching the backend. Transient backend failures raise
    `StorageUnavailable`; a missing object raises `ObjectNotFound` where the method needs one.
    """

    async def put_stream(self, key: str, chunks: AsyncIterable[bytes]) -> ObjectInfo:
        """Store the concatenation of `chunks` under `key` and return its size and SHA-256.

        The whole object is never held in memory. It becomes visible under `key` atomically
        once complete and is durable when this returns; if `chunks` raises (or the call is
        cancelled), nothing appears under `key` and an existing object there is untouched.
        """
        ...

    async def put_bytes(self, key: str, data: bytes) -> ObjectInfo:
        """Store `data` under `key`, with the same guarantees as `put_stream`."""
        ...

    async def read(self, key: str, offset: int = 0, length: int | None = None) -> bytes:
        """Return `length` bytes (to the end by default) from `offset`; short past the end.

        Raises:
            ObjectNotFound: Nothing is stored under `key`.
        """
        ...

    def stream(
        self,
        key: str,
        offset: int = 0,
        length: int | None = None,
        chunk_size: int = DEFAULT_CHUNK_SIZE,
    ) -> AsyncGenerator[bytes, None]:
        """Yield the object's bytes from `offset` (`length` of them, or to the end).

        Close the iterator (`contextlib.aclosing`) when stopping early: that releases the
        open file or connection.

        Raises:
            ObjectNotFound: Nothing is stored under `key` (on the first iteration).
        """
        ...

    async def stat(self, key: str) -> ObjectInfo | None:
        """Return the object's size (its SHA-256 may be `None`), or `None` if it is missing."""
        ...

    async def exists(self, key: str) -> bool:
        """Tell whether an object is stored under `key`."""
        ...

    async def move(self, src: str, dst: str) -> None:
        """Move the object at `src` to `dst`, replacing whatever is there.

        Idempotent: when `src` is missing but `dst` exists, a previous attempt already moved
        it and this succeeds.

        Raises:
            ObjectNotFound: Neither `src` nor `dst` exists.
        """
        ...

    async def delete(self, key: str) -> None:
        """Remove the object at `key`; a missing object is not an error."""
        ...

    def list(self, prefix: str = "") -> AsyncGenerator[str, None]:
        """Yield every key that starts with `prefix`, in lexicographic order."""
        ...

    async def ping(self) -> None:
        """Return if the backend is reachable and writable; raise `StorageUnavailable` if not."""
        ...

    async def close(self) -> None:
        """Release connections; the store must not be used afterwards."""
        ...

    def local_path(self, key: str) -> Path | None:
        """Return the file holding `key` when the backend is a local filesystem, else `None`.

        Lets callers hand the file to `sendfile` or pydicom without copying. The path may not
        exist; never write to it.
        """
        ...

"""Object store spans: the filesystem and S3 stores with a CLIENT span around each operation.

Subclasses rather than a wrapper, so that callers' fast paths keyed on the backend
(`isinstance(store, FileSystemStore)`: volatile staging, batched fsync and moves) keep working.
`make_store` returns these. As for SQL, an operation opens a span only inside a trace; keys
(UIDs and content hashes, no patient attributes) are recorded, never contents.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from opentelemetry import trace
from opentelemetry.trace import Span, SpanKind, Status, StatusCode

from krypton.storage.base import DEFAULT_CHUNK_SIZE, ObjectInfo
from krypton.storage.fs import FileSystemStore
from krypton.storage.s3 import S3Store

__all__ = ["TracedFileSystemStore", "TracedS3Store"]

_tracer = trace.get_tracer("krypton.storage")


@contextmanager
def _span(backend: str, operation: str, key: str, **extra: Any) -> Iterator[Span | None]:
    if not trace.get_current_span().get_span_context().is_valid:
        yield None
        return
    attributes = {"krypton.storage.backend": backend, "krypton.storage.key": key, **extra}
    with _tracer.start_as_current_span(
        f"object_store {operation}", kind=SpanKind.CLIENT, attributes=attributes
    ) as span:
        yield span


async def _traced_stream(
    backend: str, key: str, chunks: AsyncGenerator[bytes, None]
) -> AsyncGenerator[bytes, None]:
    # Not a current span: a generator's body runs in its consumer's context between yields,
    # and a span attached there could not be detached cleanly.
    if not trace.get_current_span().get_span_context().is_valid:
        async for chunk in chunks:
            yield chunk
        return
    span = _tracer.start_span(
        "object_store stream",
        kind=SpanKind.CLIENT,
        attributes={"krypton.storage.backend": backend, "krypton.storage.key": key},
    )
    size = 0
    try:
        async for chunk in chunks:
            size += len(chunk)
            yield chunk
    except Exception as exc:
        span.record_exception(exc)
        span.set_status(Status(StatusCode.ERROR, type(exc).__name__))
        raise
    finally:
        await chunks.aclose()
        span.set_attribute("krypton.storage.bytes", size)
        span.end()


class TracedFileSystemStore(FileSystemStore):
    """`FileSystemStore` with spans."""

    async def put_stream(
        self, key: str, chunks: AsyncIterable[bytes], *, durable: bool = True
    ) -> ObjectInfo:
        """See `FileSystemStore.put_stream`."""
        with _span("fs", "put", key):
            return await super().put_stream(key, chunks, durable=durable)

    async def put_bytes(self, key: str, data: bytes) -> ObjectInfo:
        """See `ObjectStore.put_bytes`."""
        with _span("fs", "put", key):
            return await super().put_bytes(key, data)

    async def read(self, key: str, offset: int = 0, length: int | None = None) -> bytes:
        """See `ObjectStore.read`."""
        with _span("fs", "read", key):
            return await super().read(key, offset, length)

    def stream(
        self,
        key: str,
        offset: int = 0,
        length: int | None = None,
        chunk_size: int = DEFAULT_CHUNK_SIZE,
    ) -> AsyncGenerator[bytes, None]:
        """See `ObjectStore.stream`."""
        return _traced_stream("fs", key, super().stream(key, offset, length, chunk_size))

    async def move(self, src: str, dst: str) -> None:
        """See `ObjectStore.move`."""
        with _span("fs", "move", dst, **{"krypton.storage.source": src}):
            await super().move(src, dst)

    async def delete(self, key: str) -> None:
        """See `ObjectStore.delete`."""
        with _span("fs", "delete", key):
            await super().delete(key)

    async def sync(self, keys: Sequence[str]) -> list[Exception | None]:
        """See `FileSystemStore.sync`."""
        with _span("fs", "sync", keys[0] if keys else "", **{"krypton.storage.count": len(keys)}):
            return await super().sync(keys)

    async def move_many(
        self, moves: Sequence[tuple[str, str]], *, sync_data: bool = False
    ) -> list[Exception | None]:
        """See `FileSystemStore.move_many`."""
        first = moves[0][1] if moves else ""
        with _span("fs", "move_many", first, **{"krypton.storage.count": len(moves)}):
            return await super().move_many(moves, sync_data=sync_data)


class TracedS3Store(S3Store):
    """`S3Store` with spans."""

    async def put_stream(self, key: str, chunks: AsyncIterable[bytes]) -> ObjectInfo:
        """See `ObjectStore.put_stream`."""
        with _span("s3", "put", key):
            return await super().put_stream(key, chunks)

    async def put_bytes(self, key: str, data: bytes) -> ObjectInfo:
        """See `ObjectStore.put_bytes`."""
        with _span("s3", "put", key):
            return await super().put_bytes(key, data)

    async def read(self, key: str, offset: int = 0, length: int | None = None) -> bytes:
        """See `ObjectStore.read`."""
        with _span("s3", "read", key):
            return await super().read(key, offset, length)

    def stream(
        self,
        key: str,
        offset: int = 0,
        length: int | None = None,
        chunk_size: int = DEFAULT_CHUNK_SIZE,
    ) -> AsyncGenerator[bytes, None]:
        """See `ObjectStore.stream`."""
        return _traced_stream("s3", key, super().stream(key, offset, length, chunk_size))

    async def move(self, src: str, dst: str) -> None:
        """See `ObjectStore.move`."""
        with _span("s3", "move", dst, **{"krypton.storage.source": src}):
            await super().move(src, dst)

    async def delete(self, key: str) -> None:
        """See `ObjectStore.delete`."""
        with _span("s3", "delete", key):
            await super().delete(key)

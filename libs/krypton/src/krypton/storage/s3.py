"""S3 object store on the `minio` client (MinIO, AWS S3, any S3-protocol server).

The minio client is synchronous, so every call runs in a worker thread. Streamed uploads use
S3 multipart upload fed part by part from the async iterator: at most one part is uploading
while the next one fills, so an upload holds about three parts in memory (the one in flight,
the one filling, the one being cut) whatever the object's size, and the object appears under
its key only when the upload completes. Object names are the keys.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import itertools
from collections.abc import AsyncGenerator, AsyncIterable, Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import ParamSpec, TypeVar

import certifi
import urllib3
from minio import Minio
from minio.commonconfig import ComposeSource
from minio.datatypes import Part
from minio.error import MinioException, S3Error
from urllib3 import BaseHTTPResponse
from urllib3.util import Retry, Timeout

from krypton.core.logging import get_logger
from krypton.core.settings import S3Settings
from krypton.storage.base import DEFAULT_CHUNK_SIZE, ObjectInfo
from krypton.storage.errors import ObjectNotFound, StorageUnavailable
from krypton.storage.keys import validate_key, validate_prefix

__all__ = ["DEFAULT_PART_SIZE", "S3Store"]

DEFAULT_PART_SIZE = 16 << 20
"""Multipart part size: 16 MiB parts cover 160 GiB within S3's 10,000-part limit."""

_MIN_PART_SIZE = 5 << 20  # S3 refuses smaller parts except the last one
_BACKEND = "s3"
_MISSING_CODES = frozenset({"NoSuchKey", "NoSuchObject", "ResourceNotFound"})
_LIST_BATCH = 1000

_P = ParamSpec("_P")
_T = TypeVar("_T")

_log = get_logger(__name__)


@contextmanager
def _translated(key: str | None = None) -> Iterator[None]:
    """Turn minio and transport errors into `ObjectNotFound` / `StorageUnavailable`."""
    try:
        yield
    except S3Error as exc:
        if key is not None and exc.code in _MISSING_CODES:
            raise ObjectNotFound(key) from exc
        # Missing bucket, refused credentials, throttling: the store cannot serve right now.
        msg = f"{exc.code}: {exc.message}"
        raise StorageUnavailable(msg, backend=_BACKEND) from exc
    except (MinioException, urllib3.exceptions.HTTPError, OSError) as exc:
        msg = f"{type(exc).__name__}: {exc}"
        raise StorageUnavailable(msg, backend=_BACKEND) from exc


class S3Store:
    """Object store in one S3 bucket.

    Args:
        settings: Endpoint, credentials, bucket, TLS and region.
        part_size: Multipart part size in bytes (at least 5 MiB); an upload holds about three
            parts in memory.
        connect_timeout: Seconds to wait for a TCP/TLS connection before giving up.
        read_timeout: Seconds to wait for a response byte.
    """

    def __init__(
        self,
        settings: S3Settings,
        *,
        part_size: int = DEFAULT_PART_SIZE,
        connect_timeout: float = 10.0,
        read_timeout: float = 300.0,
    ) -> None:
        if part_size < _MIN_PART_SIZE:
            msg = f"part_size must be at least {_MIN_PART_SIZE} bytes"
            raise ValueError(msg)
        self._bucket = settings.bucket
        self._region = settings.region
        self._part_size = part_size
        # Our own pool: a short connect timeout so /readyz fails fast on an unreachable
        # endpoint (minio's default waits 5 minutes), and close() can release it.
        self._http = urllib3.PoolManager(
            timeout=Timeout(connect=connect_timeout, read=read_timeout),
            maxsize=32,
            cert_reqs="CERT_REQUIRED",
            ca_certs=certifi.where(),
            retries=Retry(total=3, backoff_factor=0.2, status_forcelist=[500, 502, 503, 504]),
        )
        self._client = Minio(
            settings.endpoint,
            access_key=settings.access_key or None,
            secret_key=settings.secret_key.get_secret_value() or None,
            secure=settings.secure,
            region=settings.region,
            http_client=self._http,
        )

    @property
    def bucket(self) -> str:
        """The bucket holding the objects."""
        return self._bucket

    async def _call(
        self, key: str | None, fn: Callable[_P, _T], *args: _P.args, **kwargs: _P.kwargs
    ) -> _T:
        with _translated(key):
            return await asyncio.to_thread(fn, *args, **kwargs)

    async def ensure_bucket(self) -> None:
        """Create the bucket if it does not exist yet."""

        def ensure() -> None:
            if self._client.bucket_exists(self._bucket):
                return
            try:
                self._client.make_bucket(self._bucket, location=self._region)
            except S3Error as exc:
                # Another replica created it between our check and our request.
                if exc.code not in {"BucketAlreadyOwnedByYou", "BucketAlreadyExists"}:
                    raise

        await self._call(None, ensure)

    def local_path(self, key: str) -> Path | None:
        """Objects are not local files."""
        validate_key(key)
        return None

    async def put_stream(self, key: str, chunks: AsyncIterable[bytes]) -> ObjectInfo:
        """Upload `chunks` as a multipart upload (one plain PUT when it fits in one part)."""
        validate_key(key)
        hasher = hashlib.sha256()
        size = 0
        upload_id: str | None = None
        parts: list[Part] = []
        inflight: asyncio.Task[None] | None = None

        def upload_part(upload: str, number: int, data: bytes) -> None:
            # Runs in a worker thread. Parts are hashed in order: only one is ever in flight.
            hasher.update(data)
            etag = self._client._upload_part(self._bucket, key, data, None, upload, number)
            parts.append(Part(number, etag))

        async def send(data: bytes) -> None:
            """Wait for the previous part, then start uploading `data` in the background."""
            nonlocal upload_id, inflight
            if inflight is not None:
                await asyncio.shield(inflight)  # a cancelled caller must not orphan the part
                inflight = None
            if upload_id is None:
                upload_id = await self._call(
                    None,
                    self._client._create_multipart_upload,
                    self._bucket,
                    key,
                    {"Content-Type": "application/octet-stream"},
                )
            inflight = asyncio.create_task(
                self._call(None, upload_part, upload_id, len(parts) + 1, data)
            )

        try:
            buffer = bytearray()
            async for chunk in chunks:
                buffer += chunk
                size += len(chunk)
                while len(buffer) >= self._part_size:
                    with memoryview(buffer) as view:  # one copy, not slice-then-bytes
                        data = view[: self._part_size].tobytes()
                    del buffer[: self._part_size]  # cheap: bytearray trims its head in place
                    await send(data)
            if upload_id is None:
                # Everything fits in one part: a single PUT is cheaper and just as atomic.
                return await self._call(None, self._put_whole, key, bytes(buffer))
            if buffer:
                await send(bytes(buffer))
            if inflight is not None:
                await asyncio.shield(inflight)  # a cancelled caller must not orphan the part
                inflight = None
            await self._call(
                None, self._client._complete_multipart_upload, self._bucket, key, upload_id, parts
            )
            return ObjectInfo(key=key, size=size, sha256=hasher.hexdigest())
        except BaseException:
            await self._abandon(key, upload_id, inflight)
            raise

    async def _abandon(
        self, key: str, upload_id: str | None, inflight: asyncio.Task[None] | None
    ) -> None:
        """Abort a failed multipart upload so that its parts do not linger (best effort)."""
        if inflight is not None:
            # A part may still be uploading in its thread; abort after it, or it would leave
            # an orphan part behind the abort.
            await asyncio.wait([inflight])
            if not inflight.cancelled():
                inflight.exception()  # mark retrieved; the original failure is what matters
        if upload_id is None:
            return
        try:
            await self._call(
                None, self._client._abort_multipart_upload, self._bucket, key, upload_id
            )
        except StorageUnavailable:
            # A bucket lifecycle rule (AbortIncompleteMultipartUpload) sweeps what is left.
            _log.warning("multipart abort failed", key=key, exc_info=True)

    def _put_whole(self, key: str, data: bytes) -> ObjectInfo:
        digest = hashlib.sha256(data).hexdigest()
        self._client.put_object(
            self._bucket,
            key,
            io.BytesIO(data),
            len(data),
            content_type="application/octet-stream",
        )
        return ObjectInfo(key=key, size=len(data), sha256=digest)

    async def put_bytes(self, key: str, data: bytes) -> ObjectInfo:
        """Store `data` under `key` with one PUT (minio splits it into parts when large)."""
        validate_key(key)
        return await self._call(None, self._put_whole, key, data)

    async def read(self, key: str, offset: int = 0, length: int | None = None) -> bytes:
        """Return up to `length` bytes from `offset` with one ranged GET."""
        validate_key(key)
        _check_range(offset, length)
        if length == 0:
            # minio reads length 0 as "to the end"; still report a missing object.
            if not await self.exists(key):
                raise ObjectNotFound(key)
            return b""

        def read() -> bytes:
            response = self._get(key, offset, length)
            if response is None:
                return b""
            try:
                return response.read()
            finally:
                response.close()
                response.release_conn()

        return await self._call(key, read)

    def _get(self, key: str, offset: int, length: int | None) -> BaseHTTPResponse | None:
        """GET a range; `None` when the range starts at or past the end of the object."""
        try:
            return self._client.get_object(self._bucket, key, offset=offset, length=length or 0)
        except S3Error as exc:
            if exc.code == "InvalidRange":
                return None
            raise

    async def stream(
        self,
        key: str,
        offset: int = 0,
        length: int | None = None,
        chunk_size: int = DEFAULT_CHUNK_SIZE,
    ) -> AsyncGenerator[bytes, None]:
        """Yield the object's bytes from one ranged GET, one thread hop per chunk."""
        validate_key(key)
        _check_range(offset, length)
        if chunk_size <= 0:
            msg = "chunk_size must be positive"
            raise ValueError(msg)
        if length == 0:
            if not await self.exists(key):
                raise ObjectNotFound(key)
            return
        response = await self._call(key, self._get, key, offset, length)
        if response is None:
            return
        try:
            while True:
                chunk: bytes = await self._call(key, response.read, chunk_size)
                if not chunk:
                    return
                yield chunk
        finally:
            # Closing drops a half-read connection instead of returning it dirty to the pool.
            response.close()
            response.release_conn()

    async def stat(self, key: str) -> ObjectInfo | None:
        """Return the object's size (no SHA-256), or `None` if it is missing."""
        validate_key(key)
        try:
            result = await self._call(key, self._client.stat_object, self._bucket, key)
        except ObjectNotFound:
            return None
        return ObjectInfo(key=key, size=int(result.size or 0))

    async def exists(self, key: str) -> bool:
        """Tell whether an object is stored under `key`."""
        return await self.stat(key) is not None

    async def move(self, src: str, dst: str) -> None:
        """Server-side copy `src` to `dst`, then delete `src` (see `ObjectStore.move`)."""
        validate_key(src)
        validate_key(dst)
        if src == dst:
            if not await self.exists(src):
                raise ObjectNotFound(src)
            return
        try:
            # compose_object copies in one request up to 5 GiB and by ranged part copies
            # beyond, which a plain copy_object cannot do.
            await self._call(
                src,
                self._client.compose_object,
                self._bucket,
                dst,
                [ComposeSource(self._bucket, src)],
            )
        except ObjectNotFound:
            if await self.exists(dst):
                return  # an earlier attempt copied and deleted it
            raise
        await self.delete(src)

    async def delete(self, key: str) -> None:
        """Remove the object; S3 treats a missing one as success."""
        validate_key(key)
        await self._call(None, self._client.remove_object, self._bucket, key)

    async def list(self, prefix: str = "") -> AsyncGenerator[str, None]:
        """Yield keys starting with `prefix`, paging in worker threads."""
        validate_prefix(prefix)
        objects = iter(
            self._client.list_objects(self._bucket, prefix=prefix or None, recursive=True)
        )
        while True:
            batch = await self._call(None, lambda: [*itertools.islice(objects, _LIST_BATCH)])
            for item in batch:
                if item.object_name is not None:
                    yield item.object_name
            if len(batch) < _LIST_BATCH:
                return

    async def ping(self) -> None:
        """Check that the endpoint answers and the bucket exists."""
        if not await self._call(None, self._client.bucket_exists, self._bucket):
            msg = f"bucket {self._bucket!r} does not exist"
            raise StorageUnavailable(msg, backend=_BACKEND)

    async def close(self) -> None:
        """Close pooled connections."""
        self._http.clear()


def _check_range(offset: int, length: int | None) -> None:
    if offset < 0 or (length is not None and length < 0):
        msg = "offset and length must not be negative"
        raise ValueError(msg)

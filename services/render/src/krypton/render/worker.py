"""The work behind ``svc.render.frame`` and ``svc.transcode.instance``, free of NATS.

Decoding and encoding are CPU-bound: they run in worker threads (numpy and the codecs release
the GIL for the heavy part), at most `concurrency` at a time so a burst queues here instead of
starving the event loop. Rendered images are kept in a bounded in-memory cache keyed by the
content hash and every parameter; transcoded instances are kept as derived objects.
"""

from __future__ import annotations

import asyncio
import os
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import msgspec
from pydicom.uid import ExplicitVRLittleEndian

from krypton.contracts.render.v1 import RenderRequest
from krypton.contracts.transcode.v1 import TranscodeRequest, TranscodeResponse
from krypton.core.logging import get_logger
from krypton.dicom.header import read_header
from krypton.dicom.pixels import DecodeError, decode_frame, to_explicit_le
from krypton.render.encode import encode_image
from krypton.render.imaging import fit_viewport, to_display
from krypton.storage.base import ObjectStore
from krypton.storage.errors import ObjectNotFound
from krypton.storage.keys import derived_key

__all__ = ["RenderCache", "RenderResult", "Worker"]

_log = get_logger("krypton.render")


@dataclass(frozen=True, slots=True)
class RenderResult:
    """A rendered image, or why there is none (`status` is HTTP-like)."""

    status: int
    body: bytes = b""
    media_type: str = ""
    reason: str | None = None


class RenderCache:
    """Least-recently-used rendered images, bounded by their total size in bytes."""

    def __init__(self, max_bytes: int) -> None:
        """Keep at most `max_bytes` of encoded images."""
        self.max_bytes = max_bytes
        self.size = 0
        self._items: OrderedDict[RenderRequest, bytes] = OrderedDict()

    def get(self, key: RenderRequest) -> bytes | None:
        """The cached image for `key`, refreshed as most recently used."""
        body = self._items.get(key)
        if body is not None:
            self._items.move_to_end(key)
        return body

    def put(self, key: RenderRequest, body: bytes) -> None:
        """Remember `body`, evicting the least recently used images beyond the bound."""
        if len(body) > self.max_bytes:
            return
        old = self._items.pop(key, None)
        if old is not None:
            self.size -= len(old)
        self._items[key] = body
        self.size += len(body)
        while self.size > self.max_bytes:
            _, evicted = self._items.popitem(last=False)
            self.size -= len(evicted)

    def __len__(self) -> int:
        """Number of cached images."""
        return len(self._items)


class Worker:
    """Renders frames and transcodes instances read from the object store."""

    def __init__(
        self, store: ObjectStore, *, cache_bytes: int = 256 * 1024**2, concurrency: int = 0
    ) -> None:
        """Use `store`; `concurrency` 0 means one decoding thread per core."""
        self.store = store
        self.cache = RenderCache(cache_bytes)
        self._slots = asyncio.Semaphore(concurrency or os.cpu_count() or 2)

    async def _source(self, key: str) -> bytes | Path:
        """The instance as a local file when the store has one, else its bytes."""
        path = self.store.local_path(key)
        if path is not None and path.is_file():
            return path
        return await self.store.read(key)

    async def render(self, request: RenderRequest) -> RenderResult:
        """Render one frame as JPEG or PNG (from the cache when it was rendered before)."""
        cached = self.cache.get(request)
        if cached is not None:
            return RenderResult(200, cached, request.media_type.value)
        try:
            source = await self._source(request.object_key)
        except ObjectNotFound:
            return RenderResult(404, reason="instance not found")
        async with self._slots:
            try:
                body = await asyncio.to_thread(_render, source, request)
            except DecodeError as exc:
                return RenderResult(422, reason=str(exc))
        self.cache.put(request, body)
        return RenderResult(200, body, request.media_type.value)

    async def transcode(self, request: TranscodeRequest) -> TranscodeResponse:
        """Write the instance in the wanted syntax as a derived object (once) and name it."""
        wanted = request.transfer_syntax_uid
        target = derived_key(
            f"ts-{wanted}",
            request.study_uid,
            request.series_uid,
            request.sop_instance_uid,
            "dcm",
        )
        sidecar = target.removesuffix(".dcm") + ".json"
        if await self.store.exists(sidecar):
            # Written after the object: its presence means the object is complete.
            known = msgspec.json.decode(await self.store.read(sidecar), type=TranscodeResponse)
            return known
        try:
            source = await self._source(request.object_key)
        except ObjectNotFound:
            return TranscodeResponse(status=404, reason="instance not found")
        async with self._slots:
            try:
                data = await asyncio.to_thread(_transcode, source, wanted)
            except DecodeError as exc:
                return TranscodeResponse(status=406, reason=str(exc))
        stored = await self.store.put_bytes(target, data)
        header = await asyncio.to_thread(read_header, data)
        response = TranscodeResponse(
            status=200,
            object_key=target,
            size=stored.size,
            pixel_data_offset=header.pixel_data_offset,
        )
        await self.store.put_bytes(sidecar, msgspec.json.encode(response))
        _log.debug("transcoded", sop=request.sop_instance_uid, syntax=wanted, size=stored.size)
        return response


def _render(source: bytes | Path, request: RenderRequest) -> bytes:
    arr, ds = decode_frame(source, request.frame - 1)
    image = fit_viewport(to_display(arr, ds, request.window), request.viewport)
    return encode_image(image, request.media_type, request.quality)


def _transcode(source: bytes | Path, wanted: str) -> bytes:
    if wanted != ExplicitVRLittleEndian:  # the only syntax written so far (codecs.ENCODABLE)
        msg = f"cannot encode transfer syntax {wanted}"
        raise DecodeError(msg)
    return to_explicit_le(source)

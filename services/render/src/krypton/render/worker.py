"""The work behind ``svc.render.frame`` and ``svc.transcode.instance``, free of NATS.

Decoding and encoding are CPU-bound: they run in worker threads (numpy and the codecs release
the GIL for the heavy part), at most `concurrency` at a time so a burst queues here instead of
starving the event loop. Rendered images are kept in a bounded in-memory cache keyed by the
content hash and every parameter; transcoded instances are kept as derived objects.

Precomputed renditions (`precompute`, run for every `instance.stored` by the service's durable
consumer): the default thumbnail, kept as a derived object and served for the default
thumbnail request, and, by policy, an HTJ2K lossless copy of uncompressed and JPEG 2000
instances. Render and transcode start from that copy when the original is compressed (its
HTJ2K decode takes 1.6 ms for a 512x512 frame against 25-30 ms for JPEG 2000); an uncompressed
original is read as it is, which is faster still. The original bytes are never touched.

Precompute is background work and must not slow ingest down: its decoding and encoding run in
a thread pool of its own, one thread whose scheduling priority is lowered (`precompute_nice`,
19 by default: the Linux nice value of that thread only, not of the process). Under an ingest
burst the CPU goes to the gateway, ingest and index first and precompute catches up when they
are idle; on an idle machine it runs at full speed. It does not take the slots of live render
and transcode requests either, so a starved precompute never holds a viewer back.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import threading
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, TypeVar

import msgspec
from pydicom.uid import UID, HTJ2KLossless

from krypton.contracts.ingest.v1 import InstanceStored
from krypton.contracts.render.v1 import (
    THUMBNAIL_KIND,
    THUMBNAIL_QUALITY,
    THUMBNAIL_VIEWPORT,
    RenderedMediaValues,
    RenderRequest,
)
from krypton.contracts.transcode.v1 import TranscodeRequest, TranscodeResponse
from krypton.core.logging import get_logger
from krypton.dicom.codecs import DECODABLE, NATIVE
from krypton.dicom.header import read_header
from krypton.dicom.metadata import build_metadata, metadata_key
from krypton.dicom.pixels import DecodeError, transcode
from krypton.dicom.rendering import render_frame
from krypton.storage.base import ObjectStore
from krypton.storage.errors import ObjectNotFound
from krypton.storage.keys import derived_key, sidecar_key, transcoded_key

__all__ = ["PRECOMPUTE_HTJ2K_FROM", "RenderCache", "RenderResult", "Worker", "thumbnail_request"]

_log = get_logger("krypton.render")
_R = TypeVar("_R")

#: Originals of which the HTJ2K lossless copy is made (the issue's policy): uncompressed and
#: JPEG 2000 (lossless and lossy: the copy is lossless of the decoded pixels).
PRECOMPUTE_HTJ2K_FROM: frozenset[str] = NATIVE | {
    UID("1.2.840.10008.1.2.4.90"),
    UID("1.2.840.10008.1.2.4.91"),
}


def thumbnail_request(object_key: str, sha256: str, **instance: str | None) -> RenderRequest:
    """The default thumbnail's render request (the one precomputed at ingest)."""
    return RenderRequest(
        object_key=object_key,
        sha256=sha256,
        frame=1,
        media_type=RenderedMediaValues.JPEG,
        quality=THUMBNAIL_QUALITY,
        viewport=THUMBNAIL_VIEWPORT,
        window=None,
        **instance,
    )


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
        self.hits = 0  # exported as krypton_cache_lookups_total{cache="render_image"}
        self.misses = 0

    def get(self, key: RenderRequest) -> bytes | None:
        """The cached image for `key`, refreshed as most recently used."""
        body = self._items.get(key)
        if body is not None:
            self._items.move_to_end(key)
            self.hits += 1
        else:
            self.misses += 1
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
        self,
        store: ObjectStore,
        *,
        cache_bytes: int = 256 * 1024**2,
        concurrency: int = 0,
        precompute_htj2k: bool = True,
        precompute_thumbnail: bool = True,
        precompute_metadata: bool = True,
        precompute_nice: int = 19,
    ) -> None:
        """Use `store`; `concurrency` 0 means one decoding thread per core.

        `precompute_htj2k`, `precompute_thumbnail` and `precompute_metadata` are the
        ingest-time policy; `precompute_nice` the nice value added to the precompute thread
        (0: same priority as live requests).
        """
        self.precompute_metadata = precompute_metadata
        self.store = store
        self.precompute_htj2k = precompute_htj2k
        self.precompute_thumbnail = precompute_thumbnail
        self.cache = RenderCache(cache_bytes)
        self._slots = asyncio.Semaphore(concurrency or os.cpu_count() or 2)
        # Transcoded objects being written after their bytes were answered, by key.
        self._keeping: dict[str, asyncio.Task[TranscodeResponse]] = {}
        self._background = ThreadPoolExecutor(
            max_workers=1,
            thread_name_prefix="precompute",
            initializer=_lower_priority,
            initargs=(precompute_nice,),
        )

    def close(self) -> None:
        """Stop the precompute thread (a precompute in progress finishes first)."""
        self._background.shutdown(wait=True, cancel_futures=True)

    async def _source(self, key: str) -> bytes | Path:
        """The instance as a local file when the store has one, else its bytes."""
        path = self.store.local_path(key)
        if path is not None and path.is_file():
            return path
        return await self.store.read(key)

    async def _small(self, key: str) -> bytes | None:
        """A small object (a sidecar), or None when there is none.

        A local file is read in the event loop: a few hundred bytes from the page cache cost
        less than the hop to a worker thread and back, which the request would wait for.
        """
        path = self.store.local_path(key)
        if path is not None:
            try:
                return path.read_bytes()
            except (FileNotFoundError, NotADirectoryError):
                return None
        try:
            return await self.store.read(key)
        except ObjectNotFound:
            return None

    async def _best_source(
        self, object_key: str, syntax: str | None, uids: tuple[str, str, str] | None
    ) -> bytes | Path:
        """The precomputed HTJ2K copy when there is one and the original is compressed."""
        if uids is not None and syntax is not None and UID(syntax) not in NATIVE | {HTJ2KLossless}:
            copy = _htj2k_key(*uids)
            if await self._small(_sidecar(copy)) is not None:
                try:
                    return await self._source(copy)
                except ObjectNotFound:
                    pass
        return await self._source(object_key)

    async def render(self, request: RenderRequest) -> RenderResult:
        """Render one frame as JPEG or PNG (from the cache when it was rendered before)."""
        return await self._render(request, background=False)

    async def _compute(self, background: bool, fn: Callable[..., _R], *args: object) -> _R:
        """Run CPU-bound `fn` in a live slot, or in the low-priority precompute thread."""
        if background:
            return await asyncio.get_running_loop().run_in_executor(self._background, fn, *args)
        async with self._slots:
            return await asyncio.to_thread(fn, *args)

    async def _render(self, request: RenderRequest, *, background: bool) -> RenderResult:
        cached = self.cache.get(request)
        if cached is not None:
            return RenderResult(200, cached, request.media_type.value)
        uids = _uids(request.study_uid, request.series_uid, request.sop_instance_uid)
        if uids is not None and request.is_default_thumbnail():
            try:
                body = await self.store.read(_thumbnail_key(*uids))
            except ObjectNotFound:
                pass
            else:
                self.cache.put(request, body)
                return RenderResult(200, body, request.media_type.value)
        try:
            source = await self._best_source(request.object_key, request.transfer_syntax_uid, uids)
        except ObjectNotFound:
            return RenderResult(404, reason="instance not found")
        try:
            body = await self._compute(background, render_frame, source, request)
        except DecodeError as exc:
            return RenderResult(422, reason=str(exc))
        self.cache.put(request, body)
        return RenderResult(200, body, request.media_type.value)

    async def transcode(
        self, request: TranscodeRequest, *, background: bool = False
    ) -> TranscodeResponse:
        """Write the instance in the wanted syntax as a derived object (once) and name it.

        `background`: computed in the low-priority precompute thread (ingest-time copies).
        """
        response, _ = await self.transcode_inline(request, background=background)
        keeping = self._keeping.get(response.object_key or "")
        if keeping is not None:
            return await asyncio.shield(keeping)
        return response

    async def transcode_inline(
        self, request: TranscodeRequest, *, background: bool = False
    ) -> tuple[TranscodeResponse, bytes | None]:
        """The derived object's description, and its bytes when this call just made them.

        Bytes just made are written to the store in the background (`_keep`): the caller can
        serve them at once, without waiting for the durable write nor reading them back.
        """
        wanted = request.transfer_syntax_uid
        uids = (request.study_uid, request.series_uid, request.sop_instance_uid)
        target = _transcoded_key(wanted, *uids)
        keeping = self._keeping.get(target)
        if keeping is not None:  # made a moment ago, still being written
            return await asyncio.shield(keeping), None
        sidecar = _sidecar(target)
        # Written after the object: its presence means the object is complete.
        known = await self._small(sidecar)
        if known is not None:
            return msgspec.json.decode(known, type=TranscodeResponse), None
        try:
            source = await self._best_source(
                request.object_key, request.source_transfer_syntax_uid, uids
            )
        except ObjectNotFound:
            return TranscodeResponse(status=404, reason="instance not found"), None
        try:
            data, offset = await self._compute(background, _transcode, source, wanted)
        except DecodeError as exc:
            return TranscodeResponse(status=406, reason=str(exc)), None
        response = TranscodeResponse(
            status=200, object_key=target, size=len(data), pixel_data_offset=offset
        )
        task = asyncio.create_task(self._keep(target, sidecar, data, response))
        self._keeping[target] = task
        task.add_done_callback(lambda done: self._kept(target, done))
        _log.debug("transcoded", sop=request.sop_instance_uid, syntax=wanted, size=len(data))
        return response, data

    def _kept(self, target: str, task: asyncio.Task[TranscodeResponse]) -> None:
        self._keeping.pop(target, None)
        if not task.cancelled() and (error := task.exception()) is not None:
            # The bytes were answered; the next request transcodes again.
            _log.warning("transcoded object not kept", key=target, error=repr(error))

    async def _keep(
        self, target: str, sidecar: str, data: bytes, response: TranscodeResponse
    ) -> TranscodeResponse:
        """Write a transcoded instance, then its sidecar (which says the object is complete)."""
        await self.store.put_bytes(target, data)
        await self.store.put_bytes(sidecar, msgspec.json.encode(response))
        return response

    async def _precompute_metadata(self, event: InstanceStored) -> None:
        """The instance's WADO-RS metadata JSON, as the gateway would compute it on first read."""
        key = metadata_key(
            event.study.study_uid, event.series.series_uid, event.instance.sop_instance_uid
        )
        if await self.store.exists(key):
            return
        try:
            source = await self._source(event.object_key)
            body = await self._compute(True, _metadata, source, event)
        except ObjectNotFound:
            return
        except Exception as exc:  # the gateway computes it on first read instead
            _log.info(
                "no metadata precomputed", sop=event.instance.sop_instance_uid, error=repr(exc)
            )
            return
        await self.store.put_bytes(key, body)

    async def precompute(self, event: InstanceStored) -> None:
        """Make what a viewer needs first: the thumbnail and, by policy, the HTJ2K copy.

        Idempotent (each rendition is looked up before it is made), so a redelivered event
        costs a few existence checks. An instance that cannot be decoded gets neither.
        """
        inst = event.instance
        syntax = inst.transfer_syntax_uid
        if self.precompute_metadata:
            await self._precompute_metadata(event)
        if inst.rows is None or UID(syntax) not in DECODABLE:
            return  # no pixels, or nothing the codecs read
        uids = (event.study.study_uid, event.series.series_uid, inst.sop_instance_uid)
        if self.precompute_htj2k and UID(syntax) in PRECOMPUTE_HTJ2K_FROM:
            result = await self.transcode(
                TranscodeRequest(
                    object_key=event.object_key,
                    study_uid=uids[0],
                    series_uid=uids[1],
                    sop_instance_uid=uids[2],
                    transfer_syntax_uid=HTJ2KLossless,
                    source_transfer_syntax_uid=syntax,
                ),
                background=True,
            )
            if result.status != 200:
                _log.info("no HTJ2K copy", sop=uids[2], reason=result.reason)
        if self.precompute_thumbnail and not await self.store.exists(_thumbnail_key(*uids)):
            request = thumbnail_request(
                event.object_key,
                event.sha256,
                study_uid=uids[0],
                series_uid=uids[1],
                sop_instance_uid=uids[2],
                transfer_syntax_uid=syntax,
            )
            rendered = await self._render(request, background=True)
            if rendered.status == 200:
                await self.store.put_bytes(_thumbnail_key(*uids), rendered.body)


def _metadata(source: bytes | Path, event: InstanceStored) -> bytes:
    def build(header: bytes | BinaryIO) -> bytes:
        return build_metadata(
            header,
            study_uid=event.study.study_uid,
            series_uid=event.series.series_uid,
            sop_instance_uid=event.instance.sop_instance_uid,
            transfer_syntax_uid=event.instance.transfer_syntax_uid,
            has_pixel_data=event.pixel_data_offset is not None,
        )

    if isinstance(source, bytes):
        return build(source)
    with source.open("rb") as file:
        return build(file)


def _lower_priority(nice: int) -> None:
    """Thread initializer: lower this thread's scheduling priority by `nice` (Linux: per thread)."""
    if nice > 0:
        # Not fatal where threads cannot be reniced (another OS, a locked-down container).
        with contextlib.suppress(OSError, AttributeError):
            tid = threading.get_native_id()
            # Relative to the thread's current value: an absolute one would raise the priority
            # of a process that already runs niced.
            os.setpriority(
                os.PRIO_PROCESS, tid, min(19, os.getpriority(os.PRIO_PROCESS, tid) + nice)
            )


def _uids(study: str | None, series: str | None, sop: str | None) -> tuple[str, str, str] | None:
    if study is None or series is None or sop is None:
        return None
    return study, series, sop


def _transcoded_key(syntax: str, study: str, series: str, sop: str) -> str:
    return transcoded_key(syntax, study, series, sop)  # shared with the gateway


def _htj2k_key(study: str, series: str, sop: str) -> str:
    return _transcoded_key(HTJ2KLossless, study, series, sop)


def _sidecar(key: str) -> str:
    return sidecar_key(key)


def _thumbnail_key(study: str, series: str, sop: str) -> str:
    return derived_key(THUMBNAIL_KIND, study, series, sop, "jpg")


def _transcode(source: bytes | Path, wanted: str) -> tuple[bytes, int | None]:
    """The instance in `wanted`, and the offset of its Pixel Data tag (one thread hop)."""
    data = transcode(source, wanted)
    return data, read_header(data).pixel_data_offset

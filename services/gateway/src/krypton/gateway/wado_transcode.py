"""Instances transcoded in the gateway itself, when both syntaxes have fast codecs.

Asking the render service (``svc.transcode.instance``) costs a NATS round trip with the whole
result in the reply (~0.5 MB for a 512x512 CT slice) and the service's request handling: the
first request of an instance measured 9-22 ms above the codec. For the pairs below the gateway
transcodes in its CPU threads (`wado_pool`, one per core; the event loop only waits) with the
render service's own function (`krypton.dicom.pixels.transcode`: identical bytes), answers with
the bytes at once and writes the derived object and its sidecar afterwards, under the same key
the service uses (`storage.keys.transcoded_key`), so both find each other's results and the next
read is the stored object.

Which pairs, by figures (`benchmarks/transcode_codecs.py`: 512x512 16-bit CT, one thread,
with an event loop ticking beside it; "stall" is the longest the loop waited for the GIL):

- sources: uncompressed (deflated too, when the size of its pixels is known), JPEG-LS (CharLS
  through imagecodecs, releases the GIL), HTJ2K (OpenJPH, 3-5 ms, releases it), RLE (its
  PackBits segments through imagecodecs, `pixels.decode_rle_frame`, releases it; with
  pylibjpeg-rle it kept the GIL: 2048x2048, 40-60 ms of a 92 ms transcode); JPEG baseline
  (pylibjpeg-libjpeg) keeps the GIL for a whole frame (2048x2048: ~400 ms), so it is done
  here only for frames up to `_GIL_FRAME_BYTES` (a 512x512 slice: a few ms); JPEG 2000 only
  from the HTJ2K lossless copy the render service precomputes (4.6 ms): its own decoder
  (pylibjpeg-openjpeg) holds the GIL for the whole decode (65-120 ms).
- targets: Explicit VR Little Endian, JPEG-LS and HTJ2K lossless (imagecodecs), JPEG baseline
  (simplejpeg): all release the GIL. RLE (pydicom's encoder holds the GIL ~30 ms) and JPEG 2000
  (OpenJPEG, ~110 ms) are still made by the render service, as is anything bigger than
  `_MAX_BYTES` of pixels or source.

Memory stays bounded: at most `wado_pool.size` transcodes hold their source, pixels and result
at a time (the others wait without reading anything), and a result is kept in memory only
until it is written (readers in the meantime share it).
"""

from __future__ import annotations

import asyncio
import contextvars
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import msgspec
from pydicom.uid import (
    HTJ2K,
    JPEG2000,
    UID,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    HTJ2KLossless,
    HTJ2KLosslessRPCL,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGLSLossless,
    JPEGLSNearLossless,
    RLELossless,
)

from krypton.contracts.index.v1 import LocatedInstance
from krypton.contracts.transcode.v1 import TranscodeResponse
from krypton.core.logging import get_logger
from krypton.dicom.codecs import NATIVE
from krypton.dicom.header import read_header
from krypton.dicom.pixels import RLE_WITHOUT_GIL, DecodeError, transcode
from krypton.gateway import timing, wado_pool
from krypton.gateway.wado_services import WadoError, known_transcoded, remember_transcoded
from krypton.storage.base import ObjectStore
from krypton.storage.errors import ObjectNotFound
from krypton.storage.keys import sidecar_key, transcoded_key

__all__ = ["LocalTranscoder", "transcodes_here"]

_log = get_logger("krypton.gateway.wado")

#: Stored syntaxes decoded here.
FROM: Final = NATIVE | {
    RLELossless,
    JPEGLSLossless,
    JPEGLSNearLossless,
    HTJ2KLossless,
    HTJ2KLosslessRPCL,
    HTJ2K,
    JPEGBaseline8Bit,
}
#: Stored syntaxes decoded here from the render service's HTJ2K lossless copy only.
FROM_COPY: Final = frozenset({JPEG2000Lossless, JPEG2000})
#: Syntaxes written here.
TO: Final = frozenset({ExplicitVRLittleEndian, JPEGLSLossless, HTJ2KLossless, JPEGBaseline8Bit})
#: Stored syntaxes whose decoder keeps the GIL for a whole frame: here for small frames only.
#: RLE is not one when its frames decode through imagecodecs (`pixels.RLE_WITHOUT_GIL`).
GIL_HOLDERS: Final = frozenset({JPEGBaseline8Bit} | (set() if RLE_WITHOUT_GIL else {RLELossless}))
# Bigger sources, or pixels bigger than this once decoded, go to the render service.
_MAX_BYTES: Final = 32 * 1024 * 1024
# Largest decoded frame of a `GIL_HOLDERS` source done here (a 512x1024 16-bit frame).
_GIL_FRAME_BYTES: Final = 1024 * 1024
_COLOUR: Final = ("RGB", "YBR", "PALETTE")  # photometric prefixes of 3-sample pixels once decoded

_Memo = tuple[str, str, str]


def _pixel_bytes(instance: LocatedInstance) -> int | None:
    """Bytes of the decoded pixels (0 without pixels), None when the index does not know."""
    if instance.rows is None:
        return None if instance.pixel_data_offset is not None else 0
    samples = 3 if (instance.photometric_interpretation or "").startswith(_COLOUR) else 1
    depth = max((instance.bits_allocated or 16) // 8, 1)
    frames = max(instance.number_of_frames or 1, 1)
    return instance.rows * (instance.columns or 0) * samples * depth * frames


def transcodes_here(instance: LocatedInstance, syntax: str) -> bool:
    """Whether the gateway transcodes `instance` to `syntax` itself (see the module doc).

    JPEG 2000 originals still need their HTJ2K copy (`LocalTranscoder.transcode` looks).
    """
    source = UID(instance.transfer_syntax_uid)
    if UID(syntax) not in TO or source == syntax or (source not in FROM | FROM_COPY):
        return False
    if instance.size > _MAX_BYTES:
        return False
    pixels = _pixel_bytes(instance)
    if source in GIL_HOLDERS:
        frames = max(instance.number_of_frames or 1, 1)
        return pixels is not None and pixels // frames <= _GIL_FRAME_BYTES
    if pixels is None:
        # A deflated data set without known pixel dimensions inflates to an unknown size.
        return source != DeflatedExplicitVRLittleEndian
    return pixels <= _MAX_BYTES


@dataclass(frozen=True, slots=True)
class _Made:
    """A result made by this process: its description, bytes, and the task writing them."""

    response: TranscodeResponse
    data: bytes
    kept: asyncio.Task[None]
    seconds: float  # spent in the CPU thread (read and transcode)


def _transcode(source: bytes | Path, syntax: str) -> tuple[bytes, float]:
    """In a CPU thread: the instance in `syntax`, and the seconds this took here."""
    started = time.perf_counter()
    if isinstance(source, Path):
        source = source.read_bytes()  # one read, in this thread
    return transcode(source, syntax), time.perf_counter() - started


def _pixel_data_offset(data: bytes) -> int | None:
    """In a CPU thread: the file offset of the Pixel Data tag (frames read by range from it)."""
    return read_header(data).pixel_data_offset


class LocalTranscoder:
    """Transcodes instances in this process; one per gateway (`GatewayContext.transcoder`)."""

    def __init__(self, concurrency: int = 0) -> None:
        """At most `concurrency` transcodes at a time (0: one per CPU thread)."""
        self._slots = asyncio.Semaphore(concurrency or wado_pool.size)
        # Made or being made, by (content hash, original key, syntax); a result stays here
        # until it is written, so that concurrent and early readers share it.
        self._flights: dict[_Memo, asyncio.Task[_Made | TranscodeResponse | None]] = {}
        self.made = 0  # transcodes done here (tests, metrics)

    async def transcode(
        self, store: ObjectStore, instance: LocatedInstance, syntax: str
    ) -> tuple[TranscodeResponse, bytes | None] | None:
        """The derived object, with its bytes when they were just made (not yet stored).

        None: not made here (`transcodes_here` is false, or a JPEG 2000 original has no
        HTJ2K copy yet): the caller asks the render service.

        Raises:
            WadoError: 404 when the instance is gone, 406 when it cannot be transcoded.
        """
        if not transcodes_here(instance, syntax):
            return None
        known = known_transcoded(instance, syntax)
        if known is not None:
            timing.add("transcode_known", 0.0)
            return known, None
        with timing.stage("transcode_here"):
            made = await asyncio.shield(self._flight(store, instance, syntax))
        if isinstance(made, _Made):
            # The work itself, beside the stage that waited for it (thread hop, queue, reads).
            timing.add("transcode_thread", made.seconds)
            return made.response, made.data
        return None if made is None else (made, None)

    async def stored(
        self, store: ObjectStore, instance: LocatedInstance, syntax: str
    ) -> TranscodeResponse | None:
        """Like `transcode`, once the derived object is in the store (frames read it by range).

        Raises:
            WadoError: 404 when the instance is gone, 406 when it cannot be transcoded, 503
                when the derived object could not be written.
        """
        found = await self.transcode(store, instance, syntax)
        if found is None:
            return None
        response, data = found
        if data is None:
            return response
        flight = self._flights.get(_memo(instance, syntax))
        made = flight.result() if flight is not None and flight.done() else None
        if isinstance(made, _Made):
            await asyncio.shield(made.kept)
        kept = known_transcoded(instance, syntax)  # with its Pixel Data offset
        if kept is None:
            raise WadoError(503, "the transcoded instance could not be stored; retry later")
        return kept

    def _flight(
        self, store: ObjectStore, instance: LocatedInstance, syntax: str
    ) -> asyncio.Task[_Made | TranscodeResponse | None]:
        memo = _memo(instance, syntax)
        flight = self._flights.get(memo)
        if flight is None:
            # Its own task (a fresh context: it times nothing of one request): a reader going
            # away does not cancel it for the others.
            flight = asyncio.create_task(
                self._make(store, instance, syntax), context=contextvars.Context()
            )
            self._flights[memo] = flight
            flight.add_done_callback(lambda done: self._landed(memo, done))
        return flight

    def _landed(self, memo: _Memo, flight: asyncio.Task[_Made | TranscodeResponse | None]) -> None:
        made = None if flight.cancelled() or flight.exception() else flight.result()
        if isinstance(made, _Made):  # shared until written
            made.kept.add_done_callback(lambda _: self._drop(memo, flight))
        else:
            self._drop(memo, flight)

    def _drop(self, memo: _Memo, flight: asyncio.Task[_Made | TranscodeResponse | None]) -> None:
        if self._flights.get(memo) is flight:
            del self._flights[memo]

    async def _make(
        self, store: ObjectStore, instance: LocatedInstance, syntax: str
    ) -> _Made | TranscodeResponse | None:
        target = transcoded_key(
            syntax, instance.study_uid, instance.series_uid, instance.sop_instance_uid
        )
        sidecar = sidecar_key(target)
        described = await _small(store, sidecar)  # written after the object: it is complete
        if described is not None:
            response = msgspec.json.decode(described, type=TranscodeResponse)
            remember_transcoded(instance, syntax, response)
            return response
        source_key = instance.object_key
        if UID(instance.transfer_syntax_uid) in FROM_COPY:
            source_key = transcoded_key(
                HTJ2KLossless, instance.study_uid, instance.series_uid, instance.sop_instance_uid
            )
            if await _small(store, sidecar_key(source_key)) is None:
                return None  # no HTJ2K copy (yet): the render service decodes the original
        try:
            async with self._slots:
                path = store.local_path(source_key)
                source = path if path is not None else await store.read(source_key)
                data, seconds = await wado_pool.run(_transcode, source, syntax)
        except (ObjectNotFound, FileNotFoundError):
            raise WadoError(404, "instance not found") from None
        except DecodeError as exc:
            raise WadoError(406, str(exc)) from None
        except Exception as exc:  # a malformed data set fails in the parser's own ways
            _log.warning("transcoding failed", sop=instance.sop_instance_uid, error=repr(exc))
            raise WadoError(406, "the instance cannot be transcoded") from None
        self.made += 1
        # Readers of the whole instance need no Pixel Data offset: it is found while writing.
        response = TranscodeResponse(status=200, object_key=target, size=len(data))
        kept = asyncio.create_task(_keep(store, instance, syntax, sidecar, data, response))
        return _Made(response, data, kept, seconds)


def _memo(instance: LocatedInstance, syntax: str) -> _Memo:
    return instance.sha256, instance.object_key, str(syntax)


async def _small(store: ObjectStore, key: str) -> bytes | None:
    """A sidecar (a few hundred bytes), or None when there is none."""
    path = store.local_path(key)
    if path is not None:
        try:
            return path.read_bytes()  # from the page cache: cheaper than a thread hop
        except (FileNotFoundError, NotADirectoryError):
            return None
    try:
        return await store.read(key)
    except ObjectNotFound:
        return None


async def _keep(
    store: ObjectStore,
    instance: LocatedInstance,
    syntax: str,
    sidecar: str,
    data: bytes,
    response: TranscodeResponse,
) -> None:
    """Write the derived object, then its sidecar (which says it is complete); remember it.

    The sidecar's response has the Pixel Data offset. A failure is logged: the bytes were
    answered already, the next reader transcodes again.
    """
    key = response.object_key
    assert key is not None
    try:
        offset = await wado_pool.run(_pixel_data_offset, data)
        response = msgspec.structs.replace(response, pixel_data_offset=offset)
        await store.put_bytes(key, data)
        await store.put_bytes(sidecar, msgspec.json.encode(response))
    except Exception as exc:
        _log.warning("transcoded object not kept", key=key, error=repr(exc))
        return
    remember_transcoded(instance, syntax, response)

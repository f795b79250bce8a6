"""WADO-RS retrieval routes: study, series, instance, metadata, frames, rendered, thumbnail.

Every route authenticates, then asks the index where the instances are (`svc.index.locate`,
which applies the caller's access rule: hidden and missing look the same, 404; answers are kept
a short while per caller, `wado_cache.LocateCache`). Bytes come from the object store (a
single instance or frame read straight into the answer, `wado_read`). Transcoding between
syntaxes with fast codecs is done by the gateway itself (`wado_transcode`), other pairs are
asked of the render service over NATS; so is rendering, except for the frames of uncompressed
and HTJ2K instances, which the gateway renders itself (`wado_render`).

Conformance choices:
- Instances are served in their original transfer syntax when the request names none (and for
  ``transfer-syntax=*``): the stored bytes are exactly what the producer sent, every DICOMweb
  client reads any syntax in Part 10, and transcoding by default would multiply bytes and CPU.
  Explicit VR Little Endian is produced on request (``transfer-syntax=1.2.840.10008.1.2.1``);
  anything else the server cannot produce is a 406.
- Frames default to ``application/octet-stream`` (uncompressed, little endian), as PS3.18 asks;
  a compressed frame media type (``image/jls``, ``image/jp2``, ``image/jpeg``, ``image/jphc``,
  ``image/dicom-rle``) or ``transfer-syntax=*`` gets the stored codestream without decoding.
- Every answer that discloses data is audited (``retrieve.instance`` for instances, frames and
  bulk data, ``retrieve.metadata``, ``retrieve.rendered`` for rendered and thumbnails) durably
  before it leaves; when the audit stream cannot take the event the answer is a 503. A 304
  (the caller's cached copy is still valid) discloses nothing and is not audited.
- Rendered study and series resources are a ``multipart/related`` of each instance's first
  frame rendered (PS3.18 9.5.1.2: a rendered study/series is the rendering of its instances).
"""

from __future__ import annotations

import asyncio
import hashlib
import re
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Sequence
from contextlib import aclosing
from typing import Any, Final, TypeVar

import msgspec
from fastapi import APIRouter
from pydicom.uid import DeflatedExplicitVRLittleEndian, ExplicitVRLittleEndian
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from krypton.contracts.audit.v1 import AccessBasisValues, AuditEventTypeValues
from krypton.contracts.common.v1 import Actor
from krypton.contracts.index.v1 import LocatedInstance
from krypton.contracts.render.v1 import (
    THUMBNAIL_KIND,
    THUMBNAIL_QUALITY,
    THUMBNAIL_VIEWPORT,
    RenderedMediaValues,
    RenderRequest,
    VoiFunctionValues,
    Window,
)
from krypton.contracts.transcode.v1 import TranscodeResponse
from krypton.core.logging import get_logger
from krypton.dicom.codecs import (
    OCTET_STREAM,
    can_produce,
    frame_media_type,
    is_native,
)
from krypton.gateway import audit_emit as audit, timing, wado_read
from krypton.gateway.context import GatewayContext
from krypton.gateway.lean_route import LeanRoute
from krypton.gateway.problems import problem
from krypton.gateway.security import audit_refused, guarded
from krypton.gateway.wado_accept import MediaRange, parse_accept, ranges_for_parts
from krypton.gateway.wado_bulkdata import locate_value, parse_range
from krypton.gateway.wado_frames import ImageShape, frame_layout, frame_range, read_frame
from krypton.gateway.wado_metadata import (
    instance_metadata,
    metadata_etag,
    single_metadata,
    stream_metadata,
)
from krypton.gateway.wado_render import render_here, renders_here
from krypton.gateway.wado_services import (
    WadoError,
    forget_transcoded,
    locate,
    render,
    transcode,
    transcode_inline,
)
from krypton.storage.errors import ObjectNotFound
from krypton.storage.keys import derived_key

__all__ = ["router"]


router = APIRouter(tags=["DICOMweb"], route_class=LeanRoute)
_log = get_logger("krypton.gateway.wado")
_UID: Final = re.compile(r"^[0-9]+(\.[0-9]+)*$")
_DICOM: Final = "application/dicom"
_DICOM_JSON: Final = "application/dicom+json"
_PREFETCH: Final = 4
# Instances up to this size are read whole, ahead of sending (at most _PREFETCH at a time);
# bigger ones are streamed from the store in chunks.
_READ_AHEAD_BYTES: Final = 4 * 1024 * 1024
_MAX_FRAMES_PER_REQUEST: Final = 4096
_IMMUTABLE: Final = "private, max-age=86400"
_T = TypeVar("_T")
# Where an instance's part comes from: (its object key, or the bytes just transcoded; its
# transfer syntax; its size).
_Source = Callable[[LocatedInstance], Coroutine[Any, Any, tuple[str | bytes, str, int]]]


def _check_uids(*uids: str | None) -> None:
    for uid in uids:
        if uid is not None and (len(uid) > 64 or not _UID.match(uid)):
            raise WadoError(400, "a UID in the path is not a valid DICOM UID")


async def _run(
    request: Request, handler: Callable[[GatewayContext, Actor], Awaitable[Response]]
) -> Response:
    timings = timing.begin()

    async def wrapped(r: Request, ctx: GatewayContext, actor: Actor) -> Response:
        timing.add("auth", time.perf_counter() - timings.started)
        try:
            return await handler(ctx, actor)
        except audit.AuditUnavailableError:
            return audit.unavailable()
        except WadoError as exc:
            # A read of something missing or hidden is a refused access: recorded (with the
            # study named in the path, so its patient sees the attempt), answered as 404.
            if exc.status == 404 and await audit_refused(
                r, ctx, actor, AuditEventTypeValues.ACCESS_DENIED, "not found or not permitted",
                study_uids=[s] if (s := r.path_params.get("study")) else [],
            ):  # fmt: skip
                return audit.unavailable()
            headers = {"Retry-After": "2"} if exc.status == 503 else None
            return problem(exc.status, exc.reason, headers=headers)

    response = await guarded(request, wrapped)
    timings.apply(response)
    return response


async def _audit(
    request: Request,
    ctx: GatewayContext,
    actor: Actor,
    type_: AuditEventTypeValues,
    instances: Sequence[LocatedInstance],
) -> None:
    """Record the disclosure of `instances` before the answer leaves.

    The basis is the grant the index names for the study (care relationship, share code,
    break-the-glass), else the one `audit_emit.basis_for` derives from the caller's role
    (admin, patient_self, producing_structure).

    Raises:
        AuditUnavailableError: the event could not be recorded (`_run` answers 503).
    """
    studies = list(dict.fromkeys(i.study_uid for i in instances))
    fields: dict[str, object] = {"study_uids": studies, "instances": len(instances)}
    granted = {i.access_basis for i in instances if i.access_basis}
    if len(granted) == 1:
        fields["basis"] = AccessBasisValues(granted.pop())
    with timing.stage("audit"):
        await audit.emit(ctx, audit.event(request, actor, type_, **fields))


def _audit_task(
    request: Request,
    ctx: GatewayContext,
    actor: Actor,
    type_: AuditEventTypeValues,
    instances: Sequence[LocatedInstance],
) -> asyncio.Task[None]:
    """Start recording the disclosure of `instances`; `_alongside` awaits it."""
    return asyncio.create_task(_audit(request, ctx, actor, type_, instances))


def _forget(task: asyncio.Task[None]) -> None:
    if not task.cancelled():
        task.exception()  # retrieved: a failed event of an abandoned answer is not reported


async def _alongside(audited: asyncio.Task[None], work: Awaitable[_T]) -> _T:
    """Do `work` while JetStream acknowledges the audit event; return once both are done.

    The guarantee of `_audit` holds: nothing is answered before the event is durable (an
    `AuditUnavailableError` from the event wins over the work's result). When the work fails
    the answer is an error that discloses nothing, and the event (maybe already recorded) is
    left to finish on its own.
    """
    # Two turns of the event loop: the audit task publishes its event, then the NATS client's
    # flusher writes it. The event is then on its way before the work starts, so its round
    # trip to JetStream overlaps the work even when the work never yields (a read from the
    # page cache, a cached body).
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    try:
        result = await work
    except BaseException:
        audited.add_done_callback(_forget)
        raise
    with timing.stage("audit_wait"):
        await audited
    return result


def _accept(request: Request) -> list[MediaRange]:
    try:
        return ranges_for_parts(parse_accept(request.headers.get("accept")))
    except ValueError as exc:
        raise WadoError(400, str(exc)) from None


def _base_url(request: Request, ctx: GatewayContext) -> str:
    return (ctx.settings.public_url or str(request.base_url)).rstrip("/") + "/dicomweb"


# --- Instances (multipart/related; type="application/dicom") ---


async def _transcoded(
    ctx: GatewayContext, instance: LocatedInstance, syntax: str
) -> tuple[TranscodeResponse, bytes | None]:
    """The instance in `syntax`: made here for the fast codecs, else by the render service.

    With the bytes when they were just made (served as they are while they are stored).
    """
    here = await ctx.transcoder.transcode(ctx.store, instance, syntax)
    if here is not None:
        return here
    return await transcode_inline(ctx, instance, syntax)


def _wanted_syntax(ranges: list[MediaRange], instances: Sequence[LocatedInstance]) -> str | None:
    """The transfer syntax to serve (None: each instance's original), or a 406."""
    for r in ranges:
        if not r.matches(_DICOM):
            continue
        syntax = r.transfer_syntax
        if syntax in (None, "*"):
            return None
        if all(can_produce(i.transfer_syntax_uid, syntax, i.bits_allocated) for i in instances):
            return syntax
    raise WadoError(406, "no acceptable media type or transfer syntax can be produced")


def _part_head(boundary: str, content_type: str) -> bytes:
    return f"--{boundary}\r\nContent-Type: {content_type}\r\n\r\n".encode()


def _closing(boundary: str) -> bytes:
    """A part's closing CRLF and the closing boundary of the whole."""
    return f"\r\n--{boundary}--\r\n".encode()


def _multipart_type(part_type: str, boundary: str) -> str:
    return f'multipart/related; type="{part_type}"; boundary={boundary}'


def _multipart(
    part_type: str, parts: AsyncIterator[tuple[str, AsyncIterator[bytes]]]
) -> StreamingResponse:
    """A streamed ``multipart/related`` of `parts` (content type, chunks)."""
    boundary = uuid.uuid4().hex

    async def body() -> AsyncIterator[bytes]:
        # Each part's bytes are sent as they come (never joined to the framing: no copy of
        # the data); a part's closing CRLF rides with the next part's header.
        before = b""
        async for content_type, chunks in parts:
            yield before + _part_head(boundary, content_type)
            async for chunk in chunks:
                yield chunk
            before = b"\r\n"
        yield before + f"--{boundary}--\r\n".encode()

    return StreamingResponse(body(), media_type=_multipart_type(part_type, boundary))


async def _retrieve(
    request: Request,
    ctx: GatewayContext,
    actor: Actor,
    study: str,
    series: str | None,
    sop: str | None,
) -> Response:
    _check_uids(study, series, sop)
    ranges = _accept(request)
    if not any(r.matches(_DICOM) for r in ranges):
        raise WadoError(
            406, 'WADO-RS retrieves instances as multipart/related; type="application/dicom"'
        )
    instances = await locate(ctx, actor, study, series, sop)
    wanted = _wanted_syntax(ranges, instances)
    audited = _audit_task(request, ctx, actor, AuditEventTypeValues.RETRIEVE_INSTANCE, instances)

    async def source(instance: LocatedInstance) -> tuple[str | bytes, str, int]:
        """(object key or bytes just transcoded, transfer syntax, size) of the instance's part."""
        if wanted is None or wanted == instance.transfer_syntax_uid:
            return instance.object_key, instance.transfer_syntax_uid, instance.size
        derived, data = await _transcoded(ctx, instance, wanted)
        if data is not None:  # just made: served as it is while the service stores it
            return data, wanted, len(data)
        assert derived.object_key is not None
        return derived.object_key, wanted, derived.size

    if len(instances) == 1:
        boundary = uuid.uuid4().hex

        async def whole() -> bytes | memoryview | None:
            """The answer in one piece (read straight into it), or None when too big."""
            for attempt in (1, 2):
                found, syntax, size = await source(instances[0])
                head = _part_head(boundary, f"{_DICOM}; transfer-syntax={syntax}")
                if isinstance(found, bytes):
                    return b"".join((head, found, _closing(boundary)))
                if size > _READ_AHEAD_BYTES:
                    return None
                try:
                    return await wado_read.read_framed(
                        ctx.store, found, 0, size, head, _closing(boundary)
                    )
                except ObjectNotFound:
                    if found == instances[0].object_key or attempt == 2:
                        raise WadoError(404, "instance not found") from None
                    forget_transcoded(instances[0], syntax)  # gone: the service makes it again
            return None  # not reached

        # A failure here is still a clean status.
        body = await _alongside(audited, whole())
        if body is not None:
            return Response(body, media_type=_multipart_type(_DICOM, boundary))
        # Too big to hold: streamed from the store.
        return StreamingResponse(
            _instances_body(ctx, instances, source, boundary),
            media_type=_multipart_type(_DICOM, boundary),
        )
    boundary = uuid.uuid4().hex
    await _alongside(audited, asyncio.sleep(0))
    headers = None
    if wanted is None or all(i.transfer_syntax_uid == wanted for i in instances):
        # Every part is a stored original of known size (one lost from the store ends the
        # answer short, which the client sees as a broken transfer).
        length = (
            len(_closing(boundary))
            - 2
            + sum(
                len(_part_head(boundary, f"{_DICOM}; transfer-syntax={i.transfer_syntax_uid}"))
                + i.size
                + 2
                for i in instances
            )
        )
        headers = {"Content-Length": str(length)}
    return StreamingResponse(
        _instances_body(ctx, instances, source, boundary),
        media_type=_multipart_type(_DICOM, boundary),
        headers=headers,
    )


async def _instances_body(
    ctx: GatewayContext,
    instances: Sequence[LocatedInstance],
    source: _Source,
    boundary: str,
) -> AsyncIterator[bytes | memoryview]:
    """The multipart body of `instances`, read (or transcoded) a few instances ahead.

    Each part up to `_READ_AHEAD_BYTES` is read straight into one buffer with its header (and
    the previous part's closing CRLF): one write per instance, no copy. Bigger ones are
    streamed from the store after their header.
    """

    async def framed(position: int) -> tuple[bytes | memoryview, str | None]:
        found, syntax, size = await source(instances[position])
        head = (b"\r\n" if position else b"") + _part_head(
            boundary, f"{_DICOM}; transfer-syntax={syntax}"
        )
        if isinstance(found, bytes):
            return head + found, None
        if size > _READ_AHEAD_BYTES:
            return head, found
        try:
            return await wado_read.read_framed(ctx.store, found, 0, size, head, b""), None
        except ObjectNotFound:
            if found != instances[position].object_key:
                forget_transcoded(instances[position], syntax)
            raise WadoError(404, "instance not found") from None

    tasks: dict[int, asyncio.Task[tuple[bytes | memoryview, str | None]]] = {}
    try:
        for position, instance in enumerate(instances):
            for ahead in range(position, min(position + _PREFETCH, len(instances))):
                if ahead not in tasks:
                    tasks[ahead] = asyncio.create_task(framed(ahead))
            try:
                data, rest = await tasks.pop(position)
            except WadoError as exc:
                # The response has started: leave the instance out rather than cut the body.
                _log.warning("instance left out", sop=instance.sop_instance_uid, reason=exc.reason)
                continue
            yield data
            if rest is not None:
                async with aclosing(ctx.store.stream(rest)) as chunks:
                    async for chunk in chunks:
                        yield chunk
        yield _closing(boundary)
    finally:
        for task in tasks.values():
            task.cancel()


# --- Metadata ---


async def _metadata(
    request: Request,
    ctx: GatewayContext,
    actor: Actor,
    study: str,
    series: str | None,
    sop: str | None,
) -> Response:
    _check_uids(study, series, sop)
    ranges = _accept(request)
    if not any(r.matches(_DICOM_JSON) or r.matches("application/json") for r in ranges):
        raise WadoError(406, "metadata is served as application/dicom+json")
    instances = await locate(ctx, actor, study, series, sop)
    level = "instance" if sop else "series" if series else "study"
    etag = metadata_etag(instances, level)
    headers = {"ETag": etag, "Cache-Control": "private, no-cache"}
    if etag in (request.headers.get("if-none-match") or "").replace(" ", "").split(","):
        return Response(status_code=304, headers=headers)
    base = _base_url(request, ctx)
    audited = _audit_task(request, ctx, actor, AuditEventTypeValues.RETRIEVE_METADATA, instances)
    if len(instances) == 1:
        with timing.stage("metadata"):
            body = await _alongside(
                audited, single_metadata(ctx.store, instances[0], base, ctx.metadata)
            )
        return Response(body, media_type=_DICOM_JSON, headers=headers)
    await _alongside(audited, asyncio.sleep(0))
    return StreamingResponse(
        stream_metadata(ctx.store, instances, base, ctx.metadata),
        media_type=_DICOM_JSON,
        headers=headers,
    )


# --- Frames ---


def _parse_frames(frames: str) -> list[int]:
    try:
        numbers = [int(n) for n in frames.split(",")]
    except ValueError:
        raise WadoError(400, "frame list must be comma-separated frame numbers") from None
    if not numbers or any(n < 1 for n in numbers):
        raise WadoError(400, "frame numbers start at 1")
    # A short request must not ask for the same frame a thousand times (response amplification).
    if len(set(numbers)) != len(numbers):
        raise WadoError(400, "a frame number appears more than once in the frame list")
    if len(numbers) > _MAX_FRAMES_PER_REQUEST:
        raise WadoError(400, f"at most {_MAX_FRAMES_PER_REQUEST} frames per request")
    return numbers


def _int(item: dict[str, object], tag: str, default: int) -> int:
    element = item.get(tag)
    if isinstance(element, dict):
        values = element.get("Value")
        if isinstance(values, list) and values:
            try:
                return int(values[0])
            except (TypeError, ValueError):
                return default
    return default


async def _shape(ctx: GatewayContext, instance: LocatedInstance) -> ImageShape:
    item = msgspec.json.decode(await instance_metadata(ctx.store, instance, ctx.metadata))
    return ImageShape(
        rows=_int(item, "00280010", 0),
        columns=_int(item, "00280011", 0),
        samples=_int(item, "00280002", 1),
        bits_allocated=_int(item, "00280100", 8),
        frames=max(_int(item, "00280008", 1), 1),
    )


def _frame_choice(ranges: list[MediaRange], stored: str) -> tuple[str, bool]:
    """(part media type, whether to serve the stored codestream as it is)."""
    stored_media = frame_media_type(stored)
    native = is_native(stored)
    for r in ranges:
        wanted = r.transfer_syntax
        if (
            stored_media
            and not native
            and r.matches(stored_media)
            and r.media_type != "*/*"
            and wanted in (None, "*", stored)
        ):
            return stored_media, True
        if r.matches(OCTET_STREAM):
            if wanted == "*" and stored_media:
                return OCTET_STREAM, not native
            if wanted in (None, ExplicitVRLittleEndian) and can_produce(
                stored, ExplicitVRLittleEndian
            ):
                return OCTET_STREAM, False
    raise WadoError(406, "no acceptable frame media type can be produced")


async def _frames(
    request: Request,
    ctx: GatewayContext,
    actor: Actor,
    study: str,
    series: str,
    sop: str,
    frames: str,
) -> Response:
    _check_uids(study, series, sop)
    numbers = _parse_frames(frames)
    ranges = _accept(request)
    (instance,) = await locate(ctx, actor, study, series, sop)
    deflated = instance.transfer_syntax_uid == DeflatedExplicitVRLittleEndian
    if instance.pixel_data_offset is None and not deflated:
        raise WadoError(404, "the instance has no frames")
    media, passthrough = _frame_choice(ranges, instance.transfer_syntax_uid)
    key, offset, size, syntax = (
        instance.object_key,
        instance.pixel_data_offset,
        instance.size,
        instance.transfer_syntax_uid,
    )
    needs_le = not passthrough and syntax not in (ExplicitVRLittleEndian, "1.2.840.10008.1.2")
    if needs_le or offset is None:
        derived = await ctx.transcoder.stored(ctx.store, instance, ExplicitVRLittleEndian)
        if derived is None:
            derived = await transcode(ctx, instance, ExplicitVRLittleEndian)
        assert derived.object_key is not None
        key, offset, size, syntax = (
            derived.object_key,
            derived.pixel_data_offset,
            derived.size,
            ExplicitVRLittleEndian,
        )
    if offset is None:
        raise WadoError(404, "the instance has no frames")
    started = time.perf_counter()
    shape = await _shape(ctx, instance)
    try:
        layout = await frame_layout(ctx.store, key, f"{instance.sha256}:{key}", offset, size, shape)
    except ValueError as exc:
        raise WadoError(422, str(exc)) from None
    # Every frame asked for exists (checked before the disclosure is recorded); the frames
    # are then read while the audit event is acknowledged.
    last = shape.frames if layout.bit_offsets else len(layout.frames)
    if (missing := next((n for n in numbers if n > last), None)) is not None:
        raise WadoError(404, f"frame {missing} does not exist")
    audited = _audit_task(request, ctx, actor, AuditEventTypeValues.RETRIEVE_INSTANCE, [instance])
    # The answer is small enough to be built whole (frames of one instance) and sent in one
    # piece; one frame of one byte range is read straight into it.
    boundary = uuid.uuid4().hex
    head = _part_head(
        boundary, f"{media}; transfer-syntax={syntax if passthrough else ExplicitVRLittleEndian}"
    )
    body: bytes | memoryview
    try:
        if len(numbers) == 1 and len(byte_range := frame_range(layout, numbers[0], shape)) == 1:
            ((at, length),) = byte_range
            body = await _alongside(
                audited,
                wado_read.read_framed(ctx.store, key, at, length, head, _closing(boundary)),
            )
        else:
            frames_read = await _alongside(
                audited,
                asyncio.gather(*(read_frame(ctx.store, key, layout, n, shape) for n in numbers)),
            )
            body = b"\r\n".join(head + f for f in frames_read) + _closing(boundary)
    except IndexError as exc:
        raise WadoError(404, str(exc)) from None
    timing.add("frames", time.perf_counter() - started)
    return Response(body, media_type=_multipart_type(media, boundary))


async def _one(data: bytes) -> AsyncIterator[bytes]:
    yield data


# --- Bulk data ---


def _single_part(request: Request) -> bool:
    """Whether the caller asks for a bare ``application/octet-stream`` before any multipart."""
    try:
        ranges = parse_accept(request.headers.get("accept"))
    except ValueError as exc:
        raise WadoError(400, str(exc)) from None
    for r in ranges:
        if r.media_type == OCTET_STREAM:
            return True
        if r.matches("multipart/related"):
            part = r.params.get("type", OCTET_STREAM).lower()
            if part in (OCTET_STREAM, "*/*", "application/*"):
                return False
        elif r.media_type == "*/*":
            return False
    raise WadoError(406, "bulk data is served as application/octet-stream")


async def _bulkdata(
    request: Request,
    ctx: GatewayContext,
    actor: Actor,
    study: str,
    series: str,
    sop: str,
    path: str,
) -> Response:
    _check_uids(study, series, sop)
    single = _single_part(request)
    (instance,) = await locate(ctx, actor, study, series, sop)
    value = await locate_value(ctx, instance, path)
    byte_range = parse_range(request.headers.get("range"), value.length)
    start, length = (byte_range.start, byte_range.length) if byte_range else (0, value.length)
    await _audit(request, ctx, actor, AuditEventTypeValues.RETRIEVE_INSTANCE, [instance])

    async def body() -> AsyncIterator[bytes]:
        if value.data is not None:
            yield value.data[start : start + length]
            return
        assert value.key is not None
        if length:
            async with aclosing(ctx.store.stream(value.key, value.offset + start, length)) as c:
                async for chunk in c:
                    yield chunk

    headers = {"Accept-Ranges": "bytes", "Cache-Control": "private, max-age=86400"}
    headers["ETag"] = f'"{instance.sha256[:32]}-{hashlib.sha256(path.encode()).hexdigest()[:8]}"'
    if single:
        if byte_range is not None:
            headers["Content-Range"] = byte_range.content_range
        headers["Content-Length"] = str(length)
        return StreamingResponse(
            body(),
            status_code=206 if byte_range else 200,
            media_type=OCTET_STREAM,
            headers=headers,
        )

    part_type = OCTET_STREAM + (
        f"\r\nContent-Range: {byte_range.content_range}" if byte_range else ""
    )

    async def parts() -> AsyncIterator[tuple[str, AsyncIterator[bytes]]]:
        yield part_type, body()

    response = _multipart(OCTET_STREAM, parts())
    response.headers.update(headers)
    if byte_range is not None:
        response.status_code = 206
    return response


# --- Rendered and thumbnail ---


def _rendered_params(
    request: Request, *, thumbnail: bool
) -> tuple[RenderedMediaValues, int, tuple[int, int] | None, Window | None]:
    media: RenderedMediaValues | None = None
    for r in parse_accept(request.headers.get("accept")):
        for candidate in (RenderedMediaValues.JPEG, RenderedMediaValues.PNG):
            if r.matches(candidate.value):
                media = candidate
                break
        if media is not None:
            break
    if media is None:
        raise WadoError(406, "rendered resources are image/jpeg or image/png")
    query = request.query_params
    try:
        quality = int(query.get("quality", str(THUMBNAIL_QUALITY) if thumbnail else "90"))
        viewport: tuple[int, int] | None = THUMBNAIL_VIEWPORT if thumbnail else None
        if "viewport" in query:
            parts = [int(v) for v in query["viewport"].split(",")]
            viewport = (parts[0], parts[1])
        window = None
        if "window" in query:
            center, width, *rest = query["window"].split(",")
            window = Window(
                center=float(center),
                width=float(width),
                function=VoiFunctionValues(rest[0].lower()) if rest else VoiFunctionValues.LINEAR,
            )
    except (ValueError, IndexError):
        raise WadoError(400, "invalid quality, viewport or window parameter") from None
    if not 1 <= quality <= 100 or (viewport and (viewport[0] < 1 or viewport[1] < 1)):
        raise WadoError(400, "quality must be 1-100 and viewport positive")
    if window is not None and window.width <= 0:
        raise WadoError(400, "window width must be positive")
    return media, quality, viewport, window


async def _rendered(
    request: Request,
    ctx: GatewayContext,
    actor: Actor,
    study: str,
    series: str | None,
    sop: str | None,
    frames: str | None,
    *,
    thumbnail: bool = False,
) -> Response:
    _check_uids(study, series, sop)
    frame = _parse_frames(frames)[0] if frames else 1
    media, quality, viewport, window = _rendered_params(request, thumbnail=thumbnail)
    instances = await locate(ctx, actor, study, series, sop)
    with_pixels = [i for i in instances if i.rows] or instances

    def render_request(instance: LocatedInstance) -> RenderRequest:
        return RenderRequest(
            object_key=instance.object_key,
            sha256=instance.sha256,
            frame=frame,
            media_type=media,
            quality=quality,
            viewport=viewport,
            window=window,
            study_uid=instance.study_uid,
            series_uid=instance.series_uid,
            sop_instance_uid=instance.sop_instance_uid,
            transfer_syntax_uid=instance.transfer_syntax_uid,
        )

    if not sop and not thumbnail:
        return await _rendered_many(
            request, ctx, actor, media, [render_request(i) for i in with_pixels], with_pixels
        )
    # One image: an instance's (or frame's) rendering, or a study/series thumbnail, which
    # shows the middle image of the (first) series.
    instance = with_pixels[len(with_pixels) // 2] if not sop else with_pixels[0]
    one = render_request(instance)
    etag = '"' + hashlib.sha256(msgspec.json.encode(one)).hexdigest()[:32] + '"'
    headers = {"ETag": etag, "Cache-Control": _IMMUTABLE}
    if etag in (request.headers.get("if-none-match") or "").replace(" ", "").split(","):
        return Response(status_code=304, headers=headers)
    audited = _audit_task(request, ctx, actor, AuditEventTypeValues.RETRIEVE_RENDERED, [instance])
    body, media_type = await _alongside(audited, _render_cached(ctx, one, instance))
    return Response(body, media_type=media_type, headers=headers)


async def _render_cached(
    ctx: GatewayContext, request: RenderRequest, instance: LocatedInstance
) -> tuple[bytes, str]:
    """A rendered image: from this process's cache, the precomputed thumbnail, or rendered.

    Rendered here when `wado_render.renders_here`, else by the render service. The cache
    key is the whole render request, content hash included: an image is reused only for the
    same content and the same parameters.
    """
    cached = ctx.rendered.get(request)
    if cached is not None:
        timing.add("rendered_cached", 0.0)
        return cached
    result: tuple[bytes, str] | None = None
    if (
        request.is_default_thumbnail()
        and request.study_uid
        and request.series_uid
        and request.sop_instance_uid
    ):
        key = derived_key(
            THUMBNAIL_KIND, request.study_uid or "", request.series_uid,
            request.sop_instance_uid, "jpg",
        )  # fmt: skip
        try:
            with timing.stage("thumbnail_read"):
                result = (await wado_read.read(ctx.store, key), RenderedMediaValues.JPEG.value)
        except ObjectNotFound:
            result = None  # not precomputed (yet): the render service makes it
    if result is None:
        if renders_here(ctx.store, instance):
            result = await render_here(ctx.store, instance, request)
        else:
            result = await render(ctx, request)
    ctx.rendered.put(request, *result)
    return result


async def _rendered_many(
    request: Request,
    ctx: GatewayContext,
    actor: Actor,
    media: RenderedMediaValues,
    requests: Sequence[RenderRequest],
    instances: Sequence[LocatedInstance],
) -> Response:
    """A study or series rendered: each instance's first frame, a few rendered ahead."""
    audited = _audit_task(request, ctx, actor, AuditEventTypeValues.RETRIEVE_RENDERED, instances)
    # A failure of the first is still a clean status.
    first = await _alongside(audited, _render_cached(ctx, requests[0], instances[0]))

    async def produce(position: int) -> tuple[bytes, str]:
        if position == 0:
            return first
        return await _render_cached(ctx, requests[position], instances[position])

    async def parts() -> AsyncIterator[tuple[str, AsyncIterator[bytes]]]:
        tasks: dict[int, asyncio.Task[tuple[bytes, str]]] = {}
        try:
            for position in range(len(requests)):
                for ahead in range(position, min(position + _PREFETCH, len(requests))):
                    if ahead not in tasks:
                        tasks[ahead] = asyncio.create_task(produce(ahead))
                try:
                    body, media_type = await tasks.pop(position)
                except WadoError as exc:
                    _log.warning("rendering left out", reason=exc.reason)
                    continue
                yield media_type, _one(body)
        finally:
            for task in tasks.values():
                task.cancel()

    return _multipart(media.value, parts())


# --- Routes ---

_S = "/dicomweb/studies/{study}"
_SE = _S + "/series/{series}"
_I = _SE + "/instances/{sop}"


@router.get(_S, summary="WADO-RS: retrieve a study")
async def retrieve_study(request: Request, study: str) -> Response:
    return await _run(request, lambda c, a: _retrieve(request, c, a, study, None, None))


@router.get(_SE, summary="WADO-RS: retrieve a series")
async def retrieve_series(request: Request, study: str, series: str) -> Response:
    return await _run(request, lambda c, a: _retrieve(request, c, a, study, series, None))


@router.get(_I, summary="WADO-RS: retrieve an instance")
async def retrieve_instance(request: Request, study: str, series: str, sop: str) -> Response:
    return await _run(request, lambda c, a: _retrieve(request, c, a, study, series, sop))


@router.get(_S + "/metadata", summary="WADO-RS: study metadata")
async def study_metadata(request: Request, study: str) -> Response:
    return await _run(request, lambda c, a: _metadata(request, c, a, study, None, None))


@router.get(_SE + "/metadata", summary="WADO-RS: series metadata")
async def series_metadata(request: Request, study: str, series: str) -> Response:
    return await _run(request, lambda c, a: _metadata(request, c, a, study, series, None))


@router.get(_I + "/metadata", summary="WADO-RS: instance metadata")
async def instance_metadata_route(request: Request, study: str, series: str, sop: str) -> Response:
    return await _run(request, lambda c, a: _metadata(request, c, a, study, series, sop))


@router.get(_I + "/frames/{frames}", summary="WADO-RS: frames")
async def retrieve_frames(
    request: Request, study: str, series: str, sop: str, frames: str
) -> Response:
    return await _run(request, lambda c, a: _frames(request, c, a, study, series, sop, frames))


@router.get(_I + "/bulkdata/{path:path}", summary="WADO-RS: bulk data (Range supported)")
async def retrieve_bulkdata(
    request: Request, study: str, series: str, sop: str, path: str
) -> Response:
    return await _run(request, lambda c, a: _bulkdata(request, c, a, study, series, sop, path))


@router.get(_S + "/rendered", summary="WADO-RS: rendered study (each instance, multipart)")
async def rendered_study(request: Request, study: str) -> Response:
    return await _run(request, lambda c, a: _rendered(request, c, a, study, None, None, None))


@router.get(_SE + "/rendered", summary="WADO-RS: rendered series (each instance, multipart)")
async def rendered_series(request: Request, study: str, series: str) -> Response:
    return await _run(request, lambda c, a: _rendered(request, c, a, study, series, None, None))


@router.get(_I + "/rendered", summary="WADO-RS: rendered instance (first frame)")
async def rendered_instance(request: Request, study: str, series: str, sop: str) -> Response:
    return await _run(request, lambda c, a: _rendered(request, c, a, study, series, sop, None))


@router.get(_I + "/frames/{frames}/rendered", summary="WADO-RS: rendered frame")
async def rendered_frames(
    request: Request, study: str, series: str, sop: str, frames: str
) -> Response:
    return await _run(request, lambda c, a: _rendered(request, c, a, study, series, sop, frames))


@router.get(_S + "/thumbnail", summary="WADO-RS: study thumbnail")
async def study_thumbnail(request: Request, study: str) -> Response:
    return await _run(
        request, lambda c, a: _rendered(request, c, a, study, None, None, None, thumbnail=True)
    )


@router.get(_SE + "/thumbnail", summary="WADO-RS: series thumbnail")
async def series_thumbnail(request: Request, study: str, series: str) -> Response:
    return await _run(
        request, lambda c, a: _rendered(request, c, a, study, series, None, None, thumbnail=True)
    )


@router.get(_I + "/thumbnail", summary="WADO-RS: instance thumbnail")
async def instance_thumbnail(request: Request, study: str, series: str, sop: str) -> Response:
    return await _run(
        request, lambda c, a: _rendered(request, c, a, study, series, sop, None, thumbnail=True)
    )


@router.get(_I + "/frames/{frames}/thumbnail", summary="WADO-RS: frame thumbnail")
async def frame_thumbnail(
    request: Request, study: str, series: str, sop: str, frames: str
) -> Response:
    return await _run(
        request, lambda c, a: _rendered(request, c, a, study, series, sop, frames, thumbnail=True)
    )

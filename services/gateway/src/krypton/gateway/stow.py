"""STOW-RS: stream each part to staging, hand it to ingest over JetStream, report the verdicts.

A part is acknowledged to the client only as what ingest decided about it: stored (in the
ReferencedSOPSequence) or refused with its DICOM failure reason (in the FailedSOPSequence). Bytes
never sit whole in memory: each part streams to the object store as it arrives.

Durability is ingest's job, not the gateway's: on the filesystem store a part is written to
staging from the event loop without fsync (`FileSystemStore.open_volatile`), because the client
is told nothing before ingest has checked the staged bytes against the size and SHA-256
announced here and fsynced them (`FileSystemStore.sync`) before recording its verdict. A power
cut before then loses or tears the staged copy; ingest then refuses it and the client, never
answered, resends.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from nats.errors import TimeoutError as NatsTimeoutError
from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.requests import Request
from starlette.responses import Response

from krypton.bus.codec import encode
from krypton.contracts import subjects
from krypton.contracts.audit.v1 import AccessBasisValues, AuditEventTypeValues, AuditOutcomeValues
from krypton.contracts.common.v1 import Actor
from krypton.contracts.ingest.v1 import IngestReceived, IngestResult
from krypton.core.clock import utc_now_iso
from krypton.core.logging import get_logger
from krypton.dicom.errors import FailureReasonValues
from krypton.gateway import audit_emit as audit
from krypton.gateway.context import GatewayContext
from krypton.gateway.problems import problem
from krypton.storage.base import ObjectInfo
from krypton.storage.fs import FileSystemStore, VolatileWriter, boot_id
from krypton.storage.keys import staging_key

__all__ = ["store_instances"]

_log = get_logger("krypton.gateway.stow")
DICOM_JSON = "application/dicom+json"
_QUEUE_DEPTH = 16  # chunks in flight per part: bounds memory whatever the client's speed


class PartTooLargeError(Exception):
    """A part exceeds the configured maximum instance size."""


@dataclass
class _PartSink:
    """Feeds one part's bytes to `store.put_stream` as they arrive."""

    ctx: GatewayContext
    upload_id: str
    limit: int
    queue: asyncio.Queue[bytes | None] = field(
        default_factory=lambda: asyncio.Queue(maxsize=_QUEUE_DEPTH)
    )
    size: int = 0
    task: asyncio.Task[ObjectInfo] | None = None
    # Filesystem store: the part is written in the loop as it arrives, without fsync (ingest
    # verifies and syncs it before any verdict, see the module doc): no queue, task or thread.
    writer: VolatileWriter | None = None

    def start(self) -> None:
        store = self.ctx.store
        key = staging_key(self.upload_id)
        if isinstance(store, FileSystemStore):
            self.writer = store.open_volatile(key)
            return
        self.task = asyncio.create_task(store.put_stream(key, self._chunks()))

    async def _chunks(self) -> AsyncIterator[bytes]:
        while (chunk := await self.queue.get()) is not None:
            yield chunk

    async def feed(self, data: bytes | memoryview) -> None:
        self.size += len(data)
        if self.size > self.limit:
            raise PartTooLargeError
        if self.writer is not None:
            self.writer.write(data)
            return
        assert self.task is not None
        if self.task.done():  # the store failed: surface its error now
            await self.task
        await self.queue.put(bytes(data))

    async def finish(self) -> ObjectInfo:
        if self.writer is not None:
            return self.writer.commit()
        await self.queue.put(None)
        assert self.task is not None
        return await self.task

    async def abort(self) -> None:
        if self.writer is not None:
            self.writer.abort()
            return
        if self.task is not None and not self.task.done():
            self.task.cancel()
            # Aborted on purpose: its own error is not the story.
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self.task


@dataclass
class _Staged:
    upload_id: str
    info: ObjectInfo | None = None
    failure: tuple[int, str] | None = None  # refused before reaching ingest
    verdict: asyncio.Future[IngestResult] | None = None


class _MultipartReader:
    """Drives python-multipart's callback parser from an async body stream."""

    def __init__(self, boundary: bytes) -> None:
        self.events: list[tuple[str, Any]] = []
        self._header_field = b""
        self._header_value = b""
        self._headers: dict[bytes, bytes] = {}
        callbacks: Any = {
            "on_part_begin": self._part_begin,
            "on_header_field": self._header_field_cb,
            "on_header_value": self._header_value_cb,
            "on_header_end": self._header_end,
            "on_headers_finished": self._headers_finished,
            "on_part_data": self._part_data,
            "on_part_end": self._part_end,
        }
        self.parser = MultipartParser(boundary, callbacks, max_header_size=8192)

    def _part_begin(self) -> None:
        self._headers = {}

    def _header_field_cb(self, data: bytes, start: int, end: int) -> None:
        self._header_field += data[start:end]

    def _header_value_cb(self, data: bytes, start: int, end: int) -> None:
        self._header_value += data[start:end]

    def _header_end(self) -> None:
        self._headers[self._header_field.strip().lower()] = self._header_value.strip()
        self._header_field = self._header_value = b""

    def _headers_finished(self) -> None:
        self.events.append(("headers", dict(self._headers)))

    def _part_data(self, data: bytes, start: int, end: int) -> None:
        # A view, not a copy: python-multipart passes the (immutable) chunk given to `write`
        # or its own boundary bytes, and the events are used before the next chunk anyway.
        self.events.append(("data", memoryview(data)[start:end]))

    def _part_end(self) -> None:
        self.events.append(("end", None))


def _is_dicom(content_type: bytes | None) -> bool:
    if not content_type:
        return True  # a part without Content-Type takes the request's `type`
    media, _ = parse_options_header(content_type)
    return media.lower() == b"application/dicom"


async def store_instances(
    request: Request, ctx: GatewayContext, actor: Actor, study_uid: str | None
) -> Response:
    """Handle `POST /studies[/{study}]`."""
    if actor.structure is None:
        return problem(403, "only a producing structure's token may store instances")
    # Backpressure (issue 9): ingest is behind; refuse before staging more bytes.
    assert ctx.ingest_backlog is not None
    if (busy := await ctx.ingest_backlog.refuse(ctx.js)) is not None:
        return busy
    content_type = request.headers.get("content-type", "")
    media, options = parse_options_header(content_type)
    media_type = media.decode("latin-1").lower()
    length = request.headers.get("content-length")
    if length is not None and length.isdigit() and int(length) > ctx.settings.max_request_bytes:
        return problem(413, f"request larger than {ctx.settings.max_request_bytes} bytes")
    staged: list[_Staged] = []
    try:
        if media_type == "multipart/related":
            part_type = options.get(b"type", b"application/dicom").decode("latin-1").lower()
            if part_type != "application/dicom":
                return problem(
                    415,
                    f'multipart/related type "{part_type}" is not supported; '
                    'send type="application/dicom"',
                )
            boundary = options.get(b"boundary")
            if not boundary:
                return problem(400, "multipart/related without a boundary parameter")
            staged = await _read_multipart(request, ctx, boundary)
        elif media_type == "application/dicom":
            staged = [await _read_single(request, ctx)]
        else:
            return problem(
                415,
                'STOW-RS takes multipart/related; type="application/dicom" '
                "(or a single application/dicom body)",
            )
    except _BadMultipartError as exc:
        await _discard(ctx, staged + exc.staged)
        return problem(400, f"malformed multipart body: {exc.reason}")
    except RequestTooLargeError as exc:
        await _discard(ctx, staged + exc.staged)
        return problem(413, f"request larger than {ctx.settings.max_request_bytes} bytes")
    except StoreFailedError as exc:
        await _discard(ctx, staged + exc.staged)
        _log.warning("staging failed", error=exc.reason)
        return problem(503, "object storage unavailable; retry later", headers={"Retry-After": "5"})
    if not staged:
        return problem(400, "the request carries no DICOM part")
    return await _hand_over(request, ctx, actor, study_uid, staged)


class _BadMultipartError(Exception):
    def __init__(self, reason: str, staged: list[_Staged]) -> None:
        self.reason = reason
        self.staged = staged


class RequestTooLargeError(Exception):
    """The body grew past `max_request_bytes` (a chunked body announces no length)."""

    def __init__(self, staged: list[_Staged]) -> None:
        self.staged = staged


class StoreFailedError(Exception):
    """The object store refused a write."""

    def __init__(self, reason: str, staged: list[_Staged]) -> None:
        self.reason = reason
        self.staged = staged


async def _read_multipart(request: Request, ctx: GatewayContext, boundary: bytes) -> list[_Staged]:
    reader = _MultipartReader(boundary)
    staged: list[_Staged] = []
    sink: _PartSink | None = None
    current: _Staged | None = None
    limit = ctx.settings.max_instance_bytes
    received = 0
    try:
        async for chunk in request.stream():
            received += len(chunk)
            if received > ctx.settings.max_request_bytes:
                raise RequestTooLargeError(staged)
            reader.parser.write(chunk)
            for kind, value in reader.events:
                if kind == "headers":
                    current = _Staged(upload_id=uuid.uuid4().hex)
                    staged.append(current)
                    if _is_dicom(value.get(b"content-type")):
                        sink = _PartSink(ctx, current.upload_id, limit)
                        sink.start()
                    else:
                        sink = None
                        current.failure = (
                            FailureReasonValues.SOP_CLASS_NOT_SUPPORTED,
                            "part is not application/dicom",
                        )
                elif kind == "data" and sink is not None and current is not None:
                    try:
                        await sink.feed(value)
                    except PartTooLargeError:
                        await sink.abort()
                        sink = None
                        current.failure = (
                            FailureReasonValues.OUT_OF_RESOURCES,
                            f"instance larger than {limit} bytes",
                        )
                elif kind == "end" and current is not None:
                    if sink is not None:
                        current.info = await sink.finish()
                    sink = None
            reader.events.clear()
        reader.parser.finalize()
    except (StoreFailedError, _BadMultipartError, RequestTooLargeError):
        if sink is not None:
            await sink.abort()
        raise
    except OSError as exc:
        if sink is not None:
            await sink.abort()
        raise StoreFailedError(repr(exc), staged) from exc
    except Exception as exc:  # python-multipart raises its own errors on malformed input
        if sink is not None:
            await sink.abort()
        raise _BadMultipartError(str(exc) or type(exc).__name__, staged) from exc
    if sink is not None:  # body ended inside a part
        await sink.abort()
        msg = "body ended before the closing boundary"
        raise _BadMultipartError(msg, staged)
    return staged


async def _read_single(request: Request, ctx: GatewayContext) -> _Staged:
    current = _Staged(upload_id=uuid.uuid4().hex)
    sink = _PartSink(ctx, current.upload_id, ctx.settings.max_instance_bytes)
    try:
        sink.start()
        async for chunk in request.stream():
            if chunk:
                await sink.feed(chunk)
        current.info = await sink.finish()
    except PartTooLargeError:
        await sink.abort()
        current.failure = (
            FailureReasonValues.OUT_OF_RESOURCES,
            f"instance larger than {ctx.settings.max_instance_bytes} bytes",
        )
    except OSError as exc:
        await sink.abort()
        raise StoreFailedError(repr(exc), [current]) from exc
    return current


async def _discard(ctx: GatewayContext, staged: list[_Staged]) -> None:
    for item in staged:
        if item.info is not None and item.verdict is None:
            try:
                await ctx.store.delete(staging_key(item.upload_id))
            except Exception as exc:  # best effort: staging is swept anyway
                _log.warning("could not discard staging object", error=repr(exc))


async def _hand_over(
    request: Request,
    ctx: GatewayContext,
    actor: Actor,
    study_uid: str | None,
    staged: list[_Staged],
) -> Response:
    structure = actor.structure
    assert structure is not None
    subject = subjects.ingest_received(structure)
    request_id = request.headers.get("x-request-id") or uuid.uuid4().hex
    # Parts staged without fsync (filesystem store) carry the boot they were written in.
    staged_boot = boot_id() if isinstance(ctx.store, FileSystemStore) else None
    published: list[_Staged] = []
    publishes = []
    for item in staged:
        if item.info is None:
            continue
        event = IngestReceived(
            staging_key=staging_key(item.upload_id),
            structure=structure,
            sha256=item.info.sha256 or "",
            size=item.info.size,
            received_at=utc_now_iso(),
            actor=actor,
            expected_study_uid=study_uid,
            reply_to=ctx.waiter.reply_to(item.upload_id),
            request_id=request_id,
            staged_boot_id=staged_boot,
        )
        item.verdict = ctx.waiter.expect(item.upload_id)
        published.append(item)
        publishes.append(
            ctx.js.publish(
                subject,
                encode(event),
                stream=subjects.INGEST_STREAM,
                headers={"Nats-Msg-Id": item.upload_id},
                timeout=5.0,
            )
        )
    # All parts at once: one round trip per request instead of one per part.
    outcomes = await asyncio.gather(*publishes, return_exceptions=True)
    failures = [
        (i, o) for i, o in zip(published, outcomes, strict=True) if isinstance(o, Exception)
    ]
    if failures:
        # Nothing that reached JetStream is lost (ingest processes it); the client is told to
        # retry, and a retry of an already stored instance is a success.
        for item in staged:
            ctx.waiter.forget(item.upload_id)
        # A part refused outright is dropped; one whose publish timed out stays in staging,
        # since JetStream may hold it and ingest will then place it.
        refused = [i for i, o in failures if not isinstance(o, TimeoutError | NatsTimeoutError)]
        for item in refused:
            item.verdict = None
        await _discard(ctx, refused)
        _log.warning("ingest stream unavailable", error=repr(failures[0][1]))
        return problem(503, "ingest unavailable; retry later", headers={"Retry-After": "5"})
    for outcome in outcomes:
        if isinstance(outcome, BaseException):  # cancellation: not ours to swallow
            raise outcome
    waiting = [i.verdict for i in staged if i.verdict is not None]
    if waiting:
        await asyncio.wait(waiting, timeout=ctx.settings.stow_result_timeout)
    for item in staged:
        ctx.waiter.forget(item.upload_id)
    response = _store_response(ctx, request, staged, study_uid)
    # Audit (issue 6): what was stored (and refused), before the answer leaves.
    if await _audit_store(request, ctx, actor, staged, response.status_code):
        return audit.unavailable()
    return response


async def _audit_store(
    request: Request, ctx: GatewayContext, actor: Actor, staged: list[_Staged], status: int
) -> bool:
    """Record one `store` event for the request; True when it could not be recorded."""
    studies: dict[str, None] = {}
    stored = 0
    for item in staged:
        verdict = item.verdict
        if verdict is None or not verdict.done() or verdict.exception() is not None:
            continue
        result = verdict.result()
        if result.ok:
            stored += 1
            if result.study_uid:
                studies[result.study_uid] = None
    outcome = AuditOutcomeValues.SUCCESS if status == 200 else AuditOutcomeValues.FAILURE
    try:
        await audit.emit(
            ctx,
            audit.event(
                request,
                actor,
                AuditEventTypeValues.STORE,
                outcome=outcome,
                reason=None
                if status == 200
                else f"{len(staged) - stored} of {len(staged)} not stored",
                basis=AccessBasisValues.NONE,
                study_uids=list(studies),
                instances=stored,
            ),
        )
    except audit.AuditUnavailableError:
        return True
    return False


def _store_response(
    ctx: GatewayContext, request: Request, staged: list[_Staged], study_uid: str | None
) -> Response:
    base = _base_url(ctx, request)
    referenced: list[dict[str, Any]] = []
    failed: list[dict[str, Any]] = []
    study_for_url = study_uid
    for item in staged:
        if item.failure is not None:
            failed.append(_failed_item(None, None, item.failure[0], item.failure[1]))
            continue
        verdict = item.verdict
        if verdict is None or not verdict.done() or verdict.exception() is not None:
            failed.append(
                _failed_item(
                    None,
                    None,
                    FailureReasonValues.OUT_OF_RESOURCES,
                    "accepted but not confirmed in time; resending is safe",
                )
            )
            continue
        result = verdict.result()
        if result.ok:
            study_for_url = study_for_url or result.study_uid
            entry: dict[str, Any] = {
                "00081150": _ui(result.sop_class_uid),
                "00081155": _ui(result.sop_instance_uid),
            }
            if result.study_uid and result.series_uid and result.sop_instance_uid:
                entry["00081190"] = {
                    "vr": "UR",
                    "Value": [
                        f"{base}/studies/{result.study_uid}/series/{result.series_uid}"
                        f"/instances/{result.sop_instance_uid}"
                    ],
                }
            referenced.append(entry)
        else:
            failed.append(
                _failed_item(
                    result.sop_class_uid,
                    result.sop_instance_uid,
                    result.failure_code or FailureReasonValues.PROCESSING_FAILURE,
                    result.reason or "refused",
                )
            )
    body: dict[str, Any] = {}
    if study_for_url:
        body["00081190"] = {"vr": "UR", "Value": [f"{base}/studies/{study_for_url}"]}
    if failed:
        body["00081198"] = {"vr": "SQ", "Value": failed}
    if referenced:
        body["00081199"] = {"vr": "SQ", "Value": referenced}
    status = 200 if not failed else (202 if referenced else 409)
    return Response(encode(body), status_code=status, media_type=DICOM_JSON)


def _ui(value: str | None) -> dict[str, Any]:
    return {"vr": "UI", "Value": [value]} if value else {"vr": "UI"}


def _failed_item(
    sop_class: str | None, sop_instance: str | None, code: int, reason: str
) -> dict[str, Any]:
    item: dict[str, Any] = {
        "00081150": _ui(sop_class),
        "00081155": _ui(sop_instance),
        "00081197": {"vr": "US", "Value": [int(code)]},
        # Error Comment: the human reason (LO, at most 64 characters).
        "00000902": {"vr": "LO", "Value": [reason[:64]]},
    }
    return item


def _base_url(ctx: GatewayContext, request: Request) -> str:
    if ctx.settings.public_url:
        return ctx.settings.public_url.rstrip("/") + "/dicomweb"
    return str(request.base_url).rstrip("/") + "/dicomweb"

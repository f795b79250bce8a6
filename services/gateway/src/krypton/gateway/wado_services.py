"""The gateway's requests to index (locate), transcode and render for WADO-RS."""

from __future__ import annotations

import asyncio
import contextvars
from collections import OrderedDict
from collections.abc import Coroutine
from typing import TYPE_CHECKING, Any

import nats.errors

from krypton.bus.codec import decode, encode
from krypton.contracts import subjects
from krypton.contracts.common.v1 import Actor
from krypton.contracts.index.v1 import LocatedInstance, LocateRequest, LocateResponse
from krypton.contracts.render.v1 import RenderRequest
from krypton.contracts.transcode.v1 import INLINE_HEADER, TranscodeRequest, TranscodeResponse
from krypton.core.logging import get_logger
from krypton.gateway import timing
from krypton.gateway.wado_cache import ScopeKey

if TYPE_CHECKING:  # annotations only: the context holds a `wado_transcode`, which imports this
    from krypton.gateway.context import GatewayContext

__all__ = [
    "ServiceUnavailableError",
    "WadoError",
    "forget_transcoded",
    "known_transcoded",
    "locate",
    "remember_transcoded",
    "render",
    "transcode",
    "transcode_inline",
]

_log = get_logger("krypton.gateway.wado")
_SEED_MAX = 5000  # most instances of one study/series answer kept per instance
_UNAVAILABLE = (nats.errors.NoRespondersError, nats.errors.TimeoutError)


class WadoError(Exception):
    """A WADO-RS request ends with this HTTP status and reason."""

    def __init__(self, status: int, reason: str) -> None:
        """Remember the status and the reason shown to the caller."""
        super().__init__(reason)
        self.status = status
        self.reason = reason


class ServiceUnavailableError(WadoError):
    """A service did not answer in time (503, retry later)."""

    def __init__(self, service: str) -> None:
        """Name the service that did not answer."""
        super().__init__(503, f"{service} unavailable; retry later")


async def locate(
    ctx: GatewayContext,
    actor: Actor,
    study: str,
    series: str | None = None,
    sop: str | None = None,
) -> list[LocatedInstance]:
    """The instances the caller may read under the path, in order.

    An instance read recently by the same caller is answered from `ctx.locates` (see
    `wado_cache.LocateCache`: at most 2 s old, emptied by policy changes); its series is then
    asked in the background when due, so a viewer reading a series one instance after the
    other finds them all there. Identical locates in flight at the same time share one
    request to the index.

    Raises:
        WadoError: 404 when nothing matches or the caller may not see it (the same answer).
        ServiceUnavailableError: the index did not answer.
    """
    cache = ctx.locates
    key = cache.key(actor, study, series, sop)
    if key is not None:
        found = cache.lookup(key)
        if found is not None:
            instances, due = found
            timing.add("locate_cached", 0.0)
            if due is not None:
                _in_background(_fill(ctx, actor, due))
            return instances
    # Listening before asking: a policy change after this point cannot be missed.
    await cache.listen(ctx.nc)
    generation = cache.generation
    request = LocateRequest(actor=actor, study_uid=study, series_uid=series, sop_instance_uid=sop)
    with timing.stage("locate"):
        response = await _shared(ctx, request, (cache.caller(actor), generation))
    if response.status != 200 or not response.instances:
        raise WadoError(404 if response.status in (200, 404) else response.status, "not found")
    if key is not None:
        cache.put(key, response.instances, generation)
        scope = cache.scope_of(key)
        if cache.should_fill(scope):
            _in_background(_fill(ctx, actor, scope))
    elif len(response.instances) <= _SEED_MAX:
        # A viewer reads a series' metadata, then each instance's frames: the same access
        # answer for each of them (access is granted per study), so it is kept per instance.
        caller = cache.caller(actor)
        by_series: dict[str, list[LocatedInstance]] = {}
        for instance in response.instances:
            by_series.setdefault(instance.series_uid, []).append(instance)
        for uid, instances in by_series.items():
            cache.fill((caller, study, uid), instances, generation)
    return response.instances


# Locates being asked, by request and (caller, policy generation): concurrent identical reads
# (eight viewers' requests for the same study, a burst of frames) share one index request.
_FlightKey = tuple[bytes, int, str, str | None, str | None]
_flights: dict[_FlightKey, asyncio.Task[LocateResponse]] = {}
_background: set[asyncio.Task[None]] = set()


async def _shared(
    ctx: GatewayContext, request: LocateRequest, who: tuple[bytes, int]
) -> LocateResponse:
    """The index's answer to `request`, shared with identical requests in flight.

    The request runs as its own task: a caller that goes away (a client disconnecting) does
    not cancel it for the others. `who` (the caller without its client address, and the policy
    generation) is part of the key: an answer asked before a policy change is never shared with
    a request made after it.
    """
    flight_key = (*who, request.study_uid, request.series_uid, request.sop_instance_uid)
    flight = _flights.get(flight_key)
    if flight is None:
        flight = asyncio.create_task(_ask(ctx, request), context=contextvars.Context())
        _flights[flight_key] = flight
        flight.add_done_callback(lambda done: _landed(flight_key, done))
    return await asyncio.shield(flight)


def _landed(flight_key: _FlightKey, flight: asyncio.Task[LocateResponse]) -> None:
    if _flights.get(flight_key) is flight:
        del _flights[flight_key]
    if not flight.cancelled():
        flight.exception()  # retrieved: its requesters (if any are left) raise it themselves


async def _ask(ctx: GatewayContext, request: LocateRequest) -> LocateResponse:
    """One ``svc.index.locate`` request.

    Raises:
        ServiceUnavailableError: the index did not answer.
    """
    try:
        reply = await ctx.nc.request(subjects.SVC_INDEX_LOCATE, encode(request), timeout=10.0)
    except _UNAVAILABLE as exc:
        _log.warning("index unavailable", error=repr(exc))
        raise ServiceUnavailableError(service="index") from exc
    return decode(reply.data, LocateResponse)


def _in_background(work: Coroutine[Any, Any, None]) -> None:
    """Run `work` on its own (a fresh context: it times nothing of the request that started it)."""
    task = asyncio.create_task(work, context=contextvars.Context())
    _background.add(task)
    task.add_done_callback(_background.discard)


async def _fill(ctx: GatewayContext, actor: Actor, scope: ScopeKey) -> None:
    """Ask the caller's series `scope` and fill (or refresh) its instances' cache entries."""
    cache = ctx.locates
    generation = cache.generation
    _, study, series = scope
    request = LocateRequest(actor=actor, study_uid=study, series_uid=series)
    try:
        response = await _shared(ctx, request, (scope[0], generation))
        if response.status == 200:
            cache.fill(scope, response.instances, generation)
        elif response.status == 404:
            cache.fill(scope, None, generation)  # gone or no longer visible: forget it all
    except Exception as exc:  # a later read asks again; the entries expire meanwhile
        _log.info("series locate failed", error=repr(exc))
    finally:
        cache.asked(scope)


async def transcode(
    ctx: GatewayContext, instance: LocatedInstance, syntax: str
) -> TranscodeResponse:
    """The derived object holding `instance` in `syntax` (made on first request).

    Raises:
        WadoError: the syntax cannot be produced for this instance (406) or it is gone (404).
        ServiceUnavailableError: the transcode service did not answer.
    """
    response, _ = await _transcode(ctx, instance, syntax, inline=False)
    return response


async def transcode_inline(
    ctx: GatewayContext, instance: LocatedInstance, syntax: str
) -> tuple[TranscodeResponse, bytes | None]:
    """Like `transcode`, with the bytes when they were made for this request (else None).

    Raises:
        WadoError: the syntax cannot be produced for this instance (406) or it is gone (404).
        ServiceUnavailableError: the transcode service did not answer.
    """
    return await _transcode(ctx, instance, syntax, inline=True)


# Derived objects already made, by (content hash, original key, syntax): they never change, so
# a read of an instance already transcoded needs no request to the service.
_transcoded: OrderedDict[tuple[str, str, str], TranscodeResponse] = OrderedDict()
_TRANSCODED_MAX = 50_000


def forget_transcoded(instance: LocatedInstance, syntax: str) -> None:
    """Forget the derived object of `instance` in `syntax` (it was not found in the store)."""
    _transcoded.pop((instance.sha256, instance.object_key, syntax), None)


def known_transcoded(instance: LocatedInstance, syntax: str) -> TranscodeResponse | None:
    """The stored derived object of `instance` in `syntax` when this process knows it."""
    memo = (instance.sha256, instance.object_key, str(syntax))
    known = _transcoded.get(memo)
    if known is not None:
        _transcoded.move_to_end(memo)
    return known


def remember_transcoded(
    instance: LocatedInstance, syntax: str, response: TranscodeResponse
) -> None:
    """Remember a derived object that is stored (complete, its sidecar written)."""
    _transcoded[(instance.sha256, instance.object_key, str(syntax))] = response
    while len(_transcoded) > _TRANSCODED_MAX:
        _transcoded.popitem(last=False)


async def _transcode(
    ctx: GatewayContext, instance: LocatedInstance, syntax: str, *, inline: bool
) -> tuple[TranscodeResponse, bytes | None]:
    """Ask the transcode service (unless the derived object is known); see `transcode`.

    Raises:
        WadoError: the syntax cannot be produced for this instance (406) or it is gone (404).
        ServiceUnavailableError: the transcode service did not answer.
    """
    known = known_transcoded(instance, syntax)
    if known is not None:
        timing.add("transcode_known", 0.0)
        return known, None
    request = TranscodeRequest(
        object_key=instance.object_key,
        study_uid=instance.study_uid,
        series_uid=instance.series_uid,
        sop_instance_uid=instance.sop_instance_uid,
        transfer_syntax_uid=str(syntax),
        source_transfer_syntax_uid=instance.transfer_syntax_uid,
        inline=inline,
    )
    try:
        with timing.stage("transcode"):
            reply = await ctx.nc.request(
                subjects.SVC_TRANSCODE_INSTANCE, encode(request), timeout=120.0
            )
    except _UNAVAILABLE as exc:
        _log.warning("transcode unavailable", error=repr(exc))
        raise ServiceUnavailableError(service="transcode") from exc
    described = (reply.headers or {}).get(INLINE_HEADER)
    data: bytes | None = None
    if described is not None:
        response, data = decode(described.encode(), TranscodeResponse), reply.data
    else:
        response = decode(reply.data, TranscodeResponse)
    if response.status != 200 or response.object_key is None:
        raise WadoError(response.status, response.reason or "cannot transcode")
    if data is None:  # stored (bytes just made are still being written: not known yet)
        remember_transcoded(instance, syntax, response)
    return response, data


async def render(ctx: GatewayContext, request: RenderRequest) -> tuple[bytes, str]:
    """The rendered image and its media type.

    Raises:
        WadoError: the render service refused (404 frame missing, 422 undecodable).
        ServiceUnavailableError: the render service did not answer.
    """
    try:
        with timing.stage("render"):
            reply = await ctx.nc.request(subjects.SVC_RENDER_FRAME, encode(request), timeout=60.0)
    except _UNAVAILABLE as exc:
        _log.warning("render unavailable", error=repr(exc))
        raise ServiceUnavailableError(service="render") from exc
    headers = reply.headers or {}
    status = int(headers.get("Krypton-Status", "500"))
    if status != 200:
        raise WadoError(status, headers.get("Krypton-Reason", "cannot render"))
    return reply.data, headers.get("Content-Type", request.media_type.value)

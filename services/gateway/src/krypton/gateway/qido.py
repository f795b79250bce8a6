"""QIDO-RS: parse the query at the edge, ask `index` over NATS, stream its DICOM JSON back."""

from __future__ import annotations

import time

import msgspec
import nats.errors
from starlette.requests import Request
from starlette.responses import Response

from krypton.bus.codec import encode
from krypton.contracts import subjects
from krypton.contracts.common.v1 import Actor
from krypton.contracts.index.v1 import QidoLevelValues, QidoRequest
from krypton.core.errors import ValidationError
from krypton.core.logging import get_logger
from krypton.dicom.qido import parse_qido
from krypton.gateway import audit_emit as audit, timing
from krypton.gateway.context import GatewayContext
from krypton.gateway.problems import problem
from krypton.gateway.wado_accept import parse_accept

__all__ = ["search"]

_log = get_logger("krypton.gateway.qido")
DICOM_JSON = "application/dicom+json"
_access = msgspec.json.Decoder(dict[str, str])


def _accepts_json(accept: str | None) -> bool:
    """Whether an Accept header admits DICOM JSON (the same parser as WADO-RS: q=0 refuses)."""
    try:
        ranges = parse_accept(accept)
    except ValueError:
        return False
    return any(r.matches(DICOM_JSON) or r.matches("application/json") for r in ranges)


async def search(
    request: Request,
    ctx: GatewayContext,
    actor: Actor,
    level: QidoLevelValues,
    study_uid: str | None = None,
    series_uid: str | None = None,
) -> Response:
    """Handle a QIDO-RS search at `level`, scoped by the path's UIDs.

    The answer carries a ``Server-Timing`` header (``parse``, ``index``: the NATS round trip
    to the index service including its SQL and rendering, ``audit``: until JetStream holds
    the audit event, ``total``) so a slow search shows which hop it spent its time in; an
    empty answer carries none.
    """
    timings = timing.begin()
    if not _accepts_json(request.headers.get("accept")):
        return problem(406, "QIDO-RS answers application/dicom+json only")
    try:
        query = parse_qido(
            level,
            list(request.query_params.multi_items()),
            study_uid=study_uid,
            series_uid=series_uid,
        )
    except ValidationError as exc:
        return problem(400, exc.reason, parameter=exc.field)
    timings.add("parse", time.perf_counter() - timings.started)
    base = (ctx.settings.public_url or str(request.base_url)).rstrip("/") + "/dicomweb"
    payload = encode(QidoRequest(query=query, actor=actor, base_url=base))
    try:
        with timing.stage("index"):
            reply = await ctx.nc.request(subjects.SVC_INDEX_QIDO, payload, timeout=10.0)
    except (nats.errors.NoRespondersError, nats.errors.TimeoutError) as exc:
        _log.warning("index unavailable", error=repr(exc))
        return problem(503, "search unavailable; retry later", headers={"Retry-After": "2"})
    headers = reply.headers or {}
    status = int(headers.get("Krypton-Status", "200"))
    if status != 200:
        retry = {"Retry-After": "2"} if status == 503 else None
        return problem(status, headers.get("Krypton-Reason", "search failed"), headers=retry)
    # Audit (issue 6): the search and the studies/patients it disclosed, durably, before the
    # answer leaves; no audit, no answer.
    # The index says which studies a professional sees through a grant (care relationship,
    # share code, break-the-glass): one event per basis, so each patient sees why.
    try:
        access = _access.decode(headers.get("Krypton-Access", "{}"))
    except msgspec.DecodeError:
        access = {}
    try:
        with timing.stage("audit"):
            await audit.emit_all(
                ctx,
                audit.search_events(
                    request,
                    actor,
                    reply.data,
                    access,
                    query=audit.query_string(request),
                    detail={"level": level.value, "results": headers.get("Krypton-Count", "")},
                ),
            )
    except audit.AuditUnavailableError:
        return audit.unavailable()
    response = Response(reply.data, media_type=DICOM_JSON)
    if headers.get("Krypton-Count", "0") != "0":
        # Only an answer that discloses studies says where its time went: an empty one must
        # look the same whether the studies are hidden or absent, headers included.
        timings.apply(response)
    return response

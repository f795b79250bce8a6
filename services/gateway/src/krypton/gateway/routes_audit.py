"""Audit APIs: a patient's access history, DPO and administrator queries, exports.

- ``GET /api/audit/me`` (role patient): every recorded access to the caller's exams (by INS):
  who (name, profession, structure), when, on what basis, what.
- ``GET /api/audit/events?actor=&patient=&from=&to=&type=`` : platform administrators see every
  event; a structure's data protection officer (a professional whose token carries the claim
  ``krypton_dpo: true``) sees the events on the studies its structure produced and the events of
  its own staff.

Both take ``limit``/``offset`` (newest first) and ``format=json|fhir|dicom`` (FHIR R4 Bundle of
AuditEvent, or DICOM PS3.15 A.5 AuditMessage XML). The audit service answers over NATS; reading
the audit log is itself audited (DCM 110101 "Audit Log Used").
"""

from __future__ import annotations

import base64
import binascii
import json

import nats.errors
from fastapi import APIRouter
from starlette.requests import Request
from starlette.responses import Response

from krypton.auth.errors import PermissionDenied
from krypton.bus.codec import encode
from krypton.contracts import subjects
from krypton.contracts.audit.v1 import (
    AccessBasisValues,
    AuditEventTypeValues,
    AuditFormatValues,
    AuditQueryRequest,
    AuditScopeValues,
)
from krypton.contracts.common.v1 import Actor, RoleValues
from krypton.core.logging import get_logger
from krypton.gateway import audit_emit as audit
from krypton.gateway.context import GatewayContext
from krypton.gateway.problems import problem
from krypton.gateway.security import guarded

__all__ = ["DPO_CLAIM", "router"]

router = APIRouter()
_log = get_logger("krypton.gateway.audit")
#: The token claim that makes a professional their structure's data protection officer.
DPO_CLAIM = "krypton_dpo"


def _token_claims(request: Request) -> dict[str, object]:
    """The claims of the request's token, which `guarded` has just verified.

    `Actor` has no place for the DPO flag yet, so the verified token is read again here.
    """
    header = request.headers.get("authorization", "")
    token = header.partition(" ")[2].strip() if header else ""
    token = token or request.query_params.get("access_token", "")
    parts = token.split(".")
    if len(parts) != 3:
        return {}
    try:
        claims = json.loads(base64.urlsafe_b64decode(parts[1] + "=" * (-len(parts[1]) % 4)))
    except (binascii.Error, ValueError):
        return {}
    return claims if isinstance(claims, dict) else {}


def _int(request: Request, name: str, default: int) -> int:
    raw = request.query_params.get(name)
    if raw is None:
        return default
    try:
        return int(raw)
    except ValueError:
        msg = f"{name} must be an integer"
        raise ValueError(msg) from None


async def _answer(
    request: Request, ctx: GatewayContext, actor: Actor, scope: AuditScopeValues
) -> Response:
    params = request.query_params
    try:
        fmt = AuditFormatValues(params.get("format", "json"))
    except ValueError:
        return problem(400, "format must be json, fhir or dicom", parameter="format")
    try:
        limit, offset = _int(request, "limit", 100), _int(request, "offset", 0)
    except ValueError as exc:
        return problem(400, str(exc))
    query = AuditQueryRequest(
        actor=actor,
        scope=scope,
        actor_sub=params.get("actor") if scope is not AuditScopeValues.PATIENT else None,
        patient=params.get("patient") if scope is not AuditScopeValues.PATIENT else None,
        start=params.get("from"),
        end=params.get("to"),
        types=params.getlist("type"),
        limit=limit,
        offset=offset,
        format=fmt,
    )
    try:
        reply = await ctx.nc.request(subjects.SVC_AUDIT_QUERY, encode(query), timeout=10.0)
    except (nats.errors.NoRespondersError, nats.errors.TimeoutError) as exc:
        _log.warning("audit service unavailable", error=repr(exc))
        return problem(503, "audit unavailable; retry later", headers={"Retry-After": "2"})
    headers = reply.headers or {}
    status = int(headers.get("Krypton-Status", "200"))
    if status != 200:
        return problem(status, headers.get("Krypton-Reason", "audit query failed"))
    basis = {
        AuditScopeValues.PATIENT: AccessBasisValues.PATIENT_SELF,
        AuditScopeValues.STRUCTURE: AccessBasisValues.PRODUCING_STRUCTURE,
        AuditScopeValues.ALL: AccessBasisValues.ADMIN,
    }[scope]
    try:
        await audit.emit(
            ctx,
            audit.event(
                request,
                actor,
                AuditEventTypeValues.AUDIT_VIEWED,
                basis=basis,
                query=audit.query_string(request) or None,
                detail={"scope": scope.value, "results": headers.get("Krypton-Count", "")},
            ),
        )
    except audit.AuditUnavailableError:
        return audit.unavailable()
    return Response(reply.data, media_type=headers.get("Content-Type", "application/json"))


async def _me(request: Request, ctx: GatewayContext, actor: Actor) -> Response:
    if actor.role is not RoleValues.PATIENT or not actor.ins:
        msg = "only a patient may read their own access history"
        raise PermissionDenied(msg)
    return await _answer(request, ctx, actor, AuditScopeValues.PATIENT)


async def _events(request: Request, ctx: GatewayContext, actor: Actor) -> Response:
    if actor.role is RoleValues.ADMIN:
        return await _answer(request, ctx, actor, AuditScopeValues.ALL)
    if (
        actor.role is RoleValues.PROFESSIONAL
        and actor.structure
        and _token_claims(request).get(DPO_CLAIM) is True
    ):
        return await _answer(request, ctx, actor, AuditScopeValues.STRUCTURE)
    msg = "audit queries are for administrators and data protection officers"
    raise PermissionDenied(msg)


@router.get("/api/audit/me", tags=["audit"], summary="A patient's access history")
async def audit_me(request: Request) -> Response:
    """Every recorded access to the calling patient's exams."""
    return await guarded(request, _me)


@router.get("/api/audit/events", tags=["audit"], summary="Query the audit log (DPO, admin)")
async def audit_events(request: Request) -> Response:
    """Audit events by actor, patient and period, within the caller's scope."""
    return await guarded(request, _events)

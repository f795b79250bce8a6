"""Audit events from the gateway, published durably before the answer leaves (fail closed).

Events are built from the request and the verified caller; when one cannot be recorded the
request is refused with 503 (no audit, no answer).

Usage in a route handler (after the data is ready, before returning it)::

    from krypton.gateway import audit_emit as audit
    try:
        await audit.emit(ctx, audit.event(request, actor, AuditEventTypeValues.RETRIEVE_INSTANCE,
                                          study_uids=[study], instances=n))
    except AuditUnavailableError:
        return audit.unavailable()
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from typing import Any
from urllib.parse import urlencode

import msgspec
from starlette.requests import Request
from starlette.responses import Response

from krypton.bus.audit import AuditPublisher, AuditUnavailableError
from krypton.contracts.audit.v1 import (
    AccessBasisValues,
    AuditEvent,
    AuditEventTypeValues,
    AuditPatient,
    new_event,
)
from krypton.contracts.common.v1 import Actor, RoleValues
from krypton.core.logging import get_logger
from krypton.gateway.context import GatewayContext
from krypton.gateway.problems import problem

__all__ = [
    "AuditUnavailableError",
    "basis_for",
    "emit",
    "event",
    "first_use",
    "query_string",
    "results_of",
    "unavailable",
]

_log = get_logger("krypton.gateway.audit")
_SEEN_MAX = 50_000
_seen_tokens: OrderedDict[bytes, None] = OrderedDict()
# Query parameters never written to the audit log: the bearer token a viewer may pass in the URL.
_SECRET_PARAMS = frozenset({"access_token"})


async def emit(ctx: GatewayContext, audit_event: AuditEvent) -> None:
    """Publish `audit_event` and wait until JetStream has it.

    Raises:
        AuditUnavailableError: it could not be recorded; refuse the request (`unavailable()`).
    """
    try:
        await AuditPublisher(ctx.js).publish(audit_event)
    except AuditUnavailableError as exc:
        _log.error(
            "audit event not recorded; refusing", type=audit_event.type.value, error=exc.cause
        )
        raise


def unavailable() -> Response:
    """The answer when an access could not be audited: 503, retry later."""
    return problem(503, "audit trail unavailable; retry later", headers={"Retry-After": "2"})


def basis_for(actor: Actor) -> AccessBasisValues:
    """Why `actor` sees what the index returns today (the rule of `index.qido_sql.access_predicate`).

    Care relationships, share codes and break-the-glass will come with their own events' basis.
    """
    if actor.role is RoleValues.ADMIN:
        return AccessBasisValues.ADMIN
    if actor.role is RoleValues.PATIENT:
        return AccessBasisValues.PATIENT_SELF
    return AccessBasisValues.PRODUCING_STRUCTURE


def trace_id(request: Request) -> str | None:
    """The W3C trace id of the request (``traceparent``), else its ``X-Request-Id``."""
    parent = request.headers.get("traceparent")
    if parent:
        parts = parent.split("-")
        if len(parts) >= 3 and len(parts[1]) == 32:
            return parts[1]
    return request.headers.get("x-request-id")


def query_string(request: Request) -> str:
    """The request's query string without secrets (``access_token``)."""
    items = request.query_params.multi_items()
    if not any(k in _SECRET_PARAMS for k, _ in items):
        return request.url.query
    return urlencode([(k, v) for k, v in items if k not in _SECRET_PARAMS])


def event(
    request: Request,
    actor: Actor | None,
    type_: AuditEventTypeValues,
    **fields: Any,
) -> AuditEvent:
    """An event for this request: actor, client address, path, trace id, basis filled in."""
    if actor is not None:
        fields.setdefault("basis", basis_for(actor))
    if actor is None or actor.client_address is None:
        fields.setdefault("client_address", request.client.host if request.client else None)
    fields.setdefault("resource", request.url.path)
    fields.setdefault("trace_id", trace_id(request))
    return new_event(type_, actor, **fields)


def first_use(actor: Actor) -> bool:
    """True the first time this process sees this token (so a login is recorded once per token)."""
    key = hashlib.sha256(
        f"{actor.issuer}\x00{actor.sub}\x00{actor.token_id or ''}".encode()
    ).digest()
    if key in _seen_tokens:
        _seen_tokens.move_to_end(key)
        return False
    _seen_tokens[key] = None
    if len(_seen_tokens) > _SEEN_MAX:
        _seen_tokens.popitem(last=False)
    return True


class _Element(msgspec.Struct):
    Value: list[Any] = msgspec.field(default_factory=list)


class _Result(msgspec.Struct):
    """The only attributes of a QIDO result the audit needs; msgspec skips the others."""

    study: _Element | None = msgspec.field(name="0020000D", default=None)
    patient_id: _Element | None = msgspec.field(name="00100020", default=None)
    issuer: _Element | None = msgspec.field(name="00100021", default=None)


_results = msgspec.json.Decoder(list[_Result])


def _first(element: _Element | None) -> str | None:
    if element is None or not element.Value or not isinstance(element.Value[0], str):
        return None
    return element.Value[0]


def results_of(body: bytes) -> tuple[list[str], list[AuditPatient]]:
    """The distinct study UIDs and patient identifiers of a QIDO-RS DICOM JSON answer."""
    try:
        results = _results.decode(body)
    except msgspec.DecodeError:
        return [], []
    studies: dict[str, None] = {}
    patients: dict[tuple[str, str | None], None] = {}
    for item in results:
        uid = _first(item.study)
        if uid:
            studies[uid] = None
        pid = _first(item.patient_id)
        if pid:
            patients[(pid, _first(item.issuer))] = None
    return list(studies), [AuditPatient(patient_id=p, issuer=i) for p, i in patients]

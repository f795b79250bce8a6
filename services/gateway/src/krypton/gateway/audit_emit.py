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

import asyncio
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
    "emit_all",
    "event",
    "first_use",
    "query_string",
    "results_of",
    "search_events",
    "trace_id",
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
    """The basis on which `actor` sees data by role alone (`index.qido_sql.access_predicate`).

    A professional's grants (care relationship, share code, break-the-glass) give other bases
    per study: the index names them (`search_events`).
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
    by_study, patients = _results_by_study(body)
    return list(by_study), [AuditPatient(patient_id=p, issuer=i) for p, i in patients]


_PatientId = tuple[str, str | None]


def _results_by_study(body: bytes) -> tuple[dict[str, set[_PatientId]], dict[_PatientId, None]]:
    """Study UID → its patients' identifiers, and every patient identifier in answer order."""
    try:
        results = _results.decode(body)
    except msgspec.DecodeError:
        return {}, {}
    studies: dict[str, set[_PatientId]] = {}
    patients: dict[_PatientId, None] = {}
    for item in results:
        uid = _first(item.study)
        pid = _first(item.patient_id)
        patient = (pid, _first(item.issuer)) if pid else None
        if patient is not None:
            patients[patient] = None
        if uid:
            found = studies.setdefault(uid, set())
            if patient is not None:
                found.add(patient)
    return studies, patients


def search_events(
    request: Request,
    actor: Actor,
    body: bytes,
    access: dict[str, str],
    **fields: Any,
) -> list[AuditEvent]:
    """The audit events of a search answer: one per access basis of the studies it disclosed.

    `access` maps the studies a professional sees through a grant to the grant's basis (the
    index's ``Krypton-Access`` reply header); the other studies are seen on the caller's own
    basis (`basis_for`). A search whose results mix bases gives one event per basis, each
    with its studies and their patients, so that each patient's history shows why *their*
    studies were seen; the events share the request's trace id.
    """
    default = basis_for(actor)
    by_study, patients = _results_by_study(body)
    groups: dict[AccessBasisValues, list[str]] = {}
    for uid in by_study:
        try:
            basis = AccessBasisValues(access.get(uid, default))
        except ValueError:  # a basis this gateway does not know yet: still record the access
            basis = default
        groups.setdefault(basis, []).append(uid)
    search = AuditEventTypeValues.SEARCH
    if len(groups) <= 1:
        everyone = [AuditPatient(patient_id=p, issuer=i) for p, i in patients]
        basis = next(iter(groups), default)
        return [
            event(request, actor, search, basis=basis, study_uids=list(by_study),
                  patients=everyone, **fields)
        ]  # fmt: skip
    detail: dict[str, str] = dict(fields.pop("detail", None) or {})
    events = []
    for n, (basis, uids) in enumerate(groups.items(), start=1):
        theirs = {pid for uid in uids for pid in by_study[uid]}
        events.append(
            event(
                request, actor, search, basis=basis, study_uids=uids,
                patients=[AuditPatient(patient_id=p, issuer=i) for p, i in patients if (p, i) in theirs],
                detail={**detail, "part": f"{n}/{len(groups)}"}, **fields,
            )
        )  # fmt: skip
    return events


async def emit_all(ctx: GatewayContext, audit_events: list[AuditEvent]) -> None:
    """Publish several events concurrently; all must be acknowledged.

    Raises:
        AuditUnavailableError: one could not be recorded; refuse the request.
    """
    if len(audit_events) == 1:
        await emit(ctx, audit_events[0])
        return
    results = await asyncio.gather(*(emit(ctx, e) for e in audit_events), return_exceptions=True)
    for result in results:
        if isinstance(result, BaseException):
            raise result

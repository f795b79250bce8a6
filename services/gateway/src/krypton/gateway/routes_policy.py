"""Access policy APIs: care relationships, share codes, oppositions, break-the-glass, admin.

The gateway owns no policy state: each call is authenticated (`guarded`), then forwarded as an
`AuthzCommand` on ``svc.authz.<op>`` to the authorize service, which checks the caller's role,
validates the body, applies the change and answers JSON (problem+json on errors). Authorize also
writes the audit events of these calls (changes and refusals, with the patient and outcome it
alone knows) in the change's own transaction: see `krypton.authorize.trail`. Request and
response bodies are the msgspec structs of `krypton.contracts.authorize.v1`; their JSON schemas
are put in the OpenAPI document by hand, because the body is read inside `guarded` (an
unauthenticated call must get 401, not a validation error).

| who | method and path | op |
|---|---|---|
| structure (producer) / admin | ``POST /api/care-relationships`` | declare |
| professional | ``POST /api/care-relationships/attest`` | self-attest |
| structure / professional / admin | ``POST /api/care-relationships/{id}/end`` | end |
| anyone | ``GET /api/care-relationships`` | list (own scope) |
| patient / structure / admin | ``POST /api/share-codes`` | create |
| anyone | ``GET /api/share-codes`` | list (own scope) |
| patient / structure / admin | ``POST /api/share-codes/{id}/revoke`` | revoke |
| professional | ``POST /api/share-codes/redeem`` | redeem |
| patient / structure / admin | ``GET /api/opposition``, ``POST /api/opposition``, ``POST /api/opposition/lift`` | status, set, lift |
| physician | ``POST /api/break-the-glass`` | open |
| physician / patient / admin | ``GET /api/break-the-glass`` | list |
| admin | ``POST /api/break-the-glass/{id}/review`` | review |
| admin | ``PUT/GET /api/admin/structures``, ``/api/admin/professionals``, ``/api/admin/patients`` | directory |
| admin | ``PUT /api/admin/communities/{id}`` | create or rename a community |
| admin / owning structure | ``POST /api/admin/communities/{id}/members``, ``DELETE .../members/{sub}`` | members |
| admin / owning structure / member | ``GET /api/communities/{id}`` | members and live shares |
| structure / admin | ``POST /api/communities/{id}/shares``, ``POST .../shares/{share_id}/end`` | share a patient's file |
"""

from __future__ import annotations

from typing import Any, Final

import msgspec
import nats.errors
from fastapi import APIRouter
from starlette.requests import Request
from starlette.responses import Response

from krypton.bus.codec import encode
from krypton.contracts import subjects
from krypton.contracts.authorize.v1 import (
    AuthzCommand,
    BreakGlassOpen,
    BreakGlassReview,
    BreakGlassSession,
    CareDeclaration,
    CareRelationship,
    Community,
    CommunityMemberAdd,
    CommunityRecord,
    CommunityShare,
    CommunityShareCreate,
    OppositionChange,
    OppositionStatus,
    PatientRecord,
    ProfessionalRecord,
    SelfAttestation,
    ShareCode,
    ShareCodeCreate,
    ShareCodeCreated,
    ShareCodeRedeem,
    ShareCodeRedeemed,
    StructureRecord,
)
from krypton.contracts.common.v1 import Actor
from krypton.core.logging import get_logger
from krypton.gateway import audit_emit as audit, security
from krypton.gateway.context import GatewayContext
from krypton.gateway.problems import PROBLEM_JSON, problem
from krypton.gateway.security import guarded

__all__ = ["router"]

router = APIRouter(prefix="/api", tags=["Access policy"])
_log = get_logger("krypton.gateway.policy")
_MAX_BODY: Final = 64 * 1024
_TIMEOUT: Final = 10.0
#: Reply header of authorize: the refusal is already in the audit trail.
AUDITED_HEADER: Final = "Krypton-Audited"


def _inline(schema: Any, components: dict[str, Any]) -> Any:
    """Replace ``$ref``s to msgspec's components by the schemas themselves (no cycles here)."""
    if isinstance(schema, dict):
        ref = schema.get("$ref")
        if isinstance(ref, str):
            return _inline(components[ref.rsplit("/", 1)[-1]], components)
        return {k: _inline(v, components) for k, v in schema.items()}
    if isinstance(schema, list):
        return [_inline(v, components) for v in schema]
    return schema


def _schema(type_: Any) -> dict[str, Any]:
    (schema,), components = msgspec.json.schema_components([type_])
    result: dict[str, Any] = _inline(schema, components)
    return result


_PROBLEM_SCHEMA: Final = {
    "type": "object",
    "properties": {
        "type": {"type": "string"},
        "title": {"type": "string"},
        "status": {"type": "integer"},
        "detail": {"type": "string"},
    },
}


def _doc(body: Any | None, response: Any, status: int = 200, summary: str = "") -> dict[str, Any]:
    """Route keyword arguments documenting a JSON body and answer in OpenAPI."""
    problems = {
        code: {"description": text, "content": {PROBLEM_JSON: {"schema": _PROBLEM_SCHEMA}}}
        for code, text in (
            (400, "invalid body or parameter"),
            (401, "missing or invalid bearer token"),
            (403, "not allowed for this caller"),
            (404, "no such record (or not the caller's)"),
            (429, "too many failed attempts (share codes)"),
            (503, "policy service unavailable"),
        )
    }
    extra: dict[str, Any] = {}
    if body is not None:
        extra["requestBody"] = {
            "required": True,
            "content": {"application/json": {"schema": _schema(body)}},
        }
    return {
        "summary": summary,
        "status_code": status,
        "response_class": Response,
        "openapi_extra": extra,
        "responses": {
            status: {
                "description": "OK",
                "content": {"application/json": {"schema": _schema(response)}},
            },
            **problems,
        },
    }


async def _forward(
    request: Request,
    op: str,
    *,
    params: dict[str, str] | None = None,
    query: tuple[str, ...] = (),
    with_body: bool = False,
) -> Response:
    """Authenticate, then send the call to authorize and relay its answer."""

    async def handler(request: Request, ctx: GatewayContext, actor: Actor) -> Response:
        body = b"{}"
        if with_body:
            body = await request.body()
            if len(body) > _MAX_BODY:
                return problem(413, "body too large")
            body = body or b"{}"
            try:
                msgspec.json.decode(body)  # well-formed JSON; authorize validates the shape
            except msgspec.DecodeError:
                return problem(400, "the body is not valid JSON")
        args = dict(params or {})
        for name in query:
            value = request.query_params.get(name)
            if value is not None:
                args[name] = value
        command = AuthzCommand(
            actor=actor,
            body=msgspec.Raw(body),
            params=args,
            trace_id=audit.trace_id(request),
            resource=request.url.path,
        )
        try:
            reply = await ctx.nc.request(subjects.svc_authz(op), encode(command), timeout=_TIMEOUT)
        except (nats.errors.NoRespondersError, nats.errors.TimeoutError) as exc:
            _log.warning("authorize unavailable", op=op, error=repr(exc))
            return problem(
                503, "policy service unavailable; retry later", headers={"Retry-After": "2"}
            )
        headers = reply.headers or {}
        status = int(headers.get("Krypton-Status", "200"))
        if headers.get(AUDITED_HEADER):
            # Authorize recorded this refusal with its patient: `guarded` must not record it again.
            security.mark_audited(request)
        if status >= 400:
            extra = {"Retry-After": headers["Retry-After"]} if "Retry-After" in headers else None
            detail = msgspec.json.decode(reply.data).get("detail", "refused")
            return problem(status, str(detail), headers=extra)
        return Response(reply.data, status_code=status, media_type="application/json")

    return await guarded(request, handler)


# --- care relationships ------------------------------------------------------------------


@router.post(
    "/care-relationships",
    **_doc(CareDeclaration, CareRelationship, 201, "Declare a care relationship (structure)"),
)
async def declare_care(request: Request) -> Response:
    """A structure's system declares that one of its professionals takes care of a patient."""
    return await _forward(request, "care.declare", with_body=True)


@router.post(
    "/care-relationships/attest",
    **_doc(SelfAttestation, CareRelationship, 201, "Attest a care relationship (professional)"),
)
async def attest_care(request: Request) -> Response:
    """A professional attests that they take care of a patient (short validity)."""
    return await _forward(request, "care.attest", with_body=True)


@router.post(
    "/care-relationships/{care_id}/end",
    **_doc(None, CareRelationship, 200, "End a care relationship"),
)
async def end_care(request: Request, care_id: str) -> Response:
    """End a care relationship: access through it stops within a second."""
    return await _forward(request, "care.end", params={"id": care_id})


@router.get(
    "/care-relationships",
    **_doc(None, list[CareRelationship], 200, "List care relationships"),
)
async def list_care(request: Request) -> Response:
    """The caller's care relationships (structure: declared by it; admin: all).

    Query: ``patient_ins`` filters on one patient.
    """
    return await _forward(request, "care.list", query=("patient_ins",))


# --- share codes -------------------------------------------------------------------------


@router.post("/share-codes", **_doc(ShareCodeCreate, ShareCodeCreated, 201, "Create a share code"))
async def create_code(request: Request) -> Response:
    """The patient (or a structure on their behalf) creates a code; it is shown only once."""
    return await _forward(request, "code.create", with_body=True)


@router.get("/share-codes", **_doc(None, list[ShareCode], 200, "List share codes"))
async def list_codes(request: Request) -> Response:
    """The patient's codes, a structure's codes, or the codes a professional redeemed."""
    return await _forward(request, "code.list")


@router.post(
    "/share-codes/redeem",
    **_doc(ShareCodeRedeem, ShareCodeRedeemed, 200, "Redeem a share code (professional)"),
)
async def redeem_code(request: Request) -> Response:
    """A professional presents a code; the first one binds it. Guessing is locked out."""
    return await _forward(request, "code.redeem", with_body=True)


@router.post("/share-codes/{code_id}/revoke", **_doc(None, ShareCode, 200, "Revoke a share code"))
async def revoke_code(request: Request, code_id: str) -> Response:
    """Revoke a code; access through it stops within a second."""
    return await _forward(request, "code.revoke", params={"id": code_id})


# --- opposition --------------------------------------------------------------------------


@router.get("/opposition", **_doc(None, OppositionStatus, 200, "Opposition status"))
async def opposition_status(request: Request) -> Response:
    """Whether the patient opposes sharing, with the history (query ``patient_ins``)."""
    return await _forward(request, "opposition.get", query=("patient_ins",))


@router.post("/opposition", **_doc(OppositionChange, OppositionStatus, 200, "Set an opposition"))
async def set_opposition(request: Request) -> Response:
    """The patient (online) or a structure (collected at its desk) records an opposition."""
    return await _forward(request, "opposition.set", with_body=True)


@router.post(
    "/opposition/lift", **_doc(OppositionChange, OppositionStatus, 200, "Lift an opposition")
)
async def lift_opposition(request: Request) -> Response:
    """Lift the opposition (the patient, or the structure that collected it)."""
    return await _forward(request, "opposition.lift", with_body=True)


# --- break-the-glass ---------------------------------------------------------------------


@router.post(
    "/break-the-glass",
    **_doc(BreakGlassOpen, BreakGlassSession, 201, "Open break-the-glass access (physician)"),
)
async def open_break_glass(request: Request) -> Response:
    """Emergency access for a physician, with a justification; impossible under opposition."""
    return await _forward(request, "btg.open", with_body=True)


@router.get("/break-the-glass", **_doc(None, list[BreakGlassSession], 200, "List break-the-glass"))
async def list_break_glass(request: Request) -> Response:
    """Sessions to review (admin, ``unreviewed=true``), one's own, or about oneself."""
    return await _forward(request, "btg.list", query=("unreviewed",))


@router.post(
    "/break-the-glass/{session_id}/review",
    **_doc(BreakGlassReview, BreakGlassSession, 200, "Review a break-the-glass session"),
)
async def review_break_glass(request: Request, session_id: str) -> Response:
    """An admin records the review of a session."""
    return await _forward(request, "btg.review", params={"id": session_id}, with_body=True)


# --- admin directory ---------------------------------------------------------------------


@router.put(
    "/admin/structures/{finess}",
    **_doc(StructureRecord, dict[str, Any], 200, "Create or update a structure"),
)
async def put_structure(request: Request, finess: str) -> Response:
    """Admin: a member structure."""
    return await _forward(request, "admin.structure.put", params={"finess": finess}, with_body=True)


@router.get("/admin/structures", **_doc(None, list[dict[str, Any]], 200, "List structures"))
async def list_structures(request: Request) -> Response:
    """Admin: every member structure."""
    return await _forward(request, "admin.structure.list")


@router.put(
    "/admin/professionals/{sub}",
    **_doc(ProfessionalRecord, dict[str, Any], 200, "Create or update a professional"),
)
async def put_professional(request: Request, sub: str) -> Response:
    """Admin: a professional (IDNPS) and their structure memberships."""
    return await _forward(request, "admin.professional.put", params={"sub": sub}, with_body=True)


@router.get("/admin/professionals", **_doc(None, list[dict[str, Any]], 200, "List professionals"))
async def list_professionals(request: Request) -> Response:
    """Admin: every registered professional."""
    return await _forward(request, "admin.professional.list")


@router.put(
    "/admin/patients/{ins}",
    **_doc(PatientRecord, dict[str, Any], 200, "Create or update a patient"),
)
async def put_patient(request: Request, ins: str) -> Response:
    """Admin: a patient (INS) and the local identifiers (IPP) structures know them by."""
    return await _forward(request, "admin.patient.put", params={"ins": ins}, with_body=True)


@router.get("/admin/patients/{ins}", **_doc(None, dict[str, Any], 200, "A patient's record"))
async def get_patient(request: Request, ins: str) -> Response:
    """Admin: a patient's record."""
    return await _forward(request, "admin.patient.get", params={"ins": ins})


# --- communities (tumour boards) -----------------------------------------------------------


@router.put(
    "/admin/communities/{community_id}",
    **_doc(CommunityRecord, Community, 200, "Create or update a community"),
)
async def put_community(request: Request, community_id: str) -> Response:
    """Admin: a community of professionals (e.g. a tumour board) and its owning structure."""
    return await _forward(
        request, "admin.community.put", params={"id": community_id}, with_body=True
    )


@router.post(
    "/admin/communities/{community_id}/members",
    **_doc(CommunityMemberAdd, Community, 200, "Add a member to a community"),
)
async def add_community_member(request: Request, community_id: str) -> Response:
    """Admin or the owning structure: a professional joins; they see its shared patients."""
    return await _forward(
        request, "admin.community.member.add", params={"id": community_id}, with_body=True
    )


@router.delete(
    "/admin/communities/{community_id}/members/{sub}",
    **_doc(None, Community, 200, "Remove a member from a community"),
)
async def remove_community_member(request: Request, community_id: str, sub: str) -> Response:
    """Admin or the owning structure: the professional stops seeing its patients within a second."""
    return await _forward(
        request, "admin.community.member.remove", params={"id": community_id, "sub": sub}
    )


@router.get("/communities/{community_id}", **_doc(None, Community, 200, "A community"))
async def get_community(request: Request, community_id: str) -> Response:
    """A community with its members and live shares (admin, owning structure, members)."""
    return await _forward(request, "community.get", params={"id": community_id})


@router.post(
    "/communities/{community_id}/shares",
    **_doc(CommunityShareCreate, CommunityShare, 201, "Share a patient's file with a community"),
)
async def share_with_community(request: Request, community_id: str) -> Response:
    """A structure (or an admin) shares a patient's file: every member sees their studies."""
    return await _forward(request, "community.share", params={"id": community_id}, with_body=True)


@router.post(
    "/communities/{community_id}/shares/{share_id}/end",
    **_doc(None, CommunityShare, 200, "End a share with a community"),
)
async def end_community_share(request: Request, community_id: str, share_id: str) -> Response:
    """The sharing structure (or an admin) ends a share; access stops within a second."""
    return await _forward(
        request, "community.share.end", params={"id": community_id, "share_id": share_id}
    )

"""Bearer-token authentication for every DICOMweb and API request."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import msgspec
from starlette.requests import Request
from starlette.responses import Response

from krypton.auth.errors import AuthenticationError, JwksUnavailableError, PermissionDenied
from krypton.contracts.audit.v1 import AccessBasisValues, AuditEventTypeValues, AuditOutcomeValues
from krypton.contracts.common.v1 import Actor
from krypton.gateway import audit_emit as audit
from krypton.gateway.context import GatewayContext
from krypton.gateway.problems import problem

__all__ = ["Handler", "authenticate", "context_of", "guarded", "mark_audited"]

Handler = Callable[[Request, GatewayContext, Actor], Awaitable[Response]]


def mark_audited(request: Request) -> None:
    """Say that the handler's refusal is already audited (by the service that refused it)."""
    request.state.krypton_audited = True


def _already_audited(request: Request) -> bool:
    return bool(getattr(request.state, "krypton_audited", False))


def context_of(request: Request) -> GatewayContext:
    """The gateway's lifetime resources."""
    ctx = request.app.state.ctx
    assert isinstance(ctx, GatewayContext)
    return ctx


async def guarded(request: Request, handler: Handler) -> Response:
    """Authenticate the caller, then run `handler`; clean 401/403/503 problem answers."""
    ctx = context_of(request)
    try:
        actor = await authenticate(request, ctx)
    except AuthenticationError as exc:
        # Audit (issue 6): every failed authentication is recorded, fail closed.
        if await audit_refused(request, ctx, None, AuditEventTypeValues.AUTH_FAILURE, exc.reason):
            return audit.unavailable()
        return problem(401, exc.reason, headers={"WWW-Authenticate": exc.www_authenticate})
    except JwksUnavailableError:
        return problem(
            503, "token issuer keys unavailable; retry later", headers={"Retry-After": "5"}
        )
    # Per-actor rate limit (issue 9): refused before any work is done for the request.
    assert ctx.rate_limiter is not None
    if (limited := ctx.rate_limiter.refuse(actor.sub)) is not None:
        return limited
    # Audit (issue 6): a token's first authentication in this process is recorded as a login.
    if audit.first_use(actor):
        try:
            await audit.emit(ctx, audit.event(request, actor, AuditEventTypeValues.AUTH_SUCCESS))
        except audit.AuditUnavailableError:
            return audit.unavailable()
    try:
        response = await handler(request, ctx, actor)
    except PermissionDenied as exc:
        if await audit_refused(request, ctx, actor, AuditEventTypeValues.ACCESS_DENIED, exc.reason):
            return audit.unavailable()
        return problem(403, exc.reason)
    # A handler that answered 403 itself is recorded as a denial too, unless the service that
    # refused (authorize) recorded it already, with the patient the gateway does not know.
    if (
        response.status_code == 403
        and not _already_audited(request)
        and await audit_refused(
            request, ctx, actor, AuditEventTypeValues.ACCESS_DENIED, "forbidden"
        )
    ):
        return audit.unavailable()
    return response


async def audit_refused(
    request: Request,
    ctx: GatewayContext,
    actor: Actor | None,
    type_: AuditEventTypeValues,
    reason: str,
    study_uids: list[str] | None = None,
) -> bool:
    """Record a refusal; True when it could not be recorded (the caller then answers 503)."""
    try:
        await audit.emit(
            ctx,
            audit.event(
                request,
                actor,
                type_,
                outcome=AuditOutcomeValues.DENIED,
                reason=reason,
                basis=AccessBasisValues.NONE,
                query=audit.query_string(request) or None,
                study_uids=study_uids or [],
            ),
        )
    except audit.AuditUnavailableError:
        return True
    return False


async def authenticate(request: Request, ctx: GatewayContext) -> Actor:
    """Return the verified caller, or raise AuthenticationError with the reason.

    The token comes from `Authorization: Bearer ...`; viewers that cannot set headers may pass
    `access_token` in the query string (RFC 6750 §2.3), never logged.
    """
    header = request.headers.get("authorization")
    token: str | None = None
    if header:
        scheme, _, value = header.partition(" ")
        if scheme.lower() != "bearer" or not value.strip():
            msg = "Authorization header must be 'Bearer <token>'"
            raise AuthenticationError(msg)
        token = value.strip()
    else:
        token = request.query_params.get("access_token")
    if not token:
        msg = "missing bearer token"
        raise AuthenticationError(msg)
    actor = await ctx.verifier.verify(token)
    client = request.client.host if request.client else None
    return msgspec.structs.replace(actor, client_address=client)

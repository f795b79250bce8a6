"""Bearer-token authentication for every DICOMweb and API request."""

from __future__ import annotations

from starlette.requests import Request

from krypton.auth.errors import AuthenticationError
from krypton.contracts.common.v1 import Actor
from krypton.gateway.context import GatewayContext

__all__ = ["authenticate"]


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
            raise AuthenticationError("Authorization header must be 'Bearer <token>'")
        token = value.strip()
    else:
        token = request.query_params.get("access_token")
    if not token:
        raise AuthenticationError("missing bearer token")
    actor = await ctx.verifier.verify(token)
    client = request.client.host if request.client else None
    return Actor(
        sub=actor.sub,
        role=actor.role,
        issuer=actor.issuer,
        structure=actor.structure,
        name=actor.name,
        profession=actor.profession,
        ins=actor.ins,
        client_address=client,
        token_id=actor.token_id,
    )

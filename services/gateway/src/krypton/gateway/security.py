"""Bearer-token authentication for every DICOMweb and API request."""

from __future__ import annotations

import msgspec
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

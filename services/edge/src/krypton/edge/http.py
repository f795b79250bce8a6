"""The box's HTTP side: `/status` (JSON), `/metrics` (Prometheus), and a DICOMweb proxy.

The proxy lets the institution's viewers use DICOMweb against the box as if it were the region:
`GET /dicomweb/...` is forwarded to the region's gateway with the box's token, so they see what
the structure may see (the access policy and the audit apply at the gateway). It is read-only:
instances come in through C-STORE, which keeps the spool and the degraded mode in one path.
Bind it to the institution's network only; whoever reaches it acts as the structure.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import httpx
import msgspec
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.applications import Starlette
from starlette.background import BackgroundTask
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from krypton.contracts.edge.v1 import EdgeStatus

__all__ = ["create_app"]

# Response headers worth passing back to a viewer (hop-by-hop ones are not).
_PASS_BACK = (
    "content-type",
    "content-encoding",
    "content-length",
    "etag",
    "last-modified",
    "cache-control",
    "warning",
)
_PASS_ON = ("accept", "if-none-match", "if-modified-since", "range")


def create_app(
    status: Callable[[], EdgeStatus], region_url: str, token: Callable[[], str], timeout: float
) -> Starlette:
    """The box's HTTP application.

    Args:
        status: Returns the box's current status.
        region_url: The region's DICOMweb root.
        token: Returns the box's bearer token at the region (asked for every request).
        timeout: Seconds for the region to start answering.
    """
    client = httpx.AsyncClient(
        base_url=region_url.rstrip("/") + "/",
        timeout=httpx.Timeout(timeout, read=timeout * 4),
    )

    async def get_status(_request: Request) -> Response:
        return Response(msgspec.json.encode(status()), media_type="application/json")

    async def metrics(_request: Request) -> Response:
        return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)

    async def proxy(request: Request) -> Response:
        path = request.path_params["path"]
        headers = {k: v for k, v in request.headers.items() if k.lower() in _PASS_ON}
        headers["Authorization"] = f"Bearer {token()}"
        upstream = client.build_request(
            "GET", path, params=list(request.query_params.multi_items()), headers=headers
        )
        try:
            response = await client.send(upstream, stream=True)
        except httpx.HTTPError:
            return Response(
                b'{"title": "region unreachable"}',
                status_code=502,
                media_type="application/problem+json",
            )
        passed: dict[str, Any] = {
            k: v for k, v in response.headers.items() if k.lower() in _PASS_BACK
        }
        return StreamingResponse(
            response.aiter_raw(),
            status_code=response.status_code,
            headers=passed,
            background=BackgroundTask(response.aclose),
        )

    @asynccontextmanager
    async def lifespan(_app: Starlette) -> AsyncIterator[None]:
        yield
        await client.aclose()

    return Starlette(
        routes=[
            Route("/status", get_status),
            Route("/metrics", metrics),
            Route("/dicomweb/{path:path}", proxy, methods=["GET"]),
        ],
        lifespan=lifespan,
    )

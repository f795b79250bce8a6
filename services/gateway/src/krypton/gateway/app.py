"""The HTTP gateway: DICOMweb (STOW-RS, QIDO-RS) and health endpoints.

Stateless: it authenticates every request, streams uploads to staging, publishes them on
JetStream and asks the services over NATS. Run with `krypton run gateway`.
"""

from __future__ import annotations

import asyncio
import re
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import nats.errors
from fastapi import APIRouter, FastAPI
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from krypton.auth.jwks import JwksCache
from krypton.auth.verify import TokenVerifier
from krypton.bus import streams
from krypton.bus.connect import connect
from krypton.contracts import subjects
from krypton.contracts.index.v1 import QidoLevelValues
from krypton.core.logging import get_logger
from krypton.core.settings import KryptonSettings
from krypton.gateway import routes_audit, routes_policy, routes_wado, wado_render
from krypton.gateway.context import GatewayContext, VerdictWaiter
from krypton.gateway.lean_route import LeanRoute
from krypton.gateway.problems import problem
from krypton.gateway.qido import search
from krypton.gateway.security import context_of, guarded
from krypton.gateway.stow import store_instances
from krypton.storage.factory import open_store
from krypton.telemetry.asgi import instrument_asgi

__all__ = ["create_app"]

_log = get_logger("krypton.gateway")
_UID = re.compile(r"^[0-9]+(\.[0-9]+)*$")


def _bad_uid(*uids: str | None) -> Response | None:
    for uid in uids:
        if uid is not None and (len(uid) > 64 or not _UID.match(uid)):
            return problem(400, "a UID in the path is not a valid DICOM UID")
    return None


def create_app(settings: KryptonSettings) -> FastAPI:
    """Build the ASGI app; connections are made in its lifespan."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        nc = await connect(settings.nats_url, "gateway")
        js = nc.jetstream()
        await streams.provision(js, replicas=settings.stream_replicas)
        store = await open_store(settings.storage)
        jwks = JwksCache(settings.auth)
        waiter = VerdictWaiter(prefix=f"_INBOX.krypton.gateway.{uuid.uuid4().hex}")
        await waiter.start(nc)
        app.state.ctx = GatewayContext(
            settings=settings,
            nc=nc,
            js=js,
            store=store,
            verifier=TokenVerifier(settings.auth, jwks),
            waiter=waiter,
        )
        await wado_render.warm_up()
        _log.info("gateway ready", port=settings.http_port)
        try:
            yield
        finally:
            await nc.drain()
            await jwks.aclose()
            await store.close()

    # The API description is public in development only; production serves no unauthenticated
    # endpoint but the health checks.
    public_docs = settings.environment != "production"
    app = FastAPI(
        title="Krypton gateway",
        version="0.1.0",
        lifespan=lifespan,
        docs_url="/api/docs" if public_docs else None,
        openapi_url="/api/openapi.json" if public_docs else None,
        redoc_url=None,
        # FastAPI's own telemetry would open a second server span and record the query
        # string (patient names, identifiers) verbatim; `instrument_asgi` does spans and metrics.
        telemetry={"tracing": False, "metrics": False, "logs": False, "operation_spans": False},
    )

    @app.exception_handler(StarletteHTTPException)
    async def http_problem(request: Request, exc: StarletteHTTPException) -> Response:
        # Routing errors (an unknown path, e.g. an identifier with an encoded "/" that no
        # longer matches a route; a wrong method) answer problem+json like every other error
        # (issue 9, hostile input), not the framework's bare JSON.
        headers = dict(exc.headers) if exc.headers else None
        return problem(exc.status_code, str(exc.detail), headers=headers)

    @app.get("/healthz", include_in_schema=False)
    async def healthz() -> Response:
        return JSONResponse({"status": "ok"})

    @app.get("/readyz", include_in_schema=False)
    async def readyz(request: Request) -> Response:
        ctx = context_of(request)
        checks: dict[str, str] = {}
        checks["nats"] = "ok" if ctx.nc.is_connected else "down"
        try:
            await asyncio.wait_for(ctx.store.ping(), 2.0)
            checks["object_store"] = "ok"
        except Exception as exc:
            checks["object_store"] = f"down: {type(exc).__name__}"
        try:
            reply = await ctx.nc.request(subjects.SVC_INDEX_PING, b"", timeout=2.0)
            checks["postgres"] = reply.data.decode() or "ok"
        except (nats.errors.NoRespondersError, nats.errors.TimeoutError, OSError):
            checks["postgres"] = "down: index not answering"
        ready = all(v == "ok" for v in checks.values())
        return JSONResponse(
            {"status": "ready" if ready else "not ready", "checks": checks},
            status_code=200 if ready else 503,
        )

    # STOW-RS and QIDO-RS: endpoints of the request and `str` path parameters, on lean routes.
    dicomweb = APIRouter(route_class=LeanRoute)

    @dicomweb.post("/dicomweb/studies", tags=["DICOMweb"], summary="STOW-RS: store instances")
    async def stow(request: Request) -> Response:
        return await guarded(request, lambda r, c, a: store_instances(r, c, a, None))

    @dicomweb.post("/dicomweb/studies/{study}", tags=["DICOMweb"], summary="STOW-RS into a study")
    async def stow_study(request: Request, study: str) -> Response:
        return _bad_uid(study) or await guarded(
            request, lambda r, c, a: store_instances(r, c, a, study)
        )

    # QIDO-RS
    @dicomweb.get("/dicomweb/studies", tags=["DICOMweb"], summary="QIDO-RS: search studies")
    async def qido_studies(request: Request) -> Response:
        return await guarded(request, lambda r, c, a: search(r, c, a, QidoLevelValues.STUDY))

    @dicomweb.get("/dicomweb/series", tags=["DICOMweb"], summary="QIDO-RS: search all series")
    async def qido_series(request: Request) -> Response:
        return await guarded(request, lambda r, c, a: search(r, c, a, QidoLevelValues.SERIES))

    @dicomweb.get("/dicomweb/instances", tags=["DICOMweb"], summary="QIDO-RS: search all instances")
    async def qido_instances(request: Request) -> Response:
        return await guarded(request, lambda r, c, a: search(r, c, a, QidoLevelValues.INSTANCE))

    @dicomweb.get("/dicomweb/studies/{study}/series", tags=["DICOMweb"])
    async def qido_study_series(request: Request, study: str) -> Response:
        return _bad_uid(study) or await guarded(
            request, lambda r, c, a: search(r, c, a, QidoLevelValues.SERIES, study)
        )

    @dicomweb.get("/dicomweb/studies/{study}/instances", tags=["DICOMweb"])
    async def qido_study_instances(request: Request, study: str) -> Response:
        return _bad_uid(study) or await guarded(
            request, lambda r, c, a: search(r, c, a, QidoLevelValues.INSTANCE, study)
        )

    @dicomweb.get("/dicomweb/studies/{study}/series/{series}/instances", tags=["DICOMweb"])
    async def qido_series_instances(request: Request, study: str, series: str) -> Response:
        return _bad_uid(study, series) or await guarded(
            request, lambda r, c, a: search(r, c, a, QidoLevelValues.INSTANCE, study, series)
        )

    app.include_router(dicomweb)

    # Feature routers: retrieval (WADO-RS), access policy APIs, audit APIs.
    for module in (routes_wado, routes_policy, routes_audit):
        app.include_router(module.router)
    # Server spans and HTTP metrics; /metrics is served on KRYPTON_METRICS_PORT, not here.
    instrument_asgi(app, "gateway")
    return app

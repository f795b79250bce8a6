"""Fixtures for auth tests: the development issuer served over real HTTP by uvicorn."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable

import pytest
import uvicorn

from krypton.auth.dev_issuer import DevIssuer, create_app


@contextlib.asynccontextmanager
async def serving(issuer: DevIssuer, port: int) -> AsyncIterator[None]:
    """Serve the issuer's app with uvicorn on `port` in the test's event loop."""
    config = uvicorn.Config(
        create_app(issuer),
        host="127.0.0.1",
        port=port,
        lifespan="off",
        ws="none",
        log_level="warning",
        access_log=False,
    )
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    while not server.started:
        if task.done():
            task.result()  # startup failed: raise its error
            msg = "uvicorn stopped before starting"
            raise RuntimeError(msg)
        await asyncio.sleep(0.01)
    try:
        yield
    finally:
        server.should_exit = True
        await task


@pytest.fixture
def serve() -> Callable[[DevIssuer, int], contextlib.AbstractAsyncContextManager[None]]:
    """Start and stop a served issuer: `async with serve(issuer, port): ...`."""
    return serving

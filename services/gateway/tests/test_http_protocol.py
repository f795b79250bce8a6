"""The gateway's HTTP protocol on a real uvicorn server: heads written with their bodies."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import httpx
import pytest
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from krypton.gateway.http_protocol import ProblemHttpToolsProtocol

BIG = bytes(range(256)) * 2048  # 512 KiB


async def whole(request: Request) -> Response:
    return Response(memoryview(BIG), media_type="application/octet-stream")


async def streamed(request: Request) -> Response:
    async def chunks() -> AsyncIterator[bytes | memoryview]:
        await asyncio.sleep(0.05)  # the head goes out before the first chunk exists
        yield b"first,"
        yield memoryview(b"second,")
        await asyncio.sleep(0.05)
        yield b"third"

    return StreamingResponse(chunks(), media_type="text/plain")


async def not_modified(request: Request) -> Response:
    return Response(status_code=304, headers={"ETag": '"x"'})


@pytest.fixture
async def server() -> AsyncIterator[str]:
    app = Starlette(
        routes=[Route("/whole", whole), Route("/streamed", streamed), Route("/304", not_modified)]
    )
    config = uvicorn.Config(
        app, host="127.0.0.1", port=0, http=ProblemHttpToolsProtocol, log_config=None
    )
    served = uvicorn.Server(config)
    task = asyncio.create_task(served.serve())
    deadline = asyncio.get_running_loop().time() + 30.0
    while not served.started:
        assert asyncio.get_running_loop().time() < deadline, "server did not start"
        await asyncio.sleep(0.01)
    port = served.servers[0].sockets[0].getsockname()[1]
    yield f"http://127.0.0.1:{port}"
    served.should_exit = True
    await task


async def test_answers_arrive_whole_on_one_connection(server: str) -> None:
    async with httpx.AsyncClient(base_url=server, timeout=30.0) as client:
        for _ in range(3):  # keep-alive: several answers on the same connection
            response = await client.get("/whole")
            assert response.status_code == 200
            assert response.content == BIG
            response = await client.get("/streamed")
            assert response.text == "first,second,third"
            response = await client.get("/304")
            assert response.status_code == 304
            assert response.headers["etag"] == '"x"'


async def test_a_malformed_request_is_still_problem_json(server: str) -> None:
    host, port = server.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(b"GET /whole HTTP/1.1\r\nHost: x\r\nBad\x01Header: y\r\n\r\n")
    answer = await asyncio.wait_for(reader.read(), 30.0)
    writer.close()
    assert answer.startswith(b"HTTP/1.1 400")
    assert b"application/problem+json" in answer

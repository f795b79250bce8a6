"""uvicorn's httptools protocol, answering unparsable requests with problem+json (issue 9).

A request the HTTP parser refuses (a control byte in a header value, a malformed request line)
never reaches the application: uvicorn answers it itself with a plain-text 400. Every other
error of the gateway is problem+json, so this one is too.

It also writes each response's head and the first piece of its body in one system call
(`_HeadWithBody`): uvicorn writes the head as soon as the application starts the response and
the body when it comes, two writes (and two wake-ups of the client) for what is usually one
message. On loopback a write also does the receiving side's TCP work, so on a busy 2-core
machine the second write cost more than the rest of a cached read's work.
"""

from __future__ import annotations

import asyncio
from typing import Any

import msgspec
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol

__all__ = ["ProblemHttpToolsProtocol"]


class ProblemHttpToolsProtocol(HttpToolsProtocol):
    """`HttpToolsProtocol` whose parser-level 400 is an RFC 9457 problem document.

    Responses go through `_HeadWithBody` (a head and the body's first write: one system call).
    """

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        """Set up the connection as uvicorn does, writing through `_HeadWithBody`."""
        super().connection_made(transport)
        self.transport = _HeadWithBody(transport, self.loop)  # type: ignore[assignment]

    def send_400_response(self, msg: str) -> None:
        """Answer 400 problem+json and close the connection (what uvicorn does, in JSON)."""
        body = msgspec.json.encode(
            {"type": "about:blank", "title": "Bad Request", "status": 400, "detail": msg}
        )
        content = [STATUS_LINE[400]]
        for name, value in self.server_state.default_headers:
            content.extend([name, b": ", value, b"\r\n"])
        content.extend(
            [
                b"content-type: application/problem+json\r\n",
                b"content-length: " + str(len(body)).encode("ascii") + b"\r\n",
                b"connection: close\r\n",
                b"\r\n",
                body,
            ]
        )
        self.transport.write(b"".join(content))
        self.transport.close()


class _HeadWithBody:
    """A transport that holds a response head back until the body's first write.

    Both then go out in one ``writev``. A head whose body is not written in the same step of
    the event loop (a streamed answer still producing its first chunk) is written at the end
    of that step, so nothing waits; any other call (close included) writes it first. An
    interim ``100 Continue`` is never held: the client waits for it before sending a body.
    """

    __slots__ = ("_held", "_loop", "_transport")

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self._transport = transport
        self._loop = loop
        self._held: bytes | None = None

    def write(self, data: bytes | bytearray | memoryview) -> None:
        """Write `data`: after a held head in one system call, or held if it is a head."""
        if self._held is not None:
            held, self._held = self._held, None
            if data:
                self._transport.writelines((held, data))
            else:
                self._transport.write(held)
        elif (
            isinstance(data, bytes)  # uvicorn writes a head as bytes; a body may be a view
            and data.startswith(b"HTTP/1.1 ")
            and not data.startswith(b"HTTP/1.1 100")
        ):
            self._held = data
            self._loop.call_soon(self.flush)
        else:
            self._transport.write(data)

    def flush(self) -> None:
        """Write a held head now (dropped when the connection is already closing)."""
        if self._held is not None:
            held, self._held = self._held, None
            if not self._transport.is_closing():
                self._transport.write(held)

    def close(self) -> None:
        """Write what is held, then close."""
        self.flush()
        self._transport.close()

    def __getattr__(self, name: str) -> Any:
        self.flush()  # whatever the call, the bytes written before it go first
        return getattr(self._transport, name)

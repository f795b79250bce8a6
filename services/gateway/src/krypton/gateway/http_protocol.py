"""uvicorn's httptools protocol, answering unparsable requests with problem+json (issue 9).

A request the HTTP parser refuses (a control byte in a header value, a malformed request line)
never reaches the application: uvicorn answers it itself with a plain-text 400. Every other
error of the gateway is problem+json, so this one is too.
"""

from __future__ import annotations

import msgspec
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol

__all__ = ["ProblemHttpToolsProtocol"]


class ProblemHttpToolsProtocol(HttpToolsProtocol):
    """`HttpToolsProtocol` whose parser-level 400 is an RFC 9457 problem document."""

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

"""Container health check for every Krypton image (`HEALTHCHECK CMD python /app/healthcheck.py`).

The gateway is healthy when `GET /healthz` answers 200. The other services are NATS workers
without an HTTP port and publish no health endpoint yet, so for them the check only tells whether
their NATS server accepts a connection and answers PING: a worker cut off from NATS is the
failure an operator can act on. Standard library only: it runs inside the slim runtime image.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import urllib.request
from urllib.parse import urlsplit

TIMEOUT = 3.0


def gateway_healthy() -> bool:
    """Whether the gateway's liveness endpoint answers 200."""
    port = os.environ.get("KRYPTON_HTTP_PORT", "8080")
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=TIMEOUT) as reply:
        return bool(reply.status == 200)


def nats_reachable() -> bool:
    """Whether the configured NATS server accepts our credentials and answers PING with PONG."""
    url = urlsplit(os.environ.get("KRYPTON_NATS_URL", "nats://127.0.0.1:4222").split(",")[0])
    with socket.create_connection((url.hostname or "127.0.0.1", url.port or 4222), TIMEOUT) as s:
        s.settimeout(TIMEOUT)
        if not s.recv(4096).startswith(b"INFO"):
            return False
        # The service's own credentials (production NATS has per-service users).
        options: dict[str, object] = {"verbose": False, "pedantic": False}
        if url.username:
            options |= {"user": url.username, "pass": url.password or ""}
        s.sendall(b"CONNECT " + json.dumps(options).encode() + b"\r\nPING\r\n")
        return b"PONG" in s.recv(4096)


def main() -> int:
    """Exit 0 when healthy, 1 otherwise (the Docker HEALTHCHECK contract)."""
    try:
        if os.environ.get("KRYPTON_SERVICE", "gateway") == "gateway":
            return 0 if gateway_healthy() else 1
        return 0 if nats_reachable() else 1
    except OSError as exc:
        sys.stderr.write(f"unhealthy: {exc}\n")
        return 1


if __name__ == "__main__":
    sys.exit(main())

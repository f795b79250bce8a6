"""An Orthanc reference server for side-by-side figures (Debian ``orthanc`` + ``orthanc-dicomweb``).

Started with ``/work/shared/tools/run-orthanc.sh`` (or ``$ORTHANC_SCRIPT``): SQLite index,
files in a temporary directory, no authentication, loopback only, free ports. Install it with
``apt-get install -y orthanc orthanc-dicomweb``.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import time
from pathlib import Path
from types import TracebackType
from typing import Any

import httpx
import psutil

from krypton.testing.servers import free_port

__all__ = ["Orthanc", "orthanc_available", "stow_to_orthanc"]

SCRIPT = Path(os.environ.get("ORTHANC_SCRIPT", "/work/shared/tools/run-orthanc.sh"))


def orthanc_available() -> bool:
    """Whether the Orthanc binary and its start script are installed."""
    return shutil.which("Orthanc") is not None and SCRIPT.exists()


class Orthanc:
    """A running Orthanc; ``url`` is its DICOMweb root."""

    def __init__(self, state_dir: Path) -> None:
        """Prepare (started by ``async with``)."""
        self.state_dir = state_dir
        self.http_port = free_port()
        self.dicom_port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self.process: psutil.Process | None = None

    @property
    def root(self) -> str:
        """Orthanc's REST root."""
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def url(self) -> str:
        """DICOMweb root."""
        return f"{self.root}/dicom-web"

    async def __aenter__(self) -> Orthanc:
        """Start and wait until the REST API answers."""
        if not orthanc_available():
            msg = "Orthanc is not installed: apt-get install -y orthanc orthanc-dicomweb"
            raise RuntimeError(msg)
        self.proc = await asyncio.to_thread(
            subprocess.Popen,
            ["bash", str(SCRIPT), str(self.state_dir), str(self.http_port), str(self.dicom_port)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        self.process = psutil.Process(self.proc.pid)  # the script execs Orthanc: same pid
        deadline = time.monotonic() + 60
        async with httpx.AsyncClient(timeout=2.0) as client:
            while time.monotonic() < deadline:
                try:
                    if (await client.get(f"{self.root}/system")).status_code == 200:
                        return self
                except httpx.HTTPError:
                    pass
                if self.proc.poll() is not None:
                    break
                await asyncio.sleep(0.2)
        await self.__aexit__(None, None, None)
        msg = "Orthanc did not start"
        raise RuntimeError(msg)

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Stop Orthanc (SIGTERM, then SIGKILL)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                await asyncio.to_thread(self.proc.wait, 30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                await asyncio.to_thread(self.proc.wait, 10)

    def client_group(self) -> dict[str, list[psutil.Process]]:
        """The load generator's own process, for the CPU table."""
        return {"client": [psutil.Process(os.getpid())]}

    async def count_instances(self) -> int:
        """Instances Orthanc holds."""
        async with httpx.AsyncClient(timeout=30.0) as client:
            stats: dict[str, Any] = (await client.get(f"{self.root}/statistics")).json()
        return int(stats["CountInstances"])


async def stow_to_orthanc(
    client: httpx.AsyncClient, url: str, body: bytes, content_type: str, attempts: int = 5
) -> None:
    """STOW-RS one multipart body to Orthanc, retrying dropped connections.

    Orthanc closes idle keep-alive connections on its own schedule; a request sent on one it has
    just closed fails with a read or protocol error. Storing the same instances again is
    harmless, so the request is simply sent again.
    """
    for attempt in range(attempts):
        try:
            response = await client.post(
                f"{url}/studies",
                content=body,
                headers={"Content-Type": content_type, "Accept": "application/dicom+json"},
            )
        except (httpx.ReadError, httpx.RemoteProtocolError, httpx.ConnectError):
            if attempt == attempts - 1:
                raise
            await asyncio.sleep(0.2 * (attempt + 1))
            continue
        response.raise_for_status()
        return

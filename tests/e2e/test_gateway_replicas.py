"""Two gateway processes on one port (SO_REUSEPORT): both serve, and one killed -9 loses no
request the other can take."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import httpx
import psutil
import pytest

from krypton.cli.platform import Platform, PlatformConfig

pytestmark = [pytest.mark.e2e, pytest.mark.nats, pytest.mark.postgres, pytest.mark.slow]


@pytest.fixture(scope="module")
async def two_gateways(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Platform]:
    state: Path = tmp_path_factory.mktemp("replicas")
    p = Platform(
        PlatformConfig(
            state_dir=state, http_port=0, nats_port=0, issuer_port=0, replicas={"gateway": 2}
        ),
        colour=False,
    )
    async with p.running(timeout=90):
        yield p


def _listeners(port: int) -> set[int]:
    """PIDs with a listening socket on `port`."""
    pids: set[int] = set()
    for proc in psutil.process_iter():
        try:
            for c in proc.net_connections(kind="tcp"):
                if c.status == psutil.CONN_LISTEN and c.laddr.port == port:
                    pids.add(proc.pid)
        except (psutil.AccessDenied, psutil.NoSuchProcess):
            continue
    return pids


async def _wait_listeners(
    port: int, done: Callable[[set[int]], bool], timeout: float = 60.0
) -> set[int]:
    """The listeners on `port` once `done` holds for them."""
    deadline = asyncio.get_running_loop().time() + timeout
    while not done(pids := _listeners(port)):
        assert asyncio.get_running_loop().time() < deadline, pids
        await asyncio.sleep(0.05)
    return pids


async def test_two_gateways_share_the_port_and_survive_a_kill(two_gateways: Platform) -> None:
    supervisor = two_gateways.supervisor
    assert {"gateway", "gateway-2"} <= set(supervisor.children)
    pids = await _wait_listeners(two_gateways.http_port, lambda pids: len(pids) >= 2)
    gateway_pids = {
        c.proc.pid
        for name, c in supervisor.children.items()
        if name.startswith("gateway") and c.proc is not None
    }
    assert pids == gateway_pids

    async def one_request() -> int:
        # A new connection each time: the kernel picks a listener per connection.
        async with httpx.AsyncClient(timeout=10.0) as client:
            return (await client.get(f"{two_gateways.base_url}/healthz")).status_code

    assert [await one_request() for _ in range(20)] == [200] * 20

    first = supervisor.children["gateway"]
    restarts, killed = first.restarts, first.proc.pid if first.proc else None
    supervisor.kill("gateway", signal.SIGKILL)
    await _wait_listeners(two_gateways.http_port, lambda pids: killed not in pids, timeout=10)
    # The other replica alone keeps answering while the first one restarts.
    assert [await one_request() for _ in range(20)] == [200] * 20
    await supervisor.wait_restarted("gateway", restarts + 1)
    await _wait_listeners(two_gateways.http_port, lambda pids: len(pids) >= 2)
    assert [await one_request() for _ in range(10)] == [200] * 10

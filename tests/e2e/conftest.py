"""The whole platform as real processes for end-to-end tests: one per test module."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from krypton.auth.dev_issuer import DevIssuer
from krypton.cli.platform import Platform, PlatformConfig


class Running:
    """A started platform plus token helpers."""

    def __init__(self, platform: Platform) -> None:
        self.platform = platform
        self.issuer = DevIssuer(platform.state_dir / "issuer", platform.issuer_url)

    @property
    def url(self) -> str:
        return self.platform.dicomweb_url

    def token(self, role: str, sub: str, **claims: str) -> str:
        return self.issuer.mint(role=role, sub=sub, **claims)

    def headers(self, role: str, sub: str, **claims: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token(role, sub, **claims)}"}

    def producer(self, structure: str) -> dict[str, str]:
        return self.headers("producer", f"ris-{structure}", structure=structure)

    def admin(self) -> dict[str, str]:
        return self.headers("admin", "admin-1")


@pytest.fixture(scope="module")
async def platform(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Running]:
    state: Path = tmp_path_factory.mktemp("platform")
    p = Platform(
        PlatformConfig(state_dir=state, http_port=0, nats_port=0, issuer_port=0),
        colour=False,
    )
    async with p.running(timeout=90):
        yield Running(p)


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(timeout=60.0) as client:
        yield client

"""Hostile-input suite: a platform per test module, with the module's `PLATFORM_ENV` settings."""

from __future__ import annotations

from collections.abc import AsyncIterator

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

    def headers(self, role: str, sub: str, structure: str | None = None) -> dict[str, str]:
        token = self.issuer.mint(role=role, sub=sub, structure=structure)
        return {"Authorization": f"Bearer {token}"}


@pytest.fixture(scope="module")
async def platform(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Running]:
    env: dict[str, str] = getattr(request.module, "PLATFORM_ENV", {})
    p = Platform(
        PlatformConfig(
            state_dir=tmp_path_factory.mktemp("hostile-platform"),
            http_port=0,
            nats_port=0,
            issuer_port=0,
            log_level="WARNING",
            extra_env=env,
        ),
        colour=False,
    )
    async with p.running(timeout=120):
        yield Running(p)

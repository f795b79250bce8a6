"""The development issuer: persistent private key, public JWKS, discovery over HTTP, no production."""

from __future__ import annotations

import contextlib
import stat
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from krypton.auth.dev_issuer import DevIssuer, create_app
from krypton.core.errors import ConfigurationError
from krypton.testing.servers import free_port

Serve = Callable[[DevIssuer, int], contextlib.AbstractAsyncContextManager[None]]


def test_key_is_created_private_and_reloaded_on_next_start(tmp_path: Path) -> None:
    first = DevIssuer(tmp_path, "http://127.0.0.1:1")
    second = DevIssuer(tmp_path, "http://127.0.0.1:1")

    assert stat.S_IMODE(first.key_path.stat().st_mode) == 0o600
    assert second.kid == first.kid


def test_group_readable_key_file_is_made_private_again(tmp_path: Path) -> None:
    issuer = DevIssuer(tmp_path, "http://127.0.0.1:1")
    issuer.key_path.chmod(0o644)

    DevIssuer(tmp_path, "http://127.0.0.1:1")

    assert stat.S_IMODE(issuer.key_path.stat().st_mode) == 0o600


def test_jwks_publishes_only_the_public_key(tmp_path: Path) -> None:
    issuer = DevIssuer(tmp_path, "http://127.0.0.1:1")

    (key,) = issuer.jwks()["keys"]

    assert key["kty"] == "EC"
    assert key["crv"] == "P-256"
    assert key["kid"] == issuer.kid
    assert "d" not in key
    assert '"d"' not in issuer.jwks_path.read_text()


def test_another_state_dir_gets_another_key(tmp_path: Path) -> None:
    first = DevIssuer(tmp_path / "a", "http://127.0.0.1:1")
    second = DevIssuer(tmp_path / "b", "http://127.0.0.1:1")

    assert first.kid != second.kid


def test_mint_refuses_an_unknown_role(tmp_path: Path) -> None:
    issuer = DevIssuer(tmp_path, "http://127.0.0.1:1")

    with pytest.raises(ValueError, match="superuser"):
        issuer.mint(role="superuser", sub="x")


def test_issuer_refuses_to_start_in_production(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    issuer = DevIssuer(tmp_path, "http://127.0.0.1:1")
    monkeypatch.setenv("KRYPTON_ENVIRONMENT", "production")

    with pytest.raises(ConfigurationError, match="production"):
        DevIssuer(tmp_path, "http://127.0.0.1:1")
    with pytest.raises(ConfigurationError, match="production"):
        create_app(issuer)


async def test_discovery_document_and_jwks_are_served_over_http(
    tmp_path: Path, serve: Serve
) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    issuer = DevIssuer(tmp_path, url + "/")

    async with serve(issuer, port), httpx.AsyncClient() as client:
        discovery = (await client.get(f"{url}/.well-known/openid-configuration")).json()
        jwks = (await client.get(discovery["jwks_uri"])).json()

    assert discovery["issuer"] == url
    assert discovery["jwks_uri"] == f"{url}/jwks.json"
    assert jwks == issuer.jwks()

"""`krypton token` prints a token that the platform's verifier accepts."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path

from krypton.auth.jwks import JwksCache
from krypton.auth.verify import TokenVerifier
from krypton.contracts.common.v1 import RoleValues
from krypton.core.settings import AuthSettings


async def test_token_command_mints_a_verifiable_professional_token(tmp_path: Path) -> None:
    issuer = "http://127.0.0.1:8081"
    out = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "krypton.cli.main", "--state-dir", str(tmp_path), "token",
         "--role", "professional", "--sub", "810001234567", "--structure", "330781196"],
        check=True, capture_output=True, text=True,
    )  # fmt: skip
    token = out.stdout.strip()
    jwks_file = tmp_path / "issuer" / "dev-issuer-jwks.json"
    settings = AuthSettings(issuers=[issuer], jwks_urls={issuer: jwks_file.as_uri()})
    async with JwksCache(settings) as jwks:
        actor = await TokenVerifier(settings, jwks).verify(token)
    assert actor.role is RoleValues.PROFESSIONAL
    assert actor.sub == "810001234567"
    assert actor.structure == "330781196"

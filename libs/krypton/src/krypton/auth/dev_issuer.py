"""The local development token issuer, used by `krypton up` and by tests.

It stands in for Pro Santé Connect and the structures' identity providers on a laptop: one ES256
(P-256) key, created on first use and kept in the state directory (mode 0600), published as a JWKS
with an OIDC discovery document, and a `mint` method that signs tokens with the claims Krypton
reads. It refuses to run when `KRYPTON_ENVIRONMENT=production`: anyone holding its key file could
mint an administrator token.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any, Final

from joserfc import jwt
from joserfc.jwk import ECKey, import_key
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from krypton.auth.claims import ClaimNames
from krypton.contracts.common.v1 import RoleValues
from krypton.core.errors import ConfigurationError

__all__ = ["ALGORITHM", "DevIssuer", "create_app"]

ALGORITHM: Final = "ES256"
_KEY_FILE: Final = "dev-issuer-key.json"
_JWKS_FILE: Final = "dev-issuer-jwks.json"


def _refuse_production() -> None:
    if os.environ.get("KRYPTON_ENVIRONMENT", "").strip().lower() == "production":
        msg = "the development token issuer must not run with KRYPTON_ENVIRONMENT=production"
        raise ConfigurationError(msg)


def _write_private(path: Path, data: bytes) -> None:
    """Write `data` to `path` with mode 0600, never replacing an existing file.

    The data goes to a private temporary file that is then hard-linked into place, so a reader
    never sees a partial key and two processes starting together end up with the same key.
    """
    fd, temporary = tempfile.mkstemp(dir=path.parent, prefix=".dev-issuer-")  # mode 0600
    try:
        with os.fdopen(fd, "wb") as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        os.link(temporary, path)
    finally:
        os.unlink(temporary)


class DevIssuer:
    """A development OIDC issuer with a persistent ES256 signing key.

    Args:
        state_dir: Directory that keeps the key (`dev-issuer-key.json`, mode 0600) and a copy of
            the public JWKS (`dev-issuer-jwks.json`, usable as a `file://` JWKS URL).
        issuer_url: The `iss` of minted tokens and the base URL the app is served at.

    Raises:
        ConfigurationError: `KRYPTON_ENVIRONMENT` is `production`.
    """

    def __init__(self, state_dir: Path, issuer_url: str) -> None:
        _refuse_production()
        self.state_dir = Path(state_dir)
        self.issuer_url = issuer_url.rstrip("/")
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self._key = self._load_or_create_key()
        self.jwks_path.write_text(json.dumps(self.jwks(), indent=2) + "\n")

    @property
    def key_path(self) -> Path:
        """File holding the private key."""
        return self.state_dir / _KEY_FILE

    @property
    def jwks_path(self) -> Path:
        """File holding the public JWKS (for `file://` JWKS URLs)."""
        return self.state_dir / _JWKS_FILE

    @property
    def jwks_uri(self) -> str:
        """Where the app serves the JWKS."""
        return f"{self.issuer_url}/jwks.json"

    @property
    def kid(self) -> str:
        """Key id of the signing key (its RFC 7638 thumbprint)."""
        return str(self._key.kid)

    def _load_or_create_key(self) -> ECKey:
        path = self.key_path
        if not path.exists():
            key = ECKey.generate_key(
                "P-256", parameters={"use": "sig", "alg": ALGORITHM}, auto_kid=True
            )
            # FileExistsError: another process created it first; use theirs.
            with contextlib.suppress(FileExistsError):
                _write_private(path, json.dumps(key.as_dict(private=True)).encode())
        if path.stat().st_mode & 0o077:
            # A key readable by others could mint any identity, even on a laptop.
            path.chmod(0o600)
        loaded = import_key(json.loads(path.read_text()))
        if not isinstance(loaded, ECKey) or not loaded.is_private or loaded.curve_name != "P-256":
            msg = f"{path} does not hold a P-256 private key"
            raise ConfigurationError(msg)
        loaded.ensure_kid()
        return loaded

    def jwks(self) -> dict[str, Any]:
        """The public JWKS (no private members)."""
        return {"keys": [self._key.as_dict(private=False)]}

    def openid_configuration(self) -> dict[str, Any]:
        """The OIDC discovery document."""
        return {
            "issuer": self.issuer_url,
            "jwks_uri": self.jwks_uri,
            "id_token_signing_alg_values_supported": [ALGORITHM],
            "subject_types_supported": ["public"],
            "response_types_supported": ["id_token"],
            "claims_supported": [
                ClaimNames.SUBJECT,
                ClaimNames.ROLE,
                ClaimNames.STRUCTURE,
                ClaimNames.NAME,
                ClaimNames.PROFESSION,
                ClaimNames.INS,
            ],
        }

    def mint(
        self,
        *,
        role: RoleValues | str,
        sub: str,
        structure: str | None = None,
        name: str | None = None,
        profession: str | None = None,
        ins: str | None = None,
        ttl: int = 3600,
        audience: str | list[str] = "krypton",
        extra: dict[str, Any] | None = None,
    ) -> str:
        """Sign a token for the given identity.

        Claims are not checked against the role's requirements (a patient token without `ins` can
        be minted), so tests can build every kind of refused token.

        Args:
            role: One of `RoleValues`.
            sub: Subject (for professionals, the IDNPS: `8` + RPPS).
            structure: FINESS of the structure the caller acts for.
            name: Display name.
            profession: Profession code.
            ins: The patient's INS.
            ttl: Seconds from now until expiry (negative for an expired token).
            audience: The `aud` claim.
            extra: Claims added last, overriding the others; a `None` value removes a claim.

        Returns:
            The compact JWT.

        Raises:
            ValueError: `role` is not a Krypton role.
        """
        now = int(time.time())
        claims: dict[str, Any] = {
            ClaimNames.ISSUER: self.issuer_url,
            ClaimNames.SUBJECT: sub,
            ClaimNames.AUDIENCE: audience,
            ClaimNames.ISSUED_AT: now,
            ClaimNames.NOT_BEFORE: now,
            ClaimNames.EXPIRES: now + ttl,
            ClaimNames.TOKEN_ID: uuid.uuid4().hex,
            ClaimNames.ROLE: RoleValues(role).value,
            ClaimNames.STRUCTURE: structure,
            ClaimNames.NAME: name,
            ClaimNames.PROFESSION: profession,
            ClaimNames.INS: ins,
        }
        claims.update(extra or {})
        claims = {claim: value for claim, value in claims.items() if value is not None}
        header = {"alg": ALGORITHM, "kid": self.kid, "typ": "JWT"}
        return jwt.encode(header, claims, self._key, algorithms=[ALGORITHM])


def create_app(issuer: DevIssuer) -> Starlette:
    """The HTTP face of the issuer: its discovery document and JWKS.

    Raises:
        ConfigurationError: `KRYPTON_ENVIRONMENT` is `production`.
    """
    _refuse_production()

    async def openid_configuration(request: Request) -> JSONResponse:
        return JSONResponse(issuer.openid_configuration())

    async def jwks(request: Request) -> JSONResponse:
        return JSONResponse(
            issuer.jwks(),
            headers={"Cache-Control": "public, max-age=60"},
            media_type="application/jwk-set+json",
        )

    return Starlette(
        routes=[
            Route("/.well-known/openid-configuration", openid_configuration, methods=["GET"]),
            Route("/jwks.json", jwks, methods=["GET"]),
        ]
    )

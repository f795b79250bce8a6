"""Signing keys of the trusted token issuers, fetched from their JWKS and cached.

Keys come from `AuthSettings.jwks_urls[issuer]` when set (an `https://`, `http://` or `file://`
URL; a file suits offline production configurations), else from OIDC discovery
(`<issuer>/.well-known/openid-configuration` → `jwks_uri`). They are cached per issuer for a TTL; a
token signed with an unknown `kid` triggers at most one refresh per `refresh_interval` per issuer,
so a flood of forged tokens cannot turn the gateway into a JWKS-fetching amplifier. When the issuer
is down, the keys already cached keep being used.
"""

from __future__ import annotations

import asyncio
import json
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, Self
from urllib.parse import urlsplit
from urllib.request import url2pathname

import httpx
import structlog
from joserfc.errors import JoseError, SecurityWarning
from joserfc.jwk import ECKey, RSAKey, import_key

from krypton.auth.errors import AuthenticationError, JwksUnavailableError
from krypton.core.errors import ConfigurationError
from krypton.core.settings import AuthSettings

__all__ = ["MAX_JWKS_BYTES", "JwksCache", "VerifyingKey", "key_matches_algorithm"]

VerifyingKey = RSAKey | ECKey

MAX_JWKS_BYTES: Final = 1024 * 1024
_MIN_RSA_BITS: Final = 2048
_KEY_TYPES: Final = {"RS": "RSA", "PS": "RSA", "ES": "EC"}

log = structlog.get_logger(__name__)


class _FetchError(Exception):
    """One attempt to read an issuer's keys failed; the message holds no secret."""


@dataclass
class _IssuerKeys:
    """What is known about one issuer's keys."""

    keys: tuple[VerifyingKey, ...] = ()
    fetched_at: float | None = None  # last successful fetch (clock time)
    attempted_at: float | None = None  # last attempt, successful or not
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)


def key_matches_algorithm(key: VerifyingKey, alg: str) -> bool:
    """Tell whether `key` may verify a signature made with `alg`.

    The key type must be the algorithm's (RSA for RS*/PS*, EC for ES*), and a key that names its
    own `alg` or `use` must name this algorithm and "sig".
    """
    if _KEY_TYPES.get(alg[:2]) != key.key_type:
        return False
    key_alg = key.get("alg")
    key_use = key.get("use")
    return key_alg in (None, alg) and key_use in (None, "sig")


def _parse_jwks(document: object) -> tuple[VerifyingKey, ...]:
    """Keep the usable public signing keys of a JWKS document; skip the others.

    Symmetric (`oct`) keys are never used: a public JWKS must not hold one, and accepting it would
    allow HMAC tokens signed with a published secret.
    """
    if not isinstance(document, dict) or not isinstance(document.get("keys"), list):
        msg = "not a JWKS document (no 'keys' list)"
        raise _FetchError(msg)
    keys: list[VerifyingKey] = []
    for entry in document["keys"]:
        if not isinstance(entry, dict) or entry.get("kty") not in ("RSA", "EC"):
            continue
        if entry.get("use") not in (None, "sig"):
            continue
        try:
            with warnings.catch_warnings():
                # joserfc warns about short RSA keys; we drop them below instead.
                warnings.simplefilter("ignore", SecurityWarning)
                imported = import_key(entry)
                if imported.is_private:
                    # A JWKS that leaks private parts is the issuer's problem; keep only the public half.
                    imported = import_key(imported.as_dict(private=False))
        except (JoseError, ValueError, TypeError):
            log.warning("jwks_key_skipped", kid=entry.get("kid"), kty=entry.get("kty"))
            continue
        if not isinstance(imported, (RSAKey, ECKey)):
            continue
        if isinstance(imported, RSAKey) and imported.raw_value.key_size < _MIN_RSA_BITS:
            log.warning("jwks_key_too_short", kid=entry.get("kid"))
            continue
        keys.append(imported)
    if not keys:
        msg = "the JWKS holds no usable signing key"
        raise _FetchError(msg)
    return tuple(keys)


class JwksCache:
    """Per-issuer cache of verification keys, shared by every request of a process.

    Args:
        settings: The trusted issuers and their optional JWKS URLs.
        client: HTTP client to use (not closed by the cache); by default the cache makes its own.
        ttl: Seconds a fetched key set is used before it is fetched again.
        refresh_interval: Least number of seconds between two fetches for one issuer triggered by
            an unknown `kid` (or after a failed fetch).
        timeout: Seconds allowed for each HTTP request.
        clock: Monotonic clock, in seconds (tests pass their own to move time forward).

    Raises:
        ConfigurationError: A JWKS URL has a scheme other than https, http or file, or names an
            issuer that is not trusted.
    """

    def __init__(
        self,
        settings: AuthSettings,
        *,
        client: httpx.AsyncClient | None = None,
        ttl: float = 600.0,
        refresh_interval: float = 30.0,
        timeout: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        for issuer, url in settings.jwks_urls.items():
            if issuer not in settings.issuers:
                msg = f"KRYPTON_AUTH__JWKS_URLS names {issuer!r}, which is not in KRYPTON_AUTH__ISSUERS"
                raise ConfigurationError(msg)
            if urlsplit(url).scheme not in ("https", "http", "file"):
                msg = f"JWKS URL of issuer {issuer!r} must be https://, http:// or file://"
                raise ConfigurationError(msg)
        self._issuers = frozenset(settings.issuers)
        self._urls = dict(settings.jwks_urls)
        self._owns_client = client is None
        self._client = client or httpx.AsyncClient(timeout=timeout, follow_redirects=False)
        self._ttl = ttl
        self._refresh_interval = refresh_interval
        self._clock = clock
        self._entries: dict[str, _IssuerKeys] = {}

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the HTTP client if the cache made it."""
        if self._owns_client:
            await self._client.aclose()

    def _entry(self, issuer: str) -> _IssuerKeys:
        if issuer not in self._issuers:
            # Never fetch anything on behalf of an issuer a token merely claims (SSRF).
            msg = "unknown issuer"
            raise AuthenticationError(msg)
        return self._entries.setdefault(issuer, _IssuerKeys())

    async def keys(self, issuer: str) -> tuple[VerifyingKey, ...]:
        """Return the issuer's keys, fetching them when none are cached or the TTL has passed.

        Raises:
            AuthenticationError: The issuer is not trusted.
            JwksUnavailableError: No key is cached and fetching failed.
        """
        entry = self._entry(issuer)
        if self._fresh(entry):
            return entry.keys
        async with entry.lock:
            # Another request may have fetched while this one waited for the lock.
            if self._fresh(entry):
                return entry.keys
            if not self._may_attempt(entry):
                return self._keys_or_raise(issuer, entry, "the last attempt failed moments ago")
            try:
                await self._fetch_into(issuer, entry)
            except _FetchError as error:
                return self._keys_or_raise(issuer, entry, str(error))
            return entry.keys

    async def refresh(self, issuer: str) -> bool:
        """Fetch the issuer's keys now unless that was tried less than `refresh_interval` ago.

        A failed fetch keeps the keys already cached.

        Returns:
            Whether a fetch succeeded.

        Raises:
            AuthenticationError: The issuer is not trusted.
        """
        entry = self._entry(issuer)
        async with entry.lock:
            if not self._may_attempt(entry):
                return False
            try:
                await self._fetch_into(issuer, entry)
            except _FetchError:
                return False
            return True

    async def find_key(self, issuer: str, kid: str | None, alg: str) -> VerifyingKey:
        """Return the issuer's key that verifies a token with header `kid` and `alg`.

        An unknown `kid` triggers one rate-limited refresh (the issuer may have rotated its keys).
        A token without `kid` is accepted only when exactly one key fits the algorithm.

        Raises:
            AuthenticationError: The issuer is not trusted, or no key fits.
            JwksUnavailableError: No key is cached and fetching failed.
        """
        key = _select(await self.keys(issuer), kid, alg)
        if key is None:
            await self.refresh(issuer)
            key = _select(self._entry(issuer).keys, kid, alg)
        if key is None:
            msg = "unknown signing key"
            raise AuthenticationError(msg)
        return key

    def _fresh(self, entry: _IssuerKeys) -> bool:
        return entry.fetched_at is not None and self._clock() - entry.fetched_at < self._ttl

    def _may_attempt(self, entry: _IssuerKeys) -> bool:
        # With ttl >= refresh_interval this never delays a scheduled refetch, only retries.
        return (
            entry.attempted_at is None
            or self._clock() - entry.attempted_at >= self._refresh_interval
        )

    def _keys_or_raise(
        self, issuer: str, entry: _IssuerKeys, reason: str
    ) -> tuple[VerifyingKey, ...]:
        if entry.keys:
            # Not logged here: every request would log during an outage; the failed fetch was.
            return entry.keys
        raise JwksUnavailableError(issuer, reason)

    async def _fetch_into(self, issuer: str, entry: _IssuerKeys) -> None:
        entry.attempted_at = self._clock()
        try:
            url = self._urls.get(issuer) or await self._discover(issuer)
            keys = _parse_jwks(await self._read_json(url))
        except _FetchError as error:
            log.warning("jwks_fetch_failed", issuer=issuer, reason=str(error))
            raise
        entry.keys = keys
        entry.fetched_at = entry.attempted_at
        log.info("jwks_fetched", issuer=issuer, kids=[key.kid for key in keys])

    async def _discover(self, issuer: str) -> str:
        """Find the JWKS URL through the issuer's OIDC discovery document."""
        document = await self._read_json(issuer.rstrip("/") + "/.well-known/openid-configuration")
        if not isinstance(document, dict):
            msg = "the discovery document is not a JSON object"
            raise _FetchError(msg)
        # OIDC Discovery §4.3: the document must name exactly the issuer it was fetched for.
        if document.get("issuer") != issuer:
            msg = "the discovery document names another issuer"
            raise _FetchError(msg)
        jwks_uri = document.get("jwks_uri")
        if not isinstance(jwks_uri, str) or urlsplit(jwks_uri).scheme not in ("https", "http"):
            msg = "the discovery document has no usable jwks_uri"
            raise _FetchError(msg)
        return jwks_uri

    async def _read_json(self, url: str) -> Any:
        """Read a JSON document from an http(s) or file URL, refusing oversized ones."""
        parts = urlsplit(url)
        if parts.scheme == "file":
            path = Path(url2pathname(parts.path))
            try:
                body = await asyncio.to_thread(_read_small_file, path)
            except OSError as error:
                msg = f"cannot read {path}: {error.strerror}"
                raise _FetchError(msg) from None
        else:
            body = await self._get(url)
        try:
            return json.loads(body)
        except ValueError:
            msg = f"{url} did not return JSON"
            raise _FetchError(msg) from None

    async def _get(self, url: str) -> bytes:
        try:
            async with self._client.stream(
                "GET", url, headers={"Accept": "application/json"}
            ) as response:
                if response.status_code != httpx.codes.OK:
                    msg = f"{url} answered HTTP {response.status_code}"
                    raise _FetchError(msg)
                body = bytearray()
                async for chunk in response.aiter_bytes():
                    body += chunk
                    if len(body) > MAX_JWKS_BYTES:
                        msg = f"{url} returned more than {MAX_JWKS_BYTES} bytes"
                        raise _FetchError(msg)
                return bytes(body)
        except httpx.HTTPError as error:
            msg = f"{url} is unreachable ({type(error).__name__})"
            raise _FetchError(msg) from None


def _read_small_file(path: Path) -> bytes:
    with path.open("rb") as file:
        body = file.read(MAX_JWKS_BYTES + 1)
    if len(body) > MAX_JWKS_BYTES:
        msg = f"{path} holds more than {MAX_JWKS_BYTES} bytes"
        raise _FetchError(msg)
    return body


def _select(keys: tuple[VerifyingKey, ...], kid: str | None, alg: str) -> VerifyingKey | None:
    """Pick the key for `kid` and `alg`; without `kid`, only an unambiguous match."""
    fitting = [key for key in keys if key_matches_algorithm(key, alg)]
    if kid is None:
        return fitting[0] if len(fitting) == 1 else None
    return next((key for key in fitting if key.kid == kid), None)

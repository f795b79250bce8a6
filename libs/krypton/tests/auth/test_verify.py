"""Bearer token verification against the development issuer's keys fetched over real HTTP."""

from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
import json
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from joserfc import jwt
from joserfc.jwk import ECKey, RSAKey

from krypton.auth.dev_issuer import DevIssuer
from krypton.auth.errors import AuthenticationError, JwksUnavailableError
from krypton.auth.jwks import JwksCache
from krypton.auth.verify import TokenVerifier, bearer_token
from krypton.contracts.common.v1 import Actor, RoleValues
from krypton.core.errors import ConfigurationError
from krypton.core.settings import AuthSettings
from krypton.testing.servers import free_port

Serve = Callable[[DevIssuer, int], contextlib.AbstractAsyncContextManager[None]]


class FakeClock:
    """A clock the test moves forward by hand, so expiry and TTLs are tested without waiting."""

    def __init__(self, start: float) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        """Move time forward."""
        self.now += seconds


@dataclass
class AuthEnv:
    """A development issuer and a verifier that trusts it, with hand-driven clocks."""

    issuer: DevIssuer
    port: int
    settings: AuthSettings
    client: httpx.AsyncClient
    jwks: JwksCache
    verifier: TokenVerifier
    wall: FakeClock
    monotonic: FakeClock
    requests: list[str] = field(default_factory=list)

    @property
    def jwks_fetches(self) -> int:
        """How many times the JWKS document was requested over HTTP."""
        return self.requests.count("/jwks.json")

    def mint(self, **overrides: Any) -> str:
        """A valid professional token, with `overrides` applied to `DevIssuer.mint`."""
        arguments: dict[str, Any] = {
            "role": "professional",
            "sub": "810101201234",
            "structure": "330781196",
            "name": "Dr Jeanne Martin",
            "profession": "10",
        }
        arguments.update(overrides)
        return self.issuer.mint(**arguments)

    def claims(self, **overrides: Any) -> dict[str, Any]:
        """Valid claims for a token of this issuer, to sign with another key."""
        now = int(time.time())
        claims: dict[str, Any] = {
            "iss": self.issuer.issuer_url,
            "sub": "810101201234",
            "aud": "krypton",
            "iat": now,
            "exp": now + 600,
            "krypton_role": "professional",
            "structure": "330781196",
        }
        claims.update(overrides)
        return claims


MakeEnv = Callable[..., AuthEnv]


@pytest.fixture
async def make_env(tmp_path: Path) -> AsyncIterator[MakeEnv]:
    """Build `AuthEnv`s (not served yet), each for an issuer URL on a free port."""
    made: list[AuthEnv] = []

    def make(*, port: int | None = None, **settings: Any) -> AuthEnv:
        port = port or free_port()
        url = f"http://127.0.0.1:{port}"
        issuer = DevIssuer(tmp_path / f"issuer-{port}", url)
        auth = AuthSettings(**{"issuers": [url], **settings})
        requests: list[str] = []

        async def record(request: httpx.Request) -> None:
            requests.append(request.url.path)

        client = httpx.AsyncClient(event_hooks={"request": [record]}, timeout=5)
        wall = FakeClock(time.time())
        monotonic = FakeClock(1000.0)
        jwks = JwksCache(auth, client=client, clock=monotonic)
        verifier = TokenVerifier(auth, jwks, clock=wall)
        built = AuthEnv(issuer, port, auth, client, jwks, verifier, wall, monotonic, requests)
        made.append(built)
        return built

    yield make
    for built in made:
        await built.client.aclose()


@pytest.fixture
async def env(make_env: MakeEnv, serve: Serve) -> AsyncIterator[AuthEnv]:
    """A development issuer served over HTTP, its JWKS found through OIDC discovery."""
    built = make_env()
    async with serve(built.issuer, built.port):
        yield built


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def segment(value: dict[str, Any]) -> str:
    return b64(json.dumps(value).encode())


async def refused(verifier: TokenVerifier, token: str) -> str:
    """Verify a token that must be refused; return the reason, checking the token is not echoed."""
    with pytest.raises(AuthenticationError) as info:
        await verifier.verify(token)
    assert token not in str(info.value)
    assert token not in info.value.reason
    return info.value.reason


# --- accepted tokens -------------------------------------------------------------------------


async def test_valid_token_becomes_the_actor_it_describes(env: AuthEnv) -> None:
    token = env.mint()

    actor = await env.verifier.verify(token)

    assert actor == Actor(
        sub="810101201234",
        role=RoleValues.PROFESSIONAL,
        issuer=env.issuer.issuer_url,
        structure="330781196",
        name="Dr Jeanne Martin",
        profession="10",
        token_id=actor.token_id,
    )
    assert actor.token_id
    assert env.requests == ["/.well-known/openid-configuration", "/jwks.json"]


async def test_patient_token_with_ins_is_accepted(env: AuthEnv) -> None:
    token = env.mint(role="patient", sub="patient-1", structure=None, ins="279035121518989")

    actor = await env.verifier.verify(token)

    assert actor.role is RoleValues.PATIENT
    assert actor.ins == "279035121518989"


async def test_audience_list_containing_krypton_is_accepted(env: AuthEnv) -> None:
    actor = await env.verifier.verify(env.mint(audience=["viewer", "krypton"]))

    assert actor.sub == "810101201234"


async def test_token_expired_within_the_leeway_is_accepted(env: AuthEnv) -> None:
    actor = await env.verifier.verify(env.mint(ttl=-10))

    assert actor.sub == "810101201234"


async def test_file_jwks_url_needs_no_running_issuer(make_env: MakeEnv) -> None:
    probe = make_env()
    env = make_env(
        port=probe.port, jwks_urls={probe.issuer.issuer_url: probe.issuer.jwks_path.as_uri()}
    )

    actor = await env.verifier.verify(env.mint())

    assert actor.structure == "330781196"
    assert env.requests == []


async def test_explicit_jwks_url_skips_discovery(make_env: MakeEnv, serve: Serve) -> None:
    probe = make_env()
    env = make_env(port=probe.port, jwks_urls={probe.issuer.issuer_url: probe.issuer.jwks_uri})

    async with serve(env.issuer, env.port):
        await env.verifier.verify(env.mint())

    assert env.requests == ["/jwks.json"]


# --- time and audience -----------------------------------------------------------------------


async def test_expired_token_is_refused(env: AuthEnv) -> None:
    assert await refused(env.verifier, env.mint(ttl=-120)) == "token expired"


async def test_token_not_yet_valid_is_refused(env: AuthEnv) -> None:
    token = env.mint(extra={"nbf": int(time.time()) + 3600})

    assert await refused(env.verifier, token) == "token not yet valid"


async def test_token_issued_in_the_future_is_refused(env: AuthEnv) -> None:
    token = env.mint(extra={"iat": int(time.time()) + 3600, "nbf": None})

    assert await refused(env.verifier, token) == "token issued in the future"


async def test_token_for_another_audience_is_refused(env: AuthEnv) -> None:
    assert await refused(env.verifier, env.mint(audience="other-service")) == "wrong audience"


@pytest.mark.parametrize("claim", ["exp", "aud", "sub"])
async def test_token_without_a_required_claim_is_refused(env: AuthEnv, claim: str) -> None:
    token = env.mint(extra={claim: None})

    assert await refused(env.verifier, token) == f"missing claim: {claim}"


# --- issuers, algorithms and signatures ------------------------------------------------------


async def test_token_from_an_unknown_issuer_is_refused_without_fetching_anything(
    env: AuthEnv, tmp_path: Path
) -> None:
    stranger = DevIssuer(tmp_path / "stranger", f"http://127.0.0.1:{free_port()}")
    token = stranger.mint(role="admin", sub="mallory")

    assert await refused(env.verifier, token) == "unknown issuer"
    assert env.requests == []


async def test_unsigned_alg_none_token_is_refused(env: AuthEnv) -> None:
    token = f"{segment({'alg': 'none', 'typ': 'JWT'})}.{segment(env.claims())}."

    assert await refused(env.verifier, token) == "signing algorithm not allowed"


async def test_hmac_token_keyed_with_the_public_key_is_refused(env: AuthEnv) -> None:
    public_pem = ECKey.import_key(env.issuer.jwks()["keys"][0]).as_pem(private=False)
    header = {"alg": "HS256", "typ": "JWT", "kid": env.issuer.kid}
    signing_input = f"{segment(header)}.{segment(env.claims(krypton_role='admin'))}"
    signature = hmac.new(public_pem, signing_input.encode(), hashlib.sha256).digest()

    token = f"{signing_input}.{b64(signature)}"

    assert await refused(env.verifier, token) == "signing algorithm not allowed"
    assert env.requests == []


async def test_rs256_token_from_an_unconfigured_key_is_refused(env: AuthEnv) -> None:
    rogue = RSAKey.generate_key(2048, parameters={"alg": "RS256", "use": "sig"}, auto_kid=True)
    token = jwt.encode({"alg": "RS256", "kid": str(rogue.kid)}, env.claims(), rogue)

    assert await refused(env.verifier, token) == "unknown signing key"


async def test_rs256_token_naming_the_issuers_ec_key_id_is_refused(env: AuthEnv) -> None:
    rogue = RSAKey.generate_key(2048, parameters={"alg": "RS256", "use": "sig"})
    token = jwt.encode({"alg": "RS256", "kid": env.issuer.kid}, env.claims(), rogue)

    assert await refused(env.verifier, token) == "unknown signing key"


async def test_token_signed_by_another_key_under_the_issuers_key_id_is_refused(
    env: AuthEnv,
) -> None:
    rogue = ECKey.generate_key("P-256")
    token = jwt.encode({"alg": "ES256", "kid": env.issuer.kid}, env.claims(), rogue)

    assert await refused(env.verifier, token) == "invalid signature"


async def test_tampered_payload_is_refused(env: AuthEnv) -> None:
    header, _, signature = env.mint().split(".")
    claims = env.claims(krypton_role="admin")

    token = f"{header}.{segment(claims)}.{signature}"

    assert await refused(env.verifier, token) == "invalid signature"


async def test_verifier_refuses_settings_that_allow_hmac_or_none(make_env: MakeEnv) -> None:
    env = make_env()

    for algorithms in (["ES256", "HS256"], ["none"], []):
        settings = AuthSettings(issuers=env.settings.issuers, algorithms=algorithms)
        with pytest.raises(ConfigurationError, match="ALGORITHMS"):
            TokenVerifier(settings, env.jwks)


def test_jwks_cache_refuses_odd_jwks_urls() -> None:
    with pytest.raises(ConfigurationError, match="must be https"):
        JwksCache(AuthSettings(issuers=["https://a"], jwks_urls={"https://a": "ftp://a/jwks"}))
    with pytest.raises(ConfigurationError, match="not in KRYPTON_AUTH__ISSUERS"):
        JwksCache(AuthSettings(issuers=["https://a"], jwks_urls={"https://b": "https://b/jwks"}))


# --- shape and size --------------------------------------------------------------------------


async def test_token_over_16_kib_is_refused(env: AuthEnv) -> None:
    token = env.mint(extra={"padding": "x" * 16_384})

    assert await refused(env.verifier, token) == "token too large"
    assert env.requests == []


@pytest.mark.parametrize(
    ("token", "reason"),
    [
        ("not-a-jwt", "malformed token"),
        ("a.b.c.d.e", "malformed token"),
        ("é.b.c", "malformed token"),
        ("e30.e30.", "signing algorithm not allowed"),
        ("bm90IGpzb24.e30.c2ln", "malformed token header"),
        ("W10.e30.c2ln", "malformed token header"),
    ],
)
async def test_malformed_tokens_are_refused(env: AuthEnv, token: str, reason: str) -> None:
    assert await refused(env.verifier, token) == reason


async def test_payload_that_is_not_json_is_refused(env: AuthEnv) -> None:
    token = f"{segment({'alg': 'ES256', 'kid': env.issuer.kid})}.bm90IGpzb24.c2ln"

    assert await refused(env.verifier, token) == "malformed token payload"


async def test_role_requirements_are_enforced_after_the_signature(env: AuthEnv) -> None:
    patient = env.mint(role="patient", sub="patient-1", structure=None)
    professional = env.mint(structure=None)

    assert await refused(env.verifier, patient) == "missing claim: ins (required for role patient)"
    assert (
        await refused(env.verifier, professional)
        == "missing claim: structure (required for role professional)"
    )


def test_bearer_token_is_read_from_the_authorization_header() -> None:
    assert bearer_token("Bearer abc.def.ghi") == "abc.def.ghi"
    assert bearer_token("bearer  abc.def.ghi") == "abc.def.ghi"
    for header, reason in [
        (None, "missing bearer token"),
        ("", "missing bearer token"),
        ("Basic dXNlcjpwYXNz", "authorization is not a bearer token"),
        ("Bearer", "authorization is not a bearer token"),
        ("Bearer a b", "authorization is not a bearer token"),
    ]:
        with pytest.raises(AuthenticationError) as info:
            bearer_token(header)
        assert info.value.reason == reason


# --- key refresh, rotation and outages -------------------------------------------------------


async def test_unknown_key_id_triggers_one_rate_limited_refresh(env: AuthEnv) -> None:
    rogue = ECKey.generate_key("P-256", auto_kid=True)
    forged = jwt.encode({"alg": "ES256", "kid": str(rogue.kid)}, env.claims(), rogue)
    await env.verifier.verify(env.mint())
    assert env.jwks_fetches == 1

    # Just fetched: an unknown kid does not make the cache fetch again.
    assert await refused(env.verifier, forged) == "unknown signing key"
    assert env.jwks_fetches == 1

    env.monotonic.advance(31)
    assert await refused(env.verifier, forged) == "unknown signing key"
    assert env.jwks_fetches == 2

    # A flood of unknown kids right after costs the issuer nothing more.
    for _ in range(5):
        assert await refused(env.verifier, forged) == "unknown signing key"
    assert env.jwks_fetches == 2


async def test_rotated_key_is_picked_up_on_refresh(
    make_env: MakeEnv, serve: Serve, tmp_path: Path
) -> None:
    env = make_env()
    old_issuer = env.issuer
    async with serve(old_issuer, env.port):
        await env.verifier.verify(env.mint())

    # The issuer restarts at the same URL with a new key (a new state directory).
    rotated = DevIssuer(tmp_path / "rotated", old_issuer.issuer_url)
    assert rotated.kid != old_issuer.kid
    env.issuer = rotated
    async with serve(rotated, env.port):
        env.monotonic.advance(31)
        actor = await env.verifier.verify(env.mint(sub="810101209999"))
        stale = old_issuer.mint(role="admin", sub="old-key")

        assert actor.sub == "810101209999"
        assert await refused(env.verifier, stale) == "unknown signing key"
    assert env.jwks_fetches == 2


async def test_cached_keys_are_used_while_the_issuer_is_down(
    make_env: MakeEnv, serve: Serve
) -> None:
    env = make_env()
    async with serve(env.issuer, env.port):
        await env.verifier.verify(env.mint())

    env.monotonic.advance(3600)  # well past the TTL: the cache tries to fetch and fails
    actor = await env.verifier.verify(env.mint(sub="810101205555"))

    assert actor.sub == "810101205555"
    assert env.jwks_fetches == 1
    assert env.requests.count("/.well-known/openid-configuration") == 2


async def test_issuer_down_without_cached_keys_is_a_service_error(make_env: MakeEnv) -> None:
    env = make_env()
    token = env.mint()

    with pytest.raises(JwksUnavailableError) as info:
        await env.verifier.verify(token)
    assert info.value.issuer == env.issuer.issuer_url
    assert token not in str(info.value)

    # Right after a failure, requests fail fast instead of hammering the issuer.
    with pytest.raises(JwksUnavailableError):
        await env.verifier.verify(env.mint())
    assert len(env.requests) == 1


async def test_discovery_naming_another_issuer_is_not_trusted(
    make_env: MakeEnv, serve: Serve
) -> None:
    served = make_env()
    # This verifier trusts "http://localhost:<port>", but the document says "http://127.0.0.1:<port>".
    settings = AuthSettings(issuers=[f"http://localhost:{served.port}"])
    async with (
        serve(served.issuer, served.port),
        httpx.AsyncClient() as client,
        JwksCache(settings, client=client) as jwks,
    ):
        with pytest.raises(JwksUnavailableError, match="another issuer"):
            await jwks.keys(f"http://localhost:{served.port}")


# --- verified-token cache --------------------------------------------------------------------


async def test_verified_token_is_remembered(env: AuthEnv) -> None:
    token = env.mint()

    first = await env.verifier.verify(token)
    second = await env.verifier.verify(token)

    assert second is first


async def test_remembered_token_is_verified_again_after_a_minute(env: AuthEnv) -> None:
    token = env.mint()
    first = await env.verifier.verify(token)

    env.wall.advance(61)
    again = await env.verifier.verify(token)

    assert again == first
    assert again is not first


async def test_remembered_token_still_expires(env: AuthEnv) -> None:
    token = env.mint(ttl=20)
    await env.verifier.verify(token)

    env.wall.advance(20 + 30 + 1)  # past exp and the leeway

    assert await refused(env.verifier, token) == "token expired"

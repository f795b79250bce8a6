"""Settings of the authorize service (`KRYPTON_AUTHZ_` prefix).

The common ones (NATS, PostgreSQL, environment) come from `krypton.core.settings`.
"""

from __future__ import annotations

from pydantic import SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from krypton.core.errors import ConfigurationError

__all__ = ["AuthorizeSettings"]

_DEV_PEPPER = "krypton-development-share-code-pepper"


class AuthorizeSettings(BaseSettings):
    """Policy parameters: durations, throttles, and the share-code pepper."""

    model_config = SettingsConfigDict(
        env_prefix="KRYPTON_AUTHZ_", env_nested_delimiter="__", extra="ignore"
    )

    environment: str = "development"  # copied from KRYPTON_ENVIRONMENT by the app
    # Secret key of the share-code HMAC: a stolen database alone cannot test guesses offline.
    code_pepper: SecretStr = SecretStr(_DEV_PEPPER)
    code_default_days: int = 30
    code_max_days: int = 90
    # Throttle: failed redemptions per professional in a sliding window, then 429 until the
    # window passes; a code that fails this many times with its lookup group is locked for good.
    redeem_max_failures: int = 10
    redeem_window_seconds: int = 900
    code_max_failures: int = 5
    break_glass_hours: float = 4.0
    self_attested_max_days: int = 30
    care_default_days: int = 365
    care_max_days: int = 3 * 366
    justification_min_chars: int = 15
    # Decisions served from memory for at most this long (0: no cache); policy events drop
    # them at once, so this only bounds how late an expiry (which has no event) is noticed.
    decision_cache_seconds: float = 1.0

    @model_validator(mode="after")
    def _refuse_development_pepper(self) -> AuthorizeSettings:
        if self.environment == "production" and (
            self.code_pepper.get_secret_value() in ("", _DEV_PEPPER)
        ):
            msg = "KRYPTON_AUTHZ_CODE_PEPPER must be set to a real secret in production"
            raise ConfigurationError(msg)
        return self

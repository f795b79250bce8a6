"""Settings shared by every service: one pydantic-settings class, `KRYPTON_` prefix.

Services build their settings once in `app.py` and pass them down; nothing reads a module-global
configuration. Nested groups use `__` (e.g. `KRYPTON_S3__ENDPOINT`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from krypton.core.errors import ConfigurationError

__all__ = ["AuthSettings", "KryptonSettings", "S3Settings", "StorageSettings"]

_PLACEHOLDERS = {"", "changeme", "secret", "minioadmin", "test"}


class S3Settings(BaseModel):
    """An S3-protocol object store (MinIO, AWS, any compatible server)."""

    endpoint: str = "127.0.0.1:9000"
    access_key: str = ""
    secret_key: SecretStr = SecretStr("")
    bucket: str = "krypton"
    secure: bool = True
    region: str | None = None


class StorageSettings(BaseModel):
    """Where DICOM objects live: a directory (embedded default) or an S3 bucket."""

    backend: Literal["fs", "s3"] = "fs"
    root: Path = Path(".state/objects")
    s3: S3Settings = S3Settings()


class AuthSettings(BaseModel):
    """Trusted token issuers. Each issuer's keys come from its JWKS URL (or a local file)."""

    issuers: list[str] = Field(default_factory=list)
    jwks_urls: dict[str, str] = Field(default_factory=dict)
    audience: str = "krypton"
    algorithms: list[str] = Field(default_factory=lambda: ["RS256", "ES256", "PS256"])
    leeway_seconds: int = 30


class KryptonSettings(BaseSettings):
    """Settings common to every Krypton process."""

    model_config = SettingsConfigDict(
        env_prefix="KRYPTON_", env_nested_delimiter="__", extra="ignore"
    )

    environment: Literal["development", "test", "production"] = "development"
    nats_url: str = "nats://127.0.0.1:4222"
    pg_dsn: SecretStr = SecretStr("postgresql://krypton@127.0.0.1:5432/krypton")
    storage: StorageSettings = StorageSettings()
    auth: AuthSettings = AuthSettings()
    http_host: str = "127.0.0.1"
    http_port: int = 8080
    # Several gateway processes on one host share the port (SO_REUSEPORT: the kernel spreads
    # connections over them): set by the embedded platform when it runs gateway replicas.
    http_reuse_port: bool = False
    public_url: str | None = None
    log_level: str = "INFO"
    log_json: bool | None = None
    # How long the gateway waits for ingest's verdict before telling the client to retry safely.
    stow_result_timeout: float = 30.0
    max_instance_bytes: int = 4 * 1024**3
    max_request_bytes: int = 16 * 1024**3
    index_batch_size: int = 256
    # Searches and locates one index process answers at once (both subjects together, see
    # `krypton.bus.responder`): while one waits on PostgreSQL the next is decoded and planned.
    index_request_workers: int = Field(default=8, ge=1, le=64)
    ingest_concurrency: int = 16
    # Port of this process's Prometheus `/metrics` endpoint: unset = the service's default
    # (`krypton.telemetry.metrics.DEFAULT_PORTS`), 0 = off.
    metrics_port: int | None = None
    # Containers set 0.0.0.0 so Prometheus can reach it; a laptop keeps it local.
    metrics_host: str = "127.0.0.1"
    # JetStream stream replicas: 3 on the production cluster, 1 on a single server.
    stream_replicas: int = 1
    # Limits (issue 9). Instances declaring more frames are refused (quarantined).
    max_frames: int = 100_000
    # Per-actor token bucket in each gateway process: requests per second and burst; 0 = off.
    rate_limit_per_second: float = 0.0
    rate_limit_burst: int = 200
    # STOW-RS answers 503 + Retry-After while more uploads than this wait for ingest; 0 = off.
    ingest_backlog_limit: int = 5_000

    @model_validator(mode="after")
    def _refuse_placeholder_secrets(self) -> KryptonSettings:
        if self.environment != "production":
            return self
        if self.storage.backend == "s3" and (
            self.storage.s3.secret_key.get_secret_value() in _PLACEHOLDERS
        ):
            msg = "KRYPTON_STORAGE__S3__SECRET_KEY is a placeholder; set a real secret"
            raise ConfigurationError(msg)
        if not self.auth.issuers:
            msg = "KRYPTON_AUTH__ISSUERS is empty; production needs at least one trusted issuer"
            raise ConfigurationError(msg)
        return self

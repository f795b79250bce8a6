"""The audit service's own settings (``KRYPTON_AUDIT_*``), next to the shared `KryptonSettings`."""

from __future__ import annotations

from datetime import timedelta

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

__all__ = ["AuditSettings"]


class AuditSettings(BaseSettings):
    """Retention, checkpoints and batching of the audit log."""

    model_config = SettingsConfigDict(env_prefix="KRYPTON_AUDIT_", extra="ignore")

    # Legal minimum is six rolling months (CSP); the platform keeps a year online (domain §3.1).
    retention_days: int = Field(default=365, ge=1)
    checkpoint_interval: float = Field(default=60.0, gt=0)
    batch_size: int = Field(default=256, ge=1)
    # Seconds a started batch waits for more events before it is appended (one transaction
    # per batch). Readers of the trail see an access this much later; the event itself is
    # durable in JetStream before the access is answered.
    batch_linger: float = Field(default=0.1, ge=0, le=5)

    @property
    def retention(self) -> timedelta:
        """How long records are kept before `krypton audit purge` may remove them."""
        return timedelta(days=self.retention_days)

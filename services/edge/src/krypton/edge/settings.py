"""Settings of the edge box (`KRYPTON_EDGE_` prefix) and of the region's edge forwarder."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

__all__ = ["EdgeSettings", "RegionEdgeSettings"]


class EdgeSettings(BaseSettings):
    """One producing structure's edge box.

    The box speaks DIMSE on the institution's network, spools what it receives, and forwards
    it to the region over its own nats-server running as a leaf node of the regional one.
    """

    model_config = SettingsConfigDict(
        env_prefix="KRYPTON_EDGE_", env_nested_delimiter="__", extra="ignore"
    )

    structure: str  # FINESS of the producing structure this box belongs to
    state_dir: Path = Path(".state/edge")
    # DICOM (DIMSE) side
    ae_title: str = "KRYPTON_EDGE"
    dimse_host: str = "0.0.0.0"
    dimse_port: int = 11112
    # Calling AE titles allowed to associate; empty = any (a closed network only).
    allowed_calling_aes: list[str] = Field(default_factory=list)
    # Spool: received instances wait here (and then in the box's stream) until forwarded.
    spool_limit_bytes: int = 20 * 1024**3
    spool_alarm_ratio: float = 0.8  # alarm (log + status + metric) above this fraction
    max_instance_bytes: int = 2 * 1024**3
    chunk_bytes: int = 512 * 1024  # below the leaf's 1 MiB max_payload, with headers
    # NATS: the box's own leaf nats-server
    nats_port: int = 0  # 0 = any free port (local clients only)
    nats_monitor_port: int = 0
    hub_leaf_url: str = "nats-leaf://127.0.0.1:7422"  # the region's leaf node listener
    hub_credentials: Path | None = None  # NATS credentials file the region gave this box
    # Or the password of the box's login on the region's leaf node listener (user
    # `edge-<structure>`, `krypton.bus.permissions.edge_leaf_users` on the region's side).
    hub_password: SecretStr = SecretStr("")
    # HTTP side: status, metrics, and the DICOMweb proxy for local viewers
    http_host: str = "127.0.0.1"
    http_port: int = 8090
    # The region's DICOMweb root (gateway), and the token the box acts with there: a
    # `producer` token of this structure, so the access policy applies to the box as a whole.
    region_dicomweb_url: str = "http://127.0.0.1:8080/dicomweb"
    region_token: SecretStr = SecretStr("")
    # Or a file holding it, read again for every request, so that an agent can rotate it.
    region_token_file: Path | None = None
    region_timeout: float = 30.0
    log_level: str = "INFO"
    log_json: bool | None = None


class RegionEdgeSettings(BaseSettings):
    """The region's edge forwarder: which boxes it takes instances from."""

    model_config = SettingsConfigDict(
        env_prefix="KRYPTON_EDGE_REGION_", env_nested_delimiter="__", extra="ignore"
    )

    # FINESS of every edge box connected to this region; each one's leaf JetStream domain is
    # `edge-<finess>`, and what arrives from it is attributed to that structure and no other.
    boxes: list[str] = Field(default_factory=list)
    batch: int = 64
    ack_wait: float = 30.0  # a chunk lost with a flapping link comes back after this

"""The render service's own settings (``KRYPTON_RENDER_*``): the ingest-time precompute policy."""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

__all__ = ["RenderSettings"]


class RenderSettings(BaseSettings):
    """What the render service precomputes from ``instance.stored``, and its cache size.

    ``KRYPTON_RENDER_PRECOMPUTE_HTJ2K=false`` turns the HTJ2K lossless copies off (they take
    about the size of a lossless original again); thumbnails are cheap and stay on.
    ``KRYPTON_RENDER_PRECOMPUTE_NICE`` (0-19, default 19) lowers the priority of the
    precompute thread so that it yields the CPU to ingest under load (0: no deferral).
    ``KRYPTON_RENDER_PRECOMPUTE_WAITS_FOR_INGEST`` (default true) holds precompute back while
    the INGEST stream holds uploads, until it has been empty for
    ``KRYPTON_RENDER_PRECOMPUTE_INGEST_QUIET`` seconds (`krypton.render.ingest_gate`); the
    backlog is caught up afterwards.
    """

    model_config = SettingsConfigDict(env_prefix="KRYPTON_RENDER_", extra="ignore")

    precompute_htj2k: bool = True
    precompute_thumbnail: bool = True
    precompute_metadata: bool = True  # the WADO-RS metadata JSON the gateway serves
    precompute_batch: int = 16
    precompute_nice: int = Field(default=19, ge=0, le=19)
    precompute_waits_for_ingest: bool = True
    precompute_ingest_quiet: float = Field(default=0.5, ge=0.0)
    cache_bytes: int = 256 * 1024**2

"""Render request contract, v1. Additive changes only: new fields get defaults.

The gateway sends a `RenderRequest` on ``SVC_RENDER_FRAME``; the reply body is the encoded
image itself (a rendered frame is small enough to ride a reply), with headers
``Krypton-Status`` (HTTP-like status), ``Content-Type`` and, on failure, ``Krypton-Reason``.
"""

from __future__ import annotations

import enum

import msgspec

__all__ = [
    "THUMBNAIL_KIND",
    "THUMBNAIL_QUALITY",
    "THUMBNAIL_VIEWPORT",
    "RenderRequest",
    "RenderedMediaValues",
    "VoiFunctionValues",
    "Window",
]

#: The default thumbnail (PS3.18 leaves its size to the server): JPEG of frame 1 fitted in
#: 128x128 at quality 75. The render service precomputes exactly this one at ingest.
THUMBNAIL_VIEWPORT: tuple[int, int] = (128, 128)
THUMBNAIL_QUALITY = 75
#: The derived-object kind (`krypton.storage.keys.derived_key`) of the precomputed thumbnail:
#: the gateway serves it straight from the object store, the render service writes it.
THUMBNAIL_KIND = "thumbnail-v1"


class RenderedMediaValues(enum.StrEnum):
    """Media types of rendered resources (PS3.18 8.3.5.1.1)."""

    JPEG = "image/jpeg"
    PNG = "image/png"


class VoiFunctionValues(enum.StrEnum):
    """VOI LUT functions (PS3.3 C.11.2.1.3) a `window` parameter may name."""

    LINEAR = "linear"
    LINEAR_EXACT = "linear-exact"
    SIGMOID = "sigmoid"


class Window(msgspec.Struct, frozen=True, kw_only=True):
    """The `window=center,width,function` parameter of a rendered request."""

    center: float
    width: float
    function: VoiFunctionValues = VoiFunctionValues.LINEAR


class RenderRequest(msgspec.Struct, frozen=True, kw_only=True):
    """Render frame `frame` (1-based) of one stored instance.

    `sha256` identifies the content for the render cache; `viewport` is the largest
    (width, height) the image may have (aspect ratio kept, never enlarged); `quality` is the
    JPEG quality (1-100).
    """

    object_key: str
    sha256: str
    frame: int = 1
    media_type: RenderedMediaValues = RenderedMediaValues.JPEG
    quality: int = 90
    viewport: tuple[int, int] | None = None
    window: Window | None = None
    # Added later: which instance this is, so the renderer can use its precomputed
    # renditions (HTJ2K copy, thumbnail). Without them it renders from `object_key`.
    study_uid: str | None = None
    series_uid: str | None = None
    sop_instance_uid: str | None = None
    transfer_syntax_uid: str | None = None  # of the original at `object_key`

    def is_default_thumbnail(self) -> bool:
        """Whether this asks for exactly the thumbnail precomputed at ingest."""
        return (
            self.frame == 1
            and self.media_type is RenderedMediaValues.JPEG
            and self.quality == THUMBNAIL_QUALITY
            and self.viewport == THUMBNAIL_VIEWPORT
            and self.window is None
        )

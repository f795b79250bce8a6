"""Index request/reply contracts, v1. Additive changes only: new fields get defaults.

The gateway parses a QIDO-RS URL into a `QidoQuery` (``krypton.dicom.qido.parse_qido``), wraps
it with the verified caller in a `QidoRequest`, and sends it on ``SVC_INDEX_QIDO``; the index
answers with a `QidoResponse` whose body is the ready ``application/dicom+json`` payload.
"""

from __future__ import annotations

import enum

import msgspec

from krypton.contracts.common.v1 import Actor

__all__ = [
    "LocateRequest",
    "LocateResponse",
    "LocatedInstance",
    "Match",
    "MatchKindValues",
    "QidoLevelValues",
    "QidoQuery",
    "QidoRequest",
    "QidoResponse",
]


class QidoLevelValues(enum.StrEnum):
    """The query/retrieve level a QIDO-RS search returns."""

    STUDY = "study"
    SERIES = "series"
    INSTANCE = "instance"


class MatchKindValues(enum.StrEnum):
    """PS3.4 C.2.2.2 matching kinds, as parsed from one query parameter."""

    SINGLE = "single"  # values: [value]; exact (PN: case- and accent-insensitive)
    WILDCARD = "wildcard"  # values: [pattern with * and ?]
    LIST = "list"  # values: the UIDs (UI) or codes (CS) of which any may match
    RANGE = "range"  # values: [start, end]; "" is an open end (DA, TM)
    EMPTY = "empty"  # values: []; universal matching: return the attribute, filter nothing


class Match(msgspec.Struct, frozen=True, kw_only=True):
    """One matching key of a query, attribute named by its DICOM keyword."""

    keyword: str
    kind: MatchKindValues
    values: list[str] = msgspec.field(default_factory=list)


class QidoQuery(msgspec.Struct, frozen=True, kw_only=True):
    """A validated QIDO-RS search.

    `study_uid` / `series_uid` come from the URL path (``/studies/{study}/series``); `matches`
    from the query parameters; `includefields` are DICOM keywords, or ``GGGGEEEE`` tags for
    attributes without a keyword, that the caller asked to see (``includefield``);
    `include_all` is ``includefield=all``.
    """

    level: QidoLevelValues
    study_uid: str | None = None
    series_uid: str | None = None
    matches: list[Match] = msgspec.field(default_factory=list)
    includefields: list[str] = msgspec.field(default_factory=list)
    include_all: bool = False
    fuzzy: bool = False
    limit: int = 100
    offset: int = 0


class QidoRequest(msgspec.Struct, frozen=True, kw_only=True):
    """What the gateway asks the index: a query, who asks, and the public base URL.

    `base_url` is the DICOMweb root as the caller sees it (e.g. ``https://host/dicomweb``); when
    set, results carry a RetrieveURL under it.
    """

    query: QidoQuery
    actor: Actor
    base_url: str | None = None


class QidoResponse(msgspec.Struct, frozen=True, kw_only=True):
    """The index's answer.

    `body` is the ``application/dicom+json`` array (``b"[]"`` when nothing matched); `count`
    is the number of results in it; `has_more` tells that at least one more result follows
    this page (the gateway may add a ``Warning: 299`` header); `reason` explains a non-200
    `status` and is safe to show to the caller.
    """

    status: int
    body: bytes = b"[]"
    count: int = 0
    reason: str | None = None
    has_more: bool = False
    # Why a professional sees each returned study that their structure did not produce:
    # study UID -> audit access basis (``care_relationship``, ``share_code``,
    # ``break_the_glass``); studies not listed are seen on the caller's default basis.
    access: dict[str, str] = msgspec.field(default_factory=dict)


# --- WADO-RS: where the instances of a study, series or instance are (svc.index.locate) ---


class LocateRequest(msgspec.Struct, frozen=True, kw_only=True):
    """Which stored instances the gateway wants to read, and who asks.

    `series_uid` narrows to one series, `sop_instance_uid` (with `series_uid`) to one instance.
    The index applies the caller's access rule in the same statement: what the caller may not
    see is answered exactly as what does not exist.
    """

    actor: Actor
    study_uid: str
    series_uid: str | None = None
    sop_instance_uid: str | None = None


class LocatedInstance(msgspec.Struct, frozen=True, kw_only=True):
    """Where one instance's original bytes are and what a reader needs to know about them.

    `pixel_data_offset` is the file offset of the Pixel Data element's tag (None without pixel
    data, or for deflated files).
    """

    study_uid: str
    series_uid: str
    sop_instance_uid: str
    sop_class_uid: str
    transfer_syntax_uid: str
    object_key: str
    sha256: str
    size: int
    number_of_frames: int | None = None
    rows: int | None = None
    columns: int | None = None
    bits_allocated: int | None = None
    photometric_interpretation: str | None = None
    pixel_data_offset: int | None = None
    # Why the caller sees it when a grant opens it (care_relationship, share_code,
    # break_the_glass); None when the caller's role says it (own structure, patient, admin).
    access_basis: str | None = None


class LocateResponse(msgspec.Struct, frozen=True, kw_only=True):
    """The index's answer: 200 with the instances in series then instance order, or 404."""

    status: int
    instances: list[LocatedInstance] = msgspec.field(default_factory=list)
    reason: str | None = None

"""Transcode request/reply contracts, v1. Additive changes only: new fields get defaults.

The gateway asks for an instance in another transfer syntax on ``SVC_TRANSCODE_INSTANCE``;
the transcode worker writes the result as a derived object (claim check: bytes never ride the
bus) and answers with its key. The derived object is kept, so the next request is a lookup.

With ``inline`` (added later), a result made by this very request rides the reply when it fits
(the reply body is the Part 10 bytes, the `TranscodeResponse` is in the ``Krypton-Transcode``
header) and the derived object is written after the reply: the first reader does not wait for
the durable write nor read the object back. Without a header the body is the JSON response.
"""

from __future__ import annotations

import msgspec

__all__ = ["INLINE_HEADER", "INLINE_MAX_BYTES", "TranscodeRequest", "TranscodeResponse"]

#: The reply header carrying the JSON `TranscodeResponse` of an inline reply.
INLINE_HEADER = "Krypton-Transcode"
#: Largest result sent inline (the bus's max payload is 8 MiB); bigger ones go by the store.
INLINE_MAX_BYTES = 6 * 1024 * 1024


class TranscodeRequest(msgspec.Struct, frozen=True, kw_only=True):
    """Make `object_key` (one stored instance) available in `transfer_syntax_uid`."""

    object_key: str
    study_uid: str
    series_uid: str
    sop_instance_uid: str
    transfer_syntax_uid: str
    # Added later: the original's syntax, so the worker can start from the precomputed HTJ2K
    # copy when decoding the original would be slower (JPEG 2000 and other codecs).
    source_transfer_syntax_uid: str | None = None
    # Added later: answer with the bytes themselves when they were just made (see module doc).
    inline: bool = False


class TranscodeResponse(msgspec.Struct, frozen=True, kw_only=True):
    """200 with the derived object's key and size; 404 (source missing), 406 (cannot produce).

    `pixel_data_offset` is the file offset of the derived object's Pixel Data element tag, so
    that frames can be read from it by range.
    """

    status: int
    object_key: str | None = None
    size: int = 0
    pixel_data_offset: int | None = None
    reason: str | None = None

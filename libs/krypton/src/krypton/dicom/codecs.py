"""Transfer syntaxes as WADO-RS sees them: what can be decoded, produced, and under which media type.

Pure tables and small functions, no codec imports: the gateway negotiates with them without
loading pixel codecs; `krypton.dicom.pixels` does the decoding and encoding.

Frame media types follow PS3.18 Table 8.7.3-5 (the first syntax of each media type is its
default); `application/octet-stream` is uncompressed frames (Explicit VR Little Endian).
"""

from __future__ import annotations

from typing import Final

from pydicom.uid import (
    HTJ2K,
    JPEG2000,
    JPEG2000MC,
    UID,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    HTJ2KLossless,
    HTJ2KLosslessRPCL,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEG2000MCLossless,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    JPEGLossless,
    JPEGLosslessSV1,
    JPEGLSLossless,
    JPEGLSNearLossless,
    RLELossless,
)

__all__ = [
    "DECODABLE",
    "ENCODABLE",
    "FRAME_MEDIA_TYPES",
    "LOSSLESS_ENCODABLE",
    "NATIVE",
    "OCTET_STREAM",
    "can_encode",
    "can_produce",
    "default_syntax_for_media_type",
    "frame_media_type",
    "is_native",
    "media_type_accepts_syntax",
]

OCTET_STREAM: Final = "application/octet-stream"

#: Uncompressed (native) transfer syntaxes: pixel data is a plain array in the file.
NATIVE: Final = frozenset(
    {
        ImplicitVRLittleEndian,
        ExplicitVRLittleEndian,
        ExplicitVRBigEndian,
        DeflatedExplicitVRLittleEndian,
    }
)

#: Syntaxes whose pixel data pydicom decodes with pylibjpeg (-libjpeg, -openjpeg, -rle).
DECODABLE: Final = NATIVE | frozenset(
    {
        RLELossless,
        JPEGBaseline8Bit,
        JPEGExtended12Bit,
        JPEGLossless,
        JPEGLosslessSV1,
        JPEGLSLossless,
        JPEGLSNearLossless,
        JPEG2000Lossless,
        JPEG2000,
        HTJ2KLossless,
        HTJ2KLosslessRPCL,
        HTJ2K,
    }
)

#: Syntaxes the transcode service writes. Explicit VR Little Endian is the one every
#: client must accept (PS3.18 8.7.3.5.2); the lossless codecs take 8- and 16-bit samples
#: JPEG baseline 8-bit unsigned samples only (`can_encode`).
ENCODABLE: Final = frozenset(
    {
        ExplicitVRLittleEndian,
        RLELossless,
        JPEGLSLossless,
        JPEG2000Lossless,
        HTJ2KLossless,
        JPEGBaseline8Bit,
    }
)

#: Encodable syntaxes that keep every sample value (pixel arrays equal after a round trip).
LOSSLESS_ENCODABLE: Final = ENCODABLE - {JPEGBaseline8Bit}

#: Media type → the transfer syntaxes a frame of that media type may be in (first = default).
FRAME_MEDIA_TYPES: Final[dict[str, tuple[UID, ...]]] = {
    OCTET_STREAM: (ExplicitVRLittleEndian,),
    "image/jpeg": (JPEGBaseline8Bit, JPEGExtended12Bit, JPEGLossless, JPEGLosslessSV1),
    "image/jls": (JPEGLSLossless, JPEGLSNearLossless),
    "image/jp2": (JPEG2000Lossless, JPEG2000),
    "image/jpx": (JPEG2000MCLossless, JPEG2000MC),
    "image/jphc": (HTJ2KLossless, HTJ2KLosslessRPCL, HTJ2K),
    "image/dicom-rle": (RLELossless,),
}


def is_native(transfer_syntax: str) -> bool:
    """Whether pixel data in `transfer_syntax` is uncompressed (frames are plain byte ranges)."""
    return UID(transfer_syntax) in NATIVE


def frame_media_type(transfer_syntax: str) -> str | None:
    """The media type a frame stored in `transfer_syntax` is served as, or None (unknown codec).

    Native syntaxes give ``application/octet-stream`` (frames are served little endian).
    """
    if is_native(transfer_syntax):
        return OCTET_STREAM
    for media_type, syntaxes in FRAME_MEDIA_TYPES.items():
        if transfer_syntax in syntaxes:
            return media_type
    return None


def default_syntax_for_media_type(media_type: str) -> UID | None:
    """The default transfer syntax of a frame media type, or None when it is not one."""
    syntaxes = FRAME_MEDIA_TYPES.get(media_type)
    return syntaxes[0] if syntaxes else None


def media_type_accepts_syntax(media_type: str, transfer_syntax: str) -> bool:
    """Whether a frame of `media_type` may carry `transfer_syntax`."""
    return transfer_syntax in FRAME_MEDIA_TYPES.get(media_type, ())


def can_encode(wanted: str, bits_allocated: int | None, samples: int | None = None) -> bool:
    """Whether frames of `bits_allocated`-bit samples can be written in `wanted`.

    Unknown sizes (None) are assumed encodable: the transcode worker checks the data set itself
    and answers 406 when it cannot. 1-bit and floating point data only go to Explicit VR Little
    Endian; the lossless encoders take 8 or 16 bits (pydicom's RLE encoder no more), JPEG
    baseline 8 bits with one or three samples.
    """
    uid = UID(wanted)
    if uid not in ENCODABLE:
        return False
    if uid == ExplicitVRLittleEndian or bits_allocated is None:
        return True
    if uid == JPEGBaseline8Bit:
        return bits_allocated == 8 and samples in (None, 1, 3)
    return bits_allocated in (8, 16)


def can_produce(
    stored: str, wanted: str, bits_allocated: int | None = None, samples: int | None = None
) -> bool:
    """Whether an instance stored in `stored` can be served in `wanted`.

    The original syntax always can; otherwise the stored pixels must decode and the wanted
    syntax must be one the transcode service writes for samples of `bits_allocated` bits.
    """
    if wanted == stored:
        return True
    return UID(stored) in DECODABLE and can_encode(wanted, bits_allocated, samples)

"""Pixel decoding and transcoding with pydicom and the pylibjpeg plugins.

Everything here is CPU-bound and synchronous: services call it through a worker thread.
Decoding is pydicom's (so that "equal to pydicom's decode" holds by construction), except
native little-endian grey frames given as bytes, which are read straight from the buffer
with pydicom's own unused-bit correction (tested equal on pydicom's test files); what this
module adds is the re-encoding of a whole instance to Explicit VR Little Endian, which pydicom
has no single call for when the source is big endian or deflated, and to the compressed syntaxes
of `krypton.dicom.codecs.ENCODABLE`: RLE through pydicom (pylibjpeg-rle), JPEG-LS, JPEG 2000 and
HTJ2K lossless through imagecodecs (CharLS, OpenJPEG, OpenJPH), JPEG baseline through
simplejpeg (libjpeg-turbo).

HTJ2K frames decode through imagecodecs' OpenJPH when it is installed (registered here as a
pydicom decoder plugin): 1.6 ms for a 512x512 16-bit frame against 3.1 ms with OpenJPEG.
JPEG-LS decodes through CharLS and RLE Lossless through imagecodecs' PackBits the same way:
the GIL is released while they run. pylibjpeg-rle is as fast on one thread, but it holds the
GIL for the whole frame; the event loop beside it then waited up to 5 ms, against 1.2 ms.
"""

from __future__ import annotations

import io
import itertools
from pathlib import Path
from typing import Any, Final

import imagecodecs
import numpy as np
import pydicom
import pydicom.config
import simplejpeg
from numpy.typing import NDArray
from pydicom.dataset import Dataset, FileDataset
from pydicom.encaps import encapsulate
from pydicom.filewriter import dcmwrite
from pydicom.pixels.decoders import (  # type: ignore[attr-defined]
    HTJ2KDecoder,
    HTJ2KLosslessDecoder,
    HTJ2KLosslessRPCLDecoder,
    JPEGLSLosslessDecoder,
    JPEGLSNearLosslessDecoder,
    RLELosslessDecoder,
)
from pydicom.pixels.decoders.base import DecodeRunner
from pydicom.pixels.decoders.rle import _rle_parse_header
from pydicom.pixels.utils import pack_bits, pixel_array
from pydicom.uid import (
    UID,
    ExplicitVRLittleEndian,
    HTJ2KLossless,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGLSLossless,
    JPEGLSNearLossless,
    RLELossless,
)

from krypton.dicom.codecs import DECODABLE, ENCODABLE, NATIVE, can_encode

__all__ = [
    "DECODER_DEPENDENCIES",
    "RLE_WITHOUT_GIL",
    "DecodeError",
    "decode_frame",
    "decode_htj2k_frame",
    "decode_jpegls_frame",
    "frame_count",
    "is_available",
    "native_frame_length",
    "read_dataset",
    "to_explicit_le",
    "transcode",
]

_PIXEL_KEYWORDS: Final = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")
_IMAGECODECS_PLUGIN: Final = "krypton-imagecodecs"
_JPEG_QUALITY: Final = 90

#: pydicom decoder plugin protocol: what the imagecodecs plugin needs (HTJ2K through OpenJPH,
#: JPEG-LS through CharLS: 6 ms instead of 23 ms per 512x512 16-bit frame with pylibjpeg).
DECODER_DEPENDENCIES: Final = dict.fromkeys(
    (
        HTJ2KLossless,
        UID("1.2.840.10008.1.2.4.202"),
        UID("1.2.840.10008.1.2.4.203"),
        JPEGLSLossless,
        JPEGLSNearLossless,
        RLELossless,
    ),
    ("imagecodecs>=2024.1.1",),
)
_JPEGLS: Final = frozenset({JPEGLSLossless, JPEGLSNearLossless})
_NATIVE_LE: Final = frozenset({ExplicitVRLittleEndian, ImplicitVRLittleEndian})
_PIXEL_DATA_TAG: Final = b"\xe0\x7f\x10\x00"


class DecodeError(ValueError):
    """The pixel data cannot be decoded (unsupported syntax, corrupt or truncated data)."""


def is_available(uid: str) -> bool:
    """Pydicom decoder plugin protocol: whether imagecodecs can decode `uid` here."""
    if uid in _JPEGLS:
        return bool(imagecodecs.JPEGLS.available)
    if uid == RLELossless:
        return bool(imagecodecs.PACKBITS.available)
    return bool(imagecodecs.HTJ2K.available)


def decode_rle_frame(src: bytes, runner: DecodeRunner) -> bytearray:
    """Pydicom decoder plugin: one RLE Lossless frame, its segments unpacked by imagecodecs.

    The same bytes as pydicom's own RLE decoder (PS3.5 Annex G; planar configuration 1,
    little-endian samples), but each segment's PackBits runs are expanded in C with the GIL
    released, where pylibjpeg-rle holds it for the whole frame (4 ms for a 512x512 16-bit
    slice) and pydicom's own decoder loops in Python.
    """
    rows, columns = runner.rows, runner.columns
    samples, bits = runner.samples_per_pixel, runner.bits_allocated
    if bits % 8:
        msg = f"cannot decode RLE data of {bits} bits allocated"
        raise NotImplementedError(msg)
    offsets = _rle_parse_header(src[:64])
    width = bits // 8
    if len(offsets) != samples * width:
        msg = f"{len(offsets)} RLE segments where {samples * width} were expected"
        raise ValueError(msg)
    offsets.append(len(src))
    pixels = rows * columns
    planes = np.zeros((samples, pixels, width), dtype=np.uint8)
    little = runner.get_option("rle_segment_order", ">") == "<"  # non-conformant data
    for index, (start, end) in enumerate(itertools.pairwise(offsets)):
        segment = imagecodecs.packbits_decode(src[start:end])
        if len(segment) < pixels:
            msg = f"an RLE segment decodes to {len(segment)} bytes, {pixels} expected"
            raise ValueError(msg)
        sample, byte = divmod(index, width)
        # Segments run from the most significant byte: little endian puts it last.
        position = byte if little else width - 1 - byte
        planes[sample, :, position] = np.frombuffer(segment, np.uint8, count=pixels)
    runner.set_option("planar_configuration", 1)
    return bytearray(planes.tobytes())


def decode_htj2k_frame(src: bytes, runner: DecodeRunner) -> bytearray:
    """Pydicom decoder plugin: one HTJ2K codestream decoded by OpenJPH (interleaved samples)."""
    return bytearray(imagecodecs.htj2k_decode(src, planar=False).tobytes())


def decode_jpegls_frame(src: bytes, runner: DecodeRunner) -> bytearray:
    """Pydicom decoder plugin: one JPEG-LS codestream decoded by CharLS (interleaved samples)."""
    return bytearray(imagecodecs.jpegls_decode(src).tobytes())


def _register_plugin(decoders: tuple[Any, ...], function: str, uid: UID) -> bool:
    if not is_available(uid):
        return False
    for decoder in decoders:
        if _IMAGECODECS_PLUGIN not in decoder.available_plugins:
            decoder.add_plugin(_IMAGECODECS_PLUGIN, (__name__, function))
    return True


def _register_htj2k_plugin() -> bool:
    return _register_plugin(
        (HTJ2KLosslessDecoder, HTJ2KLosslessRPCLDecoder, HTJ2KDecoder),
        "decode_htj2k_frame",
        HTJ2KLossless,
    )


_FAST_HTJ2K: Final = _register_htj2k_plugin()
_FAST_JPEGLS: Final = _register_plugin(
    (JPEGLSLosslessDecoder, JPEGLSNearLosslessDecoder), "decode_jpegls_frame", JPEGLSLossless
)
#: RLE Lossless frames decode with the GIL released (`decode_rle_frame`, imagecodecs PackBits).
RLE_WITHOUT_GIL: Final = _register_plugin((RLELosslessDecoder,), "decode_rle_frame", RLELossless)


def read_dataset(source: bytes | Path, *, pixels: bool = True) -> FileDataset:
    """Read a Part 10 file with pydicom (without its pixel data when `pixels` is False)."""
    fp = io.BytesIO(source) if isinstance(source, bytes) else source
    return pydicom.dcmread(fp, stop_before_pixels=not pixels)


def frame_count(ds: Dataset) -> int:
    """Number of frames (1 when Number of Frames is absent or not a positive integer)."""
    try:
        frames = int(ds.get("NumberOfFrames") or 1)
    except (TypeError, ValueError):
        return 1
    return max(frames, 1)


def native_frame_length(rows: int, columns: int, samples: int, bits_allocated: int) -> int:
    """Bytes of one native frame (bits for 1-bit data are counted by the caller)."""
    return rows * columns * samples * (bits_allocated // 8)


def decode_frame(source: bytes | Path, index: int) -> tuple[NDArray[np.generic], FileDataset]:
    """Decode frame `index` (0-based) exactly as pydicom does, and return it with the data set.

    Colour data in YBR is converted to RGB (pydicom's default), so the array and the data set
    may disagree on Photometric Interpretation; callers look at the array's shape.

    Raises:
        DecodeError: the syntax is not decodable, the frame does not exist, or decoding failed.
    """
    fp: io.BytesIO | Path
    pixels_at = -1
    if isinstance(source, bytes):
        fp = buffer = io.BytesIO(source)
        ds = pydicom.dcmread(buffer, stop_before_pixels=True)
        pixels_at = buffer.tell()  # pydicom stops on the Pixel Data tag
    else:
        fp, ds = source, read_dataset(source, pixels=False)
    syntax = UID(ds.file_meta.get("TransferSyntaxUID", ""))
    if syntax not in DECODABLE:
        msg = f"cannot decode transfer syntax {syntax}"
        raise DecodeError(msg)
    if index < 0 or index >= frame_count(ds):
        msg = f"frame {index + 1} does not exist"
        raise DecodeError(msg)
    if isinstance(source, bytes) and syntax in _NATIVE_LE:
        fast = _native_monochrome_frame(source, pixels_at, ds, index, syntax.is_implicit_VR)
        if fast is not None:
            return fast, ds
    if isinstance(fp, io.BytesIO):
        fp.seek(0)
    plugin = _plugin_for(syntax)
    try:
        arr = pixel_array(fp, index=index, decoding_plugin=plugin)
    except Exception as exc:  # every codec plugin fails in its own way
        msg = f"cannot decode frame {index + 1}: {exc}"
        raise DecodeError(msg[:300]) from exc
    return arr, ds


def _native_monochrome_frame(
    data: bytes, at: int, ds: Dataset, index: int, implicit: bool
) -> NDArray[np.generic] | None:
    """Frame `index` of native little-endian grey pixels, read straight from `data`, or None.

    What pydicom's `pixel_array` returns for these (the same dtype, and the unused high bits
    corrected the same way: shifted out, sign-extended for signed pixels), without its second
    parse of the header and its decoder set-up: ~0.5 ms of a ~2 ms rendering. Anything else
    (colour, 1 or 32 bits, float pixels, odd lengths) is None: pydicom's path decodes it.
    """
    try:
        rows, columns = int(ds.Rows), int(ds.Columns)
        allocated, stored = int(ds.BitsAllocated), int(ds.get("BitsStored") or ds.BitsAllocated)
        signed = int(ds.get("PixelRepresentation") or 0) == 1
        samples = int(ds.get("SamplesPerPixel") or 1)
    except (AttributeError, TypeError, ValueError):
        return None
    if samples != 1 or allocated not in (8, 16) or not 1 <= stored <= allocated:
        return None
    if rows < 1 or columns < 1 or data[at : at + 4] != _PIXEL_DATA_TAG:
        return None
    if implicit:
        length, start = int.from_bytes(data[at + 4 : at + 8], "little"), at + 8
    elif data[at + 4 : at + 6] in (b"OW", b"OB"):
        length, start = int.from_bytes(data[at + 8 : at + 12], "little"), at + 12
    else:
        return None
    size = native_frame_length(rows, columns, 1, allocated)
    if length == 0xFFFFFFFF or (index + 1) * size > length or start + length > len(data):
        return None
    dtype = np.dtype(f"<{'i' if signed else 'u'}{allocated // 8}")
    arr = np.frombuffer(data, dtype=dtype, count=rows * columns, offset=start + index * size)
    arr = arr.reshape(rows, columns).copy()  # writeable, as pydicom's
    if stored < allocated:
        shift = allocated - stored
        np.left_shift(arr, shift, out=arr)
        np.right_shift(arr, shift, out=arr)
    return arr


def _plugin_for(syntax: UID) -> str:
    """The decoding plugin to ask pydicom for: imagecodecs where it is faster, else its choice."""
    if syntax == RLELossless:
        fast = RLE_WITHOUT_GIL
    else:
        fast = _FAST_JPEGLS if syntax in _JPEGLS else _FAST_HTJ2K
    return _IMAGECODECS_PLUGIN if fast and syntax in DECODER_DEPENDENCIES else ""


def to_explicit_le(source: bytes | Path) -> bytes:
    """Return the instance re-encoded in Explicit VR Little Endian, pixels uncompressed.

    Compressed pixel data is decoded by pydicom (YBR colour becomes RGB, Photometric
    Interpretation updated accordingly); big endian pixel data is byte-swapped; other native
    syntaxes keep their pixel bytes as they are.

    Raises:
        DecodeError: the pixel data cannot be decoded.
    """
    out = io.BytesIO()
    dcmwrite(out, _native(source), implicit_vr=False, little_endian=True, enforce_file_format=True)
    return out.getvalue()


def _native(source: bytes | Path) -> FileDataset:
    """The instance as an Explicit VR Little Endian data set with native (decoded) pixels."""
    ds = read_dataset(source)
    syntax = UID(ds.file_meta.get("TransferSyntaxUID", ""))
    if syntax not in DECODABLE:
        msg = f"cannot decode transfer syntax {syntax}"
        raise DecodeError(msg)
    has_pixels = any(k in ds for k in _PIXEL_KEYWORDS)
    try:
        if has_pixels and syntax not in NATIVE:
            # The same fast plugin as `decode_frame` (JPEG-LS: CharLS, 4x pylibjpeg-libjpeg).
            ds.decompress(
                as_rgb=True, generate_instance_uid=False, decoding_plugin=_plugin_for(syntax)
            )
        elif has_pixels and not syntax.is_little_endian and "PixelData" in ds:
            _swap_pixel_data(ds)
    except DecodeError:
        raise
    except Exception as exc:
        msg = f"cannot decode pixel data: {exc}"
        raise DecodeError(msg[:300]) from exc
    # A fresh data set of converted elements: pydicom refuses to re-encode a data set read
    # big endian (or read implicit VR despite an explicit syntax) as it was read.
    fresh = Dataset()
    for element in ds:
        fresh.add(element)
    fresh.file_meta = ds.file_meta
    fresh.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    fresh.preamble = ds.preamble
    return FileDataset(
        "", fresh, preamble=ds.preamble, file_meta=ds.file_meta, is_implicit_VR=False,
        is_little_endian=True,
    )  # fmt: skip


def transcode(source: bytes | Path, wanted: str) -> bytes:
    """Return the instance re-encoded in transfer syntax `wanted` (one of `codecs.ENCODABLE`).

    Pixels are decoded by pydicom first (colour becomes RGB), then each frame is encoded. The
    lossless syntaxes keep every sample; JPEG baseline (8-bit only) marks the result lossy.
    Instances without pixel data just change syntax.

    Raises:
        DecodeError: the pixel data cannot be decoded, or cannot be written in `wanted`.
    """
    uid = UID(wanted)
    if uid == ExplicitVRLittleEndian:
        return to_explicit_le(source)
    if uid not in ENCODABLE:
        msg = f"cannot encode transfer syntax {wanted}"
        raise DecodeError(msg)
    ds = _native(source)
    if "PixelData" in ds:
        _compress(ds, uid)
    elif any(k in ds for k in _PIXEL_KEYWORDS):
        msg = f"floating point pixel data cannot be written in {wanted}"
        raise DecodeError(msg)
    ds.file_meta.TransferSyntaxUID = uid
    out = io.BytesIO()
    dcmwrite(out, ds, implicit_vr=False, little_endian=True, enforce_file_format=True)
    return out.getvalue()


def _compress(ds: FileDataset, uid: UID) -> None:
    bits = int(ds.get("BitsAllocated") or 0)
    samples = int(ds.get("SamplesPerPixel") or 1)
    photometric = str(ds.get("PhotometricInterpretation", "")).upper()
    if not can_encode(uid, bits, samples) or (
        uid == JPEGBaseline8Bit
        and (int(ds.get("PixelRepresentation") or 0) or photometric == "PALETTE COLOR")
    ):
        msg = f"{bits}-bit {photometric or 'pixel'} data cannot be written in {uid.name}"
        raise DecodeError(msg)
    try:
        arr = ds.pixel_array  # native little endian: YBR is converted to RGB here
        if samples == 3:
            ds.PhotometricInterpretation = "RGB"
            ds.PlanarConfiguration = 0
        if uid == RLELossless:
            ds.compress(RLELossless, arr, generate_instance_uid=False)
            return
        frames = [arr] if frame_count(ds) == 1 else list(arr)
        encoded = [_encode_frame(frame, uid, ds) for frame in frames]
    except DecodeError:
        raise
    except Exception as exc:  # codec libraries fail in their own ways
        msg = f"cannot encode pixel data in {uid.name}: {exc}"
        raise DecodeError(msg[:300]) from exc
    ds.PixelData = encapsulate(encoded, has_bot=len(encoded) > 1)
    ds["PixelData"].VR = "OB"
    ds["PixelData"].is_undefined_length = True
    if uid == JPEGBaseline8Bit:
        if samples == 3:
            ds.PhotometricInterpretation = "YBR_FULL_422"
        ds.LossyImageCompression = "01"
        ds.LossyImageCompressionMethod = "ISO_10918_1"


def _encode_frame(frame: NDArray[np.generic], uid: UID, ds: Dataset) -> bytes:
    if uid == JPEGBaseline8Bit:
        image = frame if frame.ndim == 3 else frame[:, :, np.newaxis]
        return bytes(
            simplejpeg.encode_jpeg(
                np.ascontiguousarray(image, dtype=np.uint8),
                _JPEG_QUALITY,
                colorspace="RGB" if frame.ndim == 3 else "GRAY",
                colorsubsampling="422",
            )
        )
    data = np.ascontiguousarray(frame)
    if uid == JPEGLSLossless:
        # JPEG-LS has no signed samples: the two's complement bits are coded as unsigned at
        # the full precision, and pydicom's JPEG-LS sign correction restores the values.
        if data.dtype.kind == "i":
            data = data.view(data.dtype.str.replace("i", "u"))
        return bytes(imagecodecs.jpegls_encode(data, level=0))
    if uid == JPEG2000Lossless:
        # No multiple-component transform: the data set stays RGB (MCT would need YBR_RCT).
        return bytes(
            imagecodecs.jpeg2k_encode(data, level=0, reversible=True, mct=False, codecformat="J2K")
        )
    if uid == HTJ2KLossless:
        return bytes(imagecodecs.htj2k_encode(data, reversible=True, rgb=False))
    msg = f"cannot encode transfer syntax {uid}"
    raise DecodeError(msg)


def _swap_pixel_data(ds: FileDataset) -> None:
    """Turn big endian native Pixel Data into little endian (OW for > 8 bits, OB otherwise)."""
    bits = int(ds.BitsAllocated)
    arr = ds.pixel_array
    if bits == 1:
        data = pack_bits(arr)
    else:
        data = np.ascontiguousarray(arr.astype(arr.dtype.newbyteorder("<"))).tobytes()
    if len(data) % 2:
        data += b"\0"
    ds.PixelData = data
    ds["PixelData"].VR = "OW" if bits > 8 else "OB"
    if "PlanarConfiguration" in ds:
        ds.PlanarConfiguration = 0  # pixel_array interleaves the samples

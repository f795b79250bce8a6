"""Pixel decoding and transcoding with pydicom and the pylibjpeg plugins.

Everything here is CPU-bound and synchronous: services call it through a worker thread.
Decoding is pydicom's (so that "equal to pydicom's decode" holds by construction); what this
module adds is the re-encoding of a whole instance to Explicit VR Little Endian, which pydicom
has no single call for when the source is big endian or deflated.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Final

import numpy as np
import pydicom
import pydicom.config
from numpy.typing import NDArray
from pydicom.dataset import Dataset, FileDataset
from pydicom.filewriter import dcmwrite
from pydicom.pixels.utils import pack_bits, pixel_array
from pydicom.uid import UID, ExplicitVRLittleEndian

from krypton.dicom.codecs import DECODABLE, NATIVE

__all__ = [
    "DecodeError",
    "decode_frame",
    "frame_count",
    "native_frame_length",
    "read_dataset",
    "to_explicit_le",
]

_PIXEL_KEYWORDS: Final = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")


class DecodeError(ValueError):
    """The pixel data cannot be decoded (unsupported syntax, corrupt or truncated data)."""


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
    ds = read_dataset(source, pixels=False)
    syntax = UID(ds.file_meta.get("TransferSyntaxUID", ""))
    if syntax not in DECODABLE:
        msg = f"cannot decode transfer syntax {syntax}"
        raise DecodeError(msg)
    if index < 0 or index >= frame_count(ds):
        msg = f"frame {index + 1} does not exist"
        raise DecodeError(msg)
    fp = io.BytesIO(source) if isinstance(source, bytes) else source
    try:
        arr = pixel_array(fp, index=index)
    except Exception as exc:  # every codec plugin fails in its own way
        msg = f"cannot decode frame {index + 1}: {exc}"
        raise DecodeError(msg[:300]) from exc
    return arr, ds


def to_explicit_le(source: bytes | Path) -> bytes:
    """Return the instance re-encoded in Explicit VR Little Endian, pixels uncompressed.

    Compressed pixel data is decoded by pydicom (YBR colour becomes RGB, Photometric
    Interpretation updated accordingly); big endian pixel data is byte-swapped; other native
    syntaxes keep their pixel bytes as they are.

    Raises:
        DecodeError: the pixel data cannot be decoded.
    """
    ds = read_dataset(source)
    syntax = UID(ds.file_meta.get("TransferSyntaxUID", ""))
    if syntax not in DECODABLE:
        msg = f"cannot decode transfer syntax {syntax}"
        raise DecodeError(msg)
    has_pixels = any(k in ds for k in _PIXEL_KEYWORDS)
    try:
        if has_pixels and syntax not in NATIVE:
            ds.decompress(as_rgb=True, generate_instance_uid=False)
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
    out = io.BytesIO()
    dcmwrite(out, fresh, implicit_vr=False, little_endian=True, enforce_file_format=True)
    return out.getvalue()


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

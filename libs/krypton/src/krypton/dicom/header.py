"""Read the header of a DICOM Part 10 file without ever touching its pixels.

`read_header` parses the preamble, the File Meta Information and the data set up to the Pixel
Data element, and records where that element sits in the file so that frames can later be read
by offset without parsing again. Anything that is not a complete, understandable Part 10 file
becomes a `DicomRejection` with a precise reason: pydicom is lenient by design (it warns and
returns what it could read), ingest must not be.

We drive pydicom's `read_dataset` rather than `dcmread` because we need three things `dcmread`
does not give: the exact offsets of the data set and the Pixel Data element, a bound on the
bytes read for the header (a hostile file must not make us read gigabytes), and a bounded
inflate for the Deflated transfer syntax (`dcmread` inflates the whole remainder in one go).
"""

from __future__ import annotations

import dataclasses
import io
import os
import struct
import warnings
import zlib
from dataclasses import dataclass
from typing import BinaryIO, Final, NoReturn

from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset, FileDataset, FileMetaDataset
from pydicom.filereader import read_dataset
from pydicom.tag import BaseTag
from pydicom.uid import UID, PrivateTransferSyntaxes
from pydicom.valuerep import EXPLICIT_VR_LENGTH_32

from krypton.dicom.errors import DicomRejection, FailureReasonValues

__all__ = [
    "DEFAULT_DEFER_SIZE",
    "DEFAULT_MAX_HEADER_BYTES",
    "PIXEL_DATA_TAGS",
    "Header",
    "PixelDataLocation",
    "read_header",
]

DEFAULT_MAX_HEADER_BYTES: Final = 64 * 1024 * 1024
DEFAULT_DEFER_SIZE: Final = 64 * 1024

# Pixel Data, Float Pixel Data, Double Float Pixel Data: the three elements pydicom's
# `stop_before_pixels` stops at, and the three whose bytes we never read.
PIXEL_DATA_TAGS: Final = frozenset({0x7FE00010, 0x7FE00008, 0x7FE00009})

_PREAMBLE_LENGTH: Final = 128
_ITEM_TAG: Final = 0xFFFEE000
_SEQUENCE_DELIMITER_TAG: Final = 0xFFFEE0DD
_UNDEFINED_LENGTH: Final = 0xFFFFFFFF
_INFLATE_CHUNK: Final = 1024 * 1024
# Transfer syntaxes whose data set (everything after the file meta) is deflated, PS3.5 A.5;
# pydicom's `UID.is_deflated` only knows the first one.
_DEFLATED_KEYWORDS: Final = frozenset(
    {"DeflatedExplicitVRLittleEndian", "JPIPReferencedDeflate", "JPIPHTJ2KReferencedDeflate"}
)
_REASON_MAX: Final = 300
_TAIL_ELEMENTS: Final = 10_000  # elements after the pixel data walked at most


@dataclass(frozen=True, slots=True, kw_only=True)
class PixelDataLocation:
    """Where the pixel data element of a file sits, in file offsets.

    Attributes:
        tag: (7FE0,0010) Pixel Data, (7FE0,0008) Float or (7FE0,0009) Double Float Pixel Data.
        vr: the VR as encoded (explicit VR), or the dictionary VR for implicit VR files.
        offset: offset of the element's first byte (its tag) in the file.
        value_offset: offset of the element's value (after tag, VR and length).
        length: value length in bytes, or None for encapsulated (undefined length) data.
        items: for encapsulated data, `(value_offset, length)` of each item in file order, the
            first being the Basic Offset Table (often empty); empty for native data.
    """

    tag: int
    vr: str
    offset: int
    value_offset: int
    length: int | None
    items: tuple[tuple[int, int], ...] = ()


@dataclass(frozen=True, slots=True, kw_only=True)
class Header:
    """The parsed header of a Part 10 file.

    Attributes:
        dataset: the data set without its pixel data element; `dataset.file_meta` holds the
            File Meta Information. Values larger than the defer size are read back from the
            source on access, so keep a stream source open while using it (bytes always are).
        transfer_syntax_uid: the transfer syntax of the data set, from the file meta.
        header_length: bytes of the file before the pixel data element (preamble, file meta and
            data set), or the whole file when there is no pixel data or it is deflated.
        size: size of the file in bytes.
        has_pixel_data: whether the data set has a (Float/Double Float) Pixel Data element.
        pixel_data: where that element is in the file; None without pixel data and for
            deflated data sets (their offsets do not exist in the file).
        notes: non-fatal oddities met while reading (pydicom warnings, leniencies).
    """

    dataset: FileDataset
    transfer_syntax_uid: UID
    header_length: int
    size: int
    has_pixel_data: bool
    pixel_data: PixelDataLocation | None
    notes: tuple[str, ...] = ()

    @property
    def pixel_data_offset(self) -> int | None:
        """File offset of the pixel data element's tag, or None."""
        return None if self.pixel_data is None else self.pixel_data.offset


class _HeaderTooLargeError(Exception):
    """Raised inside the bounded reader; turned into an OUT_OF_RESOURCES rejection."""


class _BoundedReader:
    """A read/seek/tell view of a stream that refuses to read past a bound and records short reads.

    pydicom stops quietly when a read comes back short (it treats that as the end of the
    data set), so truncation has to be observed here.
    """

    def __init__(self, fp: BinaryIO, limit: int) -> None:
        self._fp = fp
        self._limit = limit
        self.partial_reads = 0  # reads that returned some but not all of the bytes asked for
        self.empty_reads = 0  # reads of n > 0 bytes that returned nothing (at or past EOF)
        self.name = "<upload>"

    def read(self, size: int = -1) -> bytes:
        position = self._fp.tell()
        if size < 0:
            size = self._limit - position + 1
        if position + size > self._limit:
            raise _HeaderTooLargeError
        data = self._fp.read(size)
        if size > 0:
            if not data:
                self.empty_reads += 1
            elif len(data) < size:
                self.partial_reads += 1
        return data

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        return self._fp.seek(offset, whence)

    def tell(self) -> int:
        return self._fp.tell()


def read_header(
    source: bytes | bytearray | memoryview | BinaryIO,
    *,
    max_header_bytes: int = DEFAULT_MAX_HEADER_BYTES,
    defer_size: int = DEFAULT_DEFER_SIZE,
) -> Header:
    """Parse the header of a DICOM Part 10 file, never reading its pixel data.

    Args:
        source: the whole file as bytes, or a seekable binary stream positioned at its start
            (offsets in the result are counted from that position).
        max_header_bytes: the most bytes of the file (or of the inflated data set) that the
            header may span; beyond, the file is refused as OUT_OF_RESOURCES.
        defer_size: values longer than this are not loaded (read back on access), so that a
            large private blob costs no memory.

    Returns:
        The header, with the pixel data location.

    Raises:
        DicomRejection: CANNOT_UNDERSTAND (not Part 10, no transfer syntax, truncated,
            unparsable), TRANSFER_SYNTAX_NOT_SUPPORTED, OUT_OF_RESOURCES (header too large).
        TypeError: `source` is a stream that cannot seek (a caller's error, not the file's).
    """
    fp: BinaryIO
    if isinstance(source, bytes | bytearray | memoryview):
        fp = io.BytesIO(bytes(source) if not isinstance(source, bytes) else source)
    else:
        fp = source
        if not fp.seekable():
            msg = "read_header needs a seekable stream"
            raise TypeError(msg)
    origin = fp.tell()
    size = fp.seek(0, os.SEEK_END) - origin
    fp.seek(origin)

    readers: list[_BoundedReader] = []
    with warnings.catch_warnings(record=True) as caught:
        # pydicom reports what it tolerated through warnings; keep them as notes instead of
        # letting a warnings filter (pytest's "error") turn them into random exceptions.
        warnings.simplefilter("always")
        try:
            header = _read(fp, origin, size, max_header_bytes, defer_size, readers)
        except DicomRejection:
            raise
        except _HeaderTooLargeError as exc:
            reason = f"header larger than {max_header_bytes} bytes"
            raise DicomRejection(FailureReasonValues.OUT_OF_RESOURCES, reason) from exc
        except MemoryError as exc:
            reason = "not enough memory to read the header"
            raise DicomRejection(FailureReasonValues.OUT_OF_RESOURCES, reason) from exc
        except Exception as exc:  # the boundary: no pydicom/struct/zlib error escapes as such
            # A parse that ran out of bytes fails in many ways (struct.error, OSError "No tag to
            # read", ValueError); the short reads tell us it was a truncation.
            truncated = any(r.partial_reads or r.empty_reads for r in readers)
            prefix = "truncated header" if truncated else "unparsable header"
            raise DicomRejection(
                FailureReasonValues.CANNOT_UNDERSTAND, _describe(prefix, exc)
            ) from exc
    notes = tuple(dict.fromkeys(str(w.message) for w in caught))
    return dataclasses.replace(header, notes=header.notes + notes) if notes else header


def _read(
    fp: BinaryIO,
    origin: int,
    size: int,
    limit: int,
    defer_size: int,
    readers: list[_BoundedReader],
) -> Header:
    """Parse `fp`; see `read_header`. Offsets inside are absolute positions in `fp`."""
    reader = _BoundedReader(fp, origin + limit)
    readers.append(reader)
    preamble = reader.read(_PREAMBLE_LENGTH)
    prefix = reader.read(4)
    if len(preamble) < _PREAMBLE_LENGTH or len(prefix) < 4:
        _reject_cannot_understand(
            "not a DICOM Part 10 file: shorter than the 128-byte preamble and DICM prefix"
        )
    if prefix != b"DICM":
        _reject_cannot_understand("not a DICOM Part 10 file: no DICM prefix")

    file_meta, dataset_start = _read_file_meta(reader)
    if dataset_start - origin >= size:
        # Checked before the transfer syntax: a file cut inside its file meta (at an element
        # boundary) would otherwise be reported as lacking a transfer syntax.
        _reject_cannot_understand("truncated header: nothing after the file meta information")
    transfer_syntax = _transfer_syntax(file_meta)
    is_implicit_vr = transfer_syntax.is_implicit_VR
    is_little_endian = transfer_syntax.is_little_endian

    notes: list[str] = []
    if transfer_syntax.keyword in _DEFLATED_KEYWORDS:
        fp.seek(dataset_start)
        inflated, complete = _inflate(fp, limit)
        buffer: BinaryIO = io.BytesIO(inflated)
        data_reader = _BoundedReader(buffer, len(inflated) if complete else limit)
        readers.append(data_reader)
        dataset = _read_dataset(data_reader, is_implicit_vr, is_little_endian, defer_size)
        is_implicit_vr, is_little_endian = _encoding(dataset, is_implicit_vr, is_little_endian)
        end = data_reader.tell()
        location = _locate_pixel_data(
            buffer, end, len(inflated), is_implicit_vr, is_little_endian, complete
        )
        if location is None:
            if not complete:
                raise _HeaderTooLargeError
            _check_complete(data_reader, dataset, end, len(inflated))
        elif data_reader.partial_reads or data_reader.empty_reads:
            _reject_cannot_understand("truncated header")
        has_pixel_data = location is not None
        if has_pixel_data:
            notes.append("deflated data set: the pixel data has no offset in the file")
        header_length = size
        location = None
    else:
        buffer = fp
        dataset = _read_dataset(reader, is_implicit_vr, is_little_endian, defer_size)
        is_implicit_vr, is_little_endian = _encoding(dataset, is_implicit_vr, is_little_endian)
        end = reader.tell()
        location = _locate_pixel_data(fp, end, origin + size, is_implicit_vr, is_little_endian)
        if location is None:
            _check_complete(reader, dataset, end, origin + size)
        elif reader.partial_reads or reader.empty_reads:
            _reject_cannot_understand("truncated header")
        elif location.length is not None:
            _check_tail(
                fp,
                location.value_offset + location.length,
                origin + size,
                is_implicit_vr,
                is_little_endian,
            )
        has_pixel_data = location is not None
        header_length = (location.offset if location else end) - origin
        if location is not None and origin:
            location = _shift(location, -origin)

    file_dataset = FileDataset(
        buffer,
        dataset,
        preamble=preamble,
        file_meta=file_meta,
        is_implicit_VR=is_implicit_vr,
        is_little_endian=is_little_endian,
    )
    return Header(
        dataset=file_dataset,
        transfer_syntax_uid=transfer_syntax,
        header_length=header_length,
        size=size,
        has_pixel_data=has_pixel_data,
        pixel_data=location,
        notes=tuple(notes),
    )


def _read_file_meta(reader: _BoundedReader) -> tuple[FileMetaDataset, int]:
    """Read the group 0002 elements that follow the DICM prefix; return them and the end offset."""
    start = reader.tell()
    meta = read_dataset(
        reader,  # type: ignore[arg-type]  # duck-typed stream, all pydicom needs
        is_implicit_VR=False,
        is_little_endian=True,
        stop_when=lambda tag, vr, length: tag >> 16 != 0x0002,
    )
    end = reader.tell()
    if reader.partial_reads:
        _reject_cannot_understand("truncated header: the file meta information is incomplete")
    if end == start or len(meta) == 0:
        _reject_cannot_understand("no file meta information after the DICM prefix")
    for element in meta.iterall():  # convert now so that a broken value fails here
        if element.tag >> 16 != 0x0002:
            _reject_cannot_understand("malformed file meta information")
    return FileMetaDataset(meta), end


def _transfer_syntax(file_meta: FileMetaDataset) -> UID:
    """The transfer syntax of the data set, or a rejection when absent or unknown."""
    raw = file_meta.get("TransferSyntaxUID")
    value = str(raw).strip(" \0") if raw is not None else ""
    if not value:
        _reject_cannot_understand("no Transfer Syntax UID (0002,0010) in the file meta information")
    uid = UID(value)
    known = uid in PrivateTransferSyntaxes or (not uid.is_private and uid.is_transfer_syntax)
    if not known:
        raise DicomRejection(
            FailureReasonValues.TRANSFER_SYNTAX_NOT_SUPPORTED,
            f"transfer syntax {value[:64]} is not supported",
        )
    return uid


def _read_dataset(
    reader: _BoundedReader, is_implicit_vr: bool, is_little_endian: bool, defer_size: int
) -> Dataset:
    """Read the data set up to (not including) the pixel data element."""
    return read_dataset(
        reader,  # type: ignore[arg-type]  # duck-typed stream, all pydicom needs
        is_implicit_VR=is_implicit_vr,
        is_little_endian=is_little_endian,
        stop_when=_at_pixel_data,
        defer_size=defer_size,
    )


def _encoding(dataset: Dataset, is_implicit_vr: bool, is_little_endian: bool) -> tuple[bool, bool]:
    """The VR encoding pydicom actually used for the data set.

    pydicom detects a data set whose VR encoding contradicts its transfer syntax (and warns);
    the pixel data element must then be read the same way.
    """
    implicit, little = dataset.original_encoding
    return (
        is_implicit_vr if implicit is None else implicit,
        is_little_endian if little is None else little,
    )


def _at_pixel_data(tag: BaseTag, vr: str | None, length: int) -> bool:
    return int(tag) in PIXEL_DATA_TAGS


def _inflate(fp: BinaryIO, limit: int) -> tuple[bytes, bool]:
    """Inflate the data set of a deflated file, at most `limit` bytes of it.

    Returns:
        The inflated bytes and whether the deflate stream was complete (False when the bound
        cut it, in which case only a prefix of the data set is known).
    """
    inflater = zlib.decompressobj(-zlib.MAX_WBITS)
    out = bytearray()
    while len(out) < limit and not inflater.eof:
        data = inflater.unconsumed_tail or fp.read(_INFLATE_CHUNK)
        if not data:
            _reject_cannot_understand("truncated header: the deflated data set ends early")
        out += inflater.decompress(data, limit - len(out))
    if not inflater.eof and len(out) >= limit:
        return bytes(out), False
    return bytes(out), True


def _locate_pixel_data(
    fp: BinaryIO,
    position: int,
    end_of_file: int,
    is_implicit_vr: bool,
    is_little_endian: bool,
    check_extent: bool = True,
) -> PixelDataLocation | None:
    """Describe the pixel data element starting at `position`, or None if there is none there.

    Raises:
        DicomRejection: the element is cut short or its encapsulated items are malformed.
    """
    endian = "<" if is_little_endian else ">"
    fp.seek(position)
    head = fp.read(8)
    if len(head) < 4:
        return None
    group, element = struct.unpack(f"{endian}HH", head[:4])
    tag = group << 16 | element
    if tag not in PIXEL_DATA_TAGS:
        return None
    if len(head) < 8:
        _reject_cannot_understand("truncated pixel data element")
    if is_implicit_vr:
        vr = {0x7FE00010: "OW", 0x7FE00008: "OF", 0x7FE00009: "OD"}[tag]
        (length,) = struct.unpack(f"{endian}L", head[4:8])
        value_offset = position + 8
    elif not (b"AA" <= head[4:6] <= b"ZZ"):
        # Not a VR: the writer switched to implicit VR (pydicom's `assume_implicit_vr_switch`
        # reads the same way).
        vr = {0x7FE00010: "OW", 0x7FE00008: "OF", 0x7FE00009: "OD"}[tag]
        (length,) = struct.unpack(f"{endian}L", head[4:8])
        value_offset = position + 8
    else:
        vr = head[4:6].decode("ascii")
        if vr in EXPLICIT_VR_LENGTH_32:
            extra = fp.read(4)
            if len(extra) < 4:
                _reject_cannot_understand("truncated pixel data element")
            (length,) = struct.unpack(f"{endian}L", extra)
            value_offset = position + 12
        else:
            (length,) = struct.unpack(f"{endian}H", head[6:8])
            value_offset = position + 8
    if length != _UNDEFINED_LENGTH:
        if check_extent and value_offset + length > end_of_file:
            _reject_cannot_understand(
                f"truncated pixel data: {length} bytes declared, "
                f"{max(end_of_file - value_offset, 0)} present"
            )
        return PixelDataLocation(
            tag=tag, vr=vr, offset=position, value_offset=value_offset, length=length
        )
    items = _scan_items(fp, value_offset, end_of_file, endian) if check_extent else ()
    return PixelDataLocation(
        tag=tag, vr=vr, offset=position, value_offset=value_offset, length=None, items=items
    )


def _check_tail(
    fp: BinaryIO, position: int, end_of_file: int, is_implicit_vr: bool, is_little_endian: bool
) -> None:
    """Refuse a file whose elements after native pixel data are cut short.

    Only element headers are read (tag, VR, length), at most `_TAIL_ELEMENTS` of them; a
    sequence of undefined length ends the walk (its items would need a parse).

    Raises:
        DicomRejection: CANNOT_UNDERSTAND when an element runs past the end of the file.
    """
    endian = "<" if is_little_endian else ">"
    for _ in range(_TAIL_ELEMENTS):
        if position >= end_of_file:
            return
        fp.seek(position)
        head = fp.read(8)
        if len(head) < 8:
            _reject_cannot_understand("truncated data set after the pixel data")
        group, element = struct.unpack(f"{endian}HH", head[:4])
        if is_implicit_vr or group == 0xFFFE or not (b"AA" <= head[4:6] <= b"ZZ"):
            (length,) = struct.unpack(f"{endian}L", head[4:8])
            value_offset = position + 8
        elif head[4:6].decode("ascii") in EXPLICIT_VR_LENGTH_32:
            extra = fp.read(4)
            if len(extra) < 4:
                _reject_cannot_understand("truncated data set after the pixel data")
            (length,) = struct.unpack(f"{endian}L", extra)
            value_offset = position + 12
        else:
            (length,) = struct.unpack(f"{endian}H", head[6:8])
            value_offset = position + 8
        if length == _UNDEFINED_LENGTH:
            return
        if value_offset + length > end_of_file:
            _reject_cannot_understand(
                f"truncated data set after the pixel data: element ({group:04X},{element:04X})"
                f" declares {length} bytes, {max(end_of_file - value_offset, 0)} present"
            )
        position = value_offset + length


def _scan_items(
    fp: BinaryIO, position: int, end_of_file: int, endian: str
) -> tuple[tuple[int, int], ...]:
    """Walk the items of encapsulated pixel data (8-byte headers only) up to the delimiter."""
    items: list[tuple[int, int]] = []
    fp.seek(position)
    while True:
        head = fp.read(8)
        if len(head) < 8:
            _reject_cannot_understand("truncated pixel data: no sequence delimiter")
        group, element, length = struct.unpack(f"{endian}HHL", head)
        tag = group << 16 | element
        if tag == _SEQUENCE_DELIMITER_TAG:
            return tuple(items)
        if tag != _ITEM_TAG or length == _UNDEFINED_LENGTH:
            _reject_cannot_understand("malformed encapsulated pixel data")
        value_offset = position + 8
        if value_offset + length > end_of_file:
            _reject_cannot_understand("truncated pixel data: a fragment is cut short")
        items.append((value_offset, length))
        position = value_offset + length
        fp.seek(position)


def _check_complete(reader: _BoundedReader, dataset: Dataset, end: int, end_of_file: int) -> None:
    """Refuse a data set without pixel data that did not end cleanly at the end of the file.

    A complete file ends with exactly one empty read (pydicom asking for the next element);
    anything else means the parse stopped early (garbage) or the data ran out (truncation).
    """
    if reader.partial_reads or reader.empty_reads > 1 or end > end_of_file:
        _reject_cannot_understand("truncated header")
    if end < end_of_file:
        _reject_cannot_understand(f"unparsable data set: parsing stopped at byte {end}")
    for raw in _top_level_raw(dataset):
        declared = raw.length
        if declared == _UNDEFINED_LENGTH:
            continue
        if raw.value_tell + declared > end_of_file or (
            raw.value is not None and len(raw.value) != declared
        ):
            _reject_cannot_understand(f"truncated header: element {raw.tag} is cut short")


def _top_level_raw(dataset: Dataset) -> list[RawDataElement]:
    """The elements of `dataset` that pydicom has not converted yet (no value decoding)."""
    found: list[RawDataElement] = []
    for tag in list(dataset.keys()):
        # keep_deferred: do not load deferred values just to look at their lengths; pydicom
        # types get_item as returning DataElement only.
        element: object = dataset.get_item(tag, keep_deferred=True)
        if isinstance(element, RawDataElement):
            found.append(element)
    return found


def _shift(location: PixelDataLocation, delta: int) -> PixelDataLocation:
    return PixelDataLocation(
        tag=location.tag,
        vr=location.vr,
        offset=location.offset + delta,
        value_offset=location.value_offset + delta,
        length=location.length,
        items=tuple((offset + delta, length) for offset, length in location.items),
    )


def _reject_cannot_understand(reason: str) -> NoReturn:
    raise DicomRejection(FailureReasonValues.CANNOT_UNDERSTAND, reason)


def _describe(prefix: str, exc: BaseException) -> str:
    detail = str(exc).strip() or type(exc).__name__
    return f"{prefix}: {detail}"[:_REASON_MAX]

"""A fast path for the header of ordinary Part 10 files: only the elements ingest extracts.

`read_header` hands every element of the data set to pydicom, and `extract` then converts
about forty values through pydicom's keyword lookup and value conversion: together ~1-2 ms per
instance, the largest CPU cost of ingest. `read_quick` walks the element headers itself (tag,
VR, length: a few struct unpacks per element), keeps the raw bytes of the few dozen elements
`extract` reads (`EXTRACTED_KEYWORDS`) and decodes the plain ones itself (single-valued text in
ASCII, Latin-1 or UTF-8, UIDs, dates, times, IS and US numbers); anything else (sequences,
multiple values, other character sets, a VR other than the dictionary's) is converted by
pydicom from the same raw element, so pydicom stays the reference for every unusual value.

Written by hand (pydicom's own reader is what it replaces; no library walks a data set without
building an element object per element). It is only ever a shortcut to a *verdict of
acceptance*: whenever the file is anything but a plainly well-formed little-endian Part 10
file with pixel data (deflated, big endian, implicit/explicit VR mismatch, unknown VR,
truncated, an item delimiter at the top level, no pixel data, a malformed pixel data element
or anything after it), `read_quick` returns None and the caller uses `read_header`, which
gives the precise rejection. Tests hold it to the same result as `read_header` + `extract` on
every pydicom test file, the synthetic CT instances and damaged variants of them
(`libs/krypton/tests/dicom/test_quick.py`). What it does not reproduce: pydicom's validation
warnings (a value longer than its VR allows...), which `extract` would add to its notes.
"""

from __future__ import annotations

import io
import re
import struct
from dataclasses import dataclass
from typing import Any, Final

from pydicom.datadict import dictionary_VR, tag_for_keyword
from pydicom.dataelem import DataElement, RawDataElement
from pydicom.dataset import Dataset
from pydicom.tag import BaseTag
from pydicom.uid import UID
from pydicom.valuerep import EXPLICIT_VR_LENGTH_32, VR

from krypton.dicom.errors import DicomRejection
from krypton.dicom.header import (
    DEFAULT_MAX_HEADER_BYTES,
    PIXEL_DATA_TAGS,
    PixelDataLocation,
    _check_tail,
    _locate_pixel_data,
)

__all__ = ["EXTRACTED_KEYWORDS", "FILE_META_KEYWORDS", "QuickHeader", "QuickValues", "read_quick"]

# Every keyword `extract` (and `resolve_identity`) reads from the top-level data set; a keyword
# missing here is a KeyError in `QuickValues`, so tests catch a forgotten one.
EXTRACTED_KEYWORDS: Final = (
    "SpecificCharacterSet",
    "SOPClassUID",
    "SOPInstanceUID",
    "StudyInstanceUID",
    "SeriesInstanceUID",
    "StudyDate",
    "SeriesDate",
    "ContentDate",
    "StudyTime",
    "SeriesTime",
    "ContentTime",
    "AccessionNumber",
    "Modality",
    "Manufacturer",
    "InstitutionName",
    "ReferringPhysicianName",
    "TimezoneOffsetFromUTC",
    "StationName",
    "StudyDescription",
    "SeriesDescription",
    "PatientName",
    "PatientID",
    "IssuerOfPatientID",
    "IssuerOfPatientIDQualifiersSequence",
    "PatientBirthDate",
    "PatientSex",
    "OtherPatientIDsSequence",
    "BodyPartExamined",
    "PerformedProcedureStepStartDate",
    "PerformedProcedureStepStartTime",
    "StudyID",
    "SeriesNumber",
    "InstanceNumber",
    "NumberOfFrames",
    "SamplesPerPixel",
    "PhotometricInterpretation",
    "Rows",
    "Columns",
    "BitsAllocated",
)
FILE_META_KEYWORDS: Final = (
    "MediaStorageSOPClassUID",
    "MediaStorageSOPInstanceUID",
    "TransferSyntaxUID",
)


def _table(keywords: tuple[str, ...]) -> dict[str, tuple[int, str]]:
    out: dict[str, tuple[int, str]] = {}
    for keyword in keywords:
        tag = tag_for_keyword(keyword)
        assert tag is not None, keyword
        out[keyword] = (tag, dictionary_VR(tag))
    return out


_TOP: Final = _table(EXTRACTED_KEYWORDS)
_META: Final = _table(FILE_META_KEYWORDS)
_TOP_TAGS: Final = frozenset(tag for tag, _ in _TOP.values())
_META_TAGS: Final = frozenset(tag for tag, _ in _META.values())
_CHARSET_TAG: Final = 0x00080005

_PREAMBLE: Final = 128
_UNDEFINED: Final = 0xFFFFFFFF
_ITEM: Final = 0xFFFEE000
_ITEM_END: Final = 0xFFFEE00D
_SEQUENCE_END: Final = 0xFFFEE0DD
_MAX_DEPTH: Final = 32
_MAX_HEADER: Final = DEFAULT_MAX_HEADER_BYTES  # beyond, the full reader refuses the file
_VRS: Final = frozenset(vr.value.encode("ascii") for vr in VR)
_LONG: Final = frozenset(vr.encode("ascii") for vr in EXPLICIT_VR_LENGTH_32)
_HH: Final = struct.Struct("<HH")
_L: Final = struct.Struct("<L")
_H: Final = struct.Struct("<H")
_HHL: Final = struct.Struct("<HHL")
_BINARY_SIZES: Final = {
    b"UL": 4, b"SL": 4, b"US": 2, b"SS": 2, b"FL": 4, b"FD": 8, b"AT": 4,
}  # fmt: skip
# Character sets whose text we decode here (none = the default repertoire); pydicom decodes the
# text of any other.
_CODECS: Final = {"ISO_IR 100": "latin_1", "ISO_IR 192": "utf_8"}
_TEXT_VRS: Final = frozenset({"SH", "LO", "PN", "UC"})
_ASCII_VRS: Final = frozenset({"UI", "CS", "DA", "TM", "AS", "AE"})
_ESC: Final = b"\x1b"
_UID: Final = re.compile(r"[0-9]+(?:\.[0-9]+)*")
_SLOW: Final = object()  # "let pydicom convert this element"
# An element found by the walk: VR as encoded (None for implicit VR), value bytes, value offset.
_Found = tuple[str | None, bytes, int]


class _UnsupportedError(Exception):
    """Not a file for the fast path: the caller falls back to `read_header`."""


class _Value:
    """The one attribute `krypton.dicom._values.element_value` reads from a data element."""

    __slots__ = ("value",)

    def __init__(self, value: Any) -> None:
        self.value = value


class QuickValues:
    """The collected elements of a data set, answering `extract`'s lookups by keyword.

    Duck-types the two members of a pydicom `Dataset` that `extract` uses: `keyword in values`
    and `values.data_element(keyword)`.
    """

    __slots__ = ("_codec", "_dataset", "_implicit", "_raw", "_table", "file_meta")

    def __init__(
        self,
        raw: dict[int, _Found],
        table: dict[str, tuple[int, str]],
        *,
        implicit: bool = False,
        file_meta: QuickValues | None = None,
    ) -> None:
        """Wrap `raw` (tag -> element found) for the keywords of `table`."""
        self._raw = raw
        self._table = table
        self._implicit = implicit
        self._dataset: Dataset | None = None
        self.file_meta = file_meta
        charset = raw.get(_CHARSET_TAG)
        self._codec: str | None = "ascii"
        if charset is not None and charset[1]:
            # Stripped as pydicom does (trailing only): " ISO_IR 192" is not ours to guess.
            name = charset[1].decode("latin_1").rstrip(" \0")
            self._codec = _CODECS.get(name) if name else "ascii"

    def __contains__(self, keyword: str) -> bool:
        """Whether the element named `keyword` is present (possibly empty)."""
        return self._table[keyword][0] in self._raw

    def data_element(self, keyword: str) -> _Value | DataElement | None:
        """The element named `keyword` (None when absent), its value decoded."""
        tag, vr = self._table[keyword]
        raw = self._raw.get(tag)
        if raw is None:
            return None
        value = self._decode(raw, vr)
        if value is _SLOW:
            return self._pydicom().data_element(keyword)
        return _Value(value)

    def _decode(self, raw: _Found, vr: str) -> Any:
        """The value as pydicom would give it, or `_SLOW` when pydicom must say."""
        if raw[0] is not None and vr != raw[0]:
            return _SLOW
        data = raw[1]
        if vr == "US":
            return _H.unpack(data)[0] if len(data) == 2 else _SLOW
        if not data:
            return "" if vr in _TEXT_VRS or vr in _ASCII_VRS or vr == "IS" else _SLOW
        if vr in _TEXT_VRS:
            if self._codec is None or _ESC in data:
                # Another character set, or an escape sequence (which pydicom interprets
                # whatever the character set): ISO 2022 text such as JIS X 0208 is made of
                # bytes below 0x80, so even ASCII is pydicom's to decode then.
                return _SLOW
            if data.isascii():
                text = data.decode("ascii")
            elif self._codec == "ascii":
                return _SLOW
            else:
                try:
                    text = data.decode(self._codec)
                except UnicodeDecodeError:
                    return _SLOW
        elif vr in _ASCII_VRS or vr == "IS":
            if not data.isascii():
                return _SLOW
            text = data.decode("ascii")
        else:
            return _SLOW
        if "\\" in text:
            return _SLOW  # several values: pydicom's MultiValue
        value = text.rstrip(" \0")
        if vr == "IS":
            stripped = value.strip(" ")
            digits = stripped[1:] if stripped[:1] in ("+", "-") else stripped
            if not stripped:
                return ""
            if not (digits.isascii() and digits.isdigit()):
                return _SLOW
            return int(stripped)
        if vr == "PN" and "=" in value:
            return _SLOW  # component groups: PersonName renders them itself
        return value

    def _pydicom(self) -> Dataset:
        """A pydicom data set of the collected raw elements, for the values it must convert."""
        if self._dataset is None:
            self._dataset = Dataset(
                {
                    BaseTag(tag): RawDataElement(
                        BaseTag(tag), vr, len(value), value, offset, self._implicit, True
                    )
                    for tag, (vr, value, offset) in self._raw.items()
                }
            )
        return self._dataset


@dataclass(frozen=True, slots=True, kw_only=True)
class QuickHeader:
    """What `extract` needs of a header, read by the fast path (see `krypton.dicom.header.Header`).

    Attributes:
        dataset: the collected elements; `dataset.file_meta` holds the file meta's.
        transfer_syntax_uid: the transfer syntax of the data set.
        has_pixel_data: always True (files without pixel data take the full path).
        pixel_data: where the pixel data element is.
        notes: always empty (pydicom's warnings are not reproduced).
    """

    dataset: QuickValues
    transfer_syntax_uid: UID
    pixel_data: PixelDataLocation
    has_pixel_data: bool = True
    notes: tuple[str, ...] = ()

    @property
    def pixel_data_offset(self) -> int:
        """File offset of the pixel data element's tag."""
        return self.pixel_data.offset


def read_quick(data: bytes) -> QuickHeader | None:
    """Read an ordinary Part 10 file's header by the fast path, or None to use `read_header`.

    Args:
        data: the whole file.

    Returns:
        The header, or None when the file needs the full reader (which may accept it too).
    """
    try:
        return _read(data)
    except (_UnsupportedError, DicomRejection, struct.error, UnicodeDecodeError, ValueError):
        return None


def _read(data: bytes) -> QuickHeader:
    end = len(data)
    if end < _PREAMBLE + 4 or data[_PREAMBLE : _PREAMBLE + 4] != b"DICM":
        raise _UnsupportedError
    meta_raw: dict[int, _Found] = {}
    position = _read_file_meta(data, _PREAMBLE + 4, end, meta_raw)
    file_meta = QuickValues(meta_raw, _META)
    found = meta_raw.get(_META["TransferSyntaxUID"][0])
    syntax = found[1].decode("latin_1").rstrip(" \0") if found is not None else ""
    if found is None or found[0] != "UI" or not _UID.fullmatch(syntax):
        raise _UnsupportedError  # (UID() would warn about an invalid value)
    uid = UID(syntax)
    if (
        uid.is_private
        or not uid.is_transfer_syntax
        or not uid.is_little_endian
        or uid.is_deflated
        or uid.keyword.startswith(("JPIP", "Deflated"))
    ):
        raise _UnsupportedError
    implicit = uid.is_implicit_VR
    if position + 6 > end:
        raise _UnsupportedError
    # pydicom switches encoding when the first element contradicts the transfer syntax.
    looks_explicit = 0x40 < data[position + 4] < 0x5B and 0x40 < data[position + 5] < 0x5B
    if looks_explicit == implicit:
        raise _UnsupportedError
    raw: dict[int, _Found] = {}
    pixels = _walk(data, position, end, implicit, raw)
    location = _locate_pixel_data(io.BytesIO(data), pixels, end, implicit, True)
    if location is None:
        raise _UnsupportedError
    if location.length is not None:
        _check_tail(io.BytesIO(data), location.value_offset + location.length, end, implicit, True)
    return QuickHeader(
        dataset=QuickValues(raw, _TOP, implicit=implicit, file_meta=file_meta),
        transfer_syntax_uid=uid,
        pixel_data=location,
    )


def _read_file_meta(data: bytes, position: int, end: int, out: dict[int, _Found]) -> int:
    """Collect the group 0002 elements (explicit VR little endian); return where they end."""
    count = 0
    while position + 8 <= end:
        group, element = _HH.unpack_from(data, position)
        if group != 0x0002:
            break
        vr = data[position + 4 : position + 6]
        if vr not in _VRS:
            raise _UnsupportedError
        if vr in _LONG:
            (length,) = _L.unpack_from(data, position + 8)
            start = position + 12
        else:
            (length,) = _H.unpack_from(data, position + 6)
            start = position + 8
        size = _BINARY_SIZES.get(vr)
        # The full reader converts every file meta value: a binary one of the wrong length
        # fails there, so it must not pass here.
        if length == _UNDEFINED or start + length > end or (size and length % size):
            raise _UnsupportedError
        tag = group << 16 | element
        if tag in _META_TAGS:
            out[tag] = (vr.decode("ascii"), data[start : start + length], start)
        position = start + length
        count += 1
    if not count:
        raise _UnsupportedError
    return position


def _walk(data: bytes, position: int, end: int, implicit: bool, out: dict[int, _Found]) -> int:
    """Walk the top-level data set up to the pixel data element; return that element's offset.

    Like pydicom's reader, a sequence of defined length is skipped unread (its items are parsed
    only if its value is asked for), while one of undefined length is parsed to find its end.
    """
    while True:
        if position + 8 > end or position > _MAX_HEADER:
            raise _UnsupportedError  # no pixel data, cut short or huge: the full reader decides
        group, element = _HH.unpack_from(data, position)
        tag = group << 16 | element
        if tag in PIXEL_DATA_TAGS:
            return position
        if group == 0xFFFE:
            raise _UnsupportedError
        vr, length, start = _element_head(data, position, end, implicit)
        if length == _UNDEFINED:
            _check_sequence(tag, vr)
            stop = _skip_sequence(data, start, end, implicit, 0)
            after = stop + 8
            length = stop - start
        else:
            after = start + length
            if after > end:
                raise _UnsupportedError
        if tag in _TOP_TAGS:
            out[tag] = (vr, data[start : start + length], start)
        position = after


def _element_head(
    data: bytes, position: int, end: int, implicit: bool
) -> tuple[str | None, int, int]:
    """VR (None for implicit VR), value length and value offset of the element at `position`."""
    if implicit:
        return None, _L.unpack_from(data, position + 4)[0], position + 8
    vr = data[position + 4 : position + 6]
    if vr not in _VRS:
        raise _UnsupportedError  # pydicom would guess (implicit switch, unknown VR)
    if vr in _LONG:
        if position + 12 > end:
            raise _UnsupportedError
        return vr.decode("ascii"), _L.unpack_from(data, position + 8)[0], position + 12
    return vr.decode("ascii"), _H.unpack_from(data, position + 6)[0], position + 8


def _check_sequence(tag: int, vr: str | None) -> None:
    """Only a sequence may have an undefined length here (pydicom reads other cases its way)."""
    if vr is None:
        try:
            vr = dictionary_VR(tag)
        except KeyError:
            raise _UnsupportedError from None
    if vr != "SQ":
        raise _UnsupportedError


def _skip_sequence(data: bytes, position: int, end: int, implicit: bool, depth: int) -> int:
    """Offset of the delimiter ending the undefined-length sequence whose items start here.

    Every item is walked (as pydicom parses them): an element that overruns its item, an
    unknown VR or a stray delimiter sends the file to the full reader.
    """
    if depth > _MAX_DEPTH:
        raise _UnsupportedError
    while True:
        if position + 8 > end:
            raise _UnsupportedError
        group, element, length = _HHL.unpack_from(data, position)
        tag = group << 16 | element
        if tag == _SEQUENCE_END:
            return position
        if tag != _ITEM:
            raise _UnsupportedError
        if length == _UNDEFINED:
            position = _walk_item(data, position + 8, None, end, implicit, depth + 1)
        else:
            item_end = position + 8 + length
            if item_end > end:
                raise _UnsupportedError
            position = _walk_item(data, position + 8, item_end, end, implicit, depth + 1)


def _walk_item(
    data: bytes, position: int, item_end: int | None, end: int, implicit: bool, depth: int
) -> int:
    """Walk one item's elements; return the offset after it (after its delimiter if any)."""
    limit = end if item_end is None else item_end
    while True:
        if position == item_end:
            return position
        if position + 8 > limit:
            raise _UnsupportedError
        group, element = _HH.unpack_from(data, position)
        tag = group << 16 | element
        if tag == _ITEM_END and item_end is None:
            return position + 8
        if group == 0xFFFE:
            raise _UnsupportedError
        vr, length, start = _element_head(data, position, limit, implicit)
        if length == _UNDEFINED:
            _check_sequence(tag, vr)
            position = _skip_sequence(data, start, limit, implicit, depth) + 8
        else:
            position = start + length
            if position > limit:
                raise _UnsupportedError

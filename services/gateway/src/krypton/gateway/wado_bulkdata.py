"""WADO-RS bulk data (PS3.18 8.4.1.3): the values metadata points at with a BulkDataURI.

``.../bulkdata/7FE00010`` is the Pixel Data value: streamed by range straight from the stored
object when it is native little endian, else from the Explicit VR Little Endian copy the
transcode service makes (bulk data is served uncompressed, ``application/octet-stream``).
Other paths (``GGGGEEEE`` or ``GGGGEEEE/<item>/GGGGEEEE...`` into sequences) are values in the
header, found by parsing the bytes before the pixel data.

One ``Range: bytes=`` range is honoured (206 with ``Content-Range``; 416 when unsatisfiable);
several ranges are answered whole (200), which RFC 9110 allows.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final

from pydicom.dataset import Dataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.tag import Tag
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian

from krypton.contracts.index.v1 import LocatedInstance
from krypton.dicom.header import read_header
from krypton.gateway.context import GatewayContext
from krypton.gateway.wado_frames import pixel_value
from krypton.gateway.wado_services import WadoError, transcode

__all__ = ["BulkValue", "ByteRange", "locate_value", "parse_range"]

_PIXEL_DATA: Final = "7FE00010"
_UNDEFINED: Final = 0xFFFFFFFF
_TAG: Final = re.compile(r"^[0-9A-Fa-f]{8}$")
_RANGE: Final = re.compile(r"^bytes=(\d*)-(\d*)$")


@dataclass(frozen=True, slots=True)
class BulkValue:
    """Where a bulk value is: `length` bytes at `offset` of object `key`, or in `data`."""

    length: int
    key: str | None = None
    offset: int = 0
    data: bytes | None = None


@dataclass(frozen=True, slots=True)
class ByteRange:
    """A satisfiable range: `length` bytes from `start` (of a value of `total` bytes)."""

    start: int
    length: int
    total: int

    @property
    def content_range(self) -> str:
        """The ``Content-Range`` header value."""
        return f"bytes {self.start}-{self.start + self.length - 1}/{self.total}"


def parse_range(header: str | None, total: int) -> ByteRange | None:
    """The single byte range asked for, or None to answer the whole value.

    Raises:
        WadoError: 416 when the range lies outside the value.
    """
    if not header:
        return None
    match = _RANGE.match(header.strip().replace(" ", ""))
    if match is None:
        return None  # several ranges, or another unit: the whole value (RFC 9110 14.2)
    first, last = match.groups()
    if not first and not last:
        return None
    if not first:  # suffix: the last N bytes
        count = min(int(last), total)
        if count == 0:
            raise WadoError(416, "range not satisfiable")
        return ByteRange(total - count, count, total)
    start = int(first)
    end = min(int(last), total - 1) if last else total - 1
    if start >= total or end < start:
        raise WadoError(416, "range not satisfiable")
    return ByteRange(start, end - start + 1, total)


async def locate_value(ctx: GatewayContext, instance: LocatedInstance, path: str) -> BulkValue:
    """The bulk value at `path` of `instance`.

    Raises:
        WadoError: 404 when the path names no binary value of the instance.
    """
    parts = path.strip("/").split("/")
    if parts == [_PIXEL_DATA] or parts == [_PIXEL_DATA.lower()]:
        return await _pixel_data(ctx, instance)
    if len(parts) % 2 == 0 or not all(
        _TAG.match(p) if n % 2 == 0 else p.isdigit() for n, p in enumerate(parts)
    ):
        raise WadoError(404, "no such bulk data")
    end = instance.pixel_data_offset if instance.pixel_data_offset is not None else instance.size
    header = read_header(await ctx.store.read(instance.object_key, 0, end))
    value = _walk(header.dataset, parts)
    return BulkValue(length=len(value), data=value)


def _walk(ds: Dataset, parts: list[str]) -> bytes:
    node: Dataset = ds
    for n in range(0, len(parts) - 1, 2):
        item = node.get(Tag(int(parts[n], 16)))
        index = int(parts[n + 1])
        items = getattr(item, "value", None)
        if not isinstance(items, DicomSequence) or index >= len(items):
            raise WadoError(404, "no such bulk data")
        node = items[index]
    value = getattr(node.get(Tag(int(parts[-1], 16))), "value", None)
    if isinstance(value, bytes):
        return value
    if isinstance(value, str):
        return value.encode()
    raise WadoError(404, "no such bulk data")


async def _pixel_data(ctx: GatewayContext, instance: LocatedInstance) -> BulkValue:
    key, offset = instance.object_key, instance.pixel_data_offset
    if instance.transfer_syntax_uid in (ExplicitVRLittleEndian, ImplicitVRLittleEndian):
        if offset is None:
            raise WadoError(404, "the instance has no pixel data")
        start, length, _ = await pixel_value(ctx.store, key, offset)
        if length != _UNDEFINED:
            return BulkValue(length=length, key=key, offset=start)
    derived = await transcode(ctx, instance, ExplicitVRLittleEndian)
    if derived.object_key is None or derived.pixel_data_offset is None:
        raise WadoError(404, "the instance has no pixel data")
    start, length, _ = await pixel_value(ctx.store, derived.object_key, derived.pixel_data_offset)
    return BulkValue(length=length, key=derived.object_key, offset=start)

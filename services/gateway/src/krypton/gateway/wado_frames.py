"""Where each frame's bytes are in a stored instance, found with small ranged reads.

Native pixel data: frame *n* is a fixed-size byte range after the Pixel Data element header.
Encapsulated pixel data: the item headers are walked (8 bytes each, read in blocks), then
fragments are grouped into frames: all of them for one frame, one each when the counts agree,
else by the Basic Offset Table, else by where a codestream starts (JPEG SOI, JPEG 2000 SOC).
Layouts are kept in a small in-process LRU keyed by the content hash.
"""

from __future__ import annotations

import struct
from collections import OrderedDict
from dataclasses import dataclass
from typing import Final

import numpy as np

from krypton.gateway.wado_read import read
from krypton.storage.base import ObjectStore

__all__ = [
    "FrameLayout",
    "ImageShape",
    "frame_layout",
    "frame_range",
    "pixel_value",
    "read_frame",
]

_ITEM: Final = 0xFFFEE000
_DELIMITER: Final = 0xFFFEE0DD
_UNDEFINED: Final = 0xFFFFFFFF
_LONG_VRS: Final = frozenset({b"OB", b"OW", b"OF", b"OD", b"OL", b"OV", b"UN", b"UT", b"SQ"})
_BLOCK: Final = 64 * 1024
_STARTS: Final = (b"\xff\xd8", b"\xff\x4f")  # JPEG SOI, JPEG 2000 codestream SOC
_CACHE_SIZE: Final = 4096


@dataclass(frozen=True, slots=True)
class ImageShape:
    """What sizes a native frame (from the instance's metadata)."""

    rows: int
    columns: int
    samples: int
    bits_allocated: int
    frames: int


@dataclass(frozen=True, slots=True)
class FrameLayout:
    """Byte ranges of every frame: native `(offset, length)` or encapsulated fragment lists."""

    native: bool
    frames: tuple[tuple[tuple[int, int], ...], ...]
    bit_offsets: tuple[int, ...] = ()  # 1-bit native data: frame start in bits from `base`
    base: int = 0


_layouts: OrderedDict[str, FrameLayout] = OrderedDict()


async def _element_header(store: ObjectStore, key: str, offset: int) -> tuple[int, int, bool]:
    """(value offset, value length, little endian) of the Pixel Data element at `offset`."""
    head = await read(store, key, offset, 12)
    if len(head) < 8:
        msg = "pixel data element cut short"
        raise ValueError(msg)
    little = head[:4] == b"\xe0\x7f\x10\x00" or head[:2] == b"\xe0\x7f"
    endian = "<" if little else ">"
    if head[4:6] in _LONG_VRS:
        (length,) = struct.unpack(f"{endian}L", head[8:12])
        return offset + 12, length, little
    if b"AA" <= head[4:6] <= b"ZZ":
        (length,) = struct.unpack(f"{endian}H", head[6:8])
        return offset + 8, length, little
    (length,) = struct.unpack(f"{endian}L", head[4:8])  # implicit VR
    return offset + 8, length, little


async def pixel_value(store: ObjectStore, key: str, offset: int) -> tuple[int, int, bool]:
    """(value offset, value length, little endian) of the Pixel Data element at `offset`.

    The length is 0xFFFFFFFF for encapsulated (undefined length) pixel data.
    """
    return await _element_header(store, key, offset)


async def _items(store: ObjectStore, key: str, position: int, size: int) -> list[tuple[int, int]]:
    """`(value offset, length)` of each encapsulated item, the Basic Offset Table first."""
    items: list[tuple[int, int]] = []
    block_start, block = position, b""
    while position + 8 <= size:
        if not (block_start <= position and position + 8 <= block_start + len(block)):
            block_start, block = position, await read(store, key, position, _BLOCK)
        at = position - block_start
        tag_group, tag_element, length = struct.unpack("<HHL", block[at : at + 8])
        tag = tag_group << 16 | tag_element
        if tag == _DELIMITER:
            return items
        if tag != _ITEM or length == _UNDEFINED:
            msg = "malformed encapsulated pixel data"
            raise ValueError(msg)
        items.append((position + 8, length))
        position += 8 + length
    return items


async def _group(
    store: ObjectStore, key: str, items: list[tuple[int, int]], frames: int
) -> tuple[tuple[tuple[int, int], ...], ...]:
    bot, fragments = items[0], items[1:]
    if frames <= 1:
        return (tuple(fragments),)
    if len(fragments) == frames:
        return tuple((f,) for f in fragments)
    first_item = fragments[0][0] - 8 if fragments else 0
    if bot[1] >= 4 * frames:
        raw = await read(store, key, bot[0], bot[1])
        offsets = struct.unpack(f"<{bot[1] // 4}L", raw)
        starts = [first_item + o for o in offsets[:frames]] + [1 << 62]
        return tuple(
            tuple(f for f in fragments if starts[n] <= f[0] - 8 < starts[n + 1])
            for n in range(frames)
        )
    grouped: list[list[tuple[int, int]]] = []
    for fragment in fragments:
        lead = await read(store, key, fragment[0], 2)
        if lead in _STARTS or not grouped:
            grouped.append([fragment])
        else:
            grouped[-1].append(fragment)
    return tuple(tuple(g) for g in grouped)


async def frame_layout(
    store: ObjectStore, key: str, cache_id: str, pixel_offset: int, size: int, shape: ImageShape
) -> FrameLayout:
    """The frames of the object at `key` whose Pixel Data element starts at `pixel_offset`.

    Args:
        store: where the object is.
        key: its key.
        cache_id: identifies the content (its SHA-256 and key) for the layout cache.
        pixel_offset: file offset of the Pixel Data element's tag.
        size: the object's size.
        shape: rows, columns, samples, bits and frames from the metadata.

    Raises:
        ValueError: the pixel data is malformed.
    """
    cached = _layouts.get(cache_id)
    if cached is not None:
        _layouts.move_to_end(cache_id)
        return cached
    value_offset, length, _ = await _element_header(store, key, pixel_offset)
    if length == _UNDEFINED:
        items = await _items(store, key, value_offset, size)
        if not items:
            msg = "encapsulated pixel data without items"
            raise ValueError(msg)
        layout = FrameLayout(native=False, frames=await _group(store, key, items, shape.frames))
    elif shape.bits_allocated == 1:
        bits = shape.rows * shape.columns * shape.samples
        layout = FrameLayout(
            native=True,
            frames=(),
            bit_offsets=tuple(n * bits for n in range(shape.frames)),
            base=value_offset,
        )
    else:
        frame_bytes = shape.rows * shape.columns * shape.samples * (shape.bits_allocated // 8)
        layout = FrameLayout(
            native=True,
            frames=tuple(
                ((value_offset + n * frame_bytes, frame_bytes),) for n in range(shape.frames)
            ),
        )
    _layouts[cache_id] = layout
    while len(_layouts) > _CACHE_SIZE:
        _layouts.popitem(last=False)
    return layout


def _check_frame(layout: FrameLayout, number: int, shape: ImageShape) -> None:
    if number < 1 or number > max(shape.frames, len(layout.frames)):
        msg = f"frame {number} does not exist"
        raise IndexError(msg)


def frame_range(layout: FrameLayout, number: int, shape: ImageShape) -> tuple[tuple[int, int], ...]:
    """The `(offset, length)` byte ranges of frame `number` (1-based); empty when bit-packed.

    Raises:
        IndexError: there is no such frame.
    """
    _check_frame(layout, number, shape)
    if layout.bit_offsets:
        return ()
    if number > len(layout.frames):
        msg = f"frame {number} does not exist"
        raise IndexError(msg)
    return layout.frames[number - 1]


async def read_frame(
    store: ObjectStore, key: str, layout: FrameLayout, number: int, shape: ImageShape
) -> bytes:
    """The bytes of frame `number` (1-based): native samples, or the frame's codestream.

    Raises:
        IndexError: there is no such frame.
    """
    _check_frame(layout, number, shape)
    if layout.bit_offsets:
        bits = shape.rows * shape.columns * shape.samples
        start = layout.bit_offsets[number - 1]
        first, last = start // 8, (start + bits + 7) // 8
        raw = np.frombuffer(await read(store, key, layout.base + first, last - first), np.uint8)
        unpacked = np.unpackbits(raw, bitorder="little")[start % 8 : start % 8 + bits]
        return np.packbits(unpacked, bitorder="little").tobytes()
    if number > len(layout.frames):
        msg = f"frame {number} does not exist"
        raise IndexError(msg)
    parts = [await read(store, key, offset, length) for offset, length in layout.frames[number - 1]]
    return b"".join(parts)

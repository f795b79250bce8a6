"""Accept header parsing and WADO-RS media type negotiation (PS3.18 8.7).

An Accept header is a list of media ranges with parameters and q-values, e.g.
``multipart/related; type="application/dicom"; transfer-syntax=*, */*;q=0.1``. Ranges are
tried from the highest q to the lowest (ties in the order given); a range with ``q=0`` is
refused. ``multipart/related`` carries the part media type in its ``type`` parameter.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Final

__all__ = ["MediaRange", "parse_accept", "ranges_for_parts"]

_TOKEN: Final = r"[!#$%&'*+.^_`|~0-9A-Za-z/-]+"
_PARAM: Final = re.compile(rf'\s*;\s*({_TOKEN})\s*=\s*("(?:[^"\\]|\\.)*"|[^;,]*)')
_TYPE: Final = re.compile(rf"\s*({_TOKEN})")


@dataclass(frozen=True, slots=True)
class MediaRange:
    """One media range of an Accept header (type lower-cased, parameter names lower-cased)."""

    media_type: str
    params: dict[str, str] = field(default_factory=dict)
    q: float = 1.0

    @property
    def transfer_syntax(self) -> str | None:
        """The ``transfer-syntax`` parameter, or None."""
        return self.params.get("transfer-syntax")

    def matches(self, media_type: str) -> bool:
        """Whether this range covers `media_type` (``*/*`` and ``image/*`` are wildcards)."""
        if self.media_type in ("*/*", media_type):
            return True
        major, _, minor = self.media_type.partition("/")
        return minor == "*" and media_type.split("/", 1)[0] == major


def parse_accept(header: str | None) -> list[MediaRange]:
    """Parse an Accept header; absent or empty means ``*/*``.

    Returns:
        The acceptable ranges (q > 0) sorted by decreasing q, stable.

    Raises:
        ValueError: the header is not a list of media ranges.
    """
    if not header or not header.strip():
        return [MediaRange("*/*")]
    ranges: list[MediaRange] = []
    position = 0
    while position < len(header):
        match = _TYPE.match(header, position)
        if match is None or "/" not in match.group(1):
            msg = "malformed Accept header"
            raise ValueError(msg)
        media_type = match.group(1).lower()
        position = match.end()
        params: dict[str, str] = {}
        q = 1.0
        while (param := _PARAM.match(header, position)) is not None:
            name, raw = param.group(1).lower(), param.group(2).strip()
            if raw.startswith('"'):
                raw = re.sub(r"\\(.)", r"\1", raw[1:-1])
            if name == "q":
                try:
                    q = float(raw)
                except ValueError:
                    msg = f"malformed q-value {raw!r}"
                    raise ValueError(msg) from None
            else:
                params[name] = raw.strip()
            position = param.end()
        rest = header[position:].lstrip()
        if rest and not rest.startswith(","):
            msg = "malformed Accept header"
            raise ValueError(msg)
        position = len(header) - len(rest) + 1
        if q > 0:
            ranges.append(MediaRange(media_type, params, q))
    ranges.sort(key=lambda r: -r.q)
    return ranges


def ranges_for_parts(ranges: list[MediaRange]) -> list[MediaRange]:
    """Express each range as the media type of the parts it asks for.

    ``multipart/related; type=X; transfer-syntax=T`` becomes ``X; transfer-syntax=T``; a
    ``multipart/related`` without ``type``, ``multipart/*`` and ``*/*`` accept any part type
    (``*/*``). Single-part ranges are kept as they are (WADO-RS answers multipart to them when
    it can only answer multipart: the caller decides).
    """
    parts: list[MediaRange] = []
    for r in ranges:
        if r.media_type in ("multipart/related", "multipart/*"):
            part_type = r.params.get("type", "*/*").lower()
            params = {k: v for k, v in r.params.items() if k != "type"}
            parts.append(MediaRange(part_type, params, r.q))
        else:
            parts.append(r)
    return parts

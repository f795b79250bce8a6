"""Encoding of bus messages: msgspec JSON, one encoder per process."""

from __future__ import annotations

from typing import TypeVar

import msgspec

__all__ = ["decode", "encode"]

T = TypeVar("T")
_encoder = msgspec.json.Encoder()


def encode(obj: object) -> bytes:
    """Encode a contract struct (or plain data) as JSON bytes."""
    return _encoder.encode(obj)


def decode(data: bytes, type_: type[T]) -> T:
    """Decode JSON bytes into a contract type, validating it."""
    return msgspec.json.decode(data, type=type_)

"""Safe readers for data set values: a malformed optional value is a note, never a crash."""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, Protocol

from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.sequence import Sequence

__all__ = ["ValueSource", "collect_warnings", "element_value", "items", "text"]


class _Element(Protocol):
    @property
    def value(self) -> Any: ...


class ValueSource(Protocol):
    """What the readers below need of a data set.

    A pydicom `Dataset`, or the fast path's `krypton.dicom.quick.QuickValues`.
    """

    def __contains__(self, name: str, /) -> bool: ...

    def data_element(self, name: str, /) -> _Element | None: ...


_MISSING = object()


@contextmanager
def collect_warnings(notes: list[str]) -> Iterator[None]:
    """Turn the warnings pydicom raises while decoding values into notes.

    pydicom warns (rather than fails) on invalid values and undecodable characters; a warnings
    filter set to "error" (pytest's, or a strict deployment's) would otherwise turn any of
    them into an exception in the middle of extraction.
    """
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        yield
    for warning in caught:
        message = str(warning.message)
        if message not in notes:
            notes.append(message)


def element_value(ds: ValueSource, keyword: str, notes: list[str] | None = None) -> object:
    """The value of `keyword` in `ds`, or None when absent, empty or not decodable."""
    if keyword not in ds:
        return None
    try:
        element = ds.data_element(keyword)
    except Exception as exc:  # a value pydicom cannot decode is treated as absent
        if notes is not None:
            notes.append(f"{keyword} could not be decoded: {type(exc).__name__}")
        return None
    if element is None:
        return None
    return element.value


def text(ds: ValueSource, keyword: str, notes: list[str] | None = None) -> str | None:
    """The value of a string-like attribute as one stripped string, or None when empty.

    Multiple values are joined with a backslash, their DICOM encoding; person names give their
    DICOM string form (`Alphabetic=Ideographic=Phonetic`).
    """
    value = element_value(ds, keyword, notes)
    if value is None:
        return None
    if type(value) is str:  # the common case, without the isinstance checks below
        return value.strip(" \0") or None
    if isinstance(value, bytes):
        # A VR pydicom left as bytes (UN, OB) where text was expected: decode leniently.
        value = value.decode("latin-1")
    if isinstance(value, MultiValue | list):
        result = "\\".join(str(v) for v in value)
    else:
        result = str(value)
    result = result.strip(" \0")
    return result or None


def items(ds: ValueSource, keyword: str, notes: list[str] | None = None) -> list[Dataset]:
    """The items of a sequence attribute, an empty list when absent or unreadable."""
    value = element_value(ds, keyword, notes)
    if isinstance(value, Sequence):
        return list(value)
    return []

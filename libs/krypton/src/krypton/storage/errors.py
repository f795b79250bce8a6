"""Errors raised by the object stores."""

from __future__ import annotations

from krypton.core.errors import KryptonError, NotFoundError, ValidationError

__all__ = ["InvalidKey", "ObjectNotFound", "StorageUnavailable"]


class ObjectNotFound(NotFoundError):  # noqa: N818 - the name reads as the fact, like FileNotFoundError
    """No object is stored under `key`."""

    def __init__(self, key: str) -> None:
        self.key = key
        super().__init__(f"no object at {key!r}")


class StorageUnavailable(KryptonError):  # noqa: N818 - a state, not a programming error
    """The backend did not answer or refused to serve; retrying later may succeed."""

    def __init__(self, reason: str, *, backend: str) -> None:
        self.reason = reason
        self.backend = backend
        super().__init__(f"{backend} object store unavailable: {reason}")


class InvalidKey(ValidationError):  # noqa: N818 - mirrors the other storage errors
    """A key (or key component) breaks the key rules; nothing was read or written."""

    def __init__(self, key: str, reason: str) -> None:
        self.key = key
        # repr() escapes NUL and control characters; truncation keeps hostile input short.
        super().__init__(f"{reason}: {key[:128]!r}", field="key")

"""Reading stored objects for WADO-RS answers: from the page cache without a thread hop.

The filesystem store reads in a worker thread, so that a read from disk never stalls the event
loop. For what a viewer reads, the bytes are nearly always in the page cache already (just
stored, or read a moment ago), and the hop to the thread and back then costs 20x the read
(~1 ms against 0.04 ms for a 513 KB instance on a busy 2-core machine). So a local object is
first read here with ``preadv(RWF_NOWAIT)`` (Linux 4.14+), which copies what the page cache
holds and refuses (EAGAIN) rather than wait for the disk; anything it cannot read at once is
read by the store in its thread as before. Another backend (S3) always goes through the store.

`read_framed` reads an object (or a range of it) straight into the buffer of a whole answer (a
multipart part's header before it, the closing boundary after it): the answer is sent without
another copy.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Final

from krypton.storage.base import ObjectStore

__all__ = ["read", "read_framed"]

_NOWAIT: Final[int | None] = getattr(os, "RWF_NOWAIT", None)


def _read_cached(path: Path, offset: int, view: memoryview) -> int | None:
    """Fill `view` from `path` at `offset` if the page cache holds it; the bytes read, or None.

    Fewer bytes than `len(view)` means the file ends there. None: not all cached, no such
    file, or no ``RWF_NOWAIT`` here (the caller reads through the store instead).
    """
    if _NOWAIT is None:
        return None
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        done = 0
        while done < len(view):
            got = os.preadv(fd, [view[done:]], offset + done, _NOWAIT)
            if got == 0:
                break  # end of file
            done += got
    except OSError:  # EAGAIN (on disk, not cached), EOPNOTSUPP (a filesystem without it)
        return None
    finally:
        os.close(fd)
    return done


async def read(store: ObjectStore, key: str, offset: int = 0, length: int | None = None) -> bytes:
    """`store.read(key, offset, length)`, from the page cache in this thread when it can.

    Raises:
        ObjectNotFound: no object under `key`.
        StorageUnavailable: the store failed.
    """
    path = store.local_path(key)
    if path is not None and _NOWAIT is not None:
        try:
            size = length if length is not None else os.stat(path).st_size - offset
        except OSError:
            size = -1
        if size >= 0:
            buffer = bytearray(size)
            got = _read_cached(path, offset, memoryview(buffer))
            if got is not None:
                del buffer[got:]
                return bytes(buffer)
    return await store.read(key, offset, length)


async def read_framed(
    store: ObjectStore, key: str, offset: int, size: int, head: bytes, tail: bytes
) -> bytes | memoryview:
    """`head`, `size` bytes of the object under `key` from `offset`, `tail`: one buffer.

    The bytes are read straight into the answer's buffer, which is handed over as a view: it
    is sent as it is, without another copy.

    Raises:
        ObjectNotFound: no object under `key`.
        StorageUnavailable: the store failed.
    """
    path = store.local_path(key)
    if path is not None and _NOWAIT is not None:
        buffer = bytearray(len(head) + size + len(tail))
        view = memoryview(buffer)
        if _read_cached(path, offset, view[len(head) : len(head) + size]) == size:
            view[: len(head)] = head
            view[len(head) + size :] = tail
            return view
        view.release()
    return b"".join((head, await store.read(key, offset, size), tail))

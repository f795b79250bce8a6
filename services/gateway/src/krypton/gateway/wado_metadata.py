"""WADO-RS metadata (PS3.18 F.2): per-instance DICOM JSON, computed once and kept.

An instance's JSON (`krypton.dicom.metadata`) is usually precomputed by the render service
when the instance is stored; otherwise it is computed here from its header alone (a ranged
read up to the Pixel Data element, never the pixels), served at once and kept as a derived
object in the background. Recent ones are also kept in memory (`BodyCache`, by content hash).
URIs are relative to the DICOMweb root in the stored copy and made absolute when served, so
one copy serves every public base URL.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator, Sequence
from typing import Any, Final

from krypton.contracts.index.v1 import LocatedInstance
from krypton.dicom.metadata import METADATA_KIND, METADATA_VERSION, build_metadata, metadata_key
from krypton.gateway.wado_cache import BodyCache
from krypton.gateway.wado_read import read
from krypton.storage.base import ObjectStore
from krypton.storage.errors import ObjectNotFound

__all__ = [
    "METADATA_VERSION",
    "instance_metadata",
    "metadata_etag",
    "single_metadata",
    "stream_metadata",
]

_KIND: Final = METADATA_KIND
_URI_MARK: Final = b'"BulkDataURI":"'
_PREFETCH: Final = 8


def metadata_etag(instances: Sequence[LocatedInstance], level: str) -> str:
    """A strong ETag: instances are immutable, so their hashes identify the metadata."""
    digest = hashlib.sha256(f"{_KIND}:{level}".encode())
    for instance in instances:
        digest.update(instance.sop_instance_uid.encode())
        digest.update(instance.sha256.encode())
    return f'"{digest.hexdigest()[:32]}"'


def _build(instance: LocatedInstance, header_bytes: bytes) -> bytes:
    return build_metadata(
        header_bytes,
        study_uid=instance.study_uid,
        series_uid=instance.series_uid,
        sop_instance_uid=instance.sop_instance_uid,
        transfer_syntax_uid=instance.transfer_syntax_uid,
        has_pixel_data=instance.pixel_data_offset is not None,
    )


# Metadata JSON being written after it was served (strong references until written).
_writing: set[asyncio.Task[Any]] = set()


def _keep(store: ObjectStore, key: str, body: bytes) -> None:
    """Write a computed metadata JSON without making the reader wait for the durable write.

    A failed write loses nothing: the next read computes it again.
    """
    task = asyncio.create_task(store.put_bytes(key, body))
    _writing.add(task)
    task.add_done_callback(_written)


def _written(task: asyncio.Task[Any]) -> None:
    _writing.discard(task)
    if not task.cancelled():
        task.exception()  # retrieved; the next read recomputes


async def instance_metadata(
    store: ObjectStore, instance: LocatedInstance, cache: BodyCache | None = None
) -> bytes:
    """The instance's DICOM JSON object (relative BulkDataURIs), from a cache or computed.

    `cache` (in memory, by content hash) is looked at first, then the derived object.
    """
    memo = (_KIND, instance.sop_instance_uid, instance.sha256)
    if cache is not None and (hit := cache.get(memo)) is not None:
        return hit[0]
    key = metadata_key(instance.study_uid, instance.series_uid, instance.sop_instance_uid)
    try:
        body = await read(store, key)
    except ObjectNotFound:
        end = (
            instance.pixel_data_offset if instance.pixel_data_offset is not None else instance.size
        )
        header_bytes = await read(store, instance.object_key, 0, end)
        body = await asyncio.to_thread(_build, instance, header_bytes)
        _keep(store, key, body)
    if cache is not None:
        cache.put(memo, body, "application/dicom+json")
    return body


async def single_metadata(
    store: ObjectStore, instance: LocatedInstance, base_url: str, cache: BodyCache | None = None
) -> bytes:
    """The JSON array of one instance's metadata (absolute BulkDataURIs), in one piece."""
    body = await instance_metadata(store, instance, cache)
    return b"[" + _absolute(body, base_url.rstrip("/").encode()) + b"]"


def _absolute(body: bytes, base: bytes) -> bytes:
    return body.replace(_URI_MARK, _URI_MARK + base + b"/")


async def stream_metadata(
    store: ObjectStore,
    instances: Sequence[LocatedInstance],
    base_url: str,
    cache: BodyCache | None = None,
) -> AsyncIterator[bytes]:
    """Yield the JSON array of the instances' metadata, a few instances read ahead."""
    base = base_url.rstrip("/").encode()
    pending: list[asyncio.Task[bytes]] = []
    index = 0
    try:
        yield b"["
        for position in range(len(instances)):
            while index < len(instances) and len(pending) < _PREFETCH:
                pending.append(
                    asyncio.create_task(instance_metadata(store, instances[index], cache))
                )
                index += 1
            body = await pending.pop(0)
            yield (b"," if position else b"") + _absolute(body, base)
        yield b"]"
    finally:
        for task in pending:
            task.cancel()

"""WADO-RS metadata (PS3.18 F.2): per-instance DICOM JSON, computed once and kept.

An instance's JSON is computed from its header alone: a ranged read up to the Pixel Data
element (never the pixels), parsed by `krypton.dicom.header.read_header`; values whose base64
would exceed 1 KiB become a BulkDataURI under ``.../bulkdata/<path>``. The JSON is stored as
a derived object (``derived/.../<sop>/metadata.json``) with URIs relative to the DICOMweb root
and made absolute when served, so one cached copy serves every public base URL.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator, Sequence
from typing import Any, Final

import msgspec

from krypton.contracts.index.v1 import LocatedInstance
from krypton.dicom.header import read_header
from krypton.dicom.json import dataset_to_dicom_json
from krypton.gateway.wado_cache import BodyCache
from krypton.storage.base import ObjectStore
from krypton.storage.errors import ObjectNotFound
from krypton.storage.keys import derived_key

__all__ = [
    "METADATA_VERSION",
    "instance_metadata",
    "metadata_etag",
    "single_metadata",
    "stream_metadata",
]

#: Bump when the JSON produced changes shape: cached copies of older versions are not reused.
METADATA_VERSION: Final = "1"
_KIND: Final = f"metadata-v{METADATA_VERSION}"
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
    header = read_header(header_bytes)
    base = (
        f"studies/{instance.study_uid}/series/{instance.series_uid}"
        f"/instances/{instance.sop_instance_uid}"
    )

    def uri(path: str) -> str:
        return f"{base}/bulkdata/{path}"

    body: dict[str, Any] = dataset_to_dicom_json(header.dataset, uri)
    body["00083002"] = {"vr": "UI", "Value": [instance.transfer_syntax_uid]}
    if header.has_pixel_data or instance.pixel_data_offset is not None:
        vr = header.pixel_data.vr if header.pixel_data else "OB"
        body["7FE00010"] = {
            "vr": vr if vr in ("OB", "OW") else "OB",
            "BulkDataURI": uri("7FE00010"),
        }
    # pydicom hands out str subclasses (UID, PersonName parts): encode them as strings.
    return msgspec.json.encode(dict(sorted(body.items())), enc_hook=str)


async def instance_metadata(
    store: ObjectStore, instance: LocatedInstance, cache: BodyCache | None = None
) -> bytes:
    """The instance's DICOM JSON object (relative BulkDataURIs), from a cache or computed.

    `cache` (in memory, by content hash) is looked at first, then the derived object.
    """
    memo = (_KIND, instance.sop_instance_uid, instance.sha256)
    if cache is not None and (hit := cache.get(memo)) is not None:
        return hit[0]
    key = derived_key(
        _KIND, instance.study_uid, instance.series_uid, instance.sop_instance_uid, "json"
    )
    try:
        body = await store.read(key)
    except ObjectNotFound:
        end = (
            instance.pixel_data_offset if instance.pixel_data_offset is not None else instance.size
        )
        header_bytes = await store.read(instance.object_key, 0, end)
        body = await asyncio.to_thread(_build, instance, header_bytes)
        await store.put_bytes(key, body)
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

"""Build the object store the settings ask for."""

from __future__ import annotations

from krypton.core.settings import StorageSettings
from krypton.storage.base import ObjectStore
from krypton.storage.s3 import S3Store
from krypton.storage.traced import TracedFileSystemStore, TracedS3Store

__all__ = ["make_store", "open_store"]


def make_store(settings: StorageSettings) -> ObjectStore:
    """Return the configured store without touching the network.

    The store opens a span per operation made inside a trace (`krypton.storage.traced`).

    Args:
        settings: `backend="fs"` stores under `settings.root`; `backend="s3"` in
            `settings.s3.bucket`.
    """
    if settings.backend == "s3":
        return TracedS3Store(settings.s3)
    return TracedFileSystemStore(settings.root)


async def open_store(settings: StorageSettings) -> ObjectStore:
    """Return the configured store, ready to use: S3's bucket is created if missing.

    Meant for a service's lifespan; close the store on shutdown.

    Raises:
        StorageUnavailable: The backend cannot be reached or used.
    """
    store = make_store(settings)
    try:
        if isinstance(store, S3Store):
            await store.ensure_bucket()
        await store.ping()
    except BaseException:
        await store.close()
        raise
    return store

"""Object storage for DICOM files and renditions: filesystem or S3 behind one interface.

Bulk bytes live here and never ride the bus; messages carry the keys built by
`krypton.storage.keys`.
"""

from krypton.storage.base import ObjectInfo, ObjectStore
from krypton.storage.errors import InvalidKey, ObjectNotFound, StorageUnavailable
from krypton.storage.factory import make_store, open_store
from krypton.storage.fs import FileSystemStore
from krypton.storage.s3 import S3Store

__all__ = [
    "FileSystemStore",
    "InvalidKey",
    "ObjectInfo",
    "ObjectNotFound",
    "ObjectStore",
    "S3Store",
    "StorageUnavailable",
    "make_store",
    "open_store",
]

"""An instance's WADO-RS metadata (PS3.18 F.2) as stored DICOM JSON, built from its header.

Built once per instance and kept as a derived object (`metadata_key`): by the render service
when the instance is stored (with its other precomputed renditions), else by the gateway on
first read. BulkDataURIs are relative to the DICOMweb root (``studies/.../bulkdata/<path>``);
the gateway makes them absolute when it serves them, so one copy serves every public URL.
"""

from __future__ import annotations

from typing import Any, BinaryIO, Final

import msgspec

from krypton.dicom.header import read_header
from krypton.dicom.json import dataset_to_dicom_json
from krypton.storage.keys import derived_key

__all__ = ["METADATA_KIND", "METADATA_VERSION", "build_metadata", "metadata_key"]

#: Bump when the JSON produced changes shape: cached copies of older versions are not reused.
METADATA_VERSION: Final = "1"
METADATA_KIND: Final = f"metadata-v{METADATA_VERSION}"


def metadata_key(study_uid: str, series_uid: str, sop_instance_uid: str) -> str:
    """Where an instance's metadata JSON is kept."""
    return derived_key(METADATA_KIND, study_uid, series_uid, sop_instance_uid, "json")


def build_metadata(
    header_source: bytes | BinaryIO,
    *,
    study_uid: str,
    series_uid: str,
    sop_instance_uid: str,
    transfer_syntax_uid: str,
    has_pixel_data: bool,
) -> bytes:
    """The instance's DICOM JSON object, from its header (the file, or its bytes up to pixels).

    Values whose base64 would exceed 1 KiB become BulkDataURIs; so does Pixel Data when the
    header or `has_pixel_data` says there is some.
    """
    header = read_header(header_source)
    base = f"studies/{study_uid}/series/{series_uid}/instances/{sop_instance_uid}"

    def uri(path: str) -> str:
        return f"{base}/bulkdata/{path}"

    body: dict[str, Any] = dataset_to_dicom_json(header.dataset, uri)
    body["00083002"] = {"vr": "UI", "Value": [transfer_syntax_uid]}
    if header.has_pixel_data or has_pixel_data:
        vr = header.pixel_data.vr if header.pixel_data else "OB"
        body["7FE00010"] = {
            "vr": vr if vr in ("OB", "OW") else "OB",
            "BulkDataURI": uri("7FE00010"),
        }
    # pydicom hands out str subclasses (UID, PersonName parts): encode them as strings.
    return msgspec.json.encode(dict(sorted(body.items())), enc_hook=str)

"""Subject names and stream definitions: the one place that spells them.

Every subject carries the versioned prefix `krypton.v1.`; partitioned subjects end with the
producing structure (FINESS) so consumers and permissions can filter on it.
"""

from __future__ import annotations

from typing import Final

__all__ = [
    "AUDIT_STREAM",
    "INGEST_RECEIVED",
    "INGEST_STREAM",
    "INSTANCES_STREAM",
    "INSTANCE_REJECTED",
    "INSTANCE_STORED",
    "POLICY_STREAM",
    "PREFIX",
    "SVC_INDEX_PING",
    "SVC_INDEX_LOCATE",
    "SVC_INDEX_QIDO",
    "SVC_RENDER_FRAME",
    "SVC_TRANSCODE_INSTANCE",
    "ingest_received",
    "instance_rejected",
    "instance_stored",
    "safe_token",
]

PREFIX: Final = "krypton.v1"

INGEST_STREAM: Final = "KRYPTON_INGEST"
INSTANCES_STREAM: Final = "KRYPTON_INSTANCES"
POLICY_STREAM: Final = "KRYPTON_POLICY"
AUDIT_STREAM: Final = "KRYPTON_AUDIT"

INGEST_RECEIVED: Final = f"{PREFIX}.ingest.received"
INSTANCE_STORED: Final = f"{PREFIX}.instance.stored"
INSTANCE_REJECTED: Final = f"{PREFIX}.instance.rejected"

SVC_INDEX_QIDO: Final = f"{PREFIX}.svc.index.qido"
SVC_INDEX_PING: Final = f"{PREFIX}.svc.index.ping"

_ALLOWED = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_")


def safe_token(value: str) -> str:
    """Return `value` if it can be one subject token, else raise ValueError.

    Structure identifiers come from verified tokens, but a subject token must never carry `.`,
    `*`, `>` or spaces whatever the source.
    """
    if not value or any(c not in _ALLOWED for c in value):
        msg = f"not a valid subject token: {value!r}"
        raise ValueError(msg)
    return value


def ingest_received(structure: str) -> str:
    """Subject of an object staged by `structure` and waiting for ingest."""
    return f"{INGEST_RECEIVED}.{safe_token(structure)}"


def instance_stored(structure: str) -> str:
    """Subject of an instance of `structure` that reached canonical storage."""
    return f"{INSTANCE_STORED}.{safe_token(structure)}"


def instance_rejected(structure: str) -> str:
    """Subject of an object of `structure` that ingest quarantined."""
    return f"{INSTANCE_REJECTED}.{safe_token(structure)}"


# --- Retrieval (WADO-RS): locating instances, transcoding, rendering ---

SVC_INDEX_LOCATE: Final = f"{PREFIX}.svc.index.locate"
SVC_TRANSCODE_INSTANCE: Final = f"{PREFIX}.svc.transcode.instance"
SVC_RENDER_FRAME: Final = f"{PREFIX}.svc.render.frame"

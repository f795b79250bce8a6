"""Subject names and stream definitions: the one place that spells them.

Every subject carries the versioned prefix `krypton.v1.`; partitioned subjects end with the
producing structure (FINESS) so consumers and permissions can filter on it.
"""

from __future__ import annotations

from typing import Final

__all__ = [
    "AUDIT_CHECKPOINT",
    "AUDIT_EVENT",
    "AUDIT_STREAM",
    "EDGE_FORWARDED_BUCKET",
    "EDGE_INSTANCE",
    "EDGE_STREAM",
    "INGEST_RECEIVED",
    "INGEST_STREAM",
    "INSTANCES_STREAM",
    "INSTANCE_REJECTED",
    "INSTANCE_STORED",
    "POLICY_CHANGED",
    "POLICY_STREAM",
    "PREFIX",
    "SVC_AUDIT_PING",
    "SVC_AUDIT_QUERY",
    "SVC_AUTHZ",
    "SVC_AUTHZ_DECIDE",
    "SVC_AUTHZ_DECIDE_BATCH",
    "SVC_AUTHZ_PING",
    "SVC_INDEX_LOCATE",
    "SVC_INDEX_PING",
    "SVC_INDEX_QIDO",
    "SVC_RENDER_FRAME",
    "SVC_TRANSCODE_INSTANCE",
    "audit_event",
    "edge_domain",
    "edge_instance",
    "ingest_received",
    "instance_rejected",
    "instance_stored",
    "policy_changed",
    "safe_token",
    "svc_authz",
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


# --- audit (issue 6) ---------------------------------------------------------------------------
# Events live under `audit.event.<type>` (type tokens may contain dots: `auth.failure`), so the
# audit service's consumer filters `audit.event.>` and never sees the chain checkpoints it
# publishes itself on `audit.checkpoint` (same AUDIT stream: checkpoints are kept too).
AUDIT_EVENT: Final = f"{PREFIX}.audit.event"
AUDIT_CHECKPOINT: Final = f"{PREFIX}.audit.checkpoint"
SVC_AUDIT_QUERY: Final = f"{PREFIX}.svc.audit.query"
SVC_AUDIT_PING: Final = f"{PREFIX}.svc.audit.ping"


def audit_event(event_type: str) -> str:
    """Subject of an audit event of `event_type` (e.g. `search`, `auth.failure`)."""
    return f"{AUDIT_EVENT}.{'.'.join(safe_token(t) for t in event_type.split('.'))}"


# --- access policy (authorize) -----------------------------------------------------------
# Every policy change, on the POLICY stream: policy.changed.<kind> (kind: grant, opposition,
# break_glass, share_code, directory; see krypton.contracts.authorize.v1.PolicyKindValues).
POLICY_CHANGED: Final = f"{PREFIX}.policy.changed"
# Request/reply, queue group "authorize": decisions, and the policy API commands
# (svc.authz.<op>, e.g. svc.authz.code.redeem).
SVC_AUTHZ: Final = f"{PREFIX}.svc.authz"
SVC_AUTHZ_DECIDE: Final = f"{SVC_AUTHZ}.decide"
SVC_AUTHZ_DECIDE_BATCH: Final = f"{SVC_AUTHZ}.decide_batch"
SVC_AUTHZ_PING: Final = f"{SVC_AUTHZ}.ping"


def policy_changed(kind: str) -> str:
    """Subject of a policy change of `kind` (a `PolicyKindValues` value)."""
    return f"{POLICY_CHANGED}.{safe_token(kind)}"


def svc_authz(op: str) -> str:
    """Subject of the policy command `op` (dot-separated tokens, e.g. ``code.redeem``)."""
    for token in op.split("."):
        safe_token(token)
    return f"{SVC_AUTHZ}.{op}"


# --- producer edge box (issue 10) ----------------------------------------------------------
# On the box's own nats-server (a leaf node of the region, JetStream domain `edge-<finess>`):
# each received instance is published in chunks on `edge.instance.<finess>` into the box's
# EDGE stream; the region's edge forwarder pulls them across the leaf link through the
# domain's API prefix. The subject never reaches a regional stream (none listens on `edge.>`).
EDGE_STREAM: Final = "KRYPTON_EDGE"
EDGE_INSTANCE: Final = f"{PREFIX}.edge.instance"


def edge_instance(structure: str) -> str:
    """Subject of an instance chunk received by the edge box of `structure`."""
    return f"{EDGE_INSTANCE}.{safe_token(structure)}"


def edge_domain(structure: str) -> str:
    """JetStream domain of the edge box of `structure` (its leaf nats-server)."""
    return f"edge-{safe_token(structure)}"


# Key-value bucket (in the region) of the instances the region's edge forwarder took from boxes,
# keyed `<finess>.<sha256>`: a chunk redelivered after its instance was forwarded (an ack lost
# with the link) is recognised and acked instead of waiting forever for its siblings.
EDGE_FORWARDED_BUCKET: Final = "KRYPTON_EDGE_FORWARDED"

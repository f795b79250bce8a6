"""JetStream streams: their one definition, and idempotent provisioning.

Every process provisions the streams it touches at start (create or update, safe to run from N
replicas at once), so a gateway can accept uploads before ingest has ever started.
"""

from __future__ import annotations

from dataclasses import dataclass

from nats.js import JetStreamContext
from nats.js.api import DiscardPolicy, RetentionPolicy, StorageType, StreamConfig
from nats.js.errors import BadRequestError

from krypton.contracts import subjects

__all__ = [
    "ALL_STREAMS",
    "AUDIT",
    "EDGE",
    "INGEST",
    "INSTANCES",
    "POLICY",
    "StreamSpec",
    "provision",
]

_DAY = 86_400.0


@dataclass(frozen=True, slots=True)
class StreamSpec:
    """What a stream holds and how long."""

    name: str
    subjects: tuple[str, ...]
    retention: RetentionPolicy
    max_age: float  # seconds, 0 = forever
    duplicate_window: float = 120.0
    replicas: int = 1

    def config(self, replicas: int | None = None) -> StreamConfig:
        """nats-py stream configuration."""
        return StreamConfig(
            name=self.name,
            subjects=list(self.subjects),
            retention=self.retention,
            storage=StorageType.FILE,
            discard=DiscardPolicy.OLD
            if self.retention is RetentionPolicy.LIMITS
            else DiscardPolicy.NEW,
            max_age=self.max_age,
            duplicate_window=self.duplicate_window,
            num_replicas=replicas or self.replicas,
        )


# Staged uploads wait here until ingest acks them: work-queue retention, kept 30 days at most.
# DiscardPolicy.NEW: when full, new uploads are refused (the gateway answers 503) rather than
# silently dropping accepted ones.
INGEST = StreamSpec(
    name=subjects.INGEST_STREAM,
    subjects=(f"{subjects.INGEST_RECEIVED}.>",),
    retention=RetentionPolicy.WORK_QUEUE,
    max_age=30 * _DAY,
)
# The fan-out bus every downstream service reads with its own durable consumer; long retention
# so read models (index, renditions) can be rebuilt from it.
INSTANCES = StreamSpec(
    name=subjects.INSTANCES_STREAM,
    subjects=(f"{subjects.INSTANCE_STORED}.>", f"{subjects.INSTANCE_REJECTED}.>"),
    retention=RetentionPolicy.LIMITS,
    max_age=0,
)
POLICY = StreamSpec(
    name=subjects.POLICY_STREAM,
    subjects=(f"{subjects.PREFIX}.policy.>",),
    retention=RetentionPolicy.LIMITS,
    max_age=0,
)
AUDIT = StreamSpec(
    name=subjects.AUDIT_STREAM,
    subjects=(f"{subjects.PREFIX}.audit.>",),
    retention=RetentionPolicy.LIMITS,
    max_age=0,
)
ALL_STREAMS = (INGEST, INSTANCES, POLICY, AUDIT)


async def provision(
    js: JetStreamContext, specs: tuple[StreamSpec, ...] = ALL_STREAMS, replicas: int | None = None
) -> None:
    """Create each stream, or bring an existing one to its current definition.

    Args:
        js: JetStream context.
        specs: The streams to provision.
        replicas: Copies of each stream's data (`KRYPTON_STREAM_REPLICAS`): 3 on a production
            cluster (a node may fail), 1 embedded; `None` keeps each spec's own.
    """
    for spec in specs:
        config = spec.config(replicas)
        try:
            await js.add_stream(config)
        except BadRequestError:
            # Already exists with another configuration (or a race with another replica).
            await js.update_stream(config)


# The edge box's own stream (issue 10), on the box's leaf nats-server only, never in the region:
# received instances in chunks, held until the region's edge forwarder takes them (work queue:
# an acked chunk is gone). Nothing expires; the box bounds the stream's size itself
# (`max_bytes`, DiscardPolicy.NEW) so that a full spool refuses new instances, never drops one.
# An hour of de-duplication covers a box that republishes after a crash.
EDGE = StreamSpec(
    name=subjects.EDGE_STREAM,
    subjects=(f"{subjects.EDGE_INSTANCE}.>",),
    retention=RetentionPolicy.WORK_QUEUE,
    max_age=0,
    duplicate_window=3600.0,
)

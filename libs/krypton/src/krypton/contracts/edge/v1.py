"""Edge box contracts, v1: the chunk headers on the box's EDGE stream and the box's status.

An instance received by the box travels as one or more messages on
`subjects.edge_instance(<finess>)`; the body of each is a slice of the DICOM file's bytes, and
the headers below say which instance and which slice it is. Additive changes only.
"""

from __future__ import annotations

from typing import Final

import msgspec

__all__ = ["EdgeChunkHeaders", "EdgeStatus", "LinkStateValues"]


class EdgeChunkHeaders:
    """Header names of one chunk message (values are ASCII strings)."""

    # `<sop>:<sha256>`: chunks of one content group together, whichever reception they came
    # from (a republish after a crash may complete an instance begun before it).
    INSTANCE: Final = "Krypton-Edge-Instance"
    INDEX: Final = "Krypton-Edge-Chunk"  # 0-based index of this chunk
    COUNT: Final = "Krypton-Edge-Chunks"  # number of chunks of the instance
    SIZE: Final = "Krypton-Edge-Size"  # bytes of the whole instance
    SHA256: Final = "Krypton-Edge-Sha256"  # hex SHA-256 of the whole instance
    SOP_INSTANCE_UID: Final = "Krypton-Edge-Sop-Instance-Uid"
    RECEIVED_AT: Final = "Krypton-Edge-Received-At"  # ISO 8601 UTC, when the box stored it


class LinkStateValues:
    """State of the leaf connection between the box and the region."""

    UP: Final = "up"
    DOWN: Final = "down"
    UNKNOWN: Final = "unknown"


class EdgeStatus(msgspec.Struct, frozen=True, kw_only=True):
    """What the box reports on `GET /status` (and logs when it changes)."""

    structure: str
    ae_title: str
    link: str  # a LinkStateValues value
    spool_instances: int  # received, not yet published to the box's stream
    spool_bytes: int
    queued_messages: int  # chunks published to the box's stream, not yet taken by the region
    queued_bytes: int
    limit_bytes: int  # spool + queue may not grow past this; C-STORE then answers 0xA700
    alarm: bool  # spool + queue above the alarm threshold
    quarantined: int  # instances refused (unparseable), kept for an operator
    received_total: int  # instances accepted since the box started
    last_received_at: str | None = None
    last_forward_at: str | None = None  # last time the region took instances from the queue
    link_since: str | None = None

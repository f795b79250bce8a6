"""A small cache of recent decisions, dropped by policy events and after a short time.

Only the decisions that read the database are kept (a professional outside the producing
structure); the others are pure functions of the request. An entry lives at most `ttl`
seconds (expiries need no event, so this bounds how late an expired grant is noticed), and is
dropped at once when a policy event names its patient: this replica's own changes as its
outbox publishes them (before the command's reply), other replicas' changes as their events
arrive on ``policy.changed.>``.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from typing import Final

import msgspec

from krypton.contracts.authorize.v1 import (
    CommunityMemberChanged,
    DecideRequest,
    DecideResponse,
    DirectoryChanged,
    OppositionChanged,
    PolicyEvent,
)

__all__ = ["DecisionCache", "decode_event"]

_Key = tuple[str, str, str | None, str | None, str, str, str]
_decoder: Final = msgspec.json.Decoder(PolicyEvent)


def decode_event(data: bytes) -> PolicyEvent | None:
    """A policy event from its bytes, or None when they are not one (e.g. an audit row)."""
    try:
        event: PolicyEvent = _decoder.decode(data)
    except (msgspec.ValidationError, msgspec.DecodeError):
        return None
    return event


def _key(request: DecideRequest) -> _Key:
    a = request.actor
    return (a.sub, a.role.value, a.structure, a.profession, request.patient_key,
            request.study_uid, request.structure)  # fmt: skip


class DecisionCache:
    """Decisions by (actor, patient, study, structure), indexed by patient for invalidation.

    Args:
        ttl: Seconds an entry is served; 0 disables the cache.
        max_entries: Oldest entries go first beyond this size.
    """

    def __init__(self, ttl: float = 1.0, max_entries: int = 100_000) -> None:
        """Start empty."""
        self.ttl = ttl
        self.max_entries = max_entries
        self._entries: OrderedDict[_Key, tuple[float, DecideResponse]] = OrderedDict()
        self._by_patient: dict[str, set[_Key]] = {}
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        """How many decisions are kept."""
        return len(self._entries)

    def get(self, request: DecideRequest) -> DecideResponse | None:
        """The cached decision for `request`, if fresh."""
        if self.ttl <= 0:
            return None
        key = _key(request)
        entry = self._entries.get(key)
        if entry is None or entry[0] < time.monotonic():
            self.misses += 1
            return None
        self.hits += 1
        return entry[1]

    def put(self, request: DecideRequest, decision: DecideResponse) -> None:
        """Keep `decision` for `ttl` seconds."""
        if self.ttl <= 0:
            return
        key = _key(request)
        self._entries[key] = (time.monotonic() + self.ttl, decision)
        self._entries.move_to_end(key)
        self._by_patient.setdefault(request.patient_key, set()).add(key)
        while len(self._entries) > self.max_entries:
            old, _ = self._entries.popitem(last=False)
            self._unindex(old)

    def _unindex(self, key: _Key) -> None:
        keys = self._by_patient.get(key[4])
        if keys is not None:
            keys.discard(key)
            if not keys:
                del self._by_patient[key[4]]

    def drop_patient(self, patient_key: str) -> None:
        """Forget every decision about `patient_key`."""
        for key in self._by_patient.pop(patient_key, ()):
            self._entries.pop(key, None)

    def clear(self) -> None:
        """Forget everything."""
        self._entries.clear()
        self._by_patient.clear()

    def invalidate(self, event: PolicyEvent) -> None:
        """Forget what `event` may change."""
        if isinstance(event, DirectoryChanged | CommunityMemberChanged):
            # A patient's local identifiers changed, a directory entry, or who belongs to a
            # community (it changes the professional's access to every shared patient): rare,
            # start over.
            self.clear()
        elif isinstance(event, OppositionChanged):
            for key in {event.patient_key, *event.patient_keys}:
                self.drop_patient(key)
        else:
            self.drop_patient(event.patient_key)

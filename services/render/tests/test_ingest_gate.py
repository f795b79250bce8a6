"""IngestGate: precompute waits while the INGEST stream holds uploads, and only then."""

from __future__ import annotations

import nats.errors

from krypton.render.ingest_gate import IngestGate


class _Clock:
    """Time that moves only when the gate sleeps (the probe reads it)."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _gate(depths: list[int], clock: _Clock, quiet: float) -> tuple[IngestGate, list[float]]:
    asked: list[float] = []

    async def depth() -> int:
        asked.append(clock.now)
        value = depths.pop(0) if depths else 0
        clock.now += 0.1  # each look takes the poll interval (the gate's sleep stands for it)
        return value

    return IngestGate(depth, quiet=quiet, poll=0.0, clock=clock), asked


async def test_an_idle_ingest_lets_precompute_go_at_once() -> None:
    clock = _Clock()
    gate, asked = _gate([0], clock, quiet=0.5)
    await gate.wait()
    assert len(asked) == 1


async def test_precompute_waits_while_uploads_are_in_the_stream_then_for_the_quiet_time() -> None:
    clock = _Clock()
    gate, asked = _gate([3, 5, 1, 0, 0, 0, 0, 0, 0, 0, 0], clock, quiet=0.5)
    await gate.wait()
    # Busy for three looks (the last at t=1000.2), then empty: released once 0.5 s have
    # passed since that last busy look, not at the first empty one.
    assert clock.now - 1000.2 > 0.49
    assert len(asked) == 3 + 4  # three busy looks, then empty ones until the quiet time
    assert gate.waited > 0.69


async def test_an_unknown_backlog_does_not_hold_precompute() -> None:
    clock = _Clock()
    calls = 0

    async def depth() -> int:
        nonlocal calls
        calls += 1
        raise nats.errors.NoServersError

    gate = IngestGate(depth, clock=clock, poll=0.0, quiet=0.5)
    await gate.wait()
    await gate.wait()
    assert calls == 2


async def test_the_stream_is_asked_at_most_every_poll_seconds() -> None:
    clock = _Clock()
    asked: list[float] = []

    async def depth() -> int:
        asked.append(clock.now)
        return 0

    gate = IngestGate(depth, clock=clock, poll=0.2, quiet=0.5)
    for _ in range(5):
        await gate.wait()
    assert len(asked) == 1
    clock.now += 0.3
    await gate.wait()
    assert len(asked) == 2

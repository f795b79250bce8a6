"""Garbage-collector settings for long-running services.

Answering a search allocates thousands of short-lived objects; with CPython's default gen-0
threshold (700) the collector runs many times per request and its full collections show up as
tail latency. Services freeze what start-up allocated (never garbage) and collect less often.
"""

from __future__ import annotations

import gc

__all__ = ["tune_gc"]


def tune_gc(gen0_threshold: int = 50_000) -> None:
    """Freeze start-up objects and raise the gen-0 threshold (call once, after imports)."""
    gc.collect()
    gc.freeze()
    _, gen1, gen2 = gc.get_threshold()
    gc.set_threshold(gen0_threshold, gen1, gen2)

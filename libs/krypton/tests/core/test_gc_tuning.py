"""tune_gc raises the gen-0 threshold and freezes start-up objects."""

from __future__ import annotations

import gc

from krypton.core.gc_tuning import tune_gc


def test_tune_gc_raises_the_threshold_and_freezes() -> None:
    before = gc.get_threshold()
    try:
        tune_gc(12_345)
        assert gc.get_threshold()[0] == 12_345
        assert gc.get_freeze_count() > 0
    finally:
        gc.unfreeze()
        gc.set_threshold(*before)

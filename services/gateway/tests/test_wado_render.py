"""The gateway's start-up rendering: a valid frame, rendered in its CPU threads."""

from __future__ import annotations

import threading

import numpy as np

from krypton.dicom.pixels import decode_frame
from krypton.gateway import wado_pool, wado_render


def test_the_warm_up_frame_is_a_12_bit_ct_image() -> None:
    arr, ds = decode_frame(wado_render._warm_up_frame(), 0)
    assert arr.shape == (64, 64)
    assert ds.BitsStored == 12
    # 12 bits stored: pydicom's correction keeps the low 12 bits of 0..4095.
    np.testing.assert_array_equal(arr.ravel(), np.arange(64 * 64) & 0x0FFF)


async def test_warm_up_renders_in_the_cpu_threads() -> None:
    seen: set[str] = set()
    original = wado_render._warm_up

    def spy(data: bytes) -> None:
        seen.add(threading.current_thread().name)
        original(data)

    wado_render._warm_up = spy  # type: ignore[assignment]
    try:
        await wado_render.warm_up()
    finally:
        wado_render._warm_up = original  # type: ignore[assignment]
    assert seen
    assert all(name.startswith("wado-cpu") for name in seen)
    assert len(seen) <= wado_pool.size

"""Which transcodes may run in the gateway: time of each pair, and how long it keeps the GIL.

For a 512x512 16-bit CT slice (and an 8-bit copy for JPEG baseline), in this process:
`krypton.dicom.pixels.transcode` of each source syntax to Explicit VR Little Endian and of the
uncompressed slice to each written syntax, p50 of 9 runs; then the same call in a worker thread
while an asyncio loop ticks every 0.5 ms beside it: "stall" is the longest delay of a tick, i.e.
how long the codec held the GIL (a gateway's requests would wait that long).

    .venv/bin/python benchmarks/transcode_codecs.py
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import io
import statistics
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from pydicom.uid import (
    ExplicitVRLittleEndian,
    HTJ2KLossless,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGLSLossless,
    RLELossless,
)

from krypton.dicom.pixels import read_dataset, transcode
from krypton.dicom.synthetic import Population, render_instances

TARGETS = {
    "ELE": ExplicitVRLittleEndian,
    "RLE": RLELossless,
    "JPEG-LS": JPEGLSLossless,
    "HTJ2K": HTJ2KLossless,
    "JPEG 2000": JPEG2000Lossless,
    "JPEG baseline": JPEGBaseline8Bit,
}


def ct_slice() -> bytes:
    """One 512x512 16-bit CT slice of the synthetic population."""
    population = Population(2025, 1000)
    for index in range(500):
        study = population.study(index)
        for series in study.series:
            if series.modality == "CT":
                one = dataclasses.replace(series, instance_count=1)
                reduced = dataclasses.replace(study, series=(one,))
                return next(render_instances(reduced, rows=512, cols=512, bits=16))
    msg = "no CT series"
    raise RuntimeError(msg)


def eight_bit(data: bytes) -> bytes:
    """The slice rescaled to 8-bit unsigned samples (JPEG baseline takes no more)."""
    ds = read_dataset(data)
    arr = ds.pixel_array.astype(np.int32)
    span = max(1, int(arr.max() - arr.min()))
    ds.PixelData = ((arr - arr.min()) * 255 // span).astype(np.uint8).tobytes()
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    for keyword in ("RescaleIntercept", "RescaleSlope", "WindowCenter", "WindowWidth"):
        if keyword in ds:
            del ds[keyword]
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


async def stall(pool: ThreadPoolExecutor, work: Callable[[], object]) -> float:
    """Longest delay (s) of a 0.5 ms asyncio tick while `work` runs in `pool`."""
    future = asyncio.get_running_loop().run_in_executor(pool, work)
    worst = 0.0
    while not future.done():
        started = time.perf_counter()
        await asyncio.sleep(0.0005)
        worst = max(worst, time.perf_counter() - started - 0.0005)
    await future
    return worst


async def main() -> None:
    """Print one line per pair."""
    ct = ct_slice()
    ct8 = eight_bit(ct)
    pairs: list[tuple[str, bytes, str]] = [
        (f"{name} -> ELE", transcode(ct8 if name == "JPEG baseline" else ct, uid), "ELE")
        for name, uid in TARGETS.items()
        if name != "ELE"
    ]
    pairs += [(f"ELE -> {name}", ct, name) for name in TARGETS if name != "JPEG baseline"]
    pairs.append(("ELE 8-bit -> JPEG baseline", ct8, "JPEG baseline"))
    pool = ThreadPoolExecutor(max_workers=1)
    for label, source, target in pairs:
        uid = TARGETS[target]
        transcode(source, uid)  # warm-up (imports, plugin choice)
        times = []
        for _ in range(9):
            started = time.perf_counter()
            transcode(source, uid)
            times.append(time.perf_counter() - started)
        stalls = [await stall(pool, functools.partial(transcode, source, uid)) for _ in range(5)]
        print(
            f"{label:28} {len(source) // 1024:4d} KB  {1000 * statistics.median(times):7.2f} ms"
            f"  stall max {1000 * max(stalls):6.2f} ms, p50 {1000 * statistics.median(stalls):6.2f}"
        )
    pool.shutdown()


if __name__ == "__main__":
    asyncio.run(main())

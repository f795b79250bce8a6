"""Rendering: VOI windows, photometry, viewport, encoding and the bounded render cache."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image
from pydicom.dataset import Dataset

from krypton.contracts.render.v1 import (
    RenderedMediaValues,
    RenderRequest,
    VoiFunctionValues,
    Window,
)
from krypton.dicom.rendering import encode_image, fit_viewport, to_display
from krypton.render.worker import RenderCache


def _ds(photometric: str = "MONOCHROME2", **values: object) -> Dataset:
    ds = Dataset()
    ds.PhotometricInterpretation = photometric
    ds.BitsStored = 16
    ds.BitsAllocated = 16
    ds.PixelRepresentation = 1
    for key, value in values.items():
        setattr(ds, key, value)
    return ds


def test_linear_window_follows_ps3_3_with_rescale() -> None:
    ds = _ds(RescaleSlope=2, RescaleIntercept=-100, WindowCenter=0, WindowWidth=101)
    arr = np.array([[0, 50, 100]], dtype=np.int16)  # modality values -100, 0, 100
    out = to_display(arr, ds, None)
    assert out.tolist() == [[0, 129, 255]]  # ((0 + 0.5) / 100 + 0.5) * 255 = 128.8


def test_the_callers_window_wins_and_monochrome1_is_inverted() -> None:
    ds = _ds("MONOCHROME1", WindowCenter=0, WindowWidth=10)
    arr = np.array([[0, 1000]], dtype=np.int16)
    out = to_display(
        arr, ds, Window(center=500, width=1000, function=VoiFunctionValues.LINEAR_EXACT)
    )
    assert out.tolist() == [[255 - 0, 255 - 255]]


def test_without_a_window_the_automatic_one_spans_the_data() -> None:
    arr = np.arange(100, dtype=np.int16).reshape(10, 10)
    out = to_display(arr, _ds(), None)
    assert out.min() == 0
    assert out.max() == 255


def test_deep_colour_is_scaled_to_eight_bits() -> None:
    arr = np.full((2, 2, 3), 0xFFFF, dtype=np.uint16)
    out = to_display(arr, _ds("RGB"), None)
    assert out.dtype == np.uint8
    assert out.max() == 255


def test_viewport_shrinks_keeping_the_aspect_and_never_enlarges() -> None:
    image = np.zeros((100, 200), dtype=np.uint8)
    assert fit_viewport(image, (50, 50)).shape == (25, 50)
    assert fit_viewport(image, (400, 400)).shape == (100, 200)


def test_png_is_lossless_and_jpeg_is_a_jpeg() -> None:
    image = (np.arange(64 * 64) % 256).astype(np.uint8).reshape(64, 64)
    png = encode_image(image, RenderedMediaValues.PNG, 90)
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(png))), image)
    jpeg = encode_image(np.stack([image] * 3, -1), RenderedMediaValues.JPEG, 80)
    assert jpeg[:2] == b"\xff\xd8"


def test_the_render_cache_evicts_the_least_recently_used_beyond_its_size() -> None:
    cache = RenderCache(max_bytes=10)
    a, b, c = (RenderRequest(object_key=k, sha256=k) for k in ("a", "b", "c"))
    cache.put(a, b"12345")
    cache.put(b, b"12345")
    assert cache.get(a) == b"12345"  # a is now the most recent
    cache.put(c, b"12345")
    assert cache.get(b) is None
    assert cache.get(a) is not None
    assert cache.size == 10


def _reference_window(arr: np.ndarray, ds: Dataset, window: Window) -> np.ndarray:
    """PS3.3 windowing over every pixel, as the pipeline did before its lookup table."""
    slope = float(ds.get("RescaleSlope", 1))
    intercept = float(ds.get("RescaleIntercept", 0))
    values = arr.astype(np.float64) * slope + intercept
    c, w = window.center, window.width
    if window.function is VoiFunctionValues.LINEAR_EXACT:
        out = np.clip(((values - c) / w + 0.5) * 255.0, 0.0, 255.0)
    elif window.function is VoiFunctionValues.SIGMOID:
        out = 255.0 / (1.0 + np.exp(-4.0 * (values - c) / w))
    else:
        out = np.clip(((values - (c - 0.5)) / (w - 1) + 0.5) * 255.0, 0.0, 255.0)
    return np.rint(out).astype(np.uint8)


def test_the_lookup_table_gives_exactly_the_per_pixel_result() -> None:
    rng = np.random.default_rng(7)
    for dtype, low, high in ((np.uint16, 0, 4095), (np.int16, -1024, 3071), (np.uint8, 0, 255)):
        arr = rng.integers(low, high + 1, size=(64, 64)).astype(dtype)
        ds = _ds(RescaleSlope=1.5, RescaleIntercept=-20)
        for function in VoiFunctionValues:
            window = Window(center=40.0, width=400.0, function=function)
            with np.errstate(over="ignore"):
                expected = _reference_window(arr, ds, window)
            assert np.array_equal(to_display(arr, ds, window), expected), (dtype, function)

"""Blend overlapping chip predictions into one raster window with smooth weights.

Each chip contributes to its pixels with a separable triangular weight that peaks at the chip
centre and stays above zero at the border, so overlaps blend without seams and pixels covered by
a single edge chip still get a value (as TerraTorch's tiled inference does with a cosine ramp):
the weighted predictions are summed and divided by the summed weights.
"""

from __future__ import annotations

import numpy as np

from allspark.raster.windows import Window


def blend_weights(size: int) -> np.ndarray:
    """(size, size) weights: triangular in each direction, 1 at the centre, >0 at the border."""
    ramp = np.minimum(np.arange(size) + 0.5, size - np.arange(size) - 0.5) / (size / 2)
    return np.outer(ramp, ramp).astype("float32")


def blend(chips: np.ndarray, rows: np.ndarray, cols: np.ndarray, window: Window) -> np.ndarray:
    """Blend ``(n, channel, size, size)`` chip predictions at scene origins ``rows``, ``cols`` into ``window``.

    Returns ``(channel, window rows, window columns)``. NaN predictions (no data under the pixel)
    carry no weight; a pixel with no weight is NaN.
    """
    top, bottom, left, right = window["y"].start, window["y"].stop, window["x"].start, window["x"].stop
    size = chips.shape[-1]
    weights = blend_weights(size)
    total = np.zeros((chips.shape[1], bottom - top, right - left), dtype="float64")
    weight_sum = np.zeros_like(total)
    for chip, r0, c0 in zip(chips, rows, cols):
        r0, c0 = int(r0), int(c0)
        y0, y1, x0, x1 = max(top, r0), min(bottom, r0 + size), max(left, c0), min(right, c0 + size)
        if y0 >= y1 or x0 >= x1:
            continue
        patch = chip[:, y0 - r0 : y1 - r0, x0 - c0 : x1 - c0]
        w = np.where(np.isfinite(patch), weights[y0 - r0 : y1 - r0, x0 - c0 : x1 - c0], 0.0)
        total[:, y0 - top : y1 - top, x0 - left : x1 - left] += np.nan_to_num(patch) * w
        weight_sum[:, y0 - top : y1 - top, x0 - left : x1 - left] += w
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(weight_sum > 0, total / weight_sum, np.nan).astype("float32")

"""Stitch per-chip predictions back into a raster with weighted blending of the overlaps.

Each chip contributes to its pixels with a separable triangular weight that peaks at the chip
centre and stays above zero at the border, so overlaps blend without seams and pixels covered by
a single edge chip still get a value. The raster is produced window by window: memory depends on
the window and the chip size, never on the area (nor on the width, as full-width strips would).
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np


def blend_weights(size: int) -> np.ndarray:
    """(size, size) weights: triangular in each direction, 1 at the centre, >0 at the border."""
    ramp = np.minimum(np.arange(size) + 0.5, size - np.arange(size) - 0.5) / (size / 2)
    return np.outer(ramp, ramp).astype("float32")


def strips(height: int, rows: int) -> Iterator[tuple[int, int]]:
    """Row ranges [start, stop) of ``rows`` rows covering ``height`` (or any axis)."""
    for start in range(0, height, rows):
        yield start, min(height, start + rows)


def windows(height: int, width: int, rows: int, cols: int) -> Iterator[tuple[tuple[int, int], tuple[int, int]]]:
    """(row range, column range) windows of at most ``rows`` x ``cols`` covering the raster, row-major."""
    for row_range in strips(height, rows):
        for col_range in strips(width, cols):
            yield row_range, col_range


def stitch_strip(
    read_chips,
    row_offsets: np.ndarray,
    col_offsets: np.ndarray,
    size: int,
    width: int,
    row_range: tuple[int, int],
    col_range: tuple[int, int] | None = None,
) -> np.ndarray:
    """Blend the chips overlapping rows ``row_range`` and columns ``col_range`` (default: all
    ``width`` columns) into a (channel, rows, columns) array.

    ``read_chips(indices)`` returns the predictions (n, channel, size, size) of those chips.
    NaN predictions (no data under the pixel) carry no weight; a pixel with no weight is NaN.
    """
    start, stop = row_range
    left, right = col_range or (0, width)
    hits = np.flatnonzero(
        (row_offsets < stop) & (row_offsets + size > start) & (col_offsets < right) & (col_offsets + size > left)
    )
    if not len(hits):
        raise ValueError(f"no chip covers rows {start}..{stop}, columns {left}..{right}: the chip grid does not "
                         f"span the raster")
    chips = read_chips(hits)
    weights = blend_weights(size)
    total = np.zeros((chips.shape[1], stop - start, right - left), dtype="float64")
    weight_sum = np.zeros_like(total)
    for chip, index in zip(chips, hits):
        r0, c0 = int(row_offsets[index]), int(col_offsets[index])
        top, bottom = max(start, r0), min(stop, r0 + size)
        first, last = max(left, c0), min(right, c0 + size)
        patch = chip[:, top - r0 : bottom - r0, first - c0 : last - c0]
        w = np.where(np.isfinite(patch), weights[top - r0 : bottom - r0, first - c0 : last - c0], 0.0)
        total[:, top - start : bottom - start, first - left : last - left] += np.nan_to_num(patch) * w
        weight_sum[:, top - start : bottom - start, first - left : last - left] += w
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(weight_sum > 0, total / weight_sum, np.nan).astype("float32")

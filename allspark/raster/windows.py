"""One window generator, by dimension name: training, inference and stitching all lay windows with it.

As xbatcher does, windows are asked for by dimension name (``{"y": 16, "x": 16}``), never by axis
number; unlike xbatcher, no edge is ever dropped. Two layouts:

- **tiles** (``overlap=None``): a partition of the array into non-overlapping windows; the last
  one in each direction is shorter (blocks of the scene store, windows of the COG writer);
- **chips** (``overlap`` given): windows of a fixed size at a fixed stride; the last one in each
  direction is snapped to the edge, so every pixel is covered. An axis shorter than the window
  gets one window at 0 (the caller pads it).
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Mapping

import numpy as np

Window = dict[str, slice]


def starts(length: int, size: int, overlap: int | None) -> list[int]:
    """Start offsets of the windows along one axis (see the module docstring for the two layouts)."""
    if overlap is None:
        return list(range(0, length, size))
    if length <= size:
        return [0]
    positions = list(range(0, length - size + 1, size - overlap))
    if positions[-1] != length - size:
        positions.append(length - size)
    return positions


def windows(sizes: Mapping[str, int], window: Mapping[str, int],
            overlap: Mapping[str, int] | None = None) -> Iterator[Window]:
    """Windows over an array of ``sizes`` (by dimension name), row-major in the order of ``window``.

    ``overlap=None`` tiles the array; otherwise windows of exactly ``window`` overlap by ``overlap``.
    """
    dims = list(window)
    axes = [
        [slice(start, min(start + window[dim], sizes[dim]) if overlap is None else start + window[dim])
         for start in starts(sizes[dim], window[dim], None if overlap is None else overlap[dim])]
        for dim in dims
    ]
    for combination in itertools.product(*axes):
        yield dict(zip(dims, combination))


def chip_origins(window: Window, height: int, width: int, size: int, overlap: int) -> tuple[np.ndarray, np.ndarray]:
    """Row and column origins (scene pixels) of the scene-wide chips that overlap ``window``.

    The chips are those of ``windows({"y": height, "x": width}, {"y": size, "x": size}, overlap)``:
    one layout for the whole scene, so a pixel's prediction does not depend on how the scene is
    cut into blocks.
    """
    rows = np.asarray(starts(height, size, overlap))
    cols = np.asarray(starts(width, size, overlap))
    rows = rows[(rows < window["y"].stop) & (rows + size > window["y"].start)]
    cols = cols[(cols < window["x"].stop) & (cols + size > window["x"].start)]
    row_grid, col_grid = np.meshgrid(rows, cols, indexing="ij")
    return row_grid.ravel(), col_grid.ravel()


def cut_chips(pixels: np.ndarray, rows: np.ndarray, cols: np.ndarray, size: int) -> np.ndarray:
    """The ``(n, band, size, size)`` chips at ``rows``, ``cols`` of a ``(band, y, x)`` array (one copy)."""
    views = np.lib.stride_tricks.sliding_window_view(pixels, (size, size), axis=(1, 2))
    return views.transpose(1, 2, 0, 3, 4)[rows, cols]

"""Cut a (band, y, x) raster into overlapping chips and store them in Zarr.

Chipping is done by dimension name, as xbatcher does, never by axis number. Windows are laid
with a fixed stride; the last window in each direction is snapped to the raster edge, so every
pixel up to the right and bottom edges is covered. Each chip keeps its pixel offsets and its
affine transform, so predictions can be stitched back and footprints drawn.
"""

from __future__ import annotations

import functools
import shutil
from dataclasses import dataclass
from pathlib import Path

import dask
import dask.array as dsa
import numpy as np
import xarray as xr
from affine import Affine
from zarr.codecs import BloscCodec

CHIP_DIMS = ("chip", "band", "chip_y", "chip_x")


def window_starts(length: int, size: int, overlap: int) -> list[int]:
    """Start offsets of windows of ``size`` along an axis of ``length``, edge window snapped.

    A raster shorter than a chip gets one window at 0 (the raster is padded to the chip size).
    """
    if length <= size:
        return [0]
    stride = size - overlap
    starts = list(range(0, length - size + 1, stride))
    if starts[-1] != length - size:
        starts.append(length - size)
    return starts


@dataclass(frozen=True)
class ChipGrid:
    """The chip layout over one raster: offsets of every chip and the raster's geometry."""

    height: int
    width: int
    size: int
    row_offsets: np.ndarray
    col_offsets: np.ndarray
    transform: Affine

    @classmethod
    def over(cls, raster: xr.DataArray, size: int, overlap: int) -> ChipGrid:
        rows = window_starts(raster.sizes["y"], size, overlap)
        cols = window_starts(raster.sizes["x"], size, overlap)
        row_grid, col_grid = np.meshgrid(rows, cols, indexing="ij")
        return cls(
            height=raster.sizes["y"],
            width=raster.sizes["x"],
            size=size,
            row_offsets=row_grid.ravel().astype(np.int64),
            col_offsets=col_grid.ravel().astype(np.int64),
            transform=raster.rio.transform(),
        )

    def __len__(self) -> int:
        return len(self.row_offsets)

    def chip_transforms(self) -> np.ndarray:
        """(chip, 6) affine coefficients of every chip, computed at once (a loop is slow for large areas)."""
        a, b, c, d, e, f = tuple(self.transform)[:6]
        cols, rows = self.col_offsets, self.row_offsets
        ones = np.ones(len(self), dtype="float64")
        return np.stack([a * ones, b * ones, c + a * cols + b * rows, d * ones, e * ones, f + d * cols + e * rows], axis=1)


def _pad_to_chip(raster: xr.DataArray, size: int) -> xr.DataArray:
    """Pad a raster smaller than one chip with NaN at the bottom/right, so every chip is full size."""
    pad = {dim: (0, max(0, size - raster.sizes[dim])) for dim in ("y", "x")}
    if not any(after for _, after in pad.values()):
        return raster
    return raster.pad(pad, constant_values=np.nan)


def _cut(window: np.ndarray, rows: np.ndarray, cols: np.ndarray, size: int) -> np.ndarray:
    """The (n, band, size, size) chips of a (band, y, x) window at offsets ``rows``, ``cols`` (one copy)."""
    views = np.lib.stride_tricks.sliding_window_view(window, (size, size), axis=(1, 2))
    return views.transpose(1, 2, 0, 3, 4)[rows, cols]


BLOCK_BYTES = 32 * 2**20
"""About this many bytes of chips per dask task: large enough that scheduling costs little next to
reading and compressing, small enough that memory does not depend on the area."""


def chip_blocks(count: int, chunk_chips: int, chip_bytes: int) -> list[tuple[int, int]]:
    """Chip ranges [start, stop) of whole ``chunk_chips`` chunks, about :data:`BLOCK_BYTES` each."""
    per_block = max(1, BLOCK_BYTES // (chip_bytes * chunk_chips)) * chunk_chips
    return [(start, min(start + per_block, count)) for start in range(0, count, per_block)]


def stack_chips(raster: xr.DataArray, grid: ChipGrid, chunk_chips: int = 64) -> dsa.Array:
    """A lazy (chip, band, chip_y, chip_x) dask array of all chips, in blocks of :func:`chip_blocks`.

    Each dask chunk reads the one raster window under its block of chips (consecutive chips in
    row-major order: a band of chip rows) and cuts them out: one task per block instead of one
    per chip, which keeps the graph and the scheduling overhead small for large areas. Dask
    chunks are whole multiples of ``chunk_chips`` (but the last), so they line up with Zarr
    chunks of that many chips.
    """
    padded = _pad_to_chip(raster.transpose("band", "y", "x"), grid.size)
    data = padded.data if isinstance(padded.data, dsa.Array) else dsa.from_array(padded.data)
    size, bands = grid.size, data.shape[0]
    chip_bytes = bands * size * size * data.dtype.itemsize
    blocks = []
    for start, stop in chip_blocks(len(grid), chunk_chips, chip_bytes):
        rows, cols = grid.row_offsets[start:stop], grid.col_offsets[start:stop]
        top, left = rows.min(), cols.min()
        window = data[:, top : rows.max() + size, left : cols.max() + size]
        cut = functools.partial(_cut, rows=rows - top, cols=cols - left, size=size)
        blocks.append(window.rechunk(window.shape).map_blocks(
            cut, new_axis=0, chunks=((stop - start,), (bands,), (size,), (size,)), dtype=data.dtype
        ))
    return dsa.concatenate(blocks)


def write_chips(raster: xr.DataArray, grid: ChipGrid, store: Path, chunk_chips: int) -> dict[str, int]:
    """Write all chips and the chip index to a Zarr v3 store; report how many hold any data.

    The Zarr chunks are aligned with chips (``chunk_chips`` whole chips per chunk), so an
    inference task reads exactly its chips. Chunks are grouped into one shard (one file) per
    block of :func:`stack_chips` and compressed with Blosc LZ4 + byte shuffle: thousands of
    small chunk files and zstd made the write several times slower than reading the source.
    Chips that are entirely nodata are flagged ``valid=False`` in the index and skipped
    downstream. Written to a temporary store and moved into place, so an interrupted run never
    leaves a store that looks complete.
    """
    chips = stack_chips(raster, grid, chunk_chips).astype("float32")
    valid = (~dsa.isnan(chips)).any(axis=(1, 2, 3))
    dataset = xr.Dataset(
        {"pixels": (CHIP_DIMS, chips), "valid": ("chip", valid)},
        coords={
            "chip": np.arange(len(grid)),
            "band": np.asarray(raster["band"].values.astype(str), dtype=object),
            "wavelength": ("band", np.asarray(raster["wavelength"].values, dtype="float64")),
            "row_offset": ("chip", grid.row_offsets),
            "col_offset": ("chip", grid.col_offsets),
            "transform": (("chip", "affine"), grid.chip_transforms()),
        },
        attrs={
            "height": grid.height,
            "width": grid.width,
            "chip_size": grid.size,
            "crs": raster.rio.crs.to_string(),
            "raster_transform": list(tuple(grid.transform)[:6]),
        },
    )
    shard = -(-chips.chunks[0][0] // chunk_chips) * chunk_chips  # one block of chips
    tmp = store.with_name(store.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    with dask.config.set(scheduler="threads"):  # one pass over the source feeds both arrays
        dataset.to_zarr(
            tmp,
            mode="w",
            zarr_format=3,
            consolidated=False,
            encoding={
                "pixels": {
                    "chunks": (chunk_chips, *chips.shape[1:]),
                    "shards": (shard, *chips.shape[1:]),
                    "compressors": (BloscCodec(cname="lz4", clevel=5, shuffle="shuffle"),),
                },
                "valid": {"chunks": (shard,)},  # a few bytes per chip: one small file per block, not per chunk
            },
        )
    shutil.rmtree(store, ignore_errors=True)
    tmp.rename(store)
    valid_flags = open_chips(store)["valid"].values
    return {"chips": len(grid), "valid_chips": int(valid_flags.sum()), "nodata_chips": int((~valid_flags).sum())}


def open_chips(store: Path) -> xr.Dataset:
    """Open a chip store written by :func:`write_chips` (lazily)."""
    return xr.open_zarr(store, consolidated=False, zarr_format=3)

"""Cut a (band, y, x) raster into overlapping chips and store them in Zarr.

Chipping is done by dimension name, as xbatcher does, never by axis number. Windows are laid
with a fixed stride; the last window in each direction is snapped to the raster edge, so every
pixel up to the right and bottom edges is covered. Each chip keeps its pixel offsets and its
affine transform, so predictions can be stitched back and footprints drawn.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import dask
import dask.array as dsa
import numpy as np
import xarray as xr
from affine import Affine

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
    def over(cls, raster: xr.DataArray, size: int, overlap: int) -> "ChipGrid":
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

    def chip_transform(self, index: int) -> Affine:
        return self.transform @ Affine.translation(int(self.col_offsets[index]), int(self.row_offsets[index]))


def _pad_to_chip(raster: xr.DataArray, size: int) -> xr.DataArray:
    """Pad a raster smaller than one chip with NaN at the bottom/right, so every chip is full size."""
    pad = {dim: (0, max(0, size - raster.sizes[dim])) for dim in ("y", "x")}
    if not any(after for _, after in pad.values()):
        return raster
    return raster.pad(pad, constant_values=np.nan)


def _cut(window: np.ndarray, rows: np.ndarray, cols: np.ndarray, size: int) -> np.ndarray:
    return np.stack([window[:, r : r + size, c : c + size] for r, c in zip(rows, cols, strict=True)])


def stack_chips(raster: xr.DataArray, grid: ChipGrid, chunk_chips: int = 64) -> dsa.Array:
    """A lazy (chip, band, chip_y, chip_x) dask array of all chips, one dask chunk per ``chunk_chips``.

    Each chunk reads the one raster window that covers its chips and cuts them out: one task per
    chunk instead of one per chip, which keeps the graph small for large areas.
    """
    padded = _pad_to_chip(raster.transpose("band", "y", "x"), grid.size)
    data = padded.data if isinstance(padded.data, dsa.Array) else dsa.from_array(padded.data)
    size, bands = grid.size, data.shape[0]
    blocks = []
    for start in range(0, len(grid), chunk_chips):
        rows, cols = grid.row_offsets[start : start + chunk_chips], grid.col_offsets[start : start + chunk_chips]
        top, left = rows.min(), cols.min()
        window = data[:, top : rows.max() + size, left : cols.max() + size]
        cut = dask.delayed(_cut)(window, rows - top, cols - left, size)
        blocks.append(dsa.from_delayed(cut, shape=(len(rows), bands, size, size), dtype=data.dtype))
    return dsa.concatenate(blocks)


def write_chips(raster: xr.DataArray, grid: ChipGrid, store: Path, chunk_chips: int) -> dict[str, int]:
    """Write all chips and the chip index to a Zarr v3 store; report how many hold any data.

    The Zarr chunks are aligned with chips (``chunk_chips`` whole chips per chunk), so an
    inference task reads exactly its chips. Chips that are entirely nodata are flagged
    ``valid=False`` in the index and skipped downstream. Written to a temporary store and moved
    into place, so an interrupted run never leaves a store that looks complete.
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
            "transform": (("chip", "affine"), np.array([tuple(grid.chip_transform(i))[:6] for i in range(len(grid))])),
        },
        attrs={
            "height": grid.height,
            "width": grid.width,
            "chip_size": grid.size,
            "crs": raster.rio.crs.to_string(),
            "raster_transform": list(tuple(grid.transform)[:6]),
        },
    )
    tmp = store.with_name(store.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    with dask.config.set(scheduler="threads"):  # one pass over the source feeds both arrays
        dataset.to_zarr(
            tmp,
            mode="w",
            zarr_format=3,
            consolidated=False,
            encoding={
                "pixels": {"chunks": (chunk_chips, chips.shape[1], grid.size, grid.size)},
                "valid": {"chunks": (chunk_chips,)},
            },
        )
    shutil.rmtree(store, ignore_errors=True)
    tmp.rename(store)
    valid_flags = open_chips(store)["valid"].values
    return {"chips": len(grid), "valid_chips": int(valid_flags.sum()), "nodata_chips": int((~valid_flags).sum())}


def open_chips(store: Path) -> xr.Dataset:
    """Open a chip store written by :func:`write_chips` (lazily)."""
    return xr.open_zarr(store, consolidated=False, zarr_format=3)

"""Chipping covers every pixel to the right and bottom edges; stitching reproduces a whole-image run."""

import numpy as np
import pytest
import rioxarray  # noqa: F401
import xarray as xr
from affine import Affine

from allspark import chips as chips_module
from allspark.chips import ChipGrid, open_chips, stack_chips, window_starts, write_chips
from allspark.stitch import blend_weights, stitch_strip, strips, windows


def make_raster(bands=3, height=45, width=38, seed=0) -> xr.DataArray:
    data = np.random.default_rng(seed).normal(size=(bands, height, width)).astype("float32")
    raster = xr.DataArray(
        data,
        dims=("band", "y", "x"),
        coords={
            "band": [f"B{i}" for i in range(bands)],
            "wavelength": ("band", np.linspace(0.45, 2.2, bands)),
            "y": 1000 - 30 * (np.arange(height) + 0.5),
            "x": 500 + 30 * (np.arange(width) + 0.5),
        },
    )
    return raster.rio.write_crs("EPSG:32619").rio.write_transform(Affine(30, 0, 500, 0, -30, 1000))


@pytest.mark.parametrize("length,size,overlap", [(45, 16, 4), (38, 16, 8), (16, 16, 4), (10, 16, 4), (100, 7, 3)])
def test_windows_cover_every_pixel_and_snap_to_the_edge(length, size, overlap):
    starts = window_starts(length, size, overlap)
    covered = np.zeros(max(length, size), bool)
    for s in starts:
        covered[s : s + size] = True
    assert covered[:length].all()
    assert starts[-1] + size == max(length, size)  # the last window ends exactly at the edge
    assert starts == sorted(set(starts))


def pixelwise(chips: np.ndarray) -> np.ndarray:
    """A per-pixel 'model': 2 output channels from the bands."""
    return np.stack([chips.sum(axis=1), np.tanh(chips[:, 0] * chips[:, -1])], axis=1)


@pytest.mark.parametrize("size,overlap,strip_rows", [(16, 4, 7), (12, 6, 64), (8, 0, 5)])
def test_stitching_equals_a_whole_image_run(size, overlap, strip_rows):
    raster = make_raster()
    grid = ChipGrid.over(raster, size, overlap)
    predictions = pixelwise(stack_chips(raster, grid).compute())
    whole = pixelwise(raster.values[None])[0]
    stitched = np.concatenate(
        [
            stitch_strip(lambda idx: predictions[idx], grid.row_offsets, grid.col_offsets, size, grid.width, rows)
            for rows in strips(grid.height, strip_rows)
        ],
        axis=1,
    )
    assert stitched.shape == whole.shape  # every pixel up to the right and bottom edges
    assert np.isfinite(stitched).all()
    np.testing.assert_allclose(stitched, whole, rtol=1e-5, atol=1e-5)


def test_blending_has_no_seams_between_differing_chips():
    """Chips that disagree blend smoothly: the weight is positive everywhere and peaks in the centre."""
    w = blend_weights(16)
    assert (w > 0).all() and w[7:9, 7:9].min() == w.max()
    raster = make_raster(bands=1, height=40, width=40)
    grid = ChipGrid.over(raster, 16, 8)
    # chip i predicts the constant i: a seam would show as a jump larger than the step between chips
    predictions = np.arange(len(grid), dtype="float32")[:, None, None, None] * np.ones((1, 1, 16, 16), "float32")
    stitched = stitch_strip(lambda idx: predictions[idx], grid.row_offsets, grid.col_offsets, 16, 40, (0, 40))[0]
    assert np.abs(np.diff(stitched, axis=1)).max() < 1.0


def test_nan_predictions_carry_no_weight():
    raster = make_raster(bands=1, height=20, width=20)
    grid = ChipGrid.over(raster, 8, 4)
    predictions = np.ones((len(grid), 1, 8, 8), "float32")
    predictions[:, :, :2, :2] = np.nan  # each chip's top-left corner has no data
    stitched = stitch_strip(lambda idx: predictions[idx], grid.row_offsets, grid.col_offsets, 8, 20, (0, 20))[0]
    assert np.isnan(stitched[0:2, 0:2]).all()  # only the raster corner is covered by nothing but NaN
    assert np.allclose(stitched[~np.isnan(stitched)], 1.0)


def test_chip_store_round_trip_and_nodata_chips(tmp_path):
    raster = make_raster(height=40, width=40)
    raster[:, :16, :16] = np.nan  # one all-nodata chip at the top-left
    grid = ChipGrid.over(raster, 16, 4)
    counts = write_chips(raster, grid, tmp_path / "chips.zarr", chunk_chips=4)
    assert counts == {"chips": len(grid), "valid_chips": len(grid) - 1, "nodata_chips": 1}
    chips = open_chips(tmp_path / "chips.zarr")
    assert chips["pixels"].dims == ("chip", "band", "chip_y", "chip_x")
    assert chips["pixels"].encoding["chunks"][0] == 4
    i = 5
    r, c = int(chips["row_offset"][i]), int(chips["col_offset"][i])
    np.testing.assert_array_equal(chips["pixels"][i].values, raster.values[:, r : r + 16, c : c + 16])
    t = chips["transform"].values[i]
    assert (t[2], t[5]) == (500 + 30 * c, 1000 - 30 * r)  # each chip's own transform
    assert not chips["valid"].values[0] and chips["valid"].values[1:].all()


def test_raster_smaller_than_a_chip_is_padded(tmp_path):
    raster = make_raster(height=10, width=12)
    grid = ChipGrid.over(raster, 16, 4)
    assert len(grid) == 1
    chips = stack_chips(raster, grid).compute()
    assert chips.shape == (1, 3, 16, 16)
    assert np.isnan(chips[0, :, 10:, :]).all() and np.isnan(chips[0, :, :, 12:]).all()


def test_chips_in_several_blocks_and_stitching_by_windows(tmp_path, monkeypatch):
    """Blocks of chips (one dask task and one Zarr shard each) hold exactly the raster's windows, and
    stitching window by window equals a whole-image run."""
    raster = make_raster(height=100, width=90)
    raster[:, :30, :30] = np.nan
    grid = ChipGrid.over(raster, 16, 4)
    monkeypatch.setattr(chips_module, "BLOCK_BYTES", 3 * 16 * 16 * 4 * 8 * 3)  # 3 chunks of 8 chips per block
    counts = write_chips(raster, grid, tmp_path / "chips.zarr", chunk_chips=8)
    chips = open_chips(tmp_path / "chips.zarr")
    assert len(grid) > 2 * 24 and chips["pixels"].encoding["shards"][0] == 24  # three blocks or more
    expected = np.stack([raster.values[:, r : r + 16, c : c + 16] for r, c in zip(grid.row_offsets, grid.col_offsets)])
    np.testing.assert_array_equal(chips["pixels"].values, expected)
    assert counts["valid_chips"] == int((~np.isnan(expected)).any(axis=(1, 2, 3)).sum())
    predictions = pixelwise(expected)
    stitched = np.zeros((2, grid.height, grid.width), "float32")
    for rows, cols in windows(grid.height, grid.width, 7, 11):
        stitched[:, slice(*rows), slice(*cols)] = stitch_strip(
            lambda idx: predictions[idx], grid.row_offsets, grid.col_offsets, 16, grid.width, rows, cols
        )
    whole = pixelwise(raster.values[None])[0]
    np.testing.assert_allclose(stitched, whole, rtol=1e-5, atol=1e-5)

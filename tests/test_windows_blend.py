"""Windows (tiles and chips, by dimension name) never drop an edge; blending chips reproduces a whole-image run."""

import numpy as np
import pytest

from allspark.raster.blend import blend, blend_weights
from allspark.raster.windows import chip_origins, cut_chips, starts, windows


def make_pixels(bands=3, height=45, width=38, seed=0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(bands, height, width)).astype("float32")


def pixelwise(chips: np.ndarray) -> np.ndarray:
    """A per-pixel 'model': 2 output channels from the bands."""
    return np.stack([chips.sum(axis=1), np.tanh(chips[:, 0] * chips[:, -1])], axis=1)


def blend_by_blocks(pixels: np.ndarray, size: int, overlap: int, block_y: int, block_x: int,
                    model=pixelwise) -> np.ndarray:
    """What inference does: per block, the scene-wide chips over it, cut in memory, predicted and blended."""
    _, height, width = pixels.shape
    out = None
    for block in windows({"y": height, "x": width}, {"y": block_y, "x": block_x}):
        rows, cols = chip_origins(block, height, width, size, overlap)
        predictions = model(cut_chips(pixels, rows, cols, size))
        part = blend(predictions, rows, cols, block)
        if out is None:
            out = np.full((part.shape[0], height, width), np.inf, "float32")
        out[:, block["y"], block["x"]] = part
    return out


@pytest.mark.parametrize("length,size,overlap", [(45, 16, 4), (38, 16, 8), (16, 16, 4), (10, 16, 4), (100, 7, 3)])
def test_windows_cover_every_pixel_and_snap_to_the_edge(length, size, overlap):
    positions = starts(length, size, overlap)
    covered = np.zeros(max(length, size), bool)
    for s in positions:
        covered[s : s + size] = True
    assert covered[:length].all()
    assert positions[-1] + size == max(length, size)  # the last window ends exactly at the edge
    assert positions == sorted(set(positions))


@pytest.mark.parametrize("height,width", [(45, 38), (16, 16), (10, 12), (100, 7), (1, 33)])
@pytest.mark.parametrize("window", [{"y": 16, "x": 16}, {"y": 7, "x": 11}, {"y": 4, "x": 3}])
def test_tiles_partition_the_array_without_dropping_an_edge(height, width, window):
    count = np.zeros((height, width), int)
    for tile in windows({"y": height, "x": width}, window):
        assert list(tile) == ["y", "x"]
        assert 0 <= tile["y"].start < tile["y"].stop <= height and 0 <= tile["x"].start < tile["x"].stop <= width
        count[tile["y"], tile["x"]] += 1
    assert (count == 1).all()  # every pixel, the last row and column included, in exactly one tile


@pytest.mark.parametrize("height,width", [(45, 38), (16, 16), (100, 7), (33, 17)])
@pytest.mark.parametrize("size,overlap", [(16, 4), (7, 3), (4, 0)])
def test_chips_never_drop_an_edge(height, width, size, overlap):
    sizes = {"y": height, "x": width}
    chips = list(windows(sizes, {"y": size, "x": size}, {"y": overlap, "x": overlap}))
    covered = np.zeros((max(height, size), max(width, size)), bool)
    for chip in chips:
        assert chip["y"].stop - chip["y"].start == size == chip["x"].stop - chip["x"].start  # never cut short
        covered[chip["y"], chip["x"]] = True
    assert covered[:height, :width].all()
    # the ordering is row-major and by name: x varies fastest
    assert [c["y"].start for c in chips] == sorted(c["y"].start for c in chips)


@pytest.mark.parametrize("height,width,size,overlap,block", [(45, 38, 16, 4, 16), (100, 90, 16, 4, 32),
                                                             (33, 17, 7, 3, 8), (10, 12, 16, 4, 16)])
def test_chip_origins_cover_every_pixel_of_every_block(height, width, size, overlap, block):
    all_rows, all_cols = chip_origins({"y": slice(0, height), "x": slice(0, width)}, height, width, size, overlap)
    layout = {(c["y"].start, c["x"].start) for c in
              windows({"y": height, "x": width}, {"y": size, "x": size}, {"y": overlap, "x": overlap})}
    assert set(zip(all_rows.tolist(), all_cols.tolist())) == layout  # the scene's one chip layout
    for window in windows({"y": height, "x": width}, {"y": block, "x": block}):
        rows, cols = chip_origins(window, height, width, size, overlap)
        assert set(zip(rows.tolist(), cols.tolist())) <= layout
        covered = np.zeros((max(height, size), max(width, size)), bool)
        for r, c in zip(rows, cols):
            covered[r : r + size, c : c + size] = True
        assert covered[window["y"], window["x"]].all(), f"block {window} has pixels no chip covers"


def test_a_scene_smaller_than_a_chip_gets_one_chip_at_the_origin():
    assert starts(10, 16, 4) == [0]
    rows, cols = chip_origins({"y": slice(0, 10), "x": slice(0, 12)}, 10, 12, 16, 4)
    assert rows.tolist() == [0] and cols.tolist() == [0]
    (chip,) = windows({"y": 10, "x": 12}, {"y": 16, "x": 16}, {"y": 4, "x": 4})
    assert chip == {"y": slice(0, 16), "x": slice(0, 16)}  # full size: the caller pads the scene


def test_cut_chips_are_the_pixels_at_their_origins_and_nodata_stays_nan():
    pixels = make_pixels(height=40, width=40)
    pixels[:, :16, :16] = np.nan  # one all-nodata chip at the top-left
    rows, cols = chip_origins({"y": slice(0, 40), "x": slice(0, 40)}, 40, 40, 16, 4)
    chips = cut_chips(pixels, rows, cols, 16)
    assert chips.shape == (len(rows), 3, 16, 16)
    for chip, r, c in zip(chips, rows, cols):
        np.testing.assert_array_equal(chip, pixels[:, r : r + 16, c : c + 16])
    valid = np.isfinite(chips).any(axis=(1, 2, 3))
    assert not valid[0] and valid[1:].all()


@pytest.mark.parametrize("size,overlap,block_y,block_x", [(16, 4, 7, 11), (12, 6, 64, 64), (8, 0, 5, 9),
                                                          (16, 8, 16, 16), (16, 11, 23, 17)])  # last: the default
def test_blending_by_blocks_equals_a_whole_image_run(size, overlap, block_y, block_x):
    pixels = make_pixels()
    whole = pixelwise(pixels[None])[0]
    blended = blend_by_blocks(pixels, size, overlap, block_y, block_x)
    assert blended.shape == whole.shape  # every pixel up to the right and bottom edges
    assert np.isfinite(blended).all()
    np.testing.assert_allclose(blended, whole, rtol=1e-5, atol=1e-5)


@pytest.mark.filterwarnings("ignore:Mean of empty slice")  # the all-nodata chips
def test_the_map_does_not_depend_on_the_block_size():
    """A model whose output depends on the whole chip (not per pixel): blocks of any size give one map."""
    pixels = make_pixels(height=70, width=53)
    pixels[:, :20, :25] = np.nan

    def chip_dependent(chips):
        mean = np.nanmean(chips, axis=(1, 2, 3))[:, None, None, None]
        return np.where(np.isfinite(chips[:, :1]), np.tanh(chips[:, :1] + mean), np.nan).astype("float32")

    blocks = ((16, 16), (32, 32), (70, 53), (9, 13))
    maps = [blend_by_blocks(pixels, 16, 4, by, bx, chip_dependent) for by, bx in blocks]
    for other in maps[1:]:
        np.testing.assert_allclose(other, maps[0], rtol=1e-6, atol=1e-6, equal_nan=True)
    assert np.isnan(maps[0][:, :20, :25]).all() and np.isfinite(maps[0][:, 20:, :]).all()


@pytest.mark.parametrize("value", [0.0, 0.25, -3.5])
def test_blend_of_constant_chips_returns_the_constant(value):
    height, width, size = 37, 29, 8
    for window in [{"y": slice(0, height), "x": slice(0, width)}, {"y": slice(8, 24), "x": slice(13, 29)}]:
        rows, cols = chip_origins(window, height, width, size, 3)
        chips = np.full((len(rows), 2, size, size), value, "float32")
        out = blend(chips, rows, cols, window)
        assert out.shape == (2, window["y"].stop - window["y"].start, window["x"].stop - window["x"].start)
        np.testing.assert_allclose(out, value, rtol=0, atol=1e-6)


def test_blending_has_no_seams_between_differing_chips():
    """Chips that disagree blend smoothly: the weight is positive everywhere and peaks in the centre."""
    w = blend_weights(16)
    assert (w > 0).all() and w[7:9, 7:9].min() == w.max()
    rows, cols = chip_origins({"y": slice(0, 40), "x": slice(0, 40)}, 40, 40, 16, 8)
    # chip i predicts the constant i: a seam would show as a jump larger than the step between chips
    chips = np.arange(len(rows), dtype="float32")[:, None, None, None] * np.ones((1, 1, 16, 16), "float32")
    blended = blend(chips, rows, cols, {"y": slice(0, 40), "x": slice(0, 40)})[0]
    assert np.abs(np.diff(blended, axis=1)).max() < 1.0


def test_nan_predictions_carry_no_weight():
    rows, cols = chip_origins({"y": slice(0, 20), "x": slice(0, 20)}, 20, 20, 8, 4)
    chips = np.ones((len(rows), 1, 8, 8), "float32")
    chips[:, :, :2, :2] = np.nan  # each chip's top-left corner has no data
    blended = blend(chips, rows, cols, {"y": slice(0, 20), "x": slice(0, 20)})[0]
    assert np.isnan(blended[0:2, 0:2]).all()  # only the raster corner is covered by nothing but NaN
    assert np.allclose(blended[~np.isnan(blended)], 1.0)


def test_windows_are_asked_for_by_dimension_name():
    tiles = list(windows({"x": 10, "y": 4}, {"x": 6, "y": 4}))
    assert tiles == [{"x": slice(0, 6), "y": slice(0, 4)}, {"x": slice(6, 10), "y": slice(0, 4)}]
    assert [list(t) for t in tiles] == [["x", "y"]] * 2  # in the order of the window mapping

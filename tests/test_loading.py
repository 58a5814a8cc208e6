"""Lazy loading of the real demo item with odc-stac and stackstac, and the scene store written once from it."""

from __future__ import annotations

import datetime as dt
import os
from pathlib import Path

import dask
import numpy as np
import pystac
import pytest
import rasterio
import xarray as xr
import zarr
from dask.callbacks import Callback

from allspark.demo_data import build_demo_catalog
from allspark.errors import CatalogError, NoDataError
from allspark.raster.catalog import BandSpec, CatalogConfig, load_catalog_config, resolve_bands, search_items
from allspark.raster.load import (
    AllNoDataError,
    CorruptAssetError,
    Encoding,
    check_readable,
    load_stack,
    no_data_error,
    physical_values,
    storage_encoding,
)
from allspark.raster.scene import open_scene, read_values, valid_pixels, write_scene
from tests.regions import CROP, UINT16_OFFSET, UINT16_SCALE, uint16_catalog

SHARED = Path(os.environ.get("ALLSPARK_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))
SOURCE = SHARED / "landsat7_nc_labeled"
BANDS = ["B1", "B2", "B3", "B4", "B5", "B7"]
AOI = (-78.70, 35.70, -78.65, 35.75)


def _demo_config(root: Path) -> CatalogConfig:
    if not SOURCE.is_dir():
        pytest.skip("needs ../shared/data/landsat7_nc_labeled (real Landsat 7 files)")
    catalog_json = build_demo_catalog(root / "landsat7-nc", source_dir=SOURCE)
    return load_catalog_config("demo").model_copy(update={"url_or_path": str(catalog_json)})


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> tuple[list[pystac.Item], list[BandSpec]]:
    config = _demo_config(tmp_path_factory.mktemp("cat"))
    items = search_items(config)
    return items, resolve_bands(items[0], BANDS, config)


@pytest.fixture(scope="module")
def encoding(demo) -> Encoding:
    items, bands = demo
    return storage_encoding(check_readable(items, bands), bands)


@pytest.fixture(scope="module")
def stacks(demo, encoding) -> dict[str, xr.DataArray]:
    items, bands = demo
    return {loader: load_stack(items, bands, encoding, loader=loader) for loader in ("rasterio", "odc", "stackstac")}


def test_mixed_source_dtypes_are_stored_as_float(demo, encoding: Encoding) -> None:
    """The demo's bands 1-5 are float32 (nodata -99999) and band 7 int16 (nodata -32768): no shared
    integer encoding, so DNs are stored as float32 with NaN for nodata."""
    items, bands = demo
    assert sorted(set(check_readable(items, bands))) == ["float32", "int16"]
    assert encoding.dtype == "float32" and np.isnan(encoding.nodata) and not encoding.is_integer
    uint16 = [BandSpec.model_validate(b.model_dump() | {"nodata": 0}) for b in bands]  # validated: nodata 0.0
    assert storage_encoding(["uint16"] * 6, uint16) == Encoding("uint16", 0.0)
    assert storage_encoding(["uint16"] * 5 + ["int16"], uint16).dtype == "float32"  # dtypes differ
    assert storage_encoding(["uint16"] * 6, bands).dtype == "float32"  # nodata differs between bands
    assert storage_encoding(["int16"] * 6, [BandSpec.model_validate(b.model_dump() | {"nodata": -32768})
                                            for b in bands]) == Encoding("int16", -32768.0)
    assert storage_encoding(["uint8"] * 6, [BandSpec.model_validate(b.model_dump() | {"nodata": -1})
                                            for b in bands]).dtype == "float32"  # nodata not a uint8


def test_loaders_agree_on_the_demo_item(stacks: dict[str, xr.DataArray]) -> None:
    odc, sst, rio = stacks["odc"], stacks["stackstac"], stacks["rasterio"]
    for stack in (odc, sst, rio):
        assert stack.dims == ("band", "y", "x") and stack.shape == (6, 443, 489)
        assert stack.dtype == np.float32 and isinstance(stack.data, dask.array.Array)
        assert list(stack["band"].values) == BANDS
        np.testing.assert_allclose(stack["wavelength"].values, [0.483, 0.56, 0.662, 0.835, 1.648, 2.206])
        assert stack.rio.crs.to_epsg() == 32119
        assert tuple(stack.rio.transform())[:6] == (28.5, 0.0, 630534.0, 0.0, -28.5, 228114.0)
        assert stack.attrs["stac_items"] == ["LE07_NC_2000"]
    xr.testing.assert_identical(odc["x"], sst["x"])
    xr.testing.assert_identical(odc["y"], sst["y"])
    assert odc.x.values[0] == 630534.0 + 14.25  # pixel centres
    np.testing.assert_allclose(odc.values, sst.values, equal_nan=True)
    np.testing.assert_array_equal(rio.values, odc.values)  # plain windows give odc-stac's pixels exactly
    xr.testing.assert_identical(rio["x"], odc["x"])


def test_auto_reads_windows_on_the_grid_and_resamples_off_it(demo, encoding) -> None:
    """The demo item lies on its native grid: "auto" reads it with rasterio windows (no odc-stac task
    in the graph). On another pixel size it needs resampling: "auto" takes odc-stac, and "rasterio"
    is refused with the reason."""
    items, bands = demo

    def read_by_windows(stack: xr.DataArray) -> bool:
        return any(name.startswith("rasterio-windows-") for name in stack.data.__dask_graph__().layers)

    assert read_by_windows(load_stack(items, bands[:1], encoding))
    coarse = load_stack(items, bands[:1], encoding, resolution=57.0)
    assert coarse.shape[1:] == (222, 245) and not read_by_windows(coarse)
    with pytest.raises(CatalogError, match="on the output grid"):
        load_stack(items, bands[:1], encoding, loader="rasterio", resolution=57.0)


@pytest.mark.parametrize("dtype,nodata", [("uint16", 0.0), ("int16", -32768.0), ("float32", float("nan"))])
@pytest.mark.parametrize("dates", [2, 3, 4, 7, 20])
def test_median_over_dates_matches_nanmedian(dtype: str, nodata: float, dates: int) -> None:
    """The min/max-network median (and the sort for long stacks) equals numpy's nanmedian over the
    valid values, rounded half to even for integer storage; no valid value gives nodata."""
    from allspark.raster.load import _median_of_valid

    rng = np.random.default_rng(dates)
    values = rng.integers(1, 40, (dates, 2, 30, 40)).astype(dtype)
    values[rng.random(values.shape) < 0.35] = nodata
    values[:, 0, 0, 0] = nodata  # a pixel without any valid date
    reference = values.astype("float64")
    if dtype != "float32":
        reference[values == nodata] = np.nan
    with np.errstate(all="ignore"), pytest.warns(RuntimeWarning):
        expected = np.nanmedian(reference, axis=0)
    if dtype != "float32":
        expected = np.where(np.isnan(expected), nodata, np.round(expected)).astype(dtype)
    median = _median_of_valid(values, Encoding(dtype, nodata))
    assert median.dtype == np.dtype(dtype)
    np.testing.assert_array_equal(median, expected)


@pytest.mark.parametrize("dtype,nodata", [("uint16", 0.0), ("int16", -32768.0)])
@pytest.mark.parametrize("dates", [2, 4, 5])
def test_median_of_complete_dates_near_the_dtype_maximum(dtype: str, nodata: float, dates: int) -> None:
    """Dates without nodata (copied, not masked) and values near the dtype's maximum: the mean of the
    middle two neither overflows nor loses the half-to-even rounding."""
    from allspark.raster.load import _median_of_valid

    top = np.iinfo(dtype).max - 1  # the maximum itself is where invalid values sort
    values = np.random.default_rng(dates).integers(top - 9, top + 1, (dates, 3, 20, 20)).astype(dtype)
    expected = np.round(np.median(values.astype("float64"), axis=0)).astype(dtype)
    np.testing.assert_array_equal(_median_of_valid(values, Encoding(dtype, nodata)), expected)


def test_values_are_the_source_pixels_with_nodata_as_nan(stacks: dict[str, xr.DataArray]) -> None:
    values = stacks["odc"].values
    for i, name in enumerate(["lsat7_2000_10.tif", "lsat7_2000_70.tif"]):
        with rasterio.open(SOURCE / name) as src:
            expected = src.read(1, masked=True).astype("float32").filled(np.nan)
        np.testing.assert_array_equal(values[0 if i == 0 else 5], expected)
    assert np.isnan(values[5]).sum() - np.isnan(values[0]).sum() > 40_000  # band 7 has more nodata


def test_load_is_lazy(demo, encoding) -> None:
    items, bands = demo
    started: list = []

    class Spy(Callback):
        def _start(self, dsk):
            started.append(dsk)

    with Spy():
        stack = load_stack(items, bands[:2], encoding, loader="odc", bbox_4326=AOI)
        load_stack(items, bands[:2], encoding, loader="stackstac", bbox_4326=AOI)
    assert not started, "load_stack must not compute anything"
    assert isinstance(stack.data, dask.array.Array)


@pytest.mark.parametrize("loader", ["rasterio", "odc", "stackstac"])
def test_bbox_clip_scale_offset(demo, encoding, stacks: dict[str, xr.DataArray], loader: str) -> None:
    items, bands = demo
    scaled = [b.model_copy(update={"scale": 0.5, "offset": 1.0}) for b in bands[:2]]
    clip = load_stack(items, scaled, encoding, loader=loader, bbox_4326=AOI, chunks=64)
    assert clip.shape == (2, 196, 160) and clip.data.chunksize[-2:] == (64, 64)
    full = stacks["odc"].sel(band=["B1", "B2"], x=clip.x, y=clip.y)
    np.testing.assert_array_equal(clip.values, full.values)  # the loader keeps digital numbers
    values = physical_values(clip.values, scaled, encoding)  # scale and offset are applied on reading
    assert values.dtype == np.float32
    np.testing.assert_allclose(values, full.values * 0.5 + 1.0, equal_nan=True)


def _shifted_item(item: pystac.Item, root: Path, day: int, add: float, blank_rows: int) -> pystac.Item:
    """A copy of the demo item with B1 = DN + ``add`` and the first ``blank_rows`` rows set to nodata."""
    with rasterio.open(item.assets["B1"].href) as src:
        profile, data = src.profile, src.read(1)
    data = np.where(data == src.nodata, data, data + add)
    data[:blank_rows] = src.nodata
    path = root / f"B1_{day}.tif"
    with rasterio.open(path, "w", **{**profile, "driver": "GTiff"}) as dst:
        dst.write(data, 1)
    clone = item.clone()
    clone.id = f"{item.id}_{day}"
    clone.datetime = dt.datetime(2000, 7, day, tzinfo=dt.UTC)
    clone.assets["B1"].href = str(path)
    return clone


@pytest.mark.parametrize("loader", ["rasterio", "odc", "stackstac"])
def test_composites_over_overlapping_items(demo, encoding, tmp_path: Path, loader: str) -> None:
    items, bands = demo
    late = _shifted_item(items[0], tmp_path, day=20, add=20, blank_rows=0)
    early = _shifted_item(items[0], tmp_path, day=10, add=10, blank_rows=100)
    b1 = bands[:1]
    with rasterio.open(items[0].assets["B1"].href) as src:
        dn = src.read(1, masked=True).astype("float32").filled(np.nan)
    median = load_stack([late, early], b1, encoding, loader=loader, composite="median").values[0]
    first = load_stack([late, early], b1, encoding, loader=loader, composite="first").values[0]
    np.testing.assert_allclose(median[100:], dn[100:] + 15, equal_nan=True)  # both valid: mean of two
    np.testing.assert_allclose(median[:100], dn[:100] + 20, equal_nan=True)  # only the late one valid
    np.testing.assert_allclose(first[100:], dn[100:] + 10, equal_nan=True)  # earliest wins
    np.testing.assert_allclose(first[:100], dn[:100] + 20, equal_nan=True)


def test_corrupt_asset_is_named(tmp_path: Path) -> None:
    config = _demo_config(tmp_path)
    items = search_items(config)
    bands = resolve_bands(items[0], ["B1", "B3"], config)
    check_readable(items, bands)
    href = items[0].assets["B3"].href
    Path(href).write_bytes(os.urandom(4096))
    with pytest.raises(CorruptAssetError) as err:
        check_readable(items, bands)
    assert err.value.href == href and href in str(err.value)


def test_no_data_error_names_the_stack() -> None:
    error = no_data_error(3, 4, ["B1", "B2"], ["a", "b"])
    assert isinstance(error, AllNoDataError) and isinstance(error, NoDataError)
    assert "3x4 px, bands B1, B2" in str(error) and "items: a, b" in str(error)


def test_bad_arguments(demo, encoding) -> None:
    items, bands = demo
    with pytest.raises(CatalogError, match="loader must be"):
        load_stack(items, bands, encoding, loader="gdal")
    with pytest.raises(CatalogError, match="composite must be"):
        load_stack([items[0], items[0]], bands, encoding, composite="mean")
    with pytest.raises(ValueError, match="does not overlap"):
        load_stack(items, bands, encoding, bbox_4326=(10, 10, 11, 11))
    with pytest.raises(ValueError, match="resolution="):
        load_stack(items, bands, encoding, crs="EPSG:4326")


# --- the scene store: one copy of the pixels, in the source's dtype ---------------------------------


@pytest.fixture(scope="module")
def uint16_demo(tmp_path_factory: pytest.TempPathFactory) -> tuple[list[pystac.Item], list[BandSpec], np.ndarray]:
    """The uint16 test catalog's items and bands, and the expected physical values (NaN for nodata)."""
    if not SOURCE.is_dir():
        pytest.skip("needs ../shared/data/landsat7_nc_labeled (real Landsat 7 files)")
    config = load_catalog_config(uint16_catalog(SOURCE, tmp_path_factory.mktemp("uint16")))
    items = search_items(config)
    bands = resolve_bands(items[0], BANDS, config)
    expected = []
    for name in ["10", "20", "30", "40", "50", "70"]:
        with rasterio.open(SOURCE / f"lsat7_2000_{name}.tif") as src:
            expected.append(src.read(1, window=CROP, masked=True).astype("float32").filled(np.nan))
    expected = np.stack(expected)
    expected[:, :8, :8] = np.nan
    expected[5, 40:44] = np.nan
    return items, bands, expected


@pytest.mark.parametrize("loader", ["rasterio", "odc", "stackstac"])
def test_integer_sources_load_as_their_own_dtype(uint16_demo, loader: str) -> None:
    items, bands, expected = uint16_demo
    assert {(b.scale, b.offset, b.nodata) for b in bands} == {(UINT16_SCALE, UINT16_OFFSET, 0)}
    encoding = storage_encoding(check_readable(items, bands), bands)
    assert encoding == Encoding("uint16", 0.0)
    stack = load_stack(items, bands, encoding, loader=loader, chunks=32)
    assert stack.dtype == np.uint16 and stack.shape == (6, 96, 96) and stack.rio.nodata == 0
    values = physical_values(stack.values, bands, encoding)
    np.testing.assert_allclose(values, expected, rtol=1e-5, atol=1e-4, equal_nan=True)


def test_scene_store_holds_each_pixel_once_in_the_source_dtype(uint16_demo, tmp_path: Path) -> None:
    items, bands, expected = uint16_demo
    encoding = storage_encoding(check_readable(items, bands), bands)
    raster = load_stack(items, bands, encoding, chunks=32)
    scene, valid = write_scene(raster, bands, encoding, tmp_path / "scene.zarr", block=40)
    assert valid == valid_pixels(tmp_path / "scene.zarr") == int(np.isfinite(expected).any(axis=0).sum())
    assert valid == 96 * 96 - 64  # band 7's own nodata rows still have data in the other bands
    assert not list(tmp_path.glob(".*")), "temporary store left behind"

    opened, dn = open_scene(tmp_path / "scene.zarr")
    assert opened == scene
    assert (scene.dtype, scene.nodata, scene.items) == ("uint16", 0.0, ["LE07_NC_2000"])
    assert [(b.name, b.scale, b.offset) for b in scene.bands] == [(n, UINT16_SCALE, UINT16_OFFSET) for n in BANDS]
    # one array, the scene's (band, y, x) grid exactly: no chip, no float copy, no pixel twice
    group = zarr.open_group(tmp_path / "scene.zarr", mode="r")
    assert [name for name, _ in group.arrays()] == ["dn"]
    assert dn.dtype == np.uint16 and dn.shape == (len(scene.bands), scene.height, scene.width) == (6, 96, 96)
    assert dn.chunks == (6, 480, 480) and dn.fill_value == 0  # whole 40-px blocks, about SCENE_CHUNK px
    assert dn.metadata.dimension_names == ("band", "y", "x")
    np.testing.assert_array_equal(dn[:], raster.values)
    assert (scene.transform, scene.crs) == (tuple(raster.rio.transform())[:6], "EPSG:32119")
    assert len(scene.blocks()) == 9 and scene.block_id(scene.blocks()[-1]) == "2-2"

    # scale, offset and nodata come back on reading, for the whole scene or any window
    whole = {"y": slice(0, 96), "x": slice(0, 96)}
    np.testing.assert_allclose(read_values(scene, dn, whole), expected, rtol=1e-5, atol=1e-4, equal_nan=True)
    window = {"y": slice(37, 81), "x": slice(5, 90)}
    np.testing.assert_array_equal(read_values(scene, dn, window), read_values(scene, dn, whole)[:, 37:81, 5:90])

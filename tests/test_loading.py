"""Lazy loading of the real demo item with odc-stac and stackstac."""

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
from dask.callbacks import Callback

from allspark.demo_data import build_demo_catalog
from allspark.loading import AllNoDataError, CorruptAssetError, check_readable, load_stack, no_data_error
from allspark.stac import BandSpec, CatalogConfig, load_catalog_config, resolve_bands, search_items

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
def stacks(demo) -> dict[str, xr.DataArray]:
    items, bands = demo
    return {loader: load_stack(items, bands, loader=loader) for loader in ("odc", "stackstac")}


def test_loaders_agree_on_the_demo_item(stacks: dict[str, xr.DataArray]) -> None:
    odc, sst = stacks["odc"], stacks["stackstac"]
    for stack in (odc, sst):
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


def test_values_are_the_source_pixels_with_nodata_as_nan(stacks: dict[str, xr.DataArray]) -> None:
    values = stacks["odc"].values
    for i, name in enumerate(["lsat7_2000_10.tif", "lsat7_2000_70.tif"]):
        with rasterio.open(SOURCE / name) as src:
            expected = src.read(1, masked=True).astype("float32").filled(np.nan)
        np.testing.assert_array_equal(values[0 if i == 0 else 5], expected)
    assert np.isnan(values[5]).sum() - np.isnan(values[0]).sum() > 40_000  # band 7 has more nodata


def test_load_is_lazy(demo) -> None:
    items, bands = demo
    started: list = []

    class Spy(Callback):
        def _start(self, dsk):
            started.append(dsk)

    with Spy():
        stack = load_stack(items, bands[:2], loader="odc", bbox_4326=AOI)
        load_stack(items, bands[:2], loader="stackstac", bbox_4326=AOI)
    assert not started, "load_stack must not compute anything"
    assert isinstance(stack.data, dask.array.Array)


@pytest.mark.parametrize("loader", ["odc", "stackstac"])
def test_bbox_clip_scale_offset(demo, stacks: dict[str, xr.DataArray], loader: str) -> None:
    items, bands = demo
    scaled = [b.model_copy(update={"scale": 0.5, "offset": 1.0}) for b in bands[:2]]
    clip = load_stack(items, scaled, loader=loader, bbox_4326=AOI, chunks=64)
    assert clip.shape == (2, 196, 160) and clip.data.chunksize[-2:] == (64, 64)
    full = stacks["odc"].sel(band=["B1", "B2"], x=clip.x, y=clip.y)
    np.testing.assert_allclose(clip.values, full.values * 0.5 + 1.0, equal_nan=True)


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


@pytest.mark.parametrize("loader", ["odc", "stackstac"])
def test_composites_over_overlapping_items(demo, tmp_path: Path, loader: str) -> None:
    items, bands = demo
    late = _shifted_item(items[0], tmp_path, day=20, add=20, blank_rows=0)
    early = _shifted_item(items[0], tmp_path, day=10, add=10, blank_rows=100)
    b1 = bands[:1]
    with rasterio.open(items[0].assets["B1"].href) as src:
        dn = src.read(1, masked=True).astype("float32").filled(np.nan)
    median = load_stack([late, early], b1, loader=loader, composite="median").values[0]
    first = load_stack([late, early], b1, loader=loader, composite="first").values[0]
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
    empty = xr.DataArray(np.full((2, 3, 4), np.nan, dtype="float32"), dims=("band", "y", "x"),
                         coords={"band": ["B1", "B2"]}, attrs={"stac_items": ["a", "b"]}).chunk()
    error = no_data_error(empty)
    assert isinstance(error, AllNoDataError)
    assert "3x4 px, bands B1, B2" in str(error) and "items: a, b" in str(error)


def test_bad_arguments(demo) -> None:
    items, bands = demo
    with pytest.raises(ValueError, match="floating"):
        load_stack(items, bands, dtype="uint16")
    with pytest.raises(ValueError, match="does not overlap"):
        load_stack(items, bands, bbox_4326=(10, 10, 11, 11))
    with pytest.raises(ValueError, match="resolution="):
        load_stack(items, bands, crs="EPSG:4326")

"""A large static STAC catalog for the speed and memory benchmarks, built once into the cache.

The demo scene (Landsat 7, 489 x 443 px, six bands) is too small to time a loader or to watch
memory grow, so each demo band is mirrored (numpy's ``symmetric`` padding, seamless) into a
4096 x 4096 px COG on the demo's grid (same origin, 28.5 m, EPSG:32119): uint16 digital numbers
1..255 with nodata 0, tiled 512 px, deflate with the horizontal predictor, overviews by
rio-cogeo. One item per year 2000-2003, each mirrored from a differently flipped demo scene, so
the time stack holds four different images. The top-left 489 x 443 px of the 2000 item are the
demo scene itself. Items carry ``eo:bands``, ``raster:bands`` and projection fields exactly as
the demo catalog does (its helpers write them), so :mod:`allspark.raster.catalog` reads them unchanged;
``bench/mosaic.yaml`` is the catalog config. About 0.4 GB under
``<cache>/bench/mosaic/``; never in the repository.

    python -m bench.mosaic          # build (idempotent) and print the catalog path
"""

from __future__ import annotations

import datetime as dt
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pystac
import rasterio
from pystac.extensions.eo import Band, EOExtension
from rasterio.crs import CRS
from rasterio.io import MemoryFile
from rasterio.warp import transform_bounds
from rio_cogeo.cogeo import cog_translate
from rio_cogeo.profiles import cog_profiles

from allspark.demo_data import (
    DEMO_BANDS,
    DEMO_EPSG,
    IMAGE_ITEM_ID,
    RasterInfo,
    add_cog_asset,
    add_projection,
    build_demo_catalog,
    build_static_catalog,
    footprint,
)
from allspark.settings import cache_dir
from allspark.raster.catalog import load_catalog_config, search_items

CONFIG = Path(__file__).resolve().with_name("mosaic.yaml")
COLLECTION = "bench-mosaic"
SIZE = 4096
BLOCK = 512
NODATA = 0
YEARS = (2000, 2001, 2002, 2003)
FLIPS = ((False, False), (True, False), (False, True), (True, True))
"""(up-down, left-right) flip of the demo scene before mirroring, per year."""


def mosaic_root() -> Path:
    return cache_dir() / "bench" / "mosaic"


def build_mosaic(root: Path | None = None) -> Path:
    """Build the mosaic catalog (idempotent, atomic: see :func:`build_static_catalog`); return its catalog.json."""

    def write(tmp: Path, final_root: Path) -> pystac.Catalog:
        demo = pystac.read_file(str(build_demo_catalog()))
        demo_item = next(item for item in demo.get_items(recursive=True) if item.id == IMAGE_ITEM_ID)
        bands = {band.key: _uint16(demo_item.assets[band.key].get_absolute_href()) for band in DEMO_BANDS}
        with rasterio.open(demo_item.assets[DEMO_BANDS[0].key].get_absolute_href()) as src:
            origin = src.transform
        transform = rasterio.Affine(origin.a, 0.0, origin.c, 0.0, origin.e, origin.f)
        raster = RasterInfo(shape=(SIZE, SIZE), transform=list(transform)[:6], bounds=_bounds(transform),
                            dtype="uint16", nodata=NODATA)
        jobs = [(year, flips, band) for year, flips in zip(YEARS, FLIPS, strict=True) for band in DEMO_BANDS]
        with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:  # GDAL compresses without the GIL
            list(pool.map(lambda job: _write_band(bands[job[2].key], job[1], transform,
                                                  _href(tmp, job[0], job[2].key)), jobs))
        collection = pystac.Collection(
            COLLECTION,
            description="Demo Landsat 7 bands mirrored into 4096 x 4096 px uint16 COGs, one item per year (benchmarks).",
            extent=pystac.Extent(
                pystac.SpatialExtent([footprint(raster)[1]]),
                pystac.TemporalExtent([[dt.datetime(YEARS[0], 7, 1, tzinfo=dt.UTC),
                                        dt.datetime(YEARS[-1], 7, 1, tzinfo=dt.UTC)]]),
            ),
            license="CC-BY-SA-3.0",
        )
        collection.add_items([_item(year, flips, raster, final_root)
                              for year, flips in zip(YEARS, FLIPS, strict=True)])
        catalog = pystac.Catalog("bench-mosaic", "AllSpark benchmark mosaic (synthetic, from the demo scene)")
        catalog.add_child(collection)
        return catalog

    return build_static_catalog(root if root is not None else mosaic_root(), write)


def _uint16(href: str) -> np.ndarray:
    """A demo band as uint16 digital numbers, nodata 0 (the source DNs are 1..255)."""
    with rasterio.open(href) as src:
        data = src.read(1, masked=True)
    return np.round(data.filled(NODATA)).astype("uint16")


def _bounds(transform: rasterio.Affine) -> tuple[float, float, float, float]:
    west, north = transform.c, transform.f
    return west, north + transform.e * SIZE, west + transform.a * SIZE, north


def _href(root: Path, year: int, key: str) -> Path:
    return root / COLLECTION / f"mosaic-{year}" / f"{key}.tif"


def _write_band(band: np.ndarray, flips: tuple[bool, bool], transform, path: Path) -> None:
    """Mirror a flipped demo band to SIZE x SIZE and write it as a COG (tiled 512, deflate, overviews)."""
    flipped = band[::-1] if flips[0] else band
    flipped = flipped[:, ::-1] if flips[1] else flipped
    data = np.pad(flipped, ((0, SIZE - band.shape[0]), (0, SIZE - band.shape[1])), mode="symmetric")
    profile = cog_profiles.get("deflate") | {"blockxsize": BLOCK, "blockysize": BLOCK, "predictor": 2}
    path.parent.mkdir(parents=True, exist_ok=True)
    with MemoryFile() as memory:
        with memory.open(driver="GTiff", width=SIZE, height=SIZE, count=1, dtype="uint16", nodata=NODATA,
                         crs=CRS.from_epsg(DEMO_EPSG), transform=transform) as dst:
            dst.write(data, 1)
        with memory.open() as src:
            cog_translate(src, str(path), profile, overview_resampling="nearest", in_memory=True, quiet=True)


def _item(year: int, flips: tuple[bool, bool], raster: RasterInfo, root: Path) -> pystac.Item:
    geometry, bbox = footprint(raster)
    item = pystac.Item(
        f"mosaic-{year}", geometry, bbox, dt.datetime(year, 7, 1, tzinfo=dt.UTC),
        properties={
            "title": f"Benchmark mosaic {year}",
            "description": (
                f"The demo Landsat 7 scene (flipped up-down: {flips[0]}, left-right: {flips[1]}) mirrored "
                f"into {SIZE} x {SIZE} px; uint16 DNs, nodata {NODATA}. Synthetic, for benchmarks."
            ),
            "gsd": raster.transform[0],
        },
    )
    add_projection(item, raster)
    for band in DEMO_BANDS:
        asset = add_cog_asset(item, band.key, _href(root, year, band.key), raster,
                               f"Band {band.key[1:]} ({band.common_name}), mirrored")
        EOExtension.ext(asset, add_if_missing=True).bands = [
            Band.create(name=band.key, common_name=band.common_name, center_wavelength=band.center_wavelength)
        ]
    EOExtension.ext(item, add_if_missing=True)
    return item


def year_range(year: int = YEARS[0]) -> tuple[str, str]:
    """The ``datetime`` range of a region config that selects the one item of ``year``."""
    return f"{year}-01-01", f"{year}-12-31"


def mosaic_items(years: tuple[int, ...] = YEARS) -> list[pystac.Item]:
    """The mosaic's items of ``years`` (built first if needed), found by the pipeline's own search."""
    build_mosaic()
    items = search_items(load_catalog_config(CONFIG), datetime=(year_range(min(years))[0], year_range(max(years))[1]))
    return [item for item in items if item.datetime.year in years]


def window_aoi(rows: int, cols: int) -> str:
    """The lon/lat bbox (``"minx,miny,maxx,maxy"``) of the top-left ``rows`` x ``cols`` px of the mosaic.

    A lon/lat box around a projected window is a little larger than it, so the loaded grid is
    too (about 1 %); callers report the pixels actually loaded.
    """
    build_mosaic()
    item = mosaic_items((YEARS[0],))[0]
    a, _, west, _, e, north = item.properties["proj:transform"][:6]
    bounds = transform_bounds(f"EPSG:{DEMO_EPSG}", "EPSG:4326", west, north + e * rows, west + a * cols, north)
    return ",".join(f"{v:.7f}" for v in bounds)


if __name__ == "__main__":
    print(build_mosaic())

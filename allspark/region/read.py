"""Reading a region's inputs: the plan (catalog search, bands, checks) and the labels on the scene's grid.

Everything that can be checked before work starts (config, catalog, AOI, dates, bands, readable
assets, cloud masks) is checked by :func:`plan_region`, so bad input fails before anything is written.
"""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

import numpy as np
import pystac
import rasterio
from pydantic import BaseModel, ConfigDict, Field
from rasterio.enums import Resampling
from rasterio.errors import RasterioError
from rasterio.warp import reproject, transform_bounds

from allspark.core.atomic import write_text
from allspark.core.location import Location, join, read_text
from allspark.errors import InputError, NoDataError
from allspark.raster.catalog import (BandSpec, CatalogConfig, CheckedStacIO, MaskSpec, NoItemsFound, load_aoi,
                                     load_catalog_config, resolve_bands, search_items)
from allspark.raster.filters import SearchFilters
from allspark.raster.load import (CorruptAssetError, Encoding, check_readable, gdal_reason, masked_fraction,
                                  output_grid, storage_encoding)
from allspark.raster.signing import signed, unsigned
from allspark.raster.windows import Window
from allspark.core.bundle import check_checkpoint
from allspark.region.config import MAX_MASKED_FRACTION, RegionConfig
from allspark.region.labels import check_labels

if TYPE_CHECKING:  # the scene store's module loads dask, xarray and zarr: not needed for the early checks
    from allspark.raster.scene import Scene

PLAN_FILE = "plan.json"


class AllItemsMaskedError(NoDataError):
    """Every item found is masked (clouds, shadows) over more of the AOI than a run accepts."""


class RegionPlan(BaseModel):
    """What a run reads: the catalog, the items found, the bands resolved on them, the grid and the encoding.

    With a cloud ``mask`` (the catalog's, unless the run turns masking off), ``masked_fraction`` holds each
    item's masked share over the AOI, and the items above the run's limit are left out of ``items`` and
    listed in ``items_skipped_masked``.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)
    catalog: CatalogConfig
    items: list[dict]
    bands: list[BandSpec]
    aoi_bbox: tuple[float, float, float, float] | None
    shape: tuple[int, int]
    dtype: str
    nodata: float | None  # None: NaN
    mask: MaskSpec | None = None
    masked_fraction: dict[str, float] = Field(default_factory=dict)
    items_skipped_masked: list[str] = Field(default_factory=list)

    @property
    def encoding(self) -> Encoding:
        return Encoding(self.dtype, math.nan if self.nodata is None else self.nodata)

    def pystac_items(self) -> list[pystac.Item]:
        return [pystac.Item.from_dict(d) for d in self.items]

    def readable_items(self) -> list[pystac.Item]:
        """The items to read assets from: signed afresh when the catalog signs (the plan keeps no token)."""
        return signed(self.pystac_items(), self.catalog.signing)

    def digest(self) -> str:
        """A short hash of the items and bands: part of the work folder's key."""
        return hashlib.sha256(self.model_dump_json().encode()).hexdigest()[:16]

    def local_assets(self) -> list[Path]:
        """The band and mask files on this machine's disk (their content keys the work folder too)."""
        keys = [band.asset for band in self.bands] + ([self.mask.asset] if self.mask is not None else [])
        hrefs = {item["assets"][key]["href"] for item in self.items for key in keys}
        paths = [Path(href.removeprefix("file://")) for href in sorted(hrefs) if "://" not in href.removeprefix("file://")]
        return [path for path in paths if path.is_file()]


def plan_region(catalog: str, aoi: str | None, datetime: tuple[str, str] | None, bands: list[str],
                resolution: float | None, search: SearchFilters | None = None, *, cloud_mask: bool = True,
                max_masked_fraction: float = MAX_MASKED_FRACTION) -> RegionPlan:
    """Search the catalog (with the ``search`` filters) and check every input; raise a clear error before any work
    is done.

    With ``cloud_mask`` and a catalog ``mask`` block, each item's mask is read over the AOI and the items masked
    over more than ``max_masked_fraction`` of it are skipped (:class:`AllItemsMaskedError` when none is left).
    """
    catalog_config = load_catalog_config(catalog)
    area = load_aoi(aoi) if aoi else None
    items = search_items(catalog_config, area, datetime, filters=search)
    if catalog_config.signing is not None:  # tokens expire: the plan keeps none, every read signs afresh
        items = unsigned(items)
    readable = {item.id: item for item in signed(items, catalog_config.signing)}
    # every item must carry the bands; the first item's specs describe them all
    specs = [resolve_bands(item, bands, catalog_config) for item in items][0]
    bbox = tuple(area.bounds) if area is not None else None
    mask = catalog_config.mask if cloud_mask else None
    fractions = {item.id: masked_fraction(readable[item.id], mask, bbox) for item in items} if mask is not None else {}
    skipped = [item.id for item in items if fractions.get(item.id, 0.0) > max_masked_fraction]
    if len(skipped) == len(items):
        shares = ", ".join(f"{item_id} {share:.1%}" for item_id, share in fractions.items())
        raise AllItemsMaskedError(
            f"every item found is masked (mask asset {mask.asset!r} of catalog {catalog}) over more than "
            f"max_masked_fraction = {max_masked_fraction:g} of the AOI: {shares}. Raise max_masked_fraction, search "
            f"other dates, or set cloud_mask: false to composite the clouds as they are")
    items = [item for item in items if item.id not in skipped]
    encoding = storage_encoding(check_readable([readable[item.id] for item in items], specs), specs)
    grid = output_grid(items, specs, bbox_4326=bbox, resolution=resolution)
    return RegionPlan(
        catalog=catalog_config,
        items=[item.to_dict(transform_hrefs=False) for item in items],
        bands=specs,
        aoi_bbox=bbox,
        shape=grid.shape,
        dtype=encoding.dtype,
        nodata=None if math.isnan(encoding.nodata) else encoding.nodata,
        mask=mask,
        masked_fraction=fractions,
        items_skipped_masked=skipped,
    )


def plan(config: RegionConfig) -> RegionPlan:
    """The run's plan (search and input checks) from its config: about a second, nothing written."""
    return plan_region(config.catalog, config.aoi, config.datetime, config.bands, config.resolution, config.search,
                       cloud_mask=config.cloud_mask, max_masked_fraction=config.max_masked_fraction)


def checked_plan(config: RegionConfig) -> RegionPlan:
    """The plan, with what it lets us check before any work: a checkpoint against the catalog's bands and
    wavelengths, or the user's labels against the grid the scene will be written on."""
    region_plan = plan(config)
    if config.checkpoint is not None:
        check_checkpoint(config, config.contract(region_plan.bands))
    elif config.train is not None and config.train.labels is not None:
        check_labels(config.train.labels, config.class_names, plan_grid(region_plan, config.resolution))
    return region_plan


def save_plan(plan: RegionPlan, work_dir: Location) -> None:
    """Keep the plan in the work folder: training and publishing read it from there."""
    write_text(plan.model_dump_json(), join(work_dir, PLAN_FILE))


def load_plan(work_dir: Location) -> RegionPlan:
    return RegionPlan.model_validate_json(read_text(join(work_dir, PLAN_FILE)))


class PixelGrid(NamedTuple):
    """A north-up pixel grid as a :class:`~allspark.raster.scene.Scene` describes its own: what labels are read onto."""

    crs: str
    transform: tuple[float, float, float, float, float, float]
    height: int
    width: int


def plan_grid(plan: RegionPlan, resolution: float | None) -> PixelGrid:
    """The grid the scene store will be written on (the plan's items and AOI, as :func:`plan_region` computes it):
    labels can be checked against it before any work."""
    grid = output_grid(plan.pystac_items(), plan.bands, bbox_4326=plan.aoi_bbox, resolution=resolution)
    return PixelGrid(f"EPSG:{grid.epsg}", tuple(grid.transform)[:6], *grid.shape)


def grid_window(bounds: tuple[float, float, float, float], grid: Scene | PixelGrid, margin: int) -> Window | None:
    """The grid's pixels over ``bounds`` (left, bottom, right, top in the grid's CRS) plus ``margin`` pixels, cut to
    the grid; None when that leaves none."""
    left, bottom, right, top = bounds
    a, _, c, _, e, f = grid.transform
    rows = (max(0, math.floor((f - top) / -e) - margin), min(grid.height, math.ceil((f - bottom) / -e) + margin))
    cols = (max(0, math.floor((left - c) / a) - margin), min(grid.width, math.ceil((right - c) / a) + margin))
    if rows[0] >= rows[1] or cols[0] >= cols[1]:
        return None
    return {"y": slice(*rows), "x": slice(*cols)}


def window_transform(grid: Scene | PixelGrid, window: Window) -> rasterio.Affine:
    """The transform of a window of the grid."""
    a, _, c, _, e, f = grid.transform
    return rasterio.Affine(a, 0, c + a * window["x"].start, 0, e, f + e * window["y"].start)


def find_label_item(catalog: CatalogConfig, image_items: list[pystac.Item], label_id: str | None) -> pystac.Item:
    """The STAC label item for the imagery: the one named, or the one whose source is an image item."""
    image_ids = {item.id for item in image_items}
    try:
        label_items = search_items(catalog, labels=True)
    except NoItemsFound as err:  # a training problem, not an area without imagery
        raise InputError(f"{err}: fine-tuning needs a STAC label item (or give a checkpoint)") from None
    for item in label_items:
        # read with pystac's own reader: a label item from a STAC API links its sources by file:// or http URLs,
        # which pystac-client's reader (the item's own) cannot open
        sources = {pystac.read_file(link.get_absolute_href(), stac_io=CheckedStacIO()).id
                   for link in item.get_links("source")}
        if (label_id is not None and item.id == label_id) or (label_id is None and sources & image_ids):
            return item
    wanted = f"label item {label_id!r}" if label_id else f"a label item whose source is one of {sorted(image_ids)}"
    raise InputError(f"catalog {catalog.url_or_path} has no {wanted} (STAC label extension)")


def label_href(item: pystac.Item) -> str:
    """The label raster of a label item: its asset with role "labels", else its first asset."""
    asset = next(iter(item.get_assets(role="labels").values()), None) or next(iter(item.assets.values()))
    return asset.get_absolute_href()


def read_labels(href: str, scene: Scene | PixelGrid, margin: int) -> tuple[Window, np.ndarray]:
    """The scene window around the labels (plus ``margin`` pixels of context) and the labels on it.

    Returns the window and its (y, x) class values, 0 = unlabelled (as is the label raster's nodata).
    Raises :class:`CorruptAssetError` naming the file when it cannot be read.
    """
    try:
        with rasterio.open(href) as src:
            labels, label_transform, label_crs = src.read(1), src.transform, src.crs
            left, bottom, right, top = transform_bounds(src.crs, scene.crs, *src.bounds)
            if src.nodata is not None:
                labels[labels == src.nodata] = 0
    except RasterioError as err:
        raise CorruptAssetError(href, f"the label raster cannot be read ({gdal_reason(err)})") from err
    window = grid_window((left, bottom, right, top), scene, margin)
    if window is None:
        raise InputError(f"the labels {href} do not overlap the imagery of the scene ({scene.width} x "
                         f"{scene.height} px, {scene.crs})")
    on_scene = np.zeros((window["y"].stop - window["y"].start, window["x"].stop - window["x"].start),
                        dtype=labels.dtype)
    reproject(labels, on_scene, src_transform=label_transform, src_crs=label_crs,
              dst_transform=window_transform(scene, window), dst_crs=scene.crs,
              resampling=Resampling.nearest, src_nodata=None, dst_nodata=0)
    return window, np.nan_to_num(on_scene).astype(np.int64)


def holdout_record(rows: np.ndarray, cols: np.ndarray, classes: np.ndarray, scene: Scene, window: Window) -> str:
    """The held-out pixels as JSON, with the grid their rows and columns refer to (to score any map by position)."""
    a, b, c, d, e, f = scene.transform
    transform = [a, b, c + a * window["x"].start, d, e, f + e * window["y"].start]
    return json.dumps({"rows": rows.tolist(), "cols": cols.tolist(), "classes": classes.tolist(),
                       "crs": scene.crs, "transform": transform})

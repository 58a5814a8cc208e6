"""Small real catalogs for flow tests: crops of the Landsat 7 NC demo data in ../shared/data."""

from __future__ import annotations

import copy
import datetime as dt
import json
import shutil
from pathlib import Path

import numpy as np
import pystac
import rasterio
import yaml
from rasterio.windows import Window
from shapely.geometry import box, mapping

from allspark.demo_data import build_demo_catalog
from allspark.raster.catalog import load_catalog_config, search_items
from allspark.region.config import RegionConfig
from allspark.settings import catalogs_dir

# 96 x 96 pixels holding 412 labelled pixels of 4 classes
CROP = Window(col_off=240, row_off=288, width=96, height=96)


def crop_source(source: Path, dest: Path, window: Window = CROP, blank: bool = False) -> Path:
    """Copy the demo source files, rasters cropped to ``window`` (all nodata if ``blank``)."""
    dest.mkdir(parents=True, exist_ok=True)
    for path in source.iterdir():
        if path.suffix != ".tif":
            shutil.copy(path, dest / path.name)
            continue
        with rasterio.open(path) as src:
            data = src.read(window=window)
            profile = src.profile | {
                "width": window.width, "height": window.height, "transform": src.window_transform(window),
                "tiled": False,
            }
            profile.pop("blockysize", None)
            profile.pop("blockxsize", None)
            if blank and path.name.startswith("lsat7"):
                data = np.full_like(data, src.nodata)
        with rasterio.open(dest / path.name, "w", **profile) as dst:
            dst.write(data)
    return dest


def catalog_yaml(catalog_json: Path, dest: Path, **changes) -> Path:
    """A copy of catalogs/demo.yaml pointing at ``catalog_json`` (with optional changes)."""
    config = yaml.safe_load((catalogs_dir() / "demo.yaml").read_text())
    config.update(url_or_path=str(catalog_json), **changes)
    dest.write_text(yaml.safe_dump(config))
    return dest


def small_catalog(source: Path, work: Path, blank: bool = False) -> Path:
    """Build a cropped demo catalog under ``work``; return its catalog config YAML."""
    cropped = crop_source(source, work / "source", blank=blank)
    catalog_json = build_demo_catalog(root=work / "catalog", source_dir=cropped)
    return catalog_yaml(catalog_json, work / "catalog.yaml")


def quick_config(catalog: Path, output_dir: Path, **changes) -> RegionConfig:
    """A region config small enough for tests: 1 LM layer, 8-pixel chips in 48-pixel blocks, 2 short epochs."""
    base = {
        "name": "test-region",
        "catalog": str(catalog),
        "chips": {"size": 8, "overlap": 4, "block": 48},
        "inference_batch": 64,
        "model": {"num_queries": 4, "stem_dim": 32, "bridge_depth": 1},
        "language": {"layers": 1},
        "train": {"epochs": 2, "batch_size": 32, "max_train_pixels": 96, "learning_rate": 3e-3},
        "output_dir": str(output_dir),
        "n_workers": 2,
    }
    base.update(changes)
    return RegionConfig.model_validate(base)


def crop_aoi(catalog: Path, dest: Path) -> Path:
    """The footprint of a small catalog's image item (its config YAML ``catalog``) as a GeoJSON AOI at ``dest``;
    named 'crop' after the file."""
    catalog_json = yaml.safe_load(catalog.read_text())["url_or_path"]
    image = next(i for i in pystac.Catalog.from_file(catalog_json).get_items(recursive=True) if i.id == "LE07_NC_2000")
    dest.write_text(json.dumps({"type": "Feature", "properties": {}, "geometry": mapping(box(*image.bbox))}))
    return dest


def quick_checkpoint(catalog: Path, folder: Path, name: str) -> Path:
    """A model bundle quickly fine-tuned on ``catalog`` (:func:`quick_config`), for tests that apply one model."""
    from allspark.region import steps

    config = quick_config(catalog, folder, name=name)
    return steps.train(config, steps.ingest(config)).checkpoint


# A uint16 copy of the demo bands: DN = value * 10 + 5 (0 = nodata), read back as DN * 0.1 - 0.5.
UINT16_SCALE, UINT16_OFFSET = 0.1, -0.5


def uint16_catalog(source: Path, work: Path, window: Window = CROP) -> Path:
    """A cropped demo catalog whose bands are uint16 COGs sharing nodata 0, with scale and offset.

    The top-left 8 x 8 pixels have no data in any band and band B7 has none in rows 40..43, so
    nodata travels through every band. Returns the catalog config YAML; the physical values of
    the bands are those of :func:`crop_source`'s crop (NaN for nodata).
    """
    cropped = crop_source(source, work / "source", window)
    for path in sorted(cropped.glob("lsat7_*.tif")):
        with rasterio.open(path) as src:
            values = src.read(1, masked=True).astype("float64").filled(np.nan)
            profile = src.profile
        dn = np.where(np.isnan(values), 0, np.round(values * 10 + 5)).astype("uint16")
        dn[:8, :8] = 0
        if path.name == "lsat7_2000_70.tif":
            dn[40:44] = 0
        with rasterio.open(path, "w", **(profile | {"dtype": "uint16", "nodata": 0})) as dst:
            dst.write(dn, 1)
    catalog_json = build_demo_catalog(root=work / "catalog", source_dir=cropped)
    bands = yaml.safe_load((catalogs_dir() / "demo.yaml").read_text())["bands"]
    bands = [band | {"scale": UINT16_SCALE, "offset": UINT16_OFFSET, "nodata": 0} for band in bands]
    return catalog_yaml(catalog_json, work / "catalog.yaml", bands=bands)


# id: (date, eo:cloud_cover or None, platform)
DATED_ITEMS = {
    "LE07_A": ("2000-03-10", 5.0, "landsat-7"),
    "LE07_B": ("2000-05-14", 45.0, "landsat-7"),
    "LE07_C": ("2000-07-01", 20.0, "landsat-7"),
    "LE07_D": ("2000-09-19", None, "landsat-7"),  # no eo:cloud_cover
    "LT05_E": ("2000-11-06", 12.5, "landsat-5"),
}


def dated_catalog(template_yaml: Path, dest: Path) -> Path:
    """A static collection of one item per ``DATED_ITEMS`` entry, copies of the template catalog's imagery item."""
    template = search_items(load_catalog_config(template_yaml))[0]
    base = template.to_dict(transform_hrefs=False)
    collection = pystac.Collection(
        template.collection_id, "Dated copies of the cropped Landsat 7 demo item (made-up cloud cover)",
        pystac.Extent(pystac.SpatialExtent([template.bbox]),
                      pystac.TemporalExtent([[dt.datetime(2000, 1, 1, tzinfo=dt.UTC), None]])),
    )
    for item_id, (day, cloud, platform) in DATED_ITEMS.items():
        data = copy.deepcopy(base)
        data.update(id=item_id, links=[])
        data.pop("collection", None)
        properties = data["properties"]
        for key in ("start_datetime", "end_datetime", "eo:cloud_cover"):
            properties.pop(key, None)
        properties.update(datetime=f"{day}T15:30:00Z", platform=platform)
        if cloud is not None:
            properties["eo:cloud_cover"] = cloud
        collection.add_item(pystac.Item.from_dict(data))
    collection.normalize_hrefs(str(dest))
    collection.save(pystac.CatalogType.SELF_CONTAINED)
    return catalog_yaml(dest / "collection.json", dest.parent / "dated.yaml")

"""Small real catalogs for flow tests: crops of the Landsat 7 NC demo data in ../shared/data."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import rasterio
import yaml
from rasterio.windows import Window

from allspark.config import RegionConfig
from allspark.demo_data import build_demo_catalog
from allspark.stac import catalogs_dir

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
    """A region config small enough for tests: 1 LM layer, 8-pixel chips, 2 short epochs."""
    base = {
        "name": "test-region",
        "catalog": str(catalog),
        "chips": {"size": 8, "overlap": 4, "batch": 64},
        "model": {"num_classes": 7, "llm_layers": 1, "num_queries": 4, "stem_dim": 32, "bridge_depth": 1},
        "train": {"epochs": 2, "batch_size": 32, "max_train_pixels": 96, "learning_rate": 3e-3},
        "output_dir": str(output_dir),
        "n_workers": 2,
    }
    base.update(changes)
    return RegionConfig.model_validate(base)

"""The steps of a region run, as plain functions: plan, tile, fine-tune, predict, publish.

The Prefect flow in ``flows/region.py`` calls these one task each; they know nothing of
Prefect, so they can be used from a notebook or another orchestrator as they are. Everything
that can be checked before work starts (config, catalog, AOI, dates, bands, readable assets, room
to write) is checked by :func:`plan_region`, and an area without data stops tiling; bad input
fails before anything is published. Intermediate stores live in a work folder keyed by the
config's fingerprint, outside the published output folder; :func:`run_lock` keeps two runs from
writing the same work or output folder at once, and :func:`published_catalog` says whether a
config's outputs are already published.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import shutil
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path

import geopandas as gpd
import numpy as np
import pystac
import rasterio
import rioxarray
import xarray as xr
import zarr
from pydantic import BaseModel, ConfigDict, ValidationError
from rasterio.enums import Resampling
from rioxarray.exceptions import NoDataInBounds
from shapely.geometry import box

from allspark import publish
from allspark.chips import ChipGrid, open_chips, write_chips
from allspark.config import RegionConfig
from allspark.finetune import classification_metrics, fine_tune
from allspark.inference import checkpoint_digest, load_predictor, save_predictor
from allspark.loading import check_readable, load_stack, no_data_error, output_grid
from allspark.model.model import AllSpark
from allspark.model.training import seed_everything
from allspark.paths import check_writable, folder_lock
from allspark.stac import (
    BandSpec,
    CatalogConfig,
    NoItemsFound,
    load_aoi,
    load_catalog_config,
    resolve_bands,
    search_items,
)


class RegionPlan(BaseModel):
    """What a run will read: the catalog, the items found and the bands resolved on them."""

    model_config = ConfigDict(extra="forbid")
    catalog: CatalogConfig
    items: list[dict]
    bands: list[BandSpec]
    aoi_bbox: tuple[float, float, float, float] | None

    def pystac_items(self) -> list[pystac.Item]:
        return [pystac.Item.from_dict(d) for d in self.items]


def plan_region(config: RegionConfig) -> RegionPlan:
    """Search the catalog and check every input; raise a clear error before any work is done."""
    catalog = load_catalog_config(config.catalog)
    aoi = load_aoi(config.aoi) if config.aoi else None
    items = search_items(catalog, aoi, config.datetime)
    # every item must carry the bands; the first item's specs describe them all
    bands = [resolve_bands(item, config.bands, catalog) for item in items][0]
    check_readable(items, bands)
    grid = output_grid(items, bands, bbox_4326=tuple(aoi.bounds) if aoi is not None else None,
                       resolution=config.resolution)
    check_writable(config.region_dir, config.work_dir(), min_free_bytes=storage_estimate(config, grid.shape))
    return RegionPlan(
        catalog=catalog,
        items=[item.to_dict(transform_hrefs=False) for item in items],
        bands=bands,
        aoi_bbox=tuple(aoi.bounds) if aoi is not None else None,
    )


def storage_estimate(config: RegionConfig, shape: tuple[int, int]) -> int:
    """Bytes a run over a raster of ``shape`` (rows, cols) writes at most, uncompressed.

    The work folder holds every pixel (size / stride)^2 times over in float32 chips (bands) and
    per-pixel probabilities (classes); the outputs hold a uint8 class map and float32 probabilities.
    """
    pixels = shape[0] * shape[1]
    copies = (config.chips.size / (config.chips.size - config.chips.overlap)) ** 2
    work = pixels * copies * 4 * (len(config.bands) + config.model.num_classes)
    return int(work + pixels * (1 + 4 * config.model.num_classes))


@contextlib.contextmanager
def run_lock(config: RegionConfig, on_wait: Callable[[str], None] | None = None) -> Iterator[None]:
    """Hold the config's work-folder lock, then its output-folder lock, for a whole run.

    Two runs with the same config share the work folder (chips, checkpoint, prediction stores)
    and two runs of one name publish to the same files: the second waits for the first, then
    finds its work cached. The locks are always taken in this order, so runs cannot deadlock.
    """
    with folder_lock(config.work_dir(), on_wait), folder_lock(config.region_dir, on_wait):
        yield


def published_catalog(config: RegionConfig) -> Path | None:
    """The STAC catalog of this config's published outputs, or None if they are not (all) there.

    Read from the output catalog itself: its item must carry a run config with the same
    fingerprint (``allspark:config``) and every asset it links must exist. The catalog is written
    last, so a run that stopped while publishing has none, or one of an earlier config.
    """
    path = config.region_dir / "catalog.json"
    if not path.is_file():
        return None
    try:
        items = list(pystac.Catalog.from_file(str(path)).get_items())
    except (pystac.STACError, OSError, ValueError, KeyError):
        return None  # unreadable: not published
    for item in items:
        try:
            stored = RegionConfig.model_validate(item.properties.get("allspark:config"))
        except ValidationError:
            continue
        if stored.fingerprint() == config.fingerprint() and all(
            Path(asset.get_absolute_href()).exists() for asset in item.assets.values()
        ):
            return path
    return None


def open_raster(config: RegionConfig, plan: RegionPlan) -> xr.DataArray:
    """The lazy (band, y, x) raster of the plan, clipped to the AOI."""
    return load_stack(
        plan.pystac_items(),
        plan.bands,
        loader=config.loader,
        bbox_4326=plan.aoi_bbox,
        resolution=config.resolution,
        composite=config.composite,
        chunks=max(1024, config.chips.size * 8),  # 512 px chunks read 2x slower (per-chunk overhead)
    )


def tile_region(config: RegionConfig, plan: RegionPlan) -> dict:
    """Chip the raster into ``<work>/chips.zarr``; return the store path and chip counts.

    An area without a single valid pixel stops the run here, before anything is published.
    """
    raster = open_raster(config, plan)
    grid = ChipGrid.over(raster, config.chips.size, config.chips.overlap)
    store = config.work_dir() / "chips.zarr"
    store.parent.mkdir(parents=True, exist_ok=True)
    counts = write_chips(raster, grid, store, config.chips.batch)
    release_freed_memory()
    if counts["valid_chips"] == 0:
        raise no_data_error(raster)
    return {"store": str(store), **counts}


def release_freed_memory() -> None:
    """Hand the heap memory freed by a step back to the OS (glibc's ``malloc_trim``; a no-op elsewhere).

    glibc keeps freed blocks of the threads that chipped or stitched the area, so without this the
    flow process stays larger after each step by an amount that grows with the area (measured:
    ~170 MB after tiling 16x the demo area), and the next step's peak stacks on top. Dask's
    workers do the same through their ``MALLOC_TRIM_THRESHOLD_``.
    """
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def find_label_item(catalog: CatalogConfig, image_items: list[pystac.Item], label_id: str | None) -> pystac.Item:
    """The STAC label item for the imagery: the one named, or the one whose source is an image item."""
    image_ids = {item.id for item in image_items}
    try:
        label_items = search_items(catalog, labels=True)
    except NoItemsFound as err:  # a training problem, not an area without imagery
        raise ValueError(f"{err}: fine-tuning needs a STAC label item (or give a checkpoint)") from None
    for item in label_items:
        sources = {link.resolve_stac_object().target.id for link in item.get_links("source")}
        if (label_id is not None and item.id == label_id) or (label_id is None and sources & image_ids):
            return item
    wanted = f"label item {label_id!r}" if label_id else f"a label item whose source is one of {sorted(image_ids)}"
    raise ValueError(f"catalog {catalog.url_or_path} has no {wanted} (STAC label extension)")


def labelled_raster(config: RegionConfig, plan: RegionPlan) -> tuple[xr.DataArray, np.ndarray, pystac.Item]:
    """The raster around the catalog's labels (plus one chip of context), read, and the labels on its grid.

    Returns the (band, y, x) raster, the (y, x) class values (0 = unlabelled) and the label item.
    """
    if config.train is None:
        raise ValueError(f"region {config.name!r} has no train settings: nothing to fine-tune")
    label_item = find_label_item(plan.catalog, plan.pystac_items(), config.train.label_item)
    asset = next(iter(label_item.get_assets(role="labels").values()), None) or next(iter(label_item.assets.values()))
    labels = rioxarray.open_rasterio(asset.get_absolute_href(), masked=False).squeeze("band", drop=True)
    raster = open_raster(config, plan)
    left, bottom, right, top = labels.rio.transform_bounds(raster.rio.crs)
    margin = config.chips.size * abs(raster.rio.resolution()[0])
    try:
        raster = raster.rio.clip_box(left - margin, bottom - margin, right + margin, top + margin)
    except NoDataInBounds:
        raise ValueError(
            f"the labels of item {label_item.id!r} ({asset.get_absolute_href()}) do not overlap the imagery of "
            f"region {config.name!r}"
        ) from None
    labels = labels.rio.reproject_match(raster, resampling=Resampling.nearest).fillna(0)
    return raster.load(), labels.values.astype(np.int64), label_item


def train_region(config: RegionConfig, plan: RegionPlan, log=print) -> dict:
    """Fine-tune on the catalog's labelled pixels; save the predictor; return its path and metrics.

    Only the part of the raster around the labels (plus one chip of context) is read.
    """
    raster, labels, label_item = labelled_raster(config, plan)
    seed_everything(config.seed)  # the initial weights too, not only the data order
    model = AllSpark(config.model.allspark_config(config.class_names))
    normalizer, metrics, holdout = fine_tune(
        model,
        image=raster.values,
        labels=labels,
        bands=config.bands,
        wavelengths=[b.center_wavelength for b in plan.bands],
        class_names=config.class_names,
        chip_size=config.chips.size,
        config=config.train,
        seed=config.seed,
        log=log,
    )
    directory = config.work_dir() / "checkpoint"
    partial = directory.with_name("checkpoint.partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    save_predictor(model, normalizer, partial)
    metrics["label_item"] = label_item.id
    (partial / "training_metrics.json").write_text(json.dumps(metrics, indent=2))
    (partial / "holdout_pixels.json").write_text(json.dumps({
        "rows": holdout.rows.tolist(), "cols": holdout.cols.tolist(), "classes": holdout.classes.tolist(),
        # the grid the rows and columns refer to: a map of another area finds the pixels by position
        "crs": raster.rio.crs.to_string(), "transform": list(raster.rio.transform())[:6],
    }))
    shutil.rmtree(directory, ignore_errors=True)
    partial.rename(directory)
    return {"checkpoint": str(directory), "metrics": metrics}


def prediction_store(config: RegionConfig, chips_store: str, checkpoint: str) -> str:
    """Create (or reopen, to resume) the Zarr group that inference tasks fill chunk by chunk.

    It holds per-pixel ``probabilities`` (chip, class, y, x), a per-chip ``class_index`` and
    ``score``, and a ``done`` flag per chunk of chips, set last by the task that filled it: a
    rerun after a crash skips the chunks marked done and redoes the rest.
    """
    chips = open_chips(Path(chips_store))
    store = config.work_dir() / f"predictions-{checkpoint_digest(Path(checkpoint))}.zarr"
    if store.exists():
        return str(store)
    n, batch, size, classes = chips.sizes["chip"], config.chips.batch, chips.attrs["chip_size"], config.model.num_classes
    partial = store.with_name(store.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    group = zarr.open_group(partial, mode="w", zarr_format=3)
    group.attrs["chunk_chips"] = batch
    group.create_array("probabilities", shape=(n, classes, size, size), chunks=(batch, classes, size, size),
                       dtype="float32", fill_value=np.nan, dimension_names=("chip", "class", "chip_y", "chip_x"))
    group.create_array("class_index", shape=(n,), chunks=(batch,), dtype="int16", fill_value=-1,
                       dimension_names=("chip",))
    group.create_array("score", shape=(n,), chunks=(batch,), dtype="float32", fill_value=np.nan,
                       dimension_names=("chip",))
    group.create_array("done", shape=(-(-n // batch),), chunks=(1,), dtype="bool", fill_value=False,
                       dimension_names=("chunk",))
    partial.rename(store)
    return str(store)


def pending_ranges(chips_store: str, predictions_store: str) -> tuple[list[tuple[int, int]], int]:
    """Chip ranges (one per chunk holding a valid chip) still to predict, and how many are done."""
    valid = open_chips(Path(chips_store))["valid"].values
    group = zarr.open_group(predictions_store, mode="r")
    batch, done = group.attrs["chunk_chips"], group["done"][:]
    ranges = [(s, min(s + batch, len(valid))) for s in range(0, len(valid), batch) if valid[s : s + batch].any()]
    pending = [r for r in ranges if not done[r[0] // batch]]
    return pending, len(ranges) - len(pending)


def predict_chip_range(chips_store: str, predictions_store: str, checkpoint: str, start: int, stop: int,
                       batch_size: int) -> int:
    """Predict chips [start, stop) (one chunk) into the prediction store; return the chips predicted.

    Besides per-pixel probabilities, each chip gets a class (argmax of its mean probability over
    pixels with data) and that probability as its score. The chunk's ``done`` flag is set last.
    """
    predictor = load_predictor(checkpoint)
    chips = open_chips(Path(chips_store)).isel(chip=slice(start, stop))
    valid = chips["valid"].values
    probs = np.full((stop - start, predictor.model.config.head.num_classes, *chips["pixels"].shape[2:]), np.nan, "float32")
    if valid.any():
        probs[valid] = predictor.predict_proba(
            chips["pixels"].values[valid], chips["wavelength"].values.tolist(), batch_size
        )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN chips: mean is NaN, as wanted
        mean = np.nanmean(probs, axis=(2, 3))
    group = zarr.open_group(predictions_store, mode="r+")
    group["probabilities"][start:stop] = probs
    group["class_index"][start:stop] = np.where(valid, np.nan_to_num(mean, nan=-1).argmax(axis=1), -1)
    group["score"][start:stop] = np.where(valid, np.nanmax(np.nan_to_num(mean, nan=-1), axis=1), np.nan)
    group["done"][start // group.attrs["chunk_chips"]] = True
    return int(valid.sum())


def _rgb_preview(raster: xr.DataArray, max_pixels: int = 1024) -> np.ndarray | None:
    """A 2-98 % stretched RGB array for the quicklook, read decimated (never the full raster)."""
    wanted = {}
    for name, wl in zip(raster["band"].values, raster["wavelength"].values):
        for colour, centre in (("red", 0.66), ("green", 0.56), ("blue", 0.49)):
            if abs(wl - centre) < 0.04:
                wanted[colour] = name
    if len(wanted) < 3:
        return None
    step = max(1, int(np.ceil(max(raster.sizes["y"], raster.sizes["x"]) / max_pixels)))
    rgb = raster.sel(band=[wanted["red"], wanted["green"], wanted["blue"]]).isel(
        y=slice(None, None, step), x=slice(None, None, step)
    ).values.astype("float64")
    lo, hi = np.nanpercentile(rgb, [2, 98], axis=(1, 2), keepdims=True)
    return np.nan_to_num(np.clip((rgb - lo) / np.where(hi > lo, hi - lo, 1), 0, 1)).transpose(1, 2, 0)


def _map_accuracy(classmap: Path, checkpoint: Path, class_names: list[str]) -> dict | None:
    """Score the published class map on the held-out pixels of training that it covers, if there are any.

    The pixels are found by position (their centres on the training raster's grid), so a map of
    another area, e.g. an AOI mapped with a model fine-tuned on the whole catalog, is scored on
    the held-out pixels inside it; None when it covers none of them or has another CRS.
    """
    holdout_file = checkpoint / "holdout_pixels.json"
    if not holdout_file.exists():
        return None
    holdout = json.loads(holdout_file.read_text())
    rows, cols, classes = (np.asarray(holdout[key], dtype=np.int64) for key in ("rows", "cols", "classes"))
    with rasterio.open(classmap) as src:
        if "transform" in holdout and len(rows):  # older checkpoints hold pixels of the map's own grid
            if rasterio.crs.CRS.from_user_input(holdout["crs"]) != src.crs:
                return None
            xs, ys = rasterio.transform.xy(rasterio.Affine(*holdout["transform"]), rows, cols)
            rows, cols = (np.asarray(v, dtype=np.int64) for v in rasterio.transform.rowcol(src.transform, xs, ys))
        inside = (rows >= 0) & (rows < src.height) & (cols >= 0) & (cols < src.width)
        if not inside.any():
            return None
        mapped = src.read(1)[rows[inside], cols[inside]].astype(np.int64) - 1
    return classification_metrics(classes[inside], mapped, class_names)


def publish_region(
    config: RegionConfig,
    plan: RegionPlan,
    chips_store: str,
    predictions_store: str,
    checkpoint: str,
    run_stats: dict,
) -> dict:
    """Stitch and write the region's outputs and their STAC catalog; return the output paths."""
    started = time.perf_counter()
    out = config.region_dir
    out.mkdir(parents=True, exist_ok=True)
    publish.remove_stale_temporaries(out)
    chips = open_chips(Path(chips_store))
    predictions = zarr.open_group(predictions_store, mode="r")
    probabilities = predictions["probabilities"]
    attrs = chips.attrs
    rows, cols = chips["row_offset"].values, chips["col_offset"].values
    paths = {
        "classmap": out / "classmap.tif",
        "probabilities": out / "probabilities.tif",
        "chips": out / "chips.parquet",
        "quicklook": out / "quicklook.png",
        "metrics": out / "metrics.json",
        "config": out / "config.yaml",
        "model": out / "model",
    }
    class_pixels = publish.write_prediction_rasters(
        lambda idx: probabilities.get_orthogonal_selection((idx,)),
        rows, cols, attrs["chip_size"], attrs["height"], attrs["width"], attrs["crs"], attrs["raster_transform"],
        config.class_names, paths["classmap"], paths["probabilities"],
    )
    release_freed_memory()

    item_ids = [d["id"] for d in plan.items]
    class_index = predictions["class_index"][:]
    predicted = np.flatnonzero(class_index >= 0)
    size = attrs["chip_size"]
    frame = gpd.GeoDataFrame(
        {
            "chip_id": predicted,
            "predicted_class": np.asarray(config.class_names)[class_index[predicted]],
            "class_value": (class_index[predicted] + 1).astype("uint8"),
            "score": predictions["score"][:][predicted],
            "source_item_ids": [",".join(item_ids)] * len(predicted),
        },
        geometry=[
            box(t[2], t[5] + t[4] * size, t[2] + t[0] * size, t[5]) for t in chips["transform"].values[predicted]
        ],
        crs=attrs["crs"],
    )
    publish.write_geoparquet(frame, paths["chips"])
    publish.write_quicklook(
        paths["classmap"], _rgb_preview(open_raster(config, plan)), config.class_names,
        f"AllSpark land cover: {config.name}", paths["quicklook"],
    )
    release_freed_memory()

    checkpoint_path = Path(checkpoint)
    training_file = checkpoint_path / "training_metrics.json"
    pixel_area = abs(attrs["raster_transform"][0] * attrs["raster_transform"][4])
    metrics = {
        "region": config.name,
        "fine_tuning": json.loads(training_file.read_text()) if training_file.exists() else None,
        "map_holdout": _map_accuracy(paths["classmap"], checkpoint_path, config.class_names),
        "class_area_m2": {name: n * pixel_area for name, n in class_pixels.items()},
        "chips": run_stats,
        "publish_seconds": round(time.perf_counter() - started, 1),
    }
    if metrics["fine_tuning"]:
        metrics["holdout_accuracy"] = metrics["fine_tuning"]["holdout"]["overall_accuracy"]
    publish.write_json(metrics, paths["metrics"])
    publish.write_text(config.to_yaml(), paths["config"])
    publish.copy_checkpoint(checkpoint_path, paths["model"])

    model = load_predictor(checkpoint).model
    assets = {
        "classmap": pystac.Asset("classmap.tif", title="Land-cover class map", media_type=pystac.MediaType.COG,
                                 roles=["data"], extra_fields={"classification:classes": [
                                     {"value": i + 1, "name": n} for i, n in enumerate(config.class_names)]}),
        "probabilities": pystac.Asset("probabilities.tif", title="Class probabilities (one band per class)",
                                      media_type=pystac.MediaType.COG, roles=["data"]),
        "chips": pystac.Asset("chips.parquet", title="Chips: footprint, predicted class, score",
                              media_type="application/vnd.apache.parquet", roles=["data"]),
        "quicklook": pystac.Asset("quicklook.png", title="Quicklook with legend", media_type=pystac.MediaType.PNG,
                                  roles=["overview"]),
        **publish.run_assets("Held-out accuracy and run statistics"),
    }
    model_fields = publish.mlm_fields(
        model,
        architecture="AllSpark multispectral: DOFA wavelength-conditioned stem, Lynx resampler bridge, "
                     "frozen causal LM with bottleneck adapters, linear per-pixel head",
        tasks=["semantic-segmentation"],
        inputs=[{
            "name": "multispectral chip",
            "bands": config.bands,
            "input": {"shape": [-1, len(config.bands), size, size], "dim_order": ["batch", "bands", "height", "width"],
                      "data_type": "float32"},
        }],
        outputs=[{
            "name": "land cover",
            "tasks": ["semantic-segmentation"],
            "result": {"shape": [-1, len(config.class_names), size, size],
                       "dim_order": ["batch", "channel", "height", "width"], "data_type": "float32"},
            "classification:classes": [{"value": i + 1, "name": n} for i, n in enumerate(config.class_names)],
        }],
    )
    time_range, sources = publish.item_sources(plan.pystac_items())
    catalog = publish.write_stac_catalog(
        out,
        item_id=f"{config.name}-landcover",
        crs=attrs["crs"],
        bounds=_raster_bounds(attrs),
        time_range=time_range,
        sources=sources,
        assets=assets,
        properties={"allspark:config": config.model_dump(mode="json"), "allspark:inputs": item_ids},
        model_fields=model_fields,
    )
    return {k: str(v) for k, v in {**paths, "catalog": catalog}.items()} | {"metrics_summary": metrics}


def _raster_bounds(attrs: dict) -> tuple[float, float, float, float]:
    a, _, c, _, e, f = attrs["raster_transform"]
    return (c, f + e * attrs["height"], c + a * attrs["width"], f)

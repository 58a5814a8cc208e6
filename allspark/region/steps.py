"""The four steps of a region run: ingest (search + scene store), train, predict (block by block), publish.

- **ingest** searches the catalog, checks every input and writes the scene once, in its storage
  dtype, to ``scene.zarr`` in the run's work folder (keyed by the config, the items and what the
  local band files hold). An area without a single valid pixel stops the run here.
- **train** fine-tunes on the catalog's labelled pixels read from the scene store (or takes the
  config's checkpoint) and saves one model bundle.
- **predict** reads each block of the scene with a halo, cuts the overlapping chips in memory,
  predicts them in batches, blends the overlaps and writes the block's class probabilities; a
  block marked done is never predicted again, so an interrupted run resumes exactly.
- **publish** writes the class-map and probability COGs, the chips GeoParquet, the quicklook,
  metrics, config and model, then the STAC catalog last.

They know nothing of Prefect; :func:`run_lock` keeps two runs from writing the same work or
output folder at once, and :func:`published_catalog` says whether a config's outputs are published.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import json
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import geopandas as gpd
import numpy as np
import pandas as pd
import pystac
import rasterio
from pydantic import ValidationError
from pystac.extensions import eo
from shapely import box

from allspark.core.publish import (copy_bundle, item_sources, mlm_fields, published, run_assets, write_geoparquet,
                                   write_stac_catalog)
from allspark.core.atomic import is_complete, published_set, write_json, write_text
from allspark.core.bundle import bundle_digest, check_checkpoint, load_bundle, local_bundle, save_bundle
from allspark.core.location import Location, exists, join, parse_location, read_catalog
from allspark.core.steps import Ingested, Log, Mapper, Predicted, Published, Trained, given_checkpoint, serial_map
from allspark.core.storage import check_writable, content_digest, folder_lock, work_dir
from allspark.errors import ConfigError
from allspark.raster import outputs
from allspark.raster.blend import blend
from allspark.raster.catalog import BandSpec
from allspark.raster.load import empty_bands_error, load_stack, loader_chunk, no_data_error, physical_values
from allspark.raster.scene import (
    Scene,
    scene_chunk,
    block_chips,
    block_done,
    create_probabilities,
    open_scene,
    pending_blocks,
    read_chip_tables,
    read_values,
    valid_pixels,
    valid_pixels_per_band,
    write_block,
    write_scene,
)
from allspark.raster.windows import Window
from allspark.region.config import RegionConfig
from allspark.region.inputs import Normalizer, classification_metrics, fine_tune, predict_chips
from allspark.region.labels import read_user_labels
from allspark.region.read import (
    RegionPlan,
    checked_plan,
    find_label_item,
    holdout_record,
    label_href,
    load_plan,
    read_labels,
    save_plan,
)

if TYPE_CHECKING:
    import zarr

    from allspark.model.model import AllSpark

SCENE_STORE = "scene.zarr"
MODEL_DIR = "model"
HOLDOUT_FILE = "holdout_pixels.json"


# -- ingest ---------------------------------------------------------------------------------------


def scene_loader_chunk(config: RegionConfig, plan: RegionPlan) -> int:
    """The loader's chunk side for this plan: whole store chunks, about 64 MiB of DNs over all dates and bands."""
    return loader_chunk(len(plan.items) * len(plan.bands), np.dtype(plan.dtype).itemsize,
                        scene_chunk(config.chips.block))


def storage_estimate(config: RegionConfig, plan: RegionPlan) -> int:
    """Bytes a run writes at most, uncompressed: the scene once, probabilities, a uint8 class map and float32 COG."""
    pixels = plan.shape[0] * plan.shape[1]
    classes = len(config.class_names)
    return int(pixels * (len(plan.bands) * np.dtype(plan.dtype).itemsize + 4 * classes + 1 + 4 * classes))


def ingest(config: RegionConfig, log: Log = print) -> Ingested:
    """Search, check, and write the scene once to ``<work>/scene.zarr`` (kept when already complete)."""
    region_plan = checked_plan(config)
    work = work_dir(config.name, f"{config.fingerprint()}:{region_plan.digest()}", region_plan.local_assets(),
                    root=config.work_location)
    check_writable(config.publish_location, work, min_free_bytes=storage_estimate(config, region_plan))
    save_plan(region_plan, work)
    store = join(work, SCENE_STORE)
    if is_complete(store):
        scene, _ = open_scene(store)
    else:
        raster = load_stack(
            region_plan.readable_items(), region_plan.bands, region_plan.encoding, loader=config.loader,
            bbox_4326=region_plan.aoi_bbox, resolution=config.resolution, composite=config.composite,
            chunks=scene_loader_chunk(config, region_plan), mask=region_plan.mask,
        )
        scene, _ = write_scene(raster, region_plan.bands, region_plan.encoding, store, config.chips.block)
        release_freed_memory()
    valid = valid_pixels(store)
    if valid == 0:
        raise no_data_error(scene.height, scene.width, config.bands, scene.items)
    empty = [band for band, count in valid_pixels_per_band(store).items() if count == 0]
    if empty:
        raise empty_bands_error(empty, scene.height, scene.width, scene.items)
    log(f"scene: {scene.width} x {scene.height} px, {len(scene.bands)} bands ({scene.dtype}), "
        f"{valid} pixels with data, items {', '.join(scene.items)}")
    return Ingested(work_dir=work, store=store, summary={
        "items": len(region_plan.items), "height": scene.height, "width": scene.width, "valid_pixels": valid,
        "blocks": len(scene.blocks()), "masked_fraction": region_plan.masked_fraction,
        "items_skipped_masked": len(region_plan.items_skipped_masked),
    })


def release_freed_memory() -> None:
    """Hand the heap memory freed by a step back to the OS (glibc's ``malloc_trim``; a no-op elsewhere).

    glibc keeps freed blocks of the threads that loaded or wrote the area, so without this the
    flow process stays larger after each step by an amount that grows with the area, and the next
    step's peak stacks on top. Dask's workers do the same through their ``MALLOC_TRIM_THRESHOLD_``.
    """
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


# -- train ----------------------------------------------------------------------------------------


def train(config: RegionConfig, ingested: Ingested, log: Log = print) -> Trained:
    """Fine-tune on the labelled pixels of the catalog's label item or of the user's ``train.labels`` file (the
    image read from the scene store) and save the bundle.

    Only the part of the scene around the labels (plus one chip of context) is read.
    """
    if config.checkpoint is not None:
        check_checkpoint(config, config.contract(load_plan(ingested.work_dir).bands))
        return given_checkpoint(config.checkpoint)
    if config.train is None:
        raise ConfigError(f"region {config.name!r} has no train settings: nothing to fine-tune")
    region_plan = load_plan(ingested.work_dir)
    user_labels = config.train.labels
    if user_labels is None:
        label_item = find_label_item(region_plan.catalog, region_plan.pystac_items(), config.train.label_item)
        href = label_href(label_item)
        label_files = [Path(href.removeprefix("file://"))]
        labels_name = f"the labels {href} (STAC item {label_item.id})"
        read = functools.partial(read_labels, href)
    else:
        label_files, labels_name = user_labels.files(), f"the labels {user_labels.path}"
        read = functools.partial(read_user_labels, user_labels, config.class_names)
    directory = join(ingested.work_dir, model_dir(label_files))
    if is_complete(directory):
        return given_checkpoint(directory)
    from allspark.model.model import AllSpark
    from allspark.model.training import seed_everything

    scene, dn = open_scene(ingested.store)
    window, labels = read(scene, margin=config.chips.size)
    image = read_values(scene, dn, window)
    seed_everything(config.seed)  # the initial weights too, not only the data order
    model = AllSpark(config.model.allspark_config(config.class_names, config.language))
    normalizer, metrics, holdout = fine_tune(
        model, image=image, labels=labels, bands=config.bands,
        wavelengths=[b.center_wavelength for b in scene.bands], class_names=config.class_names,
        chip_size=config.chips.size, config=config.train, seed=config.seed, log=log,
        labels_name=labels_name,
    )
    if user_labels is None:
        metrics["label_item"] = label_item.id
    else:
        metrics["labels"]["file"] = str(user_labels.path)
    save_bundle(directory, model, normalizer, config, metrics, extra_files={
        HOLDOUT_FILE: holdout_record(holdout.rows, holdout.cols, holdout.classes, scene, window)},
        contract=config.contract(scene.bands))
    return Trained(checkpoint=directory, metrics=metrics)


def model_dir(label_files: list[Path]) -> str:
    """The fine-tuned bundle's folder in the work folder, named by what the label files on this machine hold
    (a Shapefile's sidecars too), so labels fixed or replaced in place train a new model (the scene, which does
    not read them, is kept)."""
    local = [path for path in label_files if path.is_file()]
    return f"{MODEL_DIR}-{content_digest(local)}" if local else MODEL_DIR


# -- predict --------------------------------------------------------------------------------------


def predict(config: RegionConfig, ingested: Ingested, trained: Trained, mapper: Mapper = serial_map) -> Predicted:
    """Predict every block not yet done into ``<work>/predictions-<model digest>.zarr``.

    ``mapper`` runs :func:`predict_block` over the pending blocks (a flow passes one that fans
    them out as tasks on Dask).
    """
    scene, _ = open_scene(ingested.store)
    store = join(ingested.work_dir, f"predictions-{bundle_digest(trained.checkpoint)}.zarr")
    create_probabilities(store, scene, len(config.class_names))
    # largest first: the small edge blocks fill in at the end, so no worker waits long on the last one
    pending = sorted(pending_blocks(store, scene), key=_block_area, reverse=True)
    task = functools.partial(predict_block, ingested.store, store, trained.checkpoint, config.chips.size,
                             config.chips.overlap, config.inference_batch)
    chips = sum(mapper(task, pending))
    return Predicted(store=store, summary={
        "blocks": len(scene.blocks()), "blocks_predicted": len(pending),
        "blocks_done_before": len(scene.blocks()) - len(pending), "chips_predicted": chips,
    })


def _block_area(window: Window) -> int:
    return (window["y"].stop - window["y"].start) * (window["x"].stop - window["x"].start)


def predict_block(scene_store: Location, predictions: Location, checkpoint: Location, size: int, overlap: int,
                  batch_size: int, window: Window) -> int:
    """Predict one block: cut the chips over it (block plus halo) in memory, blend, write; return chips predicted.

    The chip layout is the scene's (see :func:`allspark.raster.windows.chip_origins`), so the map
    does not depend on the blocks. Each chip whose origin lies in the block gets a row in the
    block's chip table: its class (argmax of its mean probability over pixels with data) and that
    probability as its score.

    A block already done is left as it is (0 chips): Dask runs a task again when the worker that
    held its result died, and a block must never be predicted twice.
    """
    scene, dn = open_scene(scene_store)
    if block_done(predictions, scene, window):
        return 0
    bundle = load_bundle(checkpoint, Normalizer)
    blended, probabilities, rows, cols = predict_window(bundle.model, bundle.preprocessing, scene, dn, window, size,
                                                        overlap, batch_size)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # pixels without data are NaN, as wanted
        mean = np.nanmean(probabilities, axis=(2, 3))
    owned = ((rows >= window["y"].start) & (rows < window["y"].stop)
             & (cols >= window["x"].start) & (cols < window["x"].stop))
    table = pd.DataFrame({
        "row": rows[owned], "col": cols[owned],
        "class_index": np.nan_to_num(mean[owned], nan=-1).argmax(axis=1).astype("int16"),
        "score": np.nanmax(np.nan_to_num(mean[owned], nan=-1), axis=1).astype("float32"),
    })
    write_block(predictions, scene, window, blended, table)
    return len(rows)


def predict_window(model: AllSpark, normalizer: Normalizer, scene: Scene, dn: zarr.Array, window: Window, size: int, overlap: int,
                   batch_size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Class probabilities of a scene window, as the map has them: the scene's chips over it, predicted and blended.

    Returns the blended ``(class, y, x)`` probabilities (NaN without data) and the chips with data under them:
    their ``(n, class, size, size)`` probabilities and scene origins ``rows``, ``cols``.
    """
    chips, rows, cols = block_chips(scene, dn, window, size, overlap)
    valid = np.isfinite(chips).any(axis=(1, 2, 3))
    probabilities = predict_chips(model, normalizer, chips[valid], [b.center_wavelength for b in scene.bands],
                                  batch_size)
    return blend(probabilities, rows[valid], cols[valid], window), probabilities, rows[valid], cols[valid]


# -- publish --------------------------------------------------------------------------------------


def publish(config: RegionConfig, ingested: Ingested, trained: Trained, predicted: Predicted) -> Published:
    """Write the region's outputs from the probability store and their STAC catalog, switched in as one set."""
    started = time.perf_counter()
    region_plan = load_plan(ingested.work_dir)
    scene, dn = open_scene(ingested.store)
    files = {"classmap": "classmap.tif", "probabilities": "probabilities.tif", "chips": "chips.parquet",
             "quicklook": "quicklook.png", "metrics": "metrics.json", "config": "config.yaml", "model": "model"}
    with published_set(config.publish_location) as folder:
        paths = {name: folder / file for name, file in files.items()}
        class_pixels = outputs.write_prediction_rasters(predicted.store, scene, config.class_names,
                                                        paths["classmap"], paths["probabilities"])
        release_freed_memory()
        item_ids = [d["id"] for d in region_plan.items]
        write_geoparquet(chip_frame(read_chip_tables(predicted.store), scene, config, item_ids), paths["chips"])
        outputs.write_quicklook(paths["classmap"], rgb_preview(scene, dn), config.class_names,
                                f"AllSpark land cover: {config.name}", paths["quicklook"])
        metrics = {
            "region": config.name,
            "fine_tuning": trained.metrics,
            "map_holdout": map_accuracy(paths["classmap"], trained.checkpoint, config.class_names),
            "class_area_m2": {name: n * scene.pixel_area for name, n in class_pixels.items()},
            "ingest": dict(ingested.summary),
            "inference": dict(predicted.summary),
            "publish_seconds": round(time.perf_counter() - started, 1),
        }
        if trained.metrics:
            metrics["holdout_accuracy"] = trained.metrics["holdout"]["overall_accuracy"]
        write_json(metrics, paths["metrics"])
        write_text(config.to_yaml(), paths["config"])
        copy_bundle(trained.checkpoint, paths["model"])
        time_range, sources = item_sources(region_plan.pystac_items())
        write_stac_catalog(
            folder,
            config.name,
            item_id=f"{config.name}-landcover",
            crs=scene.crs,
            bounds=scene.bounds,
            time_range=time_range,
            sources=sources,
            assets=_assets(config, scene.bands),
            properties={"allspark:config": config.model_dump(mode="json"), "allspark:inputs": item_ids},
            model_fields=_model_fields(config, trained.checkpoint),
            extensions=[eo.SCHEMA_URI],
        )
    return published(config.publish_location, files, metrics)


def chip_frame(chips: pd.DataFrame, scene: Scene, config: RegionConfig, item_ids: list[str]) -> gpd.GeoDataFrame:
    """Footprint, predicted class and score of every chip with data."""
    a, _, c, _, e, f = scene.transform
    size = config.chips.size
    rows, cols = chips["row"].to_numpy(), chips["col"].to_numpy()
    index = chips["class_index"].to_numpy().astype(np.int64)
    x0, y0 = c + a * cols, f + e * rows
    return gpd.GeoDataFrame(
        {
            "chip_row": rows, "chip_col": cols,
            "predicted_class": np.asarray(config.class_names)[index],
            "class_value": (index + 1).astype("uint8"),
            "score": chips["score"].to_numpy(),
            "source_item_ids": [",".join(item_ids)] * len(chips),
        },
        geometry=box(x0, y0 + e * size, x0 + a * size, y0),
        crs=scene.crs,
    )


def rgb_preview(scene: Scene, dn, max_pixels: int = 1024) -> np.ndarray | None:
    """A 2-98 % stretched RGB array for the quicklook, read decimated from the scene store."""
    wanted = {}
    for index, band in enumerate(scene.bands):
        for colour, centre in (("red", 0.66), ("green", 0.56), ("blue", 0.49)):
            if abs(band.center_wavelength - centre) < 0.04:
                wanted[colour] = index
    if len(wanted) < 3:
        return None
    step = max(1, int(np.ceil(max(scene.height, scene.width) / max_pixels)))
    order = [wanted["red"], wanted["green"], wanted["blue"]]
    sampled = dn.get_orthogonal_selection((order, slice(None, None, step), slice(None, None, step)))
    rgb = physical_values(sampled, [scene.bands[i] for i in order], scene.encoding).astype("float64")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # an all-nodata band: black
        lo, hi = np.nanpercentile(rgb, [2, 98], axis=(1, 2), keepdims=True)
    return np.nan_to_num(np.clip((rgb - lo) / np.where(hi > lo, hi - lo, 1), 0, 1)).transpose(1, 2, 0)


def map_accuracy(classmap: Path, checkpoint: Location, class_names: list[str]) -> dict | None:
    """Score the published class map on the held-out pixels of training that it covers, if there are any.

    The pixels are found by position (their centres on the training grid), so a map of another
    area, e.g. an AOI mapped with a model fine-tuned on the whole catalog, is scored on the
    held-out pixels inside it; None when it covers none of them or has another CRS.
    """
    holdout_file = local_bundle(checkpoint) / HOLDOUT_FILE
    if not holdout_file.exists():
        return None
    holdout = json.loads(holdout_file.read_text())
    rows, cols, classes = (np.asarray(holdout[key], dtype=np.int64) for key in ("rows", "cols", "classes"))
    with rasterio.open(classmap) as src:
        if not len(rows) or rasterio.crs.CRS.from_user_input(holdout["crs"]) != src.crs:
            return None
        xs, ys = rasterio.transform.xy(rasterio.Affine(*holdout["transform"]), rows, cols)
        rows, cols = (np.asarray(v, dtype=np.int64) for v in rasterio.transform.rowcol(src.transform, xs, ys))
        inside = (rows >= 0) & (rows < src.height) & (cols >= 0) & (cols < src.width)
        if not inside.any():
            return None
        mapped = src.read(1)[rows[inside], cols[inside]].astype(np.int64) - 1
    return classification_metrics(classes[inside], mapped, class_names)


def _assets(config: RegionConfig, bands: list[BandSpec]) -> dict[str, pystac.Asset]:
    """The published files; the model's input bands are described on its asset (EO ``eo:bands``, as MLM asks)."""
    assets = {
        "classmap": pystac.Asset("classmap.tif", title="Land-cover class map", media_type=pystac.MediaType.COG,
                                 roles=["data"], extra_fields={"classification:classes": _classes(config)}),
        "probabilities": pystac.Asset("probabilities.tif", title="Class probabilities (one band per class)",
                                      media_type=pystac.MediaType.COG, roles=["data"]),
        "chips": pystac.Asset("chips.parquet", title="Chips: footprint, predicted class, score",
                              media_type="application/vnd.apache.parquet", roles=["data"]),
        "quicklook": pystac.Asset("quicklook.png", title="Quicklook with legend", media_type=pystac.MediaType.PNG,
                                  roles=["overview"]),
        **run_assets("Held-out accuracy and run statistics"),
    }
    assets["model"].extra_fields["eo:bands"] = [{"name": band.name, "center_wavelength": band.center_wavelength}
                                                for band in bands]
    return assets


def _classes(config: RegionConfig) -> list[dict]:
    """The class map's classes (values 1.., 0 is nodata); the name is the description MLM's schema requires."""
    return [{"value": i + 1, "name": name, "description": name} for i, name in enumerate(config.class_names)]


def _model_fields(config: RegionConfig, checkpoint: Location) -> dict:
    size, classes = config.chips.size, config.class_names
    return mlm_fields(
        checkpoint,
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
            "result": {"shape": [-1, len(classes), size, size],
                       "dim_order": ["batch", "channel", "height", "width"], "data_type": "float32"},
            "classification:classes": _classes(config),
        }],
    )


# -- runs -----------------------------------------------------------------------------------------


@contextlib.contextmanager
def run_lock(config: RegionConfig, on_wait: Callable[[str], None] | None = None) -> Iterator[None]:
    """Hold the config's work lock, then its output-folder lock, for a whole run.

    Two runs with the same config share the work folder and two runs of one name publish to the
    same files: the second waits for the first, then finds its work done. The locks are always
    taken in this order, so runs cannot deadlock. Both are locks on this machine, also for outputs
    on object storage (see :func:`~allspark.core.storage.folder_lock`).
    """
    with (folder_lock(join(config.work_location, f"{config.name}-{config.fingerprint()}"), on_wait),
          folder_lock(config.publish_location, on_wait)):
        yield


def published_catalog(config: RegionConfig) -> Location | None:
    """The STAC catalog of this config's published outputs, or None if they are not (all) there.

    Read from the output catalog itself, in a local folder or on object storage: its item must
    carry a run config with the same fingerprint (``allspark:config``) and every asset it links
    must exist. The catalog is written last, so a run that stopped while publishing has none, or
    one of an earlier config.
    """
    path = join(config.publish_location, "catalog.json")
    try:
        items = list(read_catalog(path).get_items())
    except (pystac.STACError, OSError, ValueError, KeyError):
        return None  # absent or unreadable: not published
    for item in items:
        try:
            stored = RegionConfig.model_validate(item.properties.get("allspark:config"))
        except ValidationError:
            continue
        if stored.fingerprint() == config.fingerprint() and all(
            exists(parse_location(asset.get_absolute_href())) for asset in item.assets.values()
        ):
            return path
    return None

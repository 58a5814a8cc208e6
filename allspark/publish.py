"""Write the published outputs of a region run: COGs, GeoParquet, quicklook and STAC.

Every file is written under a temporary name in its destination folder and moved into place with
``os.replace``, so a reader (or a crash) never sees a half-written output; the STAC catalog is
written last, so it only ever links complete files.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator, Sequence
from datetime import datetime, timezone
from pathlib import Path

import geopandas as gpd
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pyproj  # noqa: E402
import pystac  # noqa: E402
import rasterio  # noqa: E402
from matplotlib.colors import ListedColormap  # noqa: E402
from matplotlib.patches import Patch  # noqa: E402
from pystac.extensions import mlm  # noqa: E402
from rasterio.warp import transform_bounds  # noqa: E402
from rio_cogeo.cogeo import cog_translate  # noqa: E402
from rio_cogeo.profiles import cog_profiles  # noqa: E402
from shapely.geometry import box, mapping  # noqa: E402

from allspark.stitch import stitch_strip, windows  # noqa: E402

CLASS_NODATA = 0
# Colours for the Landsat 7 NC classes, in class order; other class sets cycle through tab10.
DEFAULT_COLOURS = ["#d7191c", "#f5d300", "#a6d96a", "#8c7a3f", "#1a7837", "#2b83ba", "#c2a47a"]


@contextlib.contextmanager
def atomic_path(final: Path) -> Iterator[Path]:
    """Yield a temporary path beside ``final``; move it into place only if the block succeeds.

    The path lies in a hidden folder (name starting with '.'), so that what a writer puts beside
    its destination (rio-cogeo's intermediate file) is hidden too, and swept by
    :func:`remove_stale_temporaries` if the process is killed.
    """
    final.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{final.name}.", dir=final.parent) as staging:
        tmp = Path(staging) / final.name
        yield tmp
        os.chmod(tmp, 0o644)  # published outputs are for everyone
        os.replace(tmp, final)


def class_colours(n: int) -> list[str]:
    if n <= len(DEFAULT_COLOURS):
        return DEFAULT_COLOURS[:n]
    cmap = plt.get_cmap("tab20")
    return [matplotlib.colors.to_hex(cmap(i % 20)) for i in range(n)]


COG_CACHE_BYTES = 64 * 2**20
"""GDAL's block cache while a COG is written: its default (5 % of RAM) fills with the whole raster
while overviews are built, so the memory of publishing would grow with the area."""


def _to_cog(src: Path, final: Path, resampling: str) -> None:
    with atomic_path(final) as tmp, rasterio.Env(GDAL_CACHEMAX=COG_CACHE_BYTES):
        cog_translate(
            str(src), str(tmp), cog_profiles.get("deflate"), overview_resampling=resampling,
            forward_band_tags=True, in_memory=False, quiet=True,  # keep the class names of the class map
        )


def write_prediction_rasters(
    read_chips: Callable[[np.ndarray], np.ndarray],
    row_offsets: np.ndarray,
    col_offsets: np.ndarray,
    chip_size: int,
    height: int,
    width: int,
    crs: str,
    transform: Sequence[float],
    class_names: Sequence[str],
    classmap_path: Path,
    probabilities_path: Path,
    window_rows: int = 256,
    window_cols: int = 512,
) -> dict[str, int]:
    """Stitch chip probabilities window by window into a class-map COG and a probability COG.

    Class values are 1..K (0 is nodata, where no input band had data); the class map carries a
    colour table and class names. Returns the pixel count per class name.
    """
    colours = class_colours(len(class_names))
    base = dict(
        driver="GTiff", width=width, height=height, crs=crs, transform=rasterio.Affine(*transform),
        tiled=True, blockxsize=256, blockysize=256, compress="deflate",
    )
    counts = np.zeros(len(class_names) + 1, dtype=np.int64)
    with tempfile.TemporaryDirectory(dir=classmap_path.parent, prefix=".stitch-") as work:
        class_tif, prob_tif = Path(work) / "classmap.tif", Path(work) / "probabilities.tif"
        with (
            rasterio.open(class_tif, "w", count=1, dtype="uint8", nodata=CLASS_NODATA, **base) as classes,
            rasterio.open(prob_tif, "w", count=len(class_names), dtype="float32", nodata=np.nan, **base) as probs,
        ):
            for (top, bottom), (left, right) in windows(height, width, window_rows, window_cols):
                prob = stitch_strip(read_chips, row_offsets, col_offsets, chip_size, width, (top, bottom), (left, right))
                has_data = np.isfinite(prob).all(axis=0)
                label = np.where(has_data, np.nan_to_num(prob, nan=-1.0).argmax(axis=0) + 1, CLASS_NODATA)
                label = label.astype("uint8")
                window = rasterio.windows.Window(left, top, right - left, bottom - top)
                classes.write(label, 1, window=window)
                probs.write(prob, window=window)
                counts += np.bincount(label.ravel(), minlength=len(counts))
            classes.write_colormap(
                1, {i + 1: tuple(int(c * 255) for c in matplotlib.colors.to_rgb(h)) + (255,) for i, h in enumerate(colours)}
            )
            classes.update_tags(1, **{f"class_{i + 1}": name for i, name in enumerate(class_names)})
            for i, name in enumerate(class_names, start=1):
                probs.set_band_description(i, f"probability of {name}")
        _to_cog(class_tif, classmap_path, resampling="mode")
        _to_cog(prob_tif, probabilities_path, resampling="average")
    return {name: int(counts[i + 1]) for i, name in enumerate(class_names)}


def write_geoparquet(frame: gpd.GeoDataFrame, path: Path) -> None:
    """GeoParquet 1.1 (``geo`` metadata, bbox covering column), written atomically."""
    with atomic_path(path) as tmp:
        frame.to_parquet(tmp, index=False, write_covering_bbox=True, schema_version="1.1.0")


def write_quicklook(
    classmap_path: Path, rgb: np.ndarray | None, class_names: Sequence[str], title: str, path: Path
) -> None:
    """A PNG of the class map (beside an RGB view of the input when given) with a legend."""
    with rasterio.open(classmap_path) as src:
        scale = max(1, int(np.ceil(max(src.width, src.height) / 1024)))
        classes = src.read(1, out_shape=(src.height // scale, src.width // scale), resampling=rasterio.enums.Resampling.mode)
    colours = class_colours(len(class_names))
    cmap = ListedColormap(["#ffffff"] + colours)
    panels = 2 if rgb is not None else 1
    fig, axes = plt.subplots(1, panels, figsize=(6.5 * panels, 6.5), squeeze=False)
    if rgb is not None:
        axes[0, 0].imshow(rgb)
        axes[0, 0].set_title("input (RGB, 2-98 % stretch)")
    ax = axes[0, -1]
    ax.imshow(classes, cmap=cmap, vmin=0, vmax=len(class_names), interpolation="nearest")
    ax.set_title("predicted land cover")
    for a in axes.ravel():
        a.set_axis_off()
    handles = [Patch(color=c, label=f"{i + 1} {n}") for i, (n, c) in enumerate(zip(class_names, colours))]
    fig.legend(handles=handles, loc="lower center", ncol=min(4, len(handles)), frameon=False)
    fig.suptitle(title)
    fig.tight_layout(rect=(0, 0.08, 1, 0.95))
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=90, format="png")
    plt.close(fig)


def write_json(payload: dict, path: Path) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(payload, indent=2, default=str))


def write_text(text: str, path: Path) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_stac_catalog(
    output_dir: Path,
    item_id: str,
    crs: str,
    bounds: Sequence[float],
    time_range: tuple[datetime, datetime],
    sources: Sequence[tuple[str, str, str]],
    assets: dict[str, pystac.Asset],
    properties: dict,
    model_fields: dict,
) -> Path:
    """Write ``output_dir/catalog.json`` with one item linking the outputs and what made them.

    ``sources`` are ``(href, title, media type)`` of the inputs (source STAC items, or files),
    linked as ``derived_from``; ``time_range`` is the inputs' time span. The item carries the run
    config and inputs in ``properties`` and the model in STAC MLM extension fields. Written to a
    staging folder, then moved into place item first and catalog last.
    """
    # A local scene CRS (e.g. pedestrian coordinates with no map origin) has no place on Earth:
    # STAC allows a null geometry, and the CRS is recorded as WKT2.
    local = pyproj.CRS(crs).is_engineering
    footprint = None if local else box(*transform_bounds(crs, "EPSG:4326", *bounds))
    item = pystac.Item(
        id=item_id,
        geometry=None if local else mapping(footprint),
        bbox=None if local else list(footprint.bounds),
        datetime=None,
        properties={
            "start_datetime": time_range[0].isoformat(),
            "end_datetime": time_range[1].isoformat(),
            "created": datetime.now(timezone.utc).isoformat(),
            **({"proj:code": None, "proj:wkt2": pyproj.CRS(crs).to_wkt()} if local else {"proj:code": crs}),
            **properties,
            **model_fields,
        },
    )
    item.stac_extensions.append(mlm.SCHEMA_URI_PATTERN.format(version=mlm.DEFAULT_VERSION))
    item.stac_extensions.append("https://stac-extensions.github.io/projection/v2.0.0/schema.json")
    for key, asset in assets.items():
        item.add_asset(key, asset)
    for href, title, media_type in sources:
        item.add_link(pystac.Link("derived_from", href, media_type=media_type, title=title))
    catalog = pystac.Catalog(id=f"allspark-{output_dir.name}", description=f"AllSpark outputs: {output_dir.name}")
    catalog.add_item(item)
    with tempfile.TemporaryDirectory(dir=output_dir, prefix=".stac-") as staging:
        catalog.normalize_hrefs(staging)
        for asset in item.assets.values():
            asset.href = os.path.relpath(output_dir / asset.href, output_dir / item_id)
        catalog.save(pystac.CatalogType.SELF_CONTAINED)
        item_dir = output_dir / item_id
        item_dir.mkdir(exist_ok=True)
        os.replace(Path(staging) / item_id / f"{item_id}.json", item_dir / f"{item_id}.json")
        os.replace(Path(staging) / "catalog.json", output_dir / "catalog.json")
    return output_dir / "catalog.json"


def item_sources(items: Sequence[pystac.Item]) -> tuple[tuple[datetime, datetime], list[tuple[str, str, str]]]:
    """Time span and ``derived_from`` sources of STAC input items."""
    starts = [i.common_metadata.start_datetime or i.datetime for i in items]
    ends = [i.common_metadata.end_datetime or i.datetime for i in items]
    links = [(i.get_self_href(), i.id, pystac.MediaType.JSON) for i in items if i.get_self_href()]
    return (min(starts), max(ends)), links


def copy_checkpoint(checkpoint: Path, model_dir: Path) -> None:
    """Copy a checkpoint folder's files into the published ``model/`` folder, each atomically."""
    model_dir.mkdir(parents=True, exist_ok=True)
    for file in checkpoint.iterdir():
        if file.is_file():
            with atomic_path(model_dir / file.name) as tmp:
                shutil.copyfile(file, tmp)


def mlm_fields(model, architecture: str, tasks: list[str], inputs: list[dict], outputs: list[dict]) -> dict:
    """STAC MLM extension fields of a fine-tuned :class:`allspark.model.AllSpark` model.

    ``inputs`` and ``outputs`` are the MLM input and output objects (shapes, dimension order),
    which only the flow knows; the rest comes from the model.
    """
    import torch  # the model is a torch module already; keep publishing light to import

    return {
        "mlm:name": f"allspark-{model.config.modality}",
        "mlm:architecture": architecture,
        "mlm:tasks": tasks,
        "mlm:framework": "pytorch",
        "mlm:framework_version": torch.__version__.split("+")[0],
        "mlm:pretrained": True,
        "mlm:pretrained_source": model.config.llm,
        "mlm:total_parameters": sum(p.numel() for p in model.parameters()),
        "mlm:accelerator": "cuda" if model.device.type == "cuda" else "amd64",
        "mlm:input": inputs,
        "mlm:output": outputs,
    }


def run_assets(metrics_title: str) -> dict[str, pystac.Asset]:
    """STAC assets of what every published run carries: metrics.json, config.yaml and the model."""
    return {
        "metrics": pystac.Asset("metrics.json", title=metrics_title, media_type=pystac.MediaType.JSON,
                                roles=["metadata"]),
        "config": pystac.Asset("config.yaml", title="Run configuration", media_type="application/yaml",
                               roles=["metadata"]),
        "model": pystac.Asset("model/model.safetensors", title="Fine-tuned weights (trainable parts)",
                              media_type="application/octet-stream", roles=["mlm:model"],
                              extra_fields={"mlm:artifact_type": "safetensors"}),
    }


def publish_table(
    output_dir: Path,
    item_id: str,
    frame: gpd.GeoDataFrame,
    title: str,
    time_range: tuple[datetime, datetime],
    input_files: Sequence[Path],
    config_yaml: str,
    config: dict,
    metrics: dict,
    checkpoint: Path,
    model_fields: dict,
) -> dict[str, str]:
    """Publish a table of predictions as GeoParquet with its metrics, config, model and STAC catalog.

    The shared last step of the trajectory, sensor and traffic flows. Every file is written to a
    temporary name and moved into place; the catalog comes last, so it only links complete files.
    Returns the published paths by name.
    """
    output_dir.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(output_dir)
    paths = {
        "predictions": output_dir / "predictions.parquet",
        "metrics": output_dir / "metrics.json",
        "config": output_dir / "config.yaml",
        "model": output_dir / "model",
    }
    write_geoparquet(frame, paths["predictions"])
    write_json(metrics, paths["metrics"])
    write_text(config_yaml, paths["config"])
    copy_checkpoint(checkpoint, paths["model"])
    assets = {
        "predictions": pystac.Asset("predictions.parquet", title=title,
                                    media_type="application/vnd.apache.parquet", roles=["data"],
                                    extra_fields={"table:row_count": len(frame)}),
        **run_assets("Metrics and run statistics"),
    }
    sources = [(path.resolve().as_uri(), path.name, _media_type(path)) for path in input_files]
    catalog = write_stac_catalog(
        output_dir,
        item_id=item_id,
        crs=frame.crs.to_string(),
        bounds=frame.total_bounds,
        time_range=time_range,
        sources=sources,
        assets=assets,
        properties={"allspark:config": config, "allspark:inputs": [str(p) for p in input_files]},
        model_fields=model_fields,
    )
    return {key: str(path) for key, path in {**paths, "catalog": catalog}.items()}


def _media_type(path: Path) -> str:
    return {".csv": "text/csv", ".parquet": "application/vnd.apache.parquet", ".txt": "text/plain",
            ".json": pystac.MediaType.JSON, ".geojson": pystac.MediaType.GEOJSON}.get(path.suffix.lower(),
                                                                                       "application/octet-stream")


def remove_stale_temporaries(region_dir: Path) -> None:
    """Delete temporary files and folders left by an interrupted run (names start with '.')."""
    if not region_dir.exists():
        return
    for leftover in region_dir.glob(".*"):
        if leftover.is_dir():
            shutil.rmtree(leftover, ignore_errors=True)
        else:
            leftover.unlink(missing_ok=True)

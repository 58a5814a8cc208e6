"""Publishing shared by every kind of data: GeoParquet, the run's metadata and model, and the STAC catalog.

Every file is written under a temporary name and moved into place (:mod:`allspark.core.atomic`);
the STAC catalog is written last, so it only ever links complete files. Model metadata (STAC MLM
fields) comes from the bundle's saved description, never from loading the language model.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path

import geopandas as gpd
import pyproj
import pystac
from pystac.extensions import mlm
from rasterio.warp import transform_bounds
from shapely.geometry import box, mapping

from allspark.core.atomic import atomic_file, remove_stale_temporaries, write_json, write_text
from allspark.core.bundle import bundle_info
from allspark.core.config import RunConfig
from allspark.core.steps import Published


def write_geoparquet(frame: gpd.GeoDataFrame, path: Path) -> None:
    """GeoParquet 1.1 (``geo`` metadata, bbox covering column), written atomically."""
    with atomic_file(path) as tmp:
        frame.to_parquet(tmp, index=False, write_covering_bbox=True, schema_version="1.1.0")


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


def copy_bundle(checkpoint: Path, model_dir: Path) -> None:
    """Copy a model bundle's files into the published ``model/`` folder, each atomically."""
    model_dir.mkdir(parents=True, exist_ok=True)
    for file in Path(checkpoint).iterdir():
        if file.is_file():
            with atomic_file(model_dir / file.name) as tmp:
                shutil.copyfile(file, tmp)


def mlm_fields(checkpoint: Path, architecture: str, tasks: list[str], inputs: list[dict], outputs: list[dict]) -> dict:
    """STAC MLM extension fields of the model bundle at ``checkpoint``, from its ``bundle.json``.

    ``inputs`` and ``outputs`` are the MLM input and output objects (shapes, dimension order),
    which only the kind knows; the rest comes from the bundle.
    """
    info = bundle_info(checkpoint)
    return {
        "mlm:name": f"allspark-{info.modality}",
        "mlm:architecture": architecture,
        "mlm:tasks": tasks,
        "mlm:framework": "pytorch",
        "mlm:framework_version": info.framework_version,
        "mlm:pretrained": True,
        "mlm:pretrained_source": info.llm,
        "mlm:total_parameters": info.total_parameters,
        "mlm:accelerator": "amd64",
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
    config: RunConfig,
    item_id: str,
    frame: gpd.GeoDataFrame,
    title: str,
    time_range: tuple[datetime, datetime],
    input_files: Sequence[Path],
    metrics: dict,
    checkpoint: Path,
    model_fields: dict,
) -> Published:
    """Publish a table of predictions as GeoParquet with its metrics, config, model and STAC catalog.

    The shared last step of the trajectory, sensor and traffic pipelines, into ``config.publish_dir``.
    Every file is written to a temporary name and moved into place; the catalog comes last, so it
    only links complete files.
    """
    output_dir = config.publish_dir
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
    write_text(config.to_yaml(), paths["config"])
    copy_bundle(checkpoint, paths["model"])
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
        properties={"allspark:config": config.model_dump(mode="json"), "allspark:inputs": [str(p) for p in input_files]},
        model_fields=model_fields,
    )
    return Published(catalog=catalog, paths=paths, metrics=metrics)


def _media_type(path: Path) -> str:
    return {".csv": "text/csv", ".parquet": "application/vnd.apache.parquet", ".txt": "text/plain",
            ".json": pystac.MediaType.JSON, ".geojson": pystac.MediaType.GEOJSON}.get(path.suffix.lower(),
                                                                                       "application/octet-stream")



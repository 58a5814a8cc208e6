"""Publishing shared by every kind of data: GeoParquet, the run's metadata and model, and the STAC catalog.

A run's outputs are written into a new folder and switched in as one set, in a local folder or
on object storage (:func:`allspark.core.atomic.published_set`), so readers never see a mix of two
runs; the STAC catalog inside links them by relative paths. Model metadata (STAC MLM fields)
comes from the bundle's saved description, never from loading the language model.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path
from urllib.parse import urlsplit

import geopandas as gpd
import pyproj
import pystac
from pystac.extensions import mlm
from rasterio.warp import transform_bounds
from shapely.geometry import box, mapping

from allspark.core.atomic import atomic_file, current_set, published_set, write_json, write_text
from allspark.core.bundle import bundle_info, local_bundle
from allspark.core.config import RunConfig
from allspark.core.location import Location, join
from allspark.core.steps import Published


def write_geoparquet(frame: gpd.GeoDataFrame, path: Path) -> None:
    """GeoParquet 1.1 (``geo`` metadata, bbox covering column), written atomically."""
    with atomic_file(path) as tmp:
        frame.to_parquet(tmp, index=False, write_covering_bbox=True, schema_version="1.1.0")


def write_stac_catalog(
    folder: Path,
    name: str,
    item_id: str,
    crs: str,
    bounds: Sequence[float],
    time_range: tuple[datetime, datetime],
    sources: Sequence[tuple[str, str, str]],
    assets: dict[str, pystac.Asset],
    properties: dict,
    model_fields: dict,
    extensions: Sequence[str] = (),
) -> Path:
    """Write ``folder/catalog.json`` (catalog ``allspark-<name>``) with one item linking the outputs
    in ``folder`` and what made them.

    ``sources`` are ``(href, title, media type)`` of the inputs (source STAC items, or files),
    linked as ``derived_from``; ``time_range`` is the inputs' time span. The item carries the run
    config and inputs in ``properties`` and the model in STAC MLM extension fields; ``extensions``
    are the schema URIs of any other STAC extension whose fields the assets carry. Links are
    relative, so the catalog stays valid when ``folder`` is switched in as the published set.
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
            "start_datetime": utc_time(time_range[0]),
            "end_datetime": utc_time(time_range[1]),
            "created": utc_time(datetime.now(timezone.utc)),
            **({"proj:code": None, "proj:wkt2": pyproj.CRS(crs).to_wkt()} if local else {"proj:code": crs}),
            **properties,
            **model_fields,
        },
    )
    item.stac_extensions.append(mlm.SCHEMA_URI_PATTERN.format(version=mlm.DEFAULT_VERSION))
    item.stac_extensions.append("https://stac-extensions.github.io/projection/v2.0.0/schema.json")
    item.stac_extensions.extend(extensions)
    for key, asset in assets.items():
        item.add_asset(key, asset)
    for href, title, media_type in sources:
        item.add_link(pystac.Link("derived_from", href, media_type=media_type, title=title))
    catalog = pystac.Catalog(id=f"allspark-{name}", description=f"AllSpark outputs: {name}")
    catalog.add_item(item)
    # Absolute, or pystac drops a relative folder whose name starts with a dot (a set being published,
    # ``runs/.<time>.partial``, with ``--output-dir outputs``); the slash: a dotted name is not taken for a file.
    catalog.normalize_hrefs(f"{Path(folder).absolute()}/")
    for asset in item.assets.values():
        asset.href = os.path.relpath(folder / asset.href, folder / item_id)
    catalog.save(pystac.CatalogType.SELF_CONTAINED)
    return folder / "catalog.json"


def utc_time(value: datetime) -> str:
    """``value`` as RFC 3339 in UTC (``...Z``), the only form STAC 1.1 allows; a time without a zone is taken as UTC."""
    aware = value if value.tzinfo else value.replace(tzinfo=timezone.utc)
    return pystac.utils.datetime_to_str(aware.astimezone(timezone.utc))


def item_sources(items: Sequence[pystac.Item]) -> tuple[tuple[datetime, datetime], list[tuple[str, str, str]]]:
    """Time span and ``derived_from`` sources of STAC input items.

    A local item is linked by its ``file://`` URI, as the file kinds link their inputs: a bare path
    would be read as a path on the host of a catalog published to object storage.
    """
    starts = [i.common_metadata.start_datetime or i.datetime for i in items]
    ends = [i.common_metadata.end_datetime or i.datetime for i in items]
    links = [(_uri(i.get_self_href()), i.id, pystac.MediaType.JSON) for i in items if i.get_self_href()]
    return (min(starts), max(ends)), links


def _uri(href: str) -> str:
    return href if urlsplit(href).scheme else Path(href).resolve().as_uri()


def copy_bundle(checkpoint: Location, model_dir: Path) -> None:
    """Copy a model bundle's files (a folder or URL) into ``model_dir`` of a set being published."""
    model_dir.mkdir(parents=True, exist_ok=True)
    for file in local_bundle(checkpoint).iterdir():
        if file.is_file():
            shutil.copyfile(file, model_dir / file.name)


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

    The shared last step of the trajectory, sensor and traffic pipelines, into ``config.publish_location``,
    switched in as one set (:func:`~allspark.core.atomic.published_set`): readers see the previous
    complete set or this one.
    """
    files = {"predictions": "predictions.parquet", "metrics": "metrics.json", "config": "config.yaml", "model": "model"}
    with published_set(config.publish_location) as folder:
        write_geoparquet(frame, folder / files["predictions"])
        write_json(metrics, folder / files["metrics"])
        write_text(config.to_yaml(), folder / files["config"])
        copy_bundle(checkpoint, folder / files["model"])
        assets = {
            "predictions": pystac.Asset(files["predictions"], title=title,
                                        media_type="application/vnd.apache.parquet", roles=["data"],
                                        extra_fields={"table:row_count": len(frame)}),
            **run_assets("Metrics and run statistics"),
        }
        sources = [(path.resolve().as_uri(), path.name, _media_type(path)) for path in input_files]
        write_stac_catalog(
            folder,
            config.name,
            item_id=item_id,
            crs=frame.crs.to_string(),
            bounds=frame.total_bounds,
            time_range=time_range,
            sources=sources,
            assets=assets,
            properties={"allspark:config": config.model_dump(mode="json"),
                        "allspark:inputs": [str(p) for p in input_files]},
            model_fields=model_fields,
        )
    return published(config.publish_location, files, metrics)


def published(location: Location, files: dict[str, str], metrics: dict) -> Published:
    """What a publish step returns: the catalog ``location`` shows and its ``files`` (name -> file in the set)
    where readers find them (:func:`~allspark.core.atomic.current_set`)."""
    folder = current_set(location)
    return Published(catalog=join(location, "catalog.json"),
                     paths={name: join(folder, file) for name, file in files.items()}, metrics=metrics)


def _media_type(path: Path) -> str:
    return {".csv": "text/csv", ".parquet": "application/vnd.apache.parquet", ".txt": "text/plain",
            ".json": pystac.MediaType.JSON, ".geojson": pystac.MediaType.GEOJSON}.get(path.suffix.lower(),
                                                                                       "application/octet-stream")



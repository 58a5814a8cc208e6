"""Fine-tuning from a user's own labels (``train.labels``): vector files of polygons or points in any CRS, with a
class column of names or codes, or a label raster; and a clear error, before any work, for each bad one.

The files are the real Landsat 7 NC labels (``landsat96_polygons.shp``, ``landsat96_points.shp``, EPSG:3358,
columns ``label`` (names) and ``id`` (codes 1..7); ``landsat96_labelled_pixels.tif``), rewritten as GeoJSON,
GeoParquet and GeoPackage, over the 96 x 96 px crop of the demo catalog (EPSG:32119).
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import geopandas as gpd
import numpy as np
import pytest
import rasterio
import yaml
from rasterio.features import rasterize
from rasterio.transform import Affine

from allspark.core.steps import run_pipeline
from allspark.errors import ConfigError, InputError
from allspark.region import steps
from allspark.region.config import LANDSAT7_NC_CLASSES, RegionConfig, load_region_config
from allspark.region.labels import LabelsSettings, read_user_labels
from allspark.region.read import plan, plan_grid, read_labels, window_transform
from allspark.settings import work_root
from tests.conftest import shared_data
from tests.regions import quick_config, small_catalog

QUICK_TRAIN = {"epochs": 2, "batch_size": 32, "max_train_pixels": 96, "learning_rate": 3e-3}


@pytest.fixture(scope="module")
def data() -> Path:
    return shared_data("landsat7_nc_labeled")


@pytest.fixture(scope="module")
def catalog(data, tmp_path_factory) -> Path:
    return small_catalog(data, tmp_path_factory.mktemp("user-labels-catalog"))


@pytest.fixture(scope="module")
def polygons(data) -> gpd.GeoDataFrame:
    return gpd.read_file(data / "landsat96_polygons.shp")


@pytest.fixture(scope="module")
def files(data, polygons, tmp_path_factory) -> dict[str, Path]:
    """The polygons as each kind of vector file (and the Shapefile as it is), the points and the label raster."""
    folder = tmp_path_factory.mktemp("user-labels")
    written = {
        "geojson": folder / "polygons.geojson",  # EPSG:3358, a projected CRS other than the imagery's
        "geoparquet": folder / "polygons.parquet",
        "geopackage": folder / "polygons.gpkg",
    }
    polygons.to_file(written["geojson"], driver="GeoJSON")
    polygons.to_crs("EPSG:4326").to_parquet(written["geoparquet"])
    polygons.to_file(written["geopackage"], layer="polygons")
    gpd.read_file(data / "landsat96_points.shp").to_file(written["geopackage"], layer="points")  # a second layer
    return written | {"shapefile": data / "landsat96_polygons.shp", "points": data / "landsat96_points.shp",
                      "raster": data / "landsat96_labelled_pixels.tif"}


@pytest.fixture(scope="module")
def grid(catalog, tmp_path_factory):
    """The crop's grid, as ingest checks the labels against it before writing the scene."""
    config = quick_config(catalog, tmp_path_factory.mktemp("unused"))
    return plan_grid(plan(config), config.resolution)


def labels_config(catalog: Path, output_dir: Path, labels: dict | str, **changes) -> RegionConfig:
    return quick_config(catalog, output_dir, train=QUICK_TRAIN | {"labels": labels}, **changes)


def on_grid(settings: LabelsSettings, grid, class_names=LANDSAT7_NC_CLASSES) -> np.ndarray:
    """The labels over the whole grid (0 outside their window)."""
    window, labels = read_user_labels(settings, list(class_names), grid, margin=0)
    full = np.zeros((grid.height, grid.width), dtype=np.int64)
    full[window["y"], window["x"]] = labels
    return full


def test_polygons_of_a_geojson_in_a_projected_crs_fine_tune_end_to_end(catalog, files, tmp_path):
    config = labels_config(catalog, tmp_path / "out", {"path": str(files["geojson"]), "class_column": "label"})
    names = sorted(set(gpd.read_file(files["geojson"])["label"]))
    assert config.class_names == names != LANDSAT7_NC_CLASSES  # the config gives none: the file's, sorted

    published = run_pipeline(steps, config, log=lambda _: None)
    metrics = published.metrics["fine_tuning"]
    assert metrics["labels"]["file"] == str(files["geojson"]) and "label_item" not in metrics
    assert metrics["labels"]["outside_class_list"] == 0
    assert metrics["holdout"]["n"] == metrics["split"]["holdout_pixels"] > 0
    assert set(metrics["holdout"]["f1"]) == set(names)
    assert yaml.safe_load(published.paths["config"].read_text())["class_names"] == names
    with rasterio.open(published.paths["classmap"]) as classmap:
        assert classmap.tags(1)["class_1"] == names[0] and classmap.read(1).max() <= len(names)
    work = steps.ingest(config, log=lambda _: None).work_dir
    assert [p.name for p in work.glob("model-*")] == [steps.model_dir([files["geojson"]])]


def test_rasterized_polygons_are_the_label_rasters_pixels_but_those_on_polygon_edges(files, polygons, grid):
    """The label raster was burned with GDAL's all-touched rule (it equals the polygons rasterized with
    ``all_touched=True`` exactly); ``train.labels`` burns the pixels whose centre a polygon holds. So every
    pixel labelled from the polygons has the raster's class, and the raster's other labelled pixels are all
    touched by a polygon's outline."""
    labels = on_grid(LabelsSettings(path=files["shapefile"], class_column="id"), grid)
    raster = on_grid(LabelsSettings(path=files["raster"]), grid)
    np.testing.assert_array_equal(read_labels(str(files["raster"]), grid, margin=0)[1], raster)  # as a label item
    labelled = labels > 0
    assert labelled.sum() == 332 and (raster > 0).sum() == 412  # of the crop's 96 x 96 px
    np.testing.assert_array_equal(labels[labelled], raster[labelled])
    outlines = rasterize(polygons.to_crs(grid.crs).boundary, out_shape=(grid.height, grid.width),
                         transform=window_transform(grid, {"y": slice(0, None), "x": slice(0, None)}),
                         all_touched=True).astype(bool)
    assert ((raster > 0) & ~labelled & ~outlines).sum() == 0


def test_points_label_the_pixel_they_fall_in(files, grid):
    points = gpd.read_file(files["points"]).to_crs(grid.crs)
    labels = on_grid(LabelsSettings(path=files["points"], class_column="id"), grid)
    rows, cols = rasterio.transform.rowcol(window_transform(grid, {"y": slice(0, None), "x": slice(0, None)}),
                                          points.geometry.x, points.geometry.y)
    rows, cols = np.asarray(rows), np.asarray(cols)
    inside = (rows >= 0) & (rows < grid.height) & (cols >= 0) & (cols < grid.width)
    assert 10 < inside.sum() < len(points)  # points off the crop are left out
    pixels = {}
    for row, col, code in zip(rows[inside], cols[inside], points["id"].to_numpy()[inside], strict=True):
        pixels[row, col] = code  # a later point in the same pixel wins
    assert (labels > 0).sum() == len(pixels)
    assert all(labels[pixel] == code for pixel, code in pixels.items())


def test_a_column_of_names_and_one_of_codes_give_the_same_labels(files, grid):
    by_name = on_grid(LabelsSettings(path=files["shapefile"], class_column="label"), grid)
    by_code = on_grid(LabelsSettings(path=files["shapefile"], class_column="id"), grid)
    assert by_name.any()
    np.testing.assert_array_equal(by_name, by_code)


def test_the_four_kinds_of_vector_file_give_the_same_labels(files, grid):
    """GeoJSON in EPSG:3358, GeoParquet in EPSG:4326, a layer of a GeoPackage and the Shapefile: the same pixels."""
    expected = on_grid(LabelsSettings(path=files["shapefile"], class_column="id"), grid)
    for kind, layer in (("geojson", None), ("geoparquet", None), ("geopackage", "polygons")):
        labels = on_grid(LabelsSettings(path=files[kind], class_column="id", layer=layer), grid)
        np.testing.assert_array_equal(labels, expected, err_msg=kind)


def test_class_names_come_from_the_file_when_the_config_has_none(catalog, files, tmp_path):
    names = labels_config(catalog, tmp_path, {"path": str(files["geopackage"]), "class_column": "label",
                                              "layer": "polygons"}).class_names
    assert names == sorted(LANDSAT7_NC_CLASSES)
    given = ["water", "forest", "developed", "agriculture", "herbaceous", "shrubland", "sediment"]
    assert labels_config(catalog, tmp_path, {"path": str(files["geojson"]), "class_column": "label"},
                         class_names=given).class_names == given
    codes = labels_config(catalog, tmp_path, {"path": str(files["geojson"]), "class_column": "id"})
    assert codes.class_names == LANDSAT7_NC_CLASSES  # codes carry no names: the config's (here its default)
    assert labels_config(catalog, tmp_path, str(files["raster"])).train.labels == LabelsSettings(path=files["raster"])
    stored = RegionConfig.model_validate(yaml.safe_load(codes.to_yaml()))  # as published: the same run
    assert stored.fingerprint() == codes.fingerprint() and stored.train.labels == codes.train.labels


def test_a_shapefiles_classes_in_its_dbf_name_the_model_folder(files, polygons, tmp_path):
    folder = tmp_path / "shapefile"
    folder.mkdir()
    for path in files["shapefile"].parent.glob("landsat96_polygons.*"):
        shutil.copy(path, folder / path.name)
    settings = LabelsSettings(path=folder / "landsat96_polygons.shp", class_column="id")
    before, shape = steps.model_dir(settings.files()), settings.path.read_bytes()
    polygons.assign(id=polygons["id"] % 7 + 1).to_file(settings.path)  # other classes, the same geometries
    assert settings.path.read_bytes() == shape
    assert steps.model_dir(settings.files()) != before


def geojson(name: str, change):
    """A writer of the real polygons, changed, as a GeoJSON file."""
    def write(folder: Path, files, polygons) -> Path:
        change(polygons).to_file(folder / name, driver="GeoJSON")
        return folder / name
    return write


def label_raster(change, shift: float = 0):
    """A writer of the real label raster with its values changed, moved ``shift`` metres east."""
    def write(folder: Path, files, polygons) -> Path:
        with rasterio.open(files["raster"]) as src:
            profile, values = src.profile, src.read(1)
        moved = profile["transform"] * Affine.translation(shift / profile["transform"].a, 0)
        with rasterio.open(folder / "labels.tif", "w", **profile | {"transform": moved}) as dst:
            dst.write(change(values, profile["nodata"]), 1)
        return folder / "labels.tif"
    return write


def empty_file(folder: Path, files, polygons) -> Path:
    path = folder / "empty.geojson"
    path.write_text(json.dumps({"type": "FeatureCollection", "features": []}))
    return path


def given(key: str):
    return lambda folder, files, polygons: files[key]


# (case, its labels file written from the real ones, class_column (None: a raster), what the error says was expected)
BAD_FILES = [
    ("an unknown class name", geojson("glacier.geojson", lambda p: p.assign(label=["glacier", *p["label"][1:]])),
     "label", "holds class names ['glacier'] that are not in class_names; expected one of ['developed'"),
    ("a code out of range", geojson("codes.geojson", lambda p: p.assign(id=[9, *p["id"][1:]])),
     "id", "holds class codes [9] outside 0..7; expected codes of the class_names (1 developed"),
    ("labels 100 km off the imagery", geojson("shifted.geojson", lambda p: p.set_geometry(p.translate(100_000, 0))),
     "label", "no label lies on the imagery; the labels span (732568.198, 215191.4461, 741755.9515, 227072.153) and "
     "the imagery (637374, 217170, 640110, 219906) (left, bottom, right, top in EPSG:32119)"),
    ("an empty file", empty_file, "label", "holds no features; expected polygons or points with a class column"),
    ("no class column of that name", given("shapefile"), "landcover",
     "has no class column 'landcover'; its columns: ['label', 'id']"),
    ("lines", geojson("lines.geojson", lambda p: p.set_geometry(p.boundary)),
     "label", "holds geometries ['LineString'] in 34 row(s); expected Polygon, MultiPolygon, Point, MultiPoint"),
    ("a GeoPackage of two layers, none named", given("geopackage"), "id",
     "holds the layers ['polygons', 'points']: set train.labels.layer to one"),
    ("a file that is not there", lambda folder, files, polygons: folder / "missing.shp", "id", "does not exist"),
    ("a label raster with an unknown code", label_raster(lambda values, nodata: np.where(values == 5, 9, values)),
     None, "holds class codes [9] outside 0..7; expected codes of the class_names (1 developed"),
    ("a label raster without a labelled pixel",
     label_raster(lambda values, nodata: np.where(values == nodata, nodata, 0)),
     None, "holds no labelled pixel (only 0 or nodata); expected class codes 1..7"),
    ("a label raster 100 km off the imagery", label_raster(lambda values, nodata: values, shift=100_000),
     None, "no label lies on the imagery; the labels span (73053"),
]


@pytest.mark.parametrize(("case", "write", "column", "expected"), BAD_FILES, ids=[case[0] for case in BAD_FILES])
def test_bad_labels_stop_ingest_before_any_work(catalog, files, polygons, tmp_path, case, write, column, expected):
    path = write(tmp_path, files, polygons)
    name = "bad-labels-" + re.sub(r"[^a-z0-9]+", "-", case)
    labels = {"path": str(path)} | ({"class_column": column} if column else {})
    config = labels_config(catalog, tmp_path / "out", labels, class_names=list(LANDSAT7_NC_CLASSES), name=name)
    with pytest.raises(InputError) as error:
        steps.ingest(config, log=lambda _: None)
    assert str(path) in str(error.value) and expected in str(error.value)
    assert not (tmp_path / "out").exists()
    assert not list(work_root().glob(f"{name}-*")), "a work folder was written"


# (case, the train block's label settings, what the error says was expected); {folder} and {shapefile} filled in
BAD_CONFIGS = [
    ("an unsupported suffix", {"labels": {"path": "{folder}/labels.csv", "class_column": "label"}},
     "has an unsupported suffix '.csv'; expected a vector file (.geojson, .json, .parquet, .geoparquet, .gpkg, .shp) "
     "or a label raster (.tif, .tiff)"),
    ("both a label item and labels", {"label_item": "landsat96-labels", "labels": {"path": "{shapefile}",
                                                                                  "class_column": "id"}},
     "give train.labels (your own file, {shapefile}) or train.label_item (the catalog's STAC label item "
     "'landsat96-labels'), not both"),
    ("a vector file without a class column named", {"labels": "{shapefile}"},
     "is a vector file: set class_column to its column of class names or codes 1..N"),
    ("class names from a file without the class column", {"labels": {"path": "{shapefile}", "class_column": "name"}},
     "has no class column 'name'; its columns: ['label', 'id']"),
]


@pytest.mark.parametrize(("case", "train", "expected"), BAD_CONFIGS, ids=[case[0] for case in BAD_CONFIGS])
def test_bad_label_settings_are_config_errors(catalog, files, tmp_path, case, train, expected):
    def filled(text: str) -> str:
        return text.replace("{folder}", str(tmp_path)).replace("{shapefile}", str(files["shapefile"]))

    (tmp_path / "labels.csv").write_text("x,y,label\n")
    train = json.loads(filled(json.dumps(train)))
    config_file = tmp_path / "region.yaml"
    config_file.write_text(yaml.safe_dump({"name": "bad-label-settings", "catalog": str(catalog),
                                           "output_dir": str(tmp_path / "out"), "train": QUICK_TRAIN | train}))
    with pytest.raises(ConfigError) as error:
        load_region_config(config_file)
    assert str(config_file) in str(error.value) and filled(expected) in str(error.value)
    assert not (tmp_path / "out").exists()

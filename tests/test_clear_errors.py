"""Bad inputs that once ended in raw tracebacks or were silently accepted: each now gives an error
naming the input and what was expected, or is counted in the metrics with a warning.

Every case starts from real data (crops of the Landsat 7 demo, slices of the file-driven kinds'
data sets) broken the way a user's files break: a COG cut short, hand-edited STAC JSON, labels
with one polygon or with values outside the class list, a band that is all nodata, an output path
that became a file, a table that is not text.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import rasterio
import yaml
from rasterio.windows import Window
from scipy import ndimage

from allspark.core.config import LanguageModelSettings
from allspark.core.tables import LocationColumns, TableSchema, read_rows
from allspark.errors import CatalogError, InputError, NoDataError, StorageError
from allspark.model import AllSpark
from allspark.raster.load import CorruptAssetError
from allspark.raster.scene import open_scene
from allspark.region import steps
from allspark.region.config import RegionModelConfig, RegionTrainSettings
from allspark.region.inputs import LabelledPixels, fine_tune, split_holdout, training_split
from allspark.region.read import plan_region, read_labels
from allspark.sensors import read as sensors_read
from allspark.traffic import read as traffic_read
from allspark.trajectories import read as trajectories_read
from allspark.trajectories import steps as trajectories_steps
from flows.cli import main
from tests.conftest import PROJECT, shared_data
from tests.file_flows import eth_slice, trajectories_config
from tests.regions import quick_config, small_catalog
from tests.test_finetune import BANDS, WAVELENGTHS, demo_crop

ITEM_JSON = "landsat7-nc-2000/LE07_NC_2000/LE07_NC_2000.json"
B3_TIF = "landsat7-nc-2000/LE07_NC_2000/B3.tif"
LABELS_TIF = "landsat7-nc-2000/landsat96-labels/labels.tif"


def new_catalog(folder: Path) -> Path:
    """A fresh cropped demo catalog (its own files: asset hrefs and links are absolute) -> its config YAML."""
    return small_catalog(shared_data("landsat7_nc_labeled"), folder)


def catalog_file(catalog_yaml: Path, relative: str) -> Path:
    return catalog_yaml.parent / "catalog" / relative


def plan(catalog_yaml: Path):
    return plan_region(str(catalog_yaml), None, None, BANDS, None)


def region_config_file(folder: Path, catalog_yaml: Path) -> Path:
    config = quick_config(catalog_yaml, folder / "unused").model_dump(mode="json", exclude={"output_dir"})
    path = folder / "region.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.fixture(scope="module")
def catalog(tmp_path_factory):
    """One cropped demo catalog for the tests that break its JSON; each test's changes are undone after it."""
    return new_catalog(tmp_path_factory.mktemp("clear-errors-catalog"))


@pytest.fixture
def restored(catalog):
    """The catalog's JSON files are put back as they were after the test."""
    files = {path: path.read_text() for path in (catalog.parent / "catalog").rglob("*.json")}
    yield catalog
    for path, text in files.items():
        path.write_text(text)


# -- 1. a COG cut short after its first block --------------------------------------------------------


def truncate_after_first_block(band: Path) -> None:
    """Rewrite ``band`` as a COG of 16 px tiles (36 blocks on the 96 px crop), then cut off its last block."""
    with rasterio.open(band) as src:
        data, profile = src.read(1), src.profile
    profile.update(driver="COG", blocksize=16, compress="DEFLATE")
    for key in ("blockxsize", "blockysize", "tiled", "interleave"):
        profile.pop(key, None)
    with rasterio.open(band, "w", **profile) as dst:
        dst.write(data, 1)
    with rasterio.open(band) as src:
        last_block = int(src.get_tag_item("BLOCK_OFFSET_5_5", "TIFF", bidx=1))
    os.truncate(band, last_block)
    with rasterio.open(band) as src:  # what the old check read: the first pixel is intact
        src.read(1, window=Window(0, 0, 1, 1))


def test_truncated_cog_fails_the_early_check(tmp_path):
    catalog_yaml = new_catalog(tmp_path)
    band = catalog_file(catalog_yaml, B3_TIF)
    truncate_after_first_block(band)
    with pytest.raises(CorruptAssetError) as error:
        plan(catalog_yaml)
    assert str(band) in str(error.value) and "truncated" in str(error.value)


def test_truncated_cog_is_one_line_from_the_command(tmp_path):
    """`python -m flows.cli run region`: exit code 2 and one line naming the file, before Prefect starts."""
    catalog_yaml = new_catalog(tmp_path)
    band = catalog_file(catalog_yaml, B3_TIF)
    truncate_after_first_block(band)
    done = subprocess.run(
        [sys.executable, "-m", "flows.cli", "run", "region",
         "--config", str(region_config_file(tmp_path, catalog_yaml)), "--output-dir", str(tmp_path / "outputs")],
        cwd=PROJECT, capture_output=True, text=True, timeout=120,
    )
    assert done.returncode == 2, done.stderr
    assert done.stdout == "" and len(done.stderr.splitlines()) == 1
    assert done.stderr.startswith("allspark: error: asset ") and str(band) in done.stderr
    assert not (tmp_path / "outputs").exists()


# -- 2. catalog and item JSON that is not JSON, not STAC, or lacks required keys -----------------------


@pytest.mark.parametrize(("file", "content", "expected"), [
    ("catalog.json", '{"type": "Catalog", ', "is not valid JSON"),
    ("catalog.json", {"hello": "world"}, "is not a STAC object"),
    ("catalog.json", {"type": "Catalog", "stac_version": "1.1.0", "id": "c"},
     "lacks the required key(s) description, links"),
    ("landsat7-nc-2000/collection.json", "not json", "is not valid JSON"),
    (ITEM_JSON, [1, 2], "is not a STAC object"),
    (ITEM_JSON, "drop:id", "lacks the required key(s) id"),
    (ITEM_JSON, "drop:assets", "lacks the required key(s) assets"),
], ids=["catalog-not-json", "catalog-not-stac", "catalog-without-links", "collection-not-json", "item-a-list",
        "item-without-id", "item-without-assets"])
def test_invalid_catalog_json_is_named(restored, file, content, expected):
    path = catalog_file(restored, file)
    if isinstance(content, str) and content.startswith("drop:"):
        data = json.loads(path.read_text())
        del data[content.removeprefix("drop:")]
        content = data
    path.write_text(content if isinstance(content, str) else json.dumps(content))
    with pytest.raises(CatalogError) as error:
        plan(restored)
    assert str(path) in str(error.value) and expected in str(error.value)


# -- 3. an item without any datetime ----------------------------------------------------------------


def test_item_without_any_datetime_is_named(restored):
    path = catalog_file(restored, ITEM_JSON)
    item = json.loads(path.read_text())
    item["properties"]["datetime"] = None
    for key in ("start_datetime", "end_datetime"):
        item["properties"].pop(key, None)
    path.write_text(json.dumps(item))
    with pytest.raises(CatalogError) as error:
        plan(restored)
    assert "LE07_NC_2000" in str(error.value) and str(path) in str(error.value) and "no datetime" in str(error.value)


# -- 4. labels with one region to hold out -----------------------------------------------------------


def rewrite_labels(catalog_yaml: Path, change) -> Path:
    """Replace the label COG's values by ``change(values, nodata)``; return its path."""
    path = catalog_file(catalog_yaml, LABELS_TIF)
    with rasterio.open(path) as src:
        values, profile = src.read(1), src.profile
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(change(values, profile["nodata"]), 1)
    return path


def keep_one_polygon(values: np.ndarray, nodata: float) -> np.ndarray:
    """Only the largest connected region of one class stays labelled."""
    first_class = values[(values >= 1) & (values <= 7)][0]
    regions, _ = ndimage.label(values == first_class, structure=np.ones((3, 3)))
    largest = np.argmax(np.bincount(regions.ravel())[1:]) + 1
    return np.where(regions == largest, values, nodata).astype(values.dtype)


def test_labels_with_one_region_to_hold_out(tmp_path):
    catalog_yaml = new_catalog(tmp_path)
    labels = rewrite_labels(catalog_yaml, keep_one_polygon)
    config = quick_config(catalog_yaml, tmp_path / "outputs")
    ingested = steps.ingest(config, log=lambda _: None)
    with pytest.raises(InputError) as error:
        steps.train(config, ingested, log=lambda _: None)
    message = str(error.value)
    assert str(labels) in message and "landsat96-labels" in message
    assert "hold 1 labelled region" in message and "needs at least 3" in message and "train.holdout: pixels" in message


def test_unreadable_label_raster_is_named(tmp_path):
    catalog_yaml = new_catalog(tmp_path)
    config = quick_config(catalog_yaml, tmp_path / "outputs")
    scene, _ = open_scene(steps.ingest(config, log=lambda _: None).store)
    labels = catalog_file(catalog_yaml, LABELS_TIF)
    labels.write_bytes(labels.read_bytes()[: labels.stat().st_size // 2])
    with pytest.raises(CorruptAssetError) as error:
        read_labels(str(labels), scene, margin=8)
    assert str(labels) in str(error.value)


@pytest.mark.parametrize(("classes", "expected"), [
    ([0, 0, 1, 1, 2], "class value 3 has a single labelled pixel"),
    ([0, 0, 1, 1, 2, 2], "needs at least 3 pixels on each side"),
])
def test_labels_too_few_for_a_pixel_holdout(classes, expected):
    pixels = LabelledPixels(np.arange(len(classes)), np.zeros(len(classes), np.int64), np.asarray(classes))
    with pytest.raises(InputError) as error:
        split_holdout(pixels, (len(classes), 1), 0.3, seed=0, unit="pixels", labels_name="the labels crop.tif")
    assert str(error.value).startswith("the labels crop.tif") and expected in str(error.value)


# -- 5. an output path that became a file ------------------------------------------------------------


def test_output_path_that_is_a_file_from_the_command(tmp_path, catalog, capsys):
    """The region command checks the output folder with the inputs, before Prefect starts."""
    (tmp_path / "outputs").mkdir()
    in_the_way = tmp_path / "outputs" / "test-region"
    in_the_way.write_text("not a folder")
    code = main(["run", "region", "--config", str(region_config_file(tmp_path, catalog)),
                 "--output-dir", str(tmp_path / "outputs")])
    message = capsys.readouterr().err
    assert code == 2 and len(message.splitlines()) == 1
    assert str(in_the_way) in message and "not a folder" in message


def test_output_path_that_is_a_file_from_a_file_flow_command(tmp_path, capsys):
    """`allspark run trajectories` checks the output folder before Prefect starts, too."""
    config = trajectories_config(eth_slice(tmp_path), tmp_path / "unused")
    config_file = tmp_path / "trajectories.yaml"
    config_file.write_text(yaml.safe_dump(config.model_dump(mode="json", exclude={"output_dir"})))
    (tmp_path / "outputs").mkdir()
    in_the_way = tmp_path / "outputs" / config.name
    in_the_way.write_text("not a folder")
    code = main(["run", "trajectories", "--config", str(config_file), "--output-dir", str(tmp_path / "outputs")])
    message = capsys.readouterr().err
    assert code == 2 and len(message.splitlines()) == 1 and str(in_the_way) in message


def test_output_path_that_is_a_file_with_the_inputs_cached(tmp_path):
    """Trajectories: the check runs even when the windows store from an earlier run is reused."""
    config = trajectories_config(eth_slice(tmp_path), tmp_path / "outputs")
    trajectories_steps.ingest(config, log=lambda _: None)
    config.output_dir.mkdir()
    config.publish_dir.write_text("not a folder")
    logged = []
    with pytest.raises(StorageError) as error:
        trajectories_steps.ingest(config, log=logged.append)
    assert str(config.publish_dir) in str(error.value) and not logged


# -- 6. label values outside the class list ----------------------------------------------------------


def demo_crop_arrays() -> tuple[np.ndarray, np.ndarray]:
    """The test crop's six bands (band, y, x; NaN for nodata) and its labels, 0 where unlabelled (nodata)."""
    image, labels = demo_crop()
    return image, np.where(labels < 0, 0, labels)


def test_labels_outside_the_class_list_are_counted_and_logged():
    image, labels = demo_crop_arrays()
    labels = np.where(labels == 3, 9, np.where(labels == 5, 12, labels))  # two classes the config does not know
    expected = {"9": int((labels == 9).sum()), "12": int((labels == 12).sum())}
    names = [f"c{i}" for i in range(7)]
    model = AllSpark(RegionModelConfig(num_queries=4, stem_dim=32, bridge_depth=1).allspark_config(
        names, LanguageModelSettings(layers=1)))
    logged = []
    _, metrics, _ = fine_tune(
        model, image, labels, BANDS, WAVELENGTHS, names, 8,
        RegionTrainSettings(epochs=1, batch_size=16, max_train_pixels=32), seed=0, log=logged.append,
        labels_name="the labels crop.tif",
    )
    assert metrics["labels"] == {"outside_class_list": sum(expected.values()), "outside_values": expected}
    warnings = [line for line in logged if line.startswith("warning:")]
    assert len(warnings) == 1 and "crop.tif" in warnings[0] and "value 9" in warnings[0] and "value 12" in warnings[0]


def test_labels_all_outside_the_class_list_are_refused():
    image, labels = demo_crop_arrays()
    shifted = np.where(labels > 0, labels + 20, 0)
    with pytest.raises(InputError) as error:
        training_split(shifted, image, 7, RegionTrainSettings(), seed=0, labels_name="the labels crop.tif")
    assert "crop.tif" in str(error.value) and "no value of the class list (1..7" in str(error.value)
    assert "value 23 (174 px)" in str(error.value)


# -- 7. a band without a single valid pixel ----------------------------------------------------------


def test_band_without_a_valid_pixel_is_refused(tmp_path):
    catalog_yaml = new_catalog(tmp_path)
    band = catalog_file(catalog_yaml, B3_TIF)
    with rasterio.open(band) as src:
        profile = src.profile
    with rasterio.open(band, "w", **profile) as dst:
        dst.write(np.full((profile["height"], profile["width"]), profile["nodata"], profile["dtype"]), 1)
    config = quick_config(catalog_yaml, tmp_path / "outputs")
    with pytest.raises(NoDataError) as error:
        steps.ingest(config, log=lambda _: None)
    message = str(error.value)
    assert "band(s) B3 have no valid pixel" in message and "LE07_NC_2000" in message
    assert not (tmp_path / "outputs").exists()


# -- the file-driven kinds: tables that are not text ------------------------------------------------


@pytest.fixture(scope="module")
def binary_file() -> bytes:
    """The first bytes of a real binary file (the Python interpreter): what a wrong path hands a reader."""
    return Path(sys.executable).resolve().read_bytes()[:4096]


TRACKS = TableSchema(id="agent_id", time={"column": "t", "unit": "s", "step": "400ms"},
                     location={"x": "x", "y": "y", "crs": "EPSG:32632"})
STATIONS = TableSchema(id="station", time={"column": "time"}, targets=["pm25"])


def read_with_locations(path: Path):
    """Read a one-row station table whose stations are placed by the locations file ``path``."""
    table = path.parent / "table.csv"
    table.write_text("station,time,pm25\nA,2020-01-01T00:00,1\n")
    schema = STATIONS.model_copy(update={"location": LocationColumns(file=str(path))})
    return sensors_read.read_observations([table], schema, None, None, True)


@pytest.mark.parametrize(("name", "read", "expected"), [
    ("speed.csv", traffic_read.read_speeds, "cannot be read as CSV"),
    ("locations.csv", traffic_read.read_locations, "cannot be read as CSV"),
    ("tracks.csv", lambda path: trajectories_read.read_table(path, TRACKS), "cannot be read as CSV"),
    ("tracks.parquet", lambda path: trajectories_read.read_table(path, TRACKS), "cannot be read as Parquet"),
    ("biwi_eth.txt", trajectories_read.read_eth_ucy, "not in the ETH/UCY format"),
    ("station.csv", lambda path: read_rows(path, STATIONS), "cannot be read as CSV"),
    ("stations.geojson", read_with_locations, "cannot be read as a vector file"),
])
def test_unreadable_tables_are_named(tmp_path, binary_file, name, read, expected):
    path = tmp_path / name
    path.write_bytes(binary_file)
    with pytest.raises(InputError) as error:
        read(path)
    assert str(path) in str(error.value) and expected in str(error.value)

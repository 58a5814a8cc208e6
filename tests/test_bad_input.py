"""Bad input fails before any work with an error naming the input, and writes no output.

The flow is called as `allspark run region` calls it (the CLI turns the error into one line and
exit code 2, shown for the config case).
"""

from __future__ import annotations

import json

import pytest
import yaml

from allspark.errors import AllSparkError, InputError
from allspark.region.config import load_region_config
from flows.cli import main
from tests.conftest import shared_data
from tests.regions import catalog_yaml, quick_config, small_catalog


@pytest.fixture(scope="module")
def catalog(tmp_path_factory):
    return small_catalog(shared_data("landsat7_nc_labeled"), tmp_path_factory.mktemp("bad-input-catalog"))


def write_config(path, catalog_config, **changes):
    config = quick_config(catalog_config, path.parent / "unused").model_dump(mode="json", exclude={"output_dir"})
    config.update(changes)
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.fixture
def run(tmp_path, catalog, prefect_server):
    """Run the region flow as `allspark run region` does; expect an input error (one line in the CLI) and no output."""
    from flows.region import run_region

    def _run(config=None, **changes) -> str:
        config = config or write_config(tmp_path / "region.yaml", catalog)
        output_dir = tmp_path / "outputs"
        with pytest.raises(InputError) as error:
            run_region(load_region_config(config, output_dir=output_dir, **changes))
        assert isinstance(error.value, AllSparkError) and isinstance(error.value, ValueError)
        assert not output_dir.exists() or not any(output_dir.iterdir()), "output written despite the error"
        return str(error.value)

    return _run


def test_aoi_outside_the_catalog(run):
    message = run(aoi="10,45,11,46")
    assert "AOI with bbox" in message and "does not intersect" in message and "landsat7-nc-2000" in message


def test_date_range_without_items(run):
    message = run(datetime=("2015-01-01", "2015-12-31"))
    assert "2015-01-01" in message and "span 2000-01-01" in message


def test_malformed_aoi_geojson(run, tmp_path):
    aoi = tmp_path / "aoi.geojson"
    aoi.write_text(json.dumps({"type": "Feature", "geometry": {"type": "Polygon", "coordinates": [[0, 0]]}}))
    message = run(aoi=str(aoi))
    assert str(aoi) in message


def test_unknown_config_key(tmp_path, catalog, capsys):
    """Through the command line: exit code 2 and one clear line, before Prefect even starts."""
    config = tmp_path / "typo.yaml"
    config.write_text(yaml.safe_dump({"catalog": str(catalog), "chip": {"size": 8}}))
    code = main(["run", "region", "--config", str(config), "--output-dir", str(tmp_path / "outputs")])
    message = capsys.readouterr().err
    assert code == 2
    assert str(config) in message and "chip: Extra inputs are not permitted" in message
    assert not (tmp_path / "outputs").exists()


def test_item_missing_a_requested_band(run, tmp_path, catalog):
    # The catalog config knows a thermal band B6 that the item does not carry.
    source = yaml.safe_load(catalog.read_text())
    with_b6 = catalog_yaml(
        source["url_or_path"], tmp_path / "with-b6.yaml",
        bands=source["bands"] + [{"name": "B6", "asset": "B6", "center_wavelength": 11.45}],
    )
    config = write_config(tmp_path / "b6.yaml", catalog, catalog=str(with_b6), bands=["B1", "B2", "B3", "B5", "B6"])
    message = run(config=config)
    assert "LE07_NC_2000" in message and "B6" in message


def test_corrupt_geotiff(run, tmp_path, tmp_path_factory):
    catalog = small_catalog(shared_data("landsat7_nc_labeled"), tmp_path_factory.mktemp("corrupt"))
    band = next(catalog.parent.glob("catalog/**/B3.tif"))
    band.write_bytes(b"II*\x00 this is not a GeoTIFF" * 10)
    message = run(config=write_config(tmp_path / "corrupt.yaml", catalog))
    assert str(band) in message


def test_all_nodata_scene(run, tmp_path, tmp_path_factory):
    catalog = small_catalog(shared_data("landsat7_nc_labeled"), tmp_path_factory.mktemp("blank"), blank=True)
    message = run(config=write_config(tmp_path / "blank.yaml", catalog))
    assert "LE07_NC_2000" in message and "no valid pixel" in message

"""Every shipped config validates; typos and inconsistent settings fail loudly."""

from pathlib import Path

import pytest
import yaml

from allspark.config import ConfigError, RegionConfig, load_config, load_region_config
from allspark.stac import catalogs_dir, load_catalog_config
from flows.cli import FILE_FLOWS

PROJECT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("path", sorted((PROJECT / "deployments").glob("region-*.yaml")), ids=lambda p: p.name)
def test_shipped_region_configs_validate(path):
    config = load_region_config(path)
    load_catalog_config(config.catalog)


@pytest.mark.parametrize("flow", sorted(FILE_FLOWS))
def test_shipped_file_flow_configs_validate(flow):
    spec = FILE_FLOWS[flow]
    config = load_config(spec.config_class(), PROJECT / spec.example)
    assert config.kind == flow


def test_every_shipped_run_config_belongs_to_a_flow():
    flows = {"region", *FILE_FLOWS}
    for path in (PROJECT / "deployments").glob("*.yaml"):
        assert path.name.split("-")[0] in flows, f"{path.name} is not named after a flow"


@pytest.mark.parametrize("path", sorted(catalogs_dir().glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_catalog_configs_validate(path):
    assert load_catalog_config(path).bands


def test_written_demo_config_equals_the_defaults():
    written = load_region_config(PROJECT / "deployments" / "region-demo.yaml")
    assert written.fingerprint() == RegionConfig().fingerprint()


@pytest.mark.parametrize(
    "changes,expected",
    [
        ({"chips": {"size": 16, "overlap": 16}}, "must be smaller than chips.size"),
        ({"model": {"num_classes": 3}}, "must equal the number of class_names"),
        ({"train": None}, "give either train"),
        ({"loader": "gdal"}, "loader"),
        ({"train": {"epoch": 3}}, "train.epoch: Extra inputs are not permitted"),
    ],
)
def test_invalid_configs_name_the_problem(changes, expected, tmp_path):
    path = tmp_path / "region.yaml"
    path.write_text(yaml.safe_dump(changes))
    with pytest.raises(ConfigError, match=expected) as error:
        load_region_config(path)
    assert str(path) in str(error.value)


def test_fingerprint_ignores_where_outputs_go():
    a = load_region_config(None, output_dir="/tmp/a", dask_address="tcp://127.0.0.1:1")
    b = load_region_config(None, output_dir="/tmp/b")
    assert a.fingerprint() == b.fingerprint()
    assert a.fingerprint() != load_region_config(None, seed=1).fingerprint()

"""The region flow end to end on a small real catalog: outputs, cache reuse, an existing Dask cluster."""

from __future__ import annotations

import json

import geopandas as gpd
import numpy as np
import pyarrow.parquet as pq
import pystac
import pytest
import rasterio
import yaml
from PIL import Image
from rio_cogeo.cogeo import cog_validate

from tests.conftest import shared_data, task_states
from tests.regions import quick_config, small_catalog


@pytest.fixture(scope="module")
def catalog(tmp_path_factory):
    return small_catalog(shared_data("landsat7_nc_labeled"), tmp_path_factory.mktemp("small-catalog"))


@pytest.fixture(scope="module")
def first_run(catalog, tmp_path_factory, prefect_server):
    from flows.region import region_flow, task_runner

    config = quick_config(catalog, tmp_path_factory.mktemp("outputs"))
    state = region_flow.with_options(task_runner=task_runner(config))(config, return_state=True)
    return config, state, state.result()


def test_outputs_are_complete_and_valid(first_run):
    config, state, outputs = first_run
    out = config.region_dir
    for key in ("classmap", "probabilities"):
        valid, errors, _ = cog_validate(outputs[key], quiet=True)
        assert valid, f"{key} is not a valid COG: {errors}"
    with rasterio.open(outputs["classmap"]) as classmap, rasterio.open(outputs["probabilities"]) as probs:
        assert classmap.dtypes[0] == "uint8" and classmap.nodata == 0
        assert classmap.colormap(1)[1][:3] != (0, 0, 0)
        assert classmap.tags(1)["class_1"] == "developed"  # class names survive the COG translation
        assert (classmap.width, classmap.height) == (96, 96)
        labels = classmap.read(1)
        assert labels.min() >= 1 and labels.max() <= 7  # every pixel has data here: no hole at any edge
        p = probs.read()
        assert probs.count == 7
        np.testing.assert_allclose(p.sum(axis=0), 1.0, atol=1e-4)
        np.testing.assert_array_equal(p.argmax(axis=0) + 1, labels)
    geo = json.loads(pq.read_schema(outputs["chips"]).metadata[b"geo"])
    assert geo["version"] == "1.1.0" and geo["primary_column"] == "geometry"
    chips = gpd.read_parquet(outputs["chips"])
    assert {"chip_id", "predicted_class", "score", "source_item_ids", "geometry"} <= set(chips.columns)
    assert len(chips) == 23 * 23  # 96 px, 8-px chips, stride 4
    assert chips.crs.to_epsg() == 32119
    assert Image.open(outputs["quicklook"]).format == "PNG"
    metrics = json.loads(open(outputs["metrics"]).read())
    assert 0 <= metrics["holdout_accuracy"] <= 1
    assert metrics["map_holdout"]["n"] == metrics["fine_tuning"]["holdout"]["n"] > 0
    stored = yaml.safe_load(open(outputs["config"]).read())
    assert stored["chips"] == {"size": 8, "overlap": 4, "batch": 64}

    catalog = pystac.Catalog.from_file(str(out / "catalog.json"))
    (item,) = list(catalog.get_items(recursive=True))
    for key in ("classmap", "probabilities", "chips", "quicklook", "metrics", "config", "model"):
        assert key in item.assets
        assert (out / item.assets[key].get_absolute_href()).exists(), f"asset {key} link does not resolve"
    assert item.properties["allspark:inputs"] == ["LE07_NC_2000"]
    assert item.properties["mlm:framework"] == "pytorch"
    assert item.properties["allspark:config"]["name"] == "test-region"
    assert [link.title for link in item.get_links("derived_from")] == ["LE07_NC_2000"]
    assert not [p for p in out.iterdir() if p.name.startswith(".")], "temporary files left behind"
    assert all(p.stat().st_mode & 0o044 == 0o044 for p in out.rglob("*") if p.is_file()), "outputs not readable"


def test_rerun_is_served_from_cache_without_duplicating_outputs(first_run):
    from flows.region import region_flow, task_runner

    config, _, outputs = first_run
    before = sorted(p.relative_to(config.region_dir) for p in config.region_dir.rglob("*"))
    state = region_flow.with_options(task_runner=task_runner(config))(config, return_state=True)
    states = task_states(state)
    assert set(states["tile"]) == {"Cached"}
    assert set(states["fine-tune"]) == {"Cached"}
    assert "predict" not in states  # every chip batch is marked done in the prediction store
    assert sorted(p.relative_to(config.region_dir) for p in config.region_dir.rglob("*")) == before
    with rasterio.open(outputs["classmap"]) as a, rasterio.open(state.result()["classmap"]) as b:
        np.testing.assert_array_equal(a.read(), b.read())


def test_same_output_on_an_existing_dask_cluster(first_run, tmp_path):
    from distributed import LocalCluster

    from flows.region import run_region

    config, _, outputs = first_run
    with LocalCluster(n_workers=2, threads_per_worker=1, host="127.0.0.1", dashboard_address=None) as cluster:
        # The trained model published by the first run, re-applied from scratch on the cluster.
        on_cluster = config.model_copy(update={
            "dask_address": cluster.scheduler_address,
            "checkpoint": config.region_dir / "model",
            "train": None,
            "output_dir": tmp_path,
        })
        result = run_region(on_cluster)
    with rasterio.open(outputs["probabilities"]) as a, rasterio.open(result["probabilities"]) as b:
        np.testing.assert_allclose(a.read(), b.read(), atol=1e-5)
    with rasterio.open(outputs["classmap"]) as a, rasterio.open(result["classmap"]) as b:
        np.testing.assert_array_equal(a.read(), b.read())
    assert len(gpd.read_parquet(result["chips"])) == len(gpd.read_parquet(outputs["chips"]))

"""The region flow end to end on a small real catalog: outputs, reuse of finished work, resuming, an existing
Dask cluster; and the steps on their own (block size, interrupted inference, damaged or stale work folders)."""

from __future__ import annotations

import json
import re
import shutil

import geopandas as gpd
import numpy as np
import pyarrow.parquet as pq
import pystac
import pytest
import rasterio
import yaml
import zarr
from PIL import Image
from rio_cogeo.cogeo import cog_validate

from allspark.core.atomic import RUNS
from allspark.settings import cache_dir
from allspark.core.steps import run_pipeline, serial_map
from allspark.raster.scene import SCENE_CHUNK, create_probabilities, open_scene, pending_blocks, read_chip_tables, read_values
from allspark.region import steps
from tests.conftest import shared_data, task_states
from tests.regions import crop_source, quick_config, small_catalog
from tests.stac_schemas import StacSchemaError, validate, validate_catalog

CLASSES = 7


@pytest.fixture(scope="module")
def catalog(tmp_path_factory):
    return small_catalog(shared_data("landsat7_nc_labeled"), tmp_path_factory.mktemp("small-catalog"))


@pytest.fixture(scope="module")
def first_run(catalog, tmp_path_factory, prefect_server):
    from flows.region import region_flow, task_runner

    config = quick_config(catalog, tmp_path_factory.mktemp("outputs"))
    state = region_flow.with_options(task_runner=task_runner(config))(config, return_state=True)
    return config, state, state.result()


def trained_config(first_run, output_dir, **changes):
    """The first run's config predicting with the model it published (no training)."""
    config, _, _ = first_run
    update = {"checkpoint": config.publish_dir / "model", "train": None, "output_dir": output_dir, **changes}
    return type(config).model_validate(config.model_dump() | update)


def probabilities_of(predicted) -> np.ndarray:
    return zarr.open_group(predicted.store, mode="r")["probabilities"][:]


def assert_same_outputs(published, expected) -> None:
    """The class map, probabilities and chip table of two publications agree."""
    with rasterio.open(published.paths["classmap"]) as a, rasterio.open(expected.paths["classmap"]) as b:
        np.testing.assert_array_equal(a.read(), b.read())
    with rasterio.open(published.paths["probabilities"]) as a, rasterio.open(expected.paths["probabilities"]) as b:
        np.testing.assert_allclose(a.read(), b.read(), atol=1e-6)
    chips, wanted = (gpd.read_parquet(p.paths["chips"]) for p in (published, expected))
    columns = ["chip_row", "chip_col", "class_value"]
    np.testing.assert_array_equal(chips[columns], wanted[columns])
    np.testing.assert_allclose(chips["score"], wanted["score"], atol=1e-6)
    assert chips.geometry.geom_equals(wanted.geometry).all()


def mtimes(folder) -> dict:
    """Modification times of the stores in a work folder (not plan.json, which each ingest refreshes)."""
    return {p.relative_to(folder): p.stat().st_mtime_ns for p in folder.rglob("*") if p.name != "plan.json"}


def test_outputs_are_complete_and_valid(first_run):
    config, state, outputs = first_run
    out = config.publish_dir
    assert outputs.catalog == out / "catalog.json"
    for key in ("classmap", "probabilities"):
        valid, errors, _ = cog_validate(outputs.paths[key], quiet=True)
        assert valid, f"{key} is not a valid COG: {errors}"
    with rasterio.open(outputs.paths["classmap"]) as classmap, rasterio.open(outputs.paths["probabilities"]) as probs:
        assert classmap.dtypes[0] == "uint8" and classmap.nodata == 0
        assert classmap.colormap(1)[1][:3] != (0, 0, 0)
        assert classmap.tags(1)["class_1"] == "developed"  # class names survive the COG translation
        assert (classmap.width, classmap.height) == (96, 96)
        labels = classmap.read(1)
        assert labels.min() >= 1 and labels.max() <= CLASSES  # every pixel has data here: no hole at any edge
        p = probs.read()
        assert probs.count == CLASSES
        np.testing.assert_allclose(p.sum(axis=0), 1.0, atol=1e-4)
        np.testing.assert_array_equal(p.argmax(axis=0) + 1, labels)
    geo = json.loads(pq.read_schema(outputs.paths["chips"]).metadata[b"geo"])
    assert geo["version"] == "1.1.0" and geo["primary_column"] == "geometry"
    chips = gpd.read_parquet(outputs.paths["chips"])
    assert {"chip_row", "chip_col", "predicted_class", "class_value", "score", "source_item_ids",
            "geometry"} <= set(chips.columns)
    assert len(chips) == 23 * 23  # 96 px, 8-px chips, stride 4
    assert not chips.duplicated(["chip_row", "chip_col"]).any()  # each chip owned by one block only
    assert set(chips["chip_row"]) == set(range(0, 89, 4)) == set(chips["chip_col"])
    assert (chips["class_value"] == [config.class_names.index(c) + 1 for c in chips["predicted_class"]]).all()
    assert chips.crs.to_epsg() == 32119
    assert Image.open(outputs.paths["quicklook"]).format == "PNG"
    metrics = json.loads(open(outputs.paths["metrics"]).read())
    assert metrics == outputs.metrics | {"publish_seconds": metrics["publish_seconds"]}
    assert 0 <= metrics["holdout_accuracy"] <= 1
    assert metrics["map_holdout"]["n"] == metrics["fine_tuning"]["holdout"]["n"] > 0
    assert metrics["ingest"]["valid_pixels"] == 96 * 96 and metrics["ingest"]["blocks"] == 4  # 48-px blocks
    assert metrics["inference"]["blocks_predicted"] == 4 and metrics["inference"]["blocks_done_before"] == 0
    assert sum(metrics["class_area_m2"].values()) == pytest.approx(96 * 96 * 28.5**2)
    stored = yaml.safe_load(open(outputs.paths["config"]).read())
    assert stored["chips"] == {"size": 8, "overlap": 4, "block": 48}
    assert stored["language"]["layers"] == 1

    catalog = pystac.Catalog.from_file(str(out / "catalog.json"))
    (item,) = list(catalog.get_items(recursive=True))
    for key in ("classmap", "probabilities", "chips", "quicklook", "metrics", "config", "model"):
        assert key in item.assets
        assert (out / item.assets[key].get_absolute_href()).exists(), f"asset {key} link does not resolve"
    assert item.properties["allspark:inputs"] == ["LE07_NC_2000"]
    assert item.properties["mlm:framework"] == "pytorch"
    assert item.properties["allspark:config"]["name"] == "test-region"
    assert [link.title for link in item.get_links("derived_from")] == ["LE07_NC_2000"]
    assert len(validate_catalog(outputs.catalog)) == 2  # the catalog and its item
    assert not [p for p in out.iterdir() if p.name.startswith(".")], "temporary files left behind"
    assert all(p.stat().st_mode & 0o044 == 0o044 for p in out.rglob("*") if p.is_file()), "outputs not readable"
    assert steps.published_catalog(config) == out / "catalog.json"


@pytest.mark.parametrize(("break_item", "reason"), [
    pytest.param(lambda item: item["properties"]["mlm:output"][0]["classification:classes"][0].pop("description"),
                 "'description' is a required property", id="a class without description"),
    pytest.param(lambda item: item["properties"].update(start_datetime="2000-01-01T00:00:00+08:00"),
                 "'2000-01-01T00:00:00+08:00' does not match", id="a local time"),
    pytest.param(lambda item: item["properties"].update(end_datetime="2000-12-31T23:59:59"),
                 "'2000-12-31T23:59:59' does not match", id="a time without a zone"),
    pytest.param(lambda item: item["assets"]["model"].pop("eo:bands"),
                 "'raster:bands' is a required property", id="input bands nothing describes"),
    pytest.param(lambda item: item["properties"]["mlm:input"][0].pop("bands"),
                 "'bands' is a required property", id="an input without bands"),
    pytest.param(lambda item: item["properties"].update({"proj:epsg": 32119}),
                 "'proj:epsg' does not match", id="proj:epsg under projection v2"),
])
def test_the_validator_refuses_a_broken_copy_of_the_published_item(first_run, break_item, reason):
    _, _, outputs = first_run
    item = json.loads(validate_catalog(outputs.catalog)[-1].read_text())
    break_item(item)
    with pytest.raises(StacSchemaError, match=re.escape(reason)):
        validate(item)


def test_rerun_reuses_the_work_without_duplicating_outputs(first_run):
    from flows.region import region_flow, task_runner

    config, _, outputs = first_run
    work = steps.ingest(config, log=lambda _: None).work_dir
    stores = mtimes(work)
    assert {"scene.zarr", "plan.json"} <= {p.name for p in work.iterdir()}
    assert len(list(work.glob("model-*"))) == 1  # named by the labels' content
    before = sorted(p.relative_to(config.publish_dir) for p in config.publish_dir.rglob("*") if RUNS not in p.parts)
    fine_tuning = json.loads(outputs.paths["metrics"].read_text())["fine_tuning"]
    state = region_flow.with_options(task_runner=task_runner(config))(config, return_state=True)
    states = task_states(state)
    assert set(states["ingest"]) == {"Completed"} and set(states["train"]) == {"Completed"}
    assert "predict-block" not in states  # every block is marked done in the probability store
    rerun = state.result()
    assert rerun.metrics["inference"]["blocks_predicted"] == 0 == rerun.metrics["inference"]["chips_predicted"]
    assert rerun.metrics["inference"]["blocks_done_before"] == 4
    assert json.loads(json.dumps(rerun.metrics["fine_tuning"])) == fine_tuning  # the model was not trained again
    assert mtimes(work) == stores, "the scene, model or predictions were rewritten"
    assert sorted(p.relative_to(config.publish_dir) for p in config.publish_dir.rglob("*") if RUNS not in p.parts) == before
    assert len(list((config.publish_dir / RUNS).iterdir())) == 2, "the previous published set is kept, older ones not"
    with rasterio.open(outputs.paths["classmap"]) as a, rasterio.open(rerun.paths["classmap"]) as b:
        np.testing.assert_array_equal(a.read(), b.read())
    assert steps.train(config, steps.ingest(config, log=lambda _: None)).checkpoint.parent == work


def test_labels_fixed_in_place_train_a_new_model_equal_to_a_fresh_run(tmp_path, monkeypatch):
    """The labels are read only by training: rewritten under the same path, they train a new model
    (the scene is kept), and the result equals a run that starts from an empty cache."""
    from allspark.demo_data import LABEL_ITEM_ID, build_demo_catalog
    from allspark.region.read import label_href
    from tests.regions import catalog_yaml

    source = crop_source(shared_data("landsat7_nc_labeled"), tmp_path / "source")
    catalog_json = build_demo_catalog(root=tmp_path / "catalog", source_dir=source)
    config = quick_config(catalog_yaml(catalog_json, tmp_path / "c.yaml"), tmp_path / "out")
    first = run_pipeline(steps, config, log=lambda _: None)
    scene_store = steps.ingest(config, log=lambda _: None).store
    scene_written = scene_store.stat().st_mtime_ns
    labels = label_href(pystac.Catalog.from_file(str(catalog_json)).get_item(LABEL_ITEM_ID, recursive=True))
    with rasterio.open(labels) as src:
        profile, values = src.profile, src.read(1)
    classes = len(config.class_names)
    with rasterio.open(labels, "w", **profile) as dst:  # same path: every labelled pixel gets the next class
        dst.write(np.where(values > 0, values % classes + 1, values).astype(values.dtype), 1)
    fixed = run_pipeline(steps, config, log=lambda _: None)
    assert fixed.metrics["fine_tuning"] != first.metrics["fine_tuning"]  # trained again, on the new labels
    assert scene_store.stat().st_mtime_ns == scene_written  # the scene does not read the labels: kept
    fresh_cache = tmp_path / "fresh-cache"
    (fresh_cache / "models").parent.mkdir()
    (fresh_cache / "models").symlink_to(cache_dir() / "models", target_is_directory=True)
    monkeypatch.setenv("ALLSPARK_CACHE", str(fresh_cache))
    fresh = run_pipeline(steps, config.model_copy(update={"output_dir": tmp_path / "fresh"}), log=lambda _: None)
    assert_same_outputs(fixed, fresh)
    assert fixed.metrics["fine_tuning"]["holdout"] == fresh.metrics["fine_tuning"]["holdout"]


def test_same_output_on_an_existing_dask_cluster(first_run, tmp_path):
    from distributed import LocalCluster

    from flows.region import run_region

    config, _, outputs = first_run
    with LocalCluster(n_workers=2, threads_per_worker=1, host="127.0.0.1", dashboard_address=None) as cluster:
        # The trained model published by the first run, re-applied from scratch on the cluster.
        on_cluster = trained_config(first_run, tmp_path, dask_address=cluster.scheduler_address)
        result = run_region(on_cluster)
    with rasterio.open(outputs.paths["probabilities"]) as a, rasterio.open(result.paths["probabilities"]) as b:
        np.testing.assert_allclose(a.read(), b.read(), atol=1e-5)
    with rasterio.open(outputs.paths["classmap"]) as a, rasterio.open(result.paths["classmap"]) as b:
        np.testing.assert_array_equal(a.read(), b.read())
    assert len(gpd.read_parquet(result.paths["chips"])) == len(gpd.read_parquet(outputs.paths["chips"]))


# -- the steps without Prefect ---------------------------------------------------------------------


def test_the_map_does_not_depend_on_the_block_size(first_run, tmp_path):
    results = []
    for block in (16, 40, 96):
        config = trained_config(first_run, tmp_path / str(block), chips={"size": 8, "overlap": 4, "block": block})
        ingested = steps.ingest(config, log=lambda _: None)
        predicted = steps.predict(config, ingested, steps.train(config, ingested))
        assert predicted.summary["blocks"] == predicted.summary["blocks_predicted"] == len(range(0, 96, block)) ** 2
        chunk = block * (SCENE_CHUNK // block)  # the store's chunks hold whole blocks
        assert open_scene(ingested.store)[1].chunks == (6, chunk, chunk)
        table = read_chip_tables(predicted.store).sort_values(["row", "col"], ignore_index=True)
        results.append((probabilities_of(predicted), table))
    (first, first_chips), others = results[0], results[1:]
    assert first.shape == (CLASSES, 96, 96) and np.isfinite(first).all()
    for probabilities, chips in others:
        np.testing.assert_allclose(probabilities, first, atol=1e-5)
        np.testing.assert_array_equal(chips[["row", "col", "class_index"]], first_chips[["row", "col", "class_index"]])
        np.testing.assert_allclose(chips["score"], first_chips["score"], atol=1e-5)
    with rasterio.open(first_run[2].paths["probabilities"]) as published:  # 48-px blocks on Dask
        np.testing.assert_allclose(published.read(), first, atol=1e-5)


def test_a_killed_inference_resumes_exactly(first_run, tmp_path):
    config = trained_config(first_run, tmp_path, chips={"size": 8, "overlap": 4, "block": 32})
    ingested = steps.ingest(config, log=lambda _: None)
    trained = steps.train(config, ingested)
    scene, _ = open_scene(ingested.store)
    store = ingested.work_dir / f"predictions-{steps.bundle_digest(trained.checkpoint)}.zarr"
    create_probabilities(store, scene, CLASSES)
    blocks = scene.blocks()
    assert len(blocks) == 9
    done = [blocks[i] for i in (0, 4, 8)]
    for window in done:  # what the run finished before it was killed
        steps.predict_block(ingested.store, store, trained.checkpoint, 8, 4, config.inference_batch, window)
    # a block cut short after writing its probabilities but before its chip table: not done
    zarr.open_group(store, mode="r+")["probabilities"][:, blocks[1]["y"], blocks[1]["x"]] = 0.5
    expected_pending = [w for w in blocks if w not in done]
    assert pending_blocks(store, scene) == expected_pending
    finished = {scene.block_id(w): (store / "blocks" / f"{scene.block_id(w)}.parquet").stat().st_mtime_ns for w in done}

    predicted_windows = []

    def spy(function, items):
        predicted_windows.extend(items)
        return serial_map(function, items)

    predicted = steps.predict(config, ingested, trained, mapper=spy)
    assert predicted.store == store
    assert sorted(map(scene.block_id, predicted_windows)) == sorted(map(scene.block_id, expected_pending))  # each once
    areas = [(w["y"].stop - w["y"].start) * (w["x"].stop - w["x"].start) for w in predicted_windows]
    assert areas == sorted(areas, reverse=True)  # largest first: short blocks fill in at the end
    assert predicted.summary["blocks_predicted"] == 6 and predicted.summary["blocks_done_before"] == 3
    assert pending_blocks(store, scene) == []
    assert {k: (store / "blocks" / f"{k}.parquet").stat().st_mtime_ns for k in finished} == finished
    with rasterio.open(first_run[2].paths["probabilities"]) as published:  # an uninterrupted run
        np.testing.assert_allclose(probabilities_of(predicted), published.read(), atol=1e-5)
    assert len(read_chip_tables(store)) == 23 * 23
    again = steps.predict(config, ingested, trained, mapper=spy)
    assert again.summary["blocks_predicted"] == 0 and len(predicted_windows) == 6


def test_a_deleted_or_half_written_work_folder_is_rebuilt(first_run, tmp_path):
    config = trained_config(first_run, tmp_path)
    expected = run_pipeline(steps, config, log=lambda _: None)
    kept = tmp_path / "expected"
    shutil.copytree(config.publish_dir, kept)
    expected = type(expected)(catalog=kept / "catalog.json", metrics=expected.metrics,
                              paths={k: kept / p.name for k, p in expected.paths.items()})
    work = steps.ingest(config, log=lambda _: None).work_dir

    # the scene store deleted, a half-written one left by a killed ingest, the predictions half done
    shutil.rmtree(work / "scene.zarr")
    (work / ".scene.zarr.partial" / "dn").mkdir(parents=True)
    (work / ".scene.zarr.partial" / "dn" / "zarr.json").write_text("{trunc")
    (prediction_store,) = work.glob("predictions-*.zarr")
    next((prediction_store / "blocks").glob("*.parquet")).unlink()
    rebuilt = run_pipeline(steps, config, log=lambda _: None)
    assert (work / "scene.zarr").is_dir() and not (work / ".scene.zarr.partial").exists()
    assert rebuilt.metrics["inference"]["blocks_predicted"] == 1
    assert_same_outputs(rebuilt, expected)

    # the whole work folder deleted
    shutil.rmtree(work)
    again = run_pipeline(steps, config, log=lambda _: None)
    assert (work / "scene.zarr").is_dir()
    assert again.metrics["inference"]["blocks_predicted"] == again.metrics["inference"]["blocks"]
    assert_same_outputs(again, expected)


def test_a_band_file_rewritten_in_place_gives_a_fresh_work_folder(first_run, tmp_path):
    from allspark.demo_data import build_demo_catalog
    from tests.regions import catalog_yaml

    source = crop_source(shared_data("landsat7_nc_labeled"), tmp_path / "source")
    catalog_json = build_demo_catalog(root=tmp_path / "catalog", source_dir=source)
    config = trained_config(first_run, tmp_path / "out", catalog=str(catalog_yaml(catalog_json, tmp_path / "c.yaml")))
    first = steps.ingest(config, log=lambda _: None)
    scene, dn = open_scene(first.store)
    before = read_values(scene, dn, {"y": slice(0, 96), "x": slice(0, 96)})
    assert steps.ingest(config, log=lambda _: None).work_dir == first.work_dir  # same inputs: same folder

    band = catalog_json.parent / "landsat7-nc-2000" / "LE07_NC_2000" / "B1.tif"
    with rasterio.open(band) as src:
        profile, data, nodata = src.profile, src.read(1), src.nodata
    with rasterio.open(band, "w", **profile) as dst:  # same path, same size and grid, new pixels
        dst.write(np.where(data == nodata, data, data + 7), 1)
    second = steps.ingest(config, log=lambda _: None)
    assert second.work_dir != first.work_dir
    scene, dn = open_scene(second.store)
    after = read_values(scene, dn, {"y": slice(0, 96), "x": slice(0, 96)})
    np.testing.assert_allclose(after[0], before[0] + 7)  # the new content, not the stored scene
    np.testing.assert_array_equal(after[1:], before[1:])
    trained = steps.train(config, second)
    predicted = steps.predict(config, second, trained)
    assert predicted.summary["blocks_predicted"] == predicted.summary["blocks"]  # a fresh result, nothing reused
    assert predicted.store.parent == second.work_dir

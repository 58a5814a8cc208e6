"""Traffic graphs: schema checks, windows and calendar, masked metrics, the flow on a real slice."""

from __future__ import annotations

import json
import shutil
from datetime import datetime
from pathlib import Path

import geopandas as gpd
import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pystac
import pytest
import yaml

from allspark.errors import InputError
from allspark.traffic import steps
from allspark.traffic.inputs import (
    GraphScaling,
    GraphWindows,
    calendar,
    forecast_metrics,
    historical_average_forecast,
    last_value_forecast,
    split_windows,
)
from allspark.traffic.read import read_graph
from tests.file_flows import SENSORS, STEPS, traffic_config, traffic_slice
from tests.stac_schemas import validate_catalog



def read(config):
    """The graph of a config's three files, read as the ingest step reads them."""
    return read_graph(config.speeds, config.adjacency, config.locations, config.missing_location)


# -- bad input: each with its own test ------------------------------------------------------------


def test_sensor_count_must_match_the_adjacency(tmp_path):
    files = traffic_slice(tmp_path)
    np.savetxt(files["adjacency"], np.eye(SENSORS - 1), delimiter=",")
    with pytest.raises(InputError, match=r"19 x 19 \(.*adj\.csv\)") as err:
        read(traffic_config(files, tmp_path))
    assert f"the graph has {SENSORS} sensors" in str(err.value) and "speed.csv" in str(err.value)


def test_a_non_numeric_speed_names_file_line_and_sensor(tmp_path):
    files = traffic_slice(tmp_path)
    speeds = pd.read_csv(files["speeds"], dtype=str)
    speeds.iloc[9, 3] = "n/a"
    speeds.to_csv(files["speeds"], index=False)
    with pytest.raises(InputError, match=rf"speed\.csv, line 11, sensor {speeds.columns[3]}: expected a number, got 'n/a'"):
        read(traffic_config(files, tmp_path))


def test_a_sensor_without_location_is_an_error_or_a_counted_drop(tmp_path):
    files = traffic_slice(tmp_path)
    speeds = pd.read_csv(files["speeds"], dtype=str).rename(columns={"773869": "999999"})
    speeds.to_csv(files["speeds"], index=False)
    with pytest.raises(InputError, match=r"1 sensor\(s\) of .*speed\.csv have no location in .*graph_sensor_locations\.csv: 999999"):
        read(traffic_config(files, tmp_path))
    graph = read(traffic_config(files, tmp_path, missing_location="drop"))
    assert graph.dropped_sensors == ["999999"]
    assert graph.speeds.shape == (STEPS, SENSORS - 1) and graph.adjacency.shape == (SENSORS - 1, SENSORS - 1)
    assert "999999" not in graph.sensor_ids


def test_zeros_are_missing_speeds(tmp_path):
    graph = read(traffic_config(traffic_slice(tmp_path), tmp_path))
    assert graph.missing_speeds == 1 and np.isnan(graph.speeds[4, 2])


# -- windows, calendar, metrics -------------------------------------------------------------------


def test_windows_are_chronological_and_stay_inside_their_part():
    parts = split_windows(100, 12, 12, (0.7, 0.1, 0.2))
    assert parts["train"].tolist() == list(range(70 - 24 + 1))
    assert len(parts["validation"]) == 0  # 10 steps cannot hold a 24-step window
    assert parts["test"].tolist() == list(range(80, 100 - 24 + 1))


def test_time_of_day_is_the_row_index_mod_288_and_the_start_sets_the_weekday():
    slot, day = calendar(600, datetime.fromisoformat("2012-03-10T00:00:00-08:00"), 5)  # a Saturday
    np.testing.assert_array_equal(slot, np.arange(600) % 288)
    assert day[0] == 5 and day[288] == 6 and day[576] == 0
    slot, day = calendar(3, datetime.fromisoformat("2012-03-05T23:55:00-08:00"), 5)
    assert slot.tolist() == [287, 0, 1] and day.tolist() == [0, 1, 1]


def test_metrics_mask_missing_speeds_in_mape():
    observed = np.zeros((1, 2, 12))
    observed[0, 0] = 50.0  # the second sensor has only zeros: missing, left out
    observed[0, 0, 11] = np.nan
    predicted = np.full((1, 2, 12), 40.0)
    metrics = forecast_metrics(predicted, observed, step_minutes=5)
    assert metrics["15 min"] == {"mae": 10.0, "rmse": 10.0, "mape": pytest.approx(20.0), "n": 1}
    assert metrics["60 min"]["n"] == 0 and metrics["60 min"]["mape"] is None
    assert metrics["all horizons"]["n"] == 11


def test_baselines_on_a_tiny_synthetic_frame():
    speeds = np.array([[10.0, 20.0], [11.0, np.nan], [12.0, 22.0], [13.0, 23.0], [14.0, 24.0], [15.0, 25.0]], "float32")
    scaling = GraphScaling(sensor_ids=["a", "b"], signal_mean=17.0, signal_std=5.0, location_centre=(0, 0),
                           location_scale=1, use_locations=False, predict_change=True)
    slot = np.arange(6) % 2  # two slots a "day"
    windows = GraphWindows(speeds, slot, 2, np.zeros(6, int), None, scaling, input_steps=2, horizon=2)
    starts = np.array([0, 2])
    np.testing.assert_array_equal(windows.targets(starts)[0], [[12, 13], [22, 23]])
    # sensor b's last input is missing at window 0: its previous reading is held
    np.testing.assert_array_equal(last_value_forecast(windows, starts)[:, :, 0], [[11, 20], [13, 23]])
    # training = the first 4 steps; slot 0 -> (10 + 12) / 2, slot 1 -> (11 + 13) / 2; b's slot 1 only has 23
    np.testing.assert_array_equal(historical_average_forecast(windows, starts, 4)[0], [[11, 12], [21, 23]])
    inputs = windows.inputs(starts)
    assert inputs["signals"].shape == (2, 2, 2, 1) and inputs["signals"][0, 1, 1, 0] == 0  # missing -> mean
    np.testing.assert_allclose(inputs["time_of_day"][0], [0, 0.5])


# -- the flow on a real slice ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def first_run(tmp_path_factory, prefect_server):
    from flows.files import run_file_flow

    config = traffic_config(traffic_slice(tmp_path_factory.mktemp("slice")), tmp_path_factory.mktemp("outputs"))
    return config, run_file_flow(config)


def test_flow_publishes_one_point_per_sensor_and_horizon(first_run):
    config, published = first_run
    out = config.publish_dir
    geo = json.loads(pq.read_schema(published.paths["predictions"]).metadata[b"geo"])
    assert geo["version"] == "1.1.0" and geo["columns"]["geometry"]["geometry_types"] == ["Point"]
    frame = gpd.read_parquet(published.paths["predictions"])
    assert len(frame) == SENSORS * 12
    assert {"sensor_id", "issued_at", "horizon_minutes", "valid_at", "predicted_speed", "observed_speed",
            "geometry"} <= set(frame.columns)
    assert frame.crs.to_epsg() == 4326
    assert sorted(frame["horizon_minutes"].unique()) == list(range(5, 65, 5))
    assert frame["issued_at"].nunique() == 1 and frame["predicted_speed"].notna().all()
    assert frame.groupby("sensor_id").size().eq(12).all()

    metrics = json.loads(Path(published.paths["metrics"]).read_text())
    assert metrics == json.loads(json.dumps(published.metrics))
    assert metrics["data"]["sensors"] == SENSORS and metrics["data"]["missing_speeds"] == 1
    assert metrics["fine_tuning"]["llm_layers"] == 1
    for method in ("allspark", "last_value", "historical_average"):
        assert set(metrics["test"][method]) == {"15 min", "30 min", "60 min", "all horizons"}
        assert metrics["test"][method]["60 min"]["mae"] > 0
    assert yaml.safe_load(Path(published.paths["config"]).read_text())["name"] == "test-traffic"

    catalog = pystac.Catalog.from_file(str(out / "catalog.json"))
    (item,) = list(catalog.get_items(recursive=True))
    for key in ("predictions", "metrics", "config", "model"):
        assert (out / item.assets[key].get_absolute_href()).exists(), f"asset {key} link does not resolve"
    assert {link.title for link in item.get_links("derived_from")} == {"speed.csv", "adj.csv",
                                                                       "graph_sensor_locations.csv"}
    assert item.properties["mlm:output"][0]["result"]["shape"] == [-1, SENSORS, 12]
    # the first and last row (5 min apart, from 2012-03-05 00:00 at UTC-8), written in UTC
    assert (item.properties["start_datetime"], item.properties["end_datetime"]) == (
        "2012-03-05T08:00:00Z", "2012-03-06T08:55:00Z")
    assert len(validate_catalog(published.catalog)) == 2  # the catalog and its item
    assert not [p for p in out.iterdir() if p.name.startswith(".")], "temporary files left behind"


def store_times(work_dir: Path) -> dict[str, int]:
    """Modification time of each store in a work folder, by name."""
    return {path.name: path.stat().st_mtime_ns for path in work_dir.iterdir()}


def test_rerun_reuses_the_stored_ingest_and_model(first_run):
    from flows.files import run_file_flow

    config, published = first_run
    before = gpd.read_parquet(published.paths["predictions"])
    stores = store_times(config.work_dir())
    assert {"graph.zarr", "model"} <= set(stores) and any(name.startswith("predictions-") for name in stores)
    rerun = run_file_flow(config)
    assert store_times(config.work_dir()) == stores, "a complete store was rewritten"
    pd.testing.assert_frame_equal(before, gpd.read_parquet(rerun.paths["predictions"]))


def run_steps(config):
    """The four steps in this process; the work folder and the published predictions."""
    ingested = steps.ingest(config)
    trained = steps.train(config, ingested)
    published = steps.publish(config, ingested, trained, steps.predict(config, ingested, trained))
    return ingested.work_dir, gpd.read_parquet(published.paths["predictions"])


def test_a_deleted_or_half_written_work_folder_is_rebuilt_to_the_same_result(tmp_path):
    config = traffic_config(traffic_slice(tmp_path), tmp_path / "outputs")
    work_dir, first = run_steps(config)
    shutil.rmtree(work_dir)
    rebuilt_dir, rebuilt = run_steps(config)
    assert rebuilt_dir == work_dir and {"graph.zarr", "model"} <= {p.name for p in work_dir.iterdir()}
    pd.testing.assert_frame_equal(first, rebuilt)

    # a killed ingest leaves its store half-written under a hidden name, never under its own
    shutil.rmtree(work_dir / "graph.zarr")
    (work_dir / ".graph.zarr.partial" / "speed").mkdir(parents=True)
    predictions = next(work_dir.glob("predictions-*.zarr"))
    shutil.rmtree(predictions)
    _, again = run_steps(config)
    assert (work_dir / "graph.zarr").is_dir() and predictions.is_dir()
    assert not (work_dir / ".graph.zarr.partial").exists()
    pd.testing.assert_frame_equal(first, again)


def test_an_input_file_rewritten_in_place_gets_a_fresh_work_folder(tmp_path):
    files = traffic_slice(tmp_path)
    config = traffic_config(files, tmp_path / "outputs")
    before = config.work_dir()
    speeds = pd.read_csv(files["speeds"], dtype=str)
    speeds.iloc[7, 1] = "61.5"
    speeds.to_csv(files["speeds"], index=False)
    assert config.work_dir() != before
    assert traffic_config(files, tmp_path / "outputs").work_dir() == config.work_dir()


def test_a_given_checkpoint_is_applied_without_fine_tuning(first_run, tmp_path):
    config, published = first_run
    applied = config.model_copy(update={"name": "applied", "train": None, "checkpoint": published.paths["model"]})
    ingested = steps.ingest(applied)
    trained = steps.train(applied, ingested)
    assert trained.checkpoint == published.paths["model"] and not (ingested.work_dir / "model").exists()
    predicted = steps.predict(applied, ingested, trained)
    assert predicted.summary["test_windows"] == published.metrics["data"]["test_windows"]
    assert predicted.summary["allspark 60 min MAE"] == pytest.approx(published.metrics["test"]["allspark"]["60 min"]["mae"])

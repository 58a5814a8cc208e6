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
from pydantic import ValidationError

from allspark.core.steps import run_pipeline
from allspark.errors import InputError
from allspark.traffic import steps
from allspark.traffic.config import TrafficConfig
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
from tests.file_flows import SENSORS, STEPS, TRAFFIC_ZONE, traffic_config, traffic_long, traffic_slice, traffic_table
from tests.stac_schemas import validate_catalog



def read(config):
    """The graph of a config's files, read as the ingest step reads them."""
    return read_graph(config.speeds, config.adjacency, config.locations, config.missing_location, config.table)


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


# -- long tables: one row per sensor and time; each bad one stops the run before any output ---------


def _speed_missing_everywhere(rows: pd.DataFrame) -> tuple[pd.DataFrame, str]:
    return rows.assign(speed="0"), r"target column 'speed' is missing in every row of \[.*long\.csv'\]"


def _negative_speed(rows: pd.DataFrame) -> tuple[pd.DataFrame, str]:
    rows.loc[5, "speed"] = "-3"
    return rows, r"long\.csv: line 7, column 'speed': expected a speed >= 0, got -3\.0"


def _time_off_the_step(rows: pd.DataFrame) -> tuple[pd.DataFrame, str]:
    i = rows.index[rows["time"] > rows["time"].min()][0]  # not a sensor's first time
    rows.loc[i, "time"] = str(pd.Timestamp(rows.loc[i, "time"]) + pd.Timedelta("2min"))
    return rows, (rf"long\.csv: line {i + 2}: time {rows.loc[i, 'time']}-08:00 of station '{rows.loc[i, 'sensor']}' "
                  r"is off its 0 days 00:05:00 step")


def _sensor_off_the_grid(rows: pd.DataFrame) -> tuple[pd.DataFrame, str]:
    sensor = rows.loc[0, "sensor"]
    own = rows["sensor"] == sensor
    rows.loc[own, "time"] = (pd.to_datetime(rows.loc[own, "time"]) + pd.Timedelta("2min")).astype(str)
    first = rows.index[own & (rows["time"] == "2012-03-05 00:02:00")][0]
    return rows, (rf"long\.csv: line {first + 2}: sensor '{sensor}' starts at 2012-03-05 00:02:00-08:00, off the "
                  r"5min steps from the table's first time 2012-03-05 00:00:00-08:00")


def _sensor_twice_at_one_time(rows: pd.DataFrame) -> tuple[pd.DataFrame, str]:
    expected = rf"long\.csv: line {len(rows) + 2}: station '{rows.loc[5, 'sensor']}' at .* repeats line 7"
    return pd.concat([rows, rows.loc[[5]]]), expected


@pytest.mark.parametrize("spoil", [_speed_missing_everywhere, _negative_speed, _time_off_the_step,
                                   _sensor_off_the_grid, _sensor_twice_at_one_time], ids=lambda f: f.__name__[1:])
def test_a_bad_long_table_names_file_row_and_column_and_publishes_nothing(spoil, tmp_path):
    files = traffic_slice(tmp_path)
    long = traffic_long(files["speeds"], tmp_path / "long.csv")
    rows, expected = spoil(pd.read_csv(long, dtype=str, keep_default_na=False))
    rows.to_csv(long, index=False)
    config = traffic_config({**files, "speeds": long}, tmp_path / "outputs", table=traffic_table())
    with pytest.raises(InputError, match=expected):
        run_pipeline(steps, config)
    assert not config.output_dir.exists() or not any(config.output_dir.iterdir()), "output written despite the error"


def test_a_long_tables_missing_readings_and_steps_are_nan_and_counted(tmp_path):
    files = traffic_slice(tmp_path, id_order=True)
    long = traffic_long(files["speeds"], tmp_path / "long.csv")
    rows = pd.read_csv(long, dtype=str)
    step_100 = rows.index[rows["time"] == "2012-03-05 08:20:00"]  # every sensor
    one_at_step_50 = rows.index[rows["time"] == "2012-03-05 04:10:00"][:1]
    rows.drop(index=[*step_100, *one_at_step_50]).to_csv(long, index=False)
    graph = read(traffic_config({**files, "speeds": long}, tmp_path, table=traffic_table()))
    wide = read(traffic_config(files, tmp_path))
    assert graph.speeds.shape == (STEPS, SENSORS) and graph.sensor_ids == wide.sensor_ids
    assert graph.missing_speeds == 1 + SENSORS + 1  # the "0", step 100, one reading of step 50
    assert np.isnan(graph.speeds[100]).all() and np.isnan(graph.speeds[50]).sum() == 1
    observed = ~np.isnan(graph.speeds)
    np.testing.assert_array_equal(graph.speeds[observed], wide.speeds[observed])
    assert graph.start == pd.Timestamp("2012-03-05T00:00", tz=TRAFFIC_ZONE)


def _table(**changes) -> dict:
    return traffic_table() | changes


@pytest.mark.parametrize("fields,expected", [
    ({"table": _table(), "start": "2012-03-05T00:00:00-08:00"}, "leave out start with a `table`"),
    ({"table": _table(), "step_minutes": 5}, "leave out step_minutes with a `table`"),
    ({"table": _table(targets=["speed", "flow"])}, r"table.targets must name exactly one column, the speed \(got"),
    ({"table": _table(targets=[])}, "table.targets must name exactly one column"),
    ({"table": _table(continuous=["flow"])}, "table.continuous and table.categorical must be empty"),
    ({"table": _table(time={"column": "time", "step": "7min"})}, "table.time.step '7min' must be a whole number of "
                                                                 "minutes that divides a day"),
    ({"table": _table(time={"column": "time", "step": "90s"})}, "table.time.step '90s' must be a whole number"),
    ({"table": _table(), "locations": None}, "no sensor locations: give `locations` .* or table.location"),
    ({"locations": None}, "no sensor locations: give `locations`"),
    ({"start": None}, "a wide speeds CSV has no timestamps: give start"),
    ({"table": traffic_table(location=True)}, "sensor locations given twice"),
    ({"table": traffic_table(location=True), "locations": None, "missing_location": "drop"},
     "missing_location: drop applies to a `locations` CSV"),
])
def test_an_inconsistent_traffic_config_is_refused(fields, expected, tmp_path):
    files = {"speeds": tmp_path / "long.csv", "locations": tmp_path / "places.csv"}
    with pytest.raises(ValidationError, match=expected):
        traffic_config(files | fields, tmp_path)


def test_a_table_config_derives_its_start_and_step_and_lists_only_the_files_given(tmp_path):
    places = {"file": str(tmp_path / "places.csv"), "id": "sensor_id", "x": "longitude", "y": "latitude"}
    config = traffic_config({"speeds": tmp_path / "long.parquet"}, tmp_path,
                            table=_table(time={"column": "time", "step": "15min"}, location=places))
    assert config.step_minutes == 15 and "step_minutes" not in config.model_fields_set
    assert config.contract() == {"horizon": 12, "step_minutes": 15}
    assert config.input_files() == [tmp_path / "long.parquet", tmp_path / "places.csv"]
    written = yaml.safe_load(config.to_yaml())  # what config.yaml holds: loads again, without start and step
    assert not {"start", "step_minutes"} & set(written) and TrafficConfig.model_validate(written) == config
    wide_files = {"speeds": tmp_path / "speed.csv", "adjacency": tmp_path / "adj.csv",
                  "locations": tmp_path / "places.csv"}
    wide = traffic_config(wide_files, tmp_path)
    assert "table" not in yaml.safe_load(wide.to_yaml()) and wide.input_files() == list(wide_files.values())
    assert traffic_config(wide_files | {"adjacency": None}, tmp_path).input_files() == [wide_files["speeds"],
                                                                                        wide_files["locations"]]


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


def test_a_tables_time_zone_moves_the_time_of_day_with_daylight_saving():
    slot, day = calendar(3, "2012-03-11T01:55:00-08:00", 5, TRAFFIC_ZONE)  # a Sunday; 02:00 PST is 03:00 PDT
    assert slot.tolist() == [23, 36, 37] and day.tolist() == [6, 6, 6]


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
    windows = GraphWindows(speeds, slot, 2, np.zeros(6, int), None, None, scaling, input_steps=2, horizon=2)
    starts = np.array([0, 2])
    np.testing.assert_array_equal(windows.targets(starts)[0], [[12, 13], [22, 23]])
    # sensor b's last input is missing at window 0: its previous reading is held
    np.testing.assert_array_equal(last_value_forecast(windows, starts)[:, :, 0], [[11, 20], [13, 23]])
    # training = the first 4 steps; slot 0 -> (10 + 12) / 2, slot 1 -> (11 + 13) / 2; b's slot 1 only has 23
    np.testing.assert_array_equal(historical_average_forecast(windows, starts, 4)[0], [[11, 12], [21, 23]])
    inputs = windows.inputs(starts)
    assert inputs["signals"].shape == (2, 2, 2, 1) and inputs["signals"][0, 1, 1, 0] == 0  # missing -> mean
    np.testing.assert_allclose(inputs["time_of_day"][0], [0, 0.5])


def test_the_profile_anchors_persistence_and_shows_deviations():
    """With a profile, the model's reference is the last deviation carried onto the profile of the target slots."""
    speeds = np.array([[10.0, 20.0], [11.0, np.nan], [12.0, 22.0], [13.0, 23.0]], "float32")
    profile = np.array([[10.0, 20.0], [14.0, 30.0]], "float32")  # slots 0 and 1
    scaling = GraphScaling(sensor_ids=["a", "b"], signal_mean=17.0, signal_std=2.0, location_centre=(0, 0),
                           location_scale=1, use_locations=False, predict_change=True, profile=profile.tolist())
    slot = np.arange(4) % 2
    windows = GraphWindows(speeds, slot, 2, np.zeros(4, int), None, profile, scaling, input_steps=2, horizon=2)
    starts = np.array([0])
    # issued at slot 1 (step 1): a is 11 against 14 (-3), b has no reading there, so its last one (20) is held
    # and carried from slot 1's profile (30): targets at slots 0 and 1
    np.testing.assert_array_equal(windows.reference(starts)[0], [[11 + 10 - 14, 11 + 14 - 14], [20 + 20 - 30, 20]])
    signals = windows.inputs(starts)["signals"]
    assert signals.shape == (1, 2, 2, 2)
    np.testing.assert_allclose(signals[0, :, 0, 1], [0, (11 - 14) / 2])  # a's deviations from its profile
    assert signals[0, 1, 1, 1] == 0  # missing -> no deviation


def test_the_anomaly_decay_is_fitted_per_horizon_on_the_training_windows():
    """Deviations from a flat profile that shrink by 0.8 a step (restarted by shocks) give decays 0.8 and 0.64."""
    anomaly = []
    for shock in (10.0, -6.0, 4.0, -12.0):
        anomaly += [shock * 0.8**k for k in range(5)]
    speeds = 50 + np.stack([anomaly, np.asarray(anomaly) / 2], axis=1).astype("float32")
    profile = np.full((1, 2), 50.0, "float32")
    scaling = GraphScaling(sensor_ids=["a", "b"], signal_mean=50.0, signal_std=5.0, location_centre=(0, 0),
                           location_scale=1, use_locations=False, predict_change=True, profile=profile.tolist())
    steps = len(speeds)
    windows = GraphWindows(speeds, np.zeros(steps, int), 1, np.zeros(steps, int), None, profile, scaling,
                           input_steps=1, horizon=2)
    starts = np.array([start for block in range(4) for start in range(5 * block, 5 * block + 3)])  # within a shock
    np.testing.assert_allclose(windows.fitted_anomaly_decay(starts), [0.8, 0.64], rtol=1e-5)


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
    validation = [epoch["validation_mae"] for epoch in metrics["fine_tuning"]["epochs"]]
    assert metrics["fine_tuning"]["best_epoch"] == 1 + validation.index(min(validation))  # early stopping
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


# -- a long table gives the forecasts of the wide CSV ---------------------------------------------


@pytest.fixture(scope="module")
def wide_run(tmp_path_factory):
    """The slice as a wide CSV, its columns in sensor-id order (a long table's order), through the four steps."""
    folder = tmp_path_factory.mktemp("wide")
    files = traffic_slice(folder, id_order=True)
    return files, run_pipeline(steps, traffic_config(files, folder / "outputs"))


def assert_same_forecasts(published, wide):
    """The published forecasts, their times, the metrics and the item's time span equal the wide run's."""
    ours, theirs = (gpd.read_parquet(p.paths["predictions"]) for p in (published, wide))
    pd.testing.assert_frame_equal(ours[["sensor_id", "horizon_minutes"]], theirs[["sensor_id", "horizon_minutes"]])
    for column in ("issued_at", "valid_at"):  # the same instants, on the table's clock
        assert (ours[column] == theirs[column]).all() and str(ours[column].dt.tz) == TRAFFIC_ZONE
    for column in ("predicted_speed", "observed_speed"):
        np.testing.assert_allclose(ours[column], theirs[column], rtol=1e-6, atol=0)
    assert ours.geometry.geom_equals_exact(theirs.geometry, tolerance=1e-9).all()
    assert published.metrics["test"] == wide.metrics["test"] and published.metrics["data"] == wide.metrics["data"]
    items = [next(pystac.Catalog.from_file(str(p.catalog)).get_items(recursive=True)) for p in (published, wide)]
    assert [(i.properties["start_datetime"], i.properties["end_datetime"]) for i in items] == 2 * [
        ("2012-03-05T08:00:00Z", "2012-03-06T08:55:00Z")]


def test_a_long_table_with_timestamps_gives_the_forecasts_of_the_wide_csv(wide_run, tmp_path):
    files, wide = wide_run
    long = traffic_long(files["speeds"], tmp_path / "long.csv")  # rows shuffled, local times, "0" = no reading
    config = traffic_config({**files, "speeds": long}, tmp_path / "outputs", table=traffic_table())
    assert_same_forecasts(run_pipeline(steps, config), wide)


def test_a_long_parquet_table_with_its_own_locations_and_no_adjacency_gives_the_same_forecasts(wide_run, tmp_path):
    files, wide = wide_run
    long = traffic_long(files["speeds"], tmp_path / "long.parquet", locations=files["locations"])
    config = traffic_config({"speeds": long}, tmp_path / "outputs", table=traffic_table(location=True))
    published = run_pipeline(steps, config)
    assert_same_forecasts(published, wide)
    assert "adjacency" not in steps.open_store(config.work_dir() / steps.GRAPH_STORE)
    (item,) = pystac.Catalog.from_file(str(published.catalog)).get_items(recursive=True)
    assert {link.title for link in item.get_links("derived_from")} == {"long.parquet"}

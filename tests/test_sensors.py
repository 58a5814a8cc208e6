"""Sensor tables of any layout: reading through the config's table block, features, forecasts, baselines,
stations never seen in training, the steps and the flow end to end.

The data are real PRSA Beijing station tables (../shared/data); the example config's ``table``
block describes them, and the library holds no PRSA constant.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import geopandas as gpd
import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pystac
import pytest

from allspark.core.config import LanguageModelSettings
from allspark.core.steps import run_pipeline
from allspark.core.tables import TableError, TableSchema, find_files, read_rows, time_gaps
from allspark.errors import ConfigError, InputError
from allspark.sensors import inputs, steps
from allspark.sensors.config import SensorModelConfig, SensorsConfig, load_sensors_config
from allspark.settings import catalogs_dir
from tests.conftest import shared_data
from tests.file_flows import AOTI, DINGLING, prsa_table, sensors_config
from tests.stac_schemas import validate_catalog

PRSA = TableSchema.model_validate(prsa_table())


def real_head(rows: int = 100, name: str = AOTI) -> pd.DataFrame:
    """The first rows of a real station table, as text (what a user's file holds)."""
    return pd.read_csv(shared_data("prsa_beijing", name), nrows=rows, dtype=str, keep_default_na=False)


def write(frame: pd.DataFrame, tmp_path, name: str = "station.csv"):
    path = tmp_path / name
    frame.to_csv(path, index=False)
    return path


def small_config(path, tmp_path, **changes) -> SensorsConfig:
    return SensorsConfig(**{"name": "small", "inputs": [str(path)], "table": prsa_table(),
                            "output_dir": tmp_path / "outputs"} | changes)


def test_real_table_reads_with_its_blank_cell_as_missing():
    table = read_rows(shared_data("prsa_beijing", AOTI), PRSA)
    assert len(table) == 35064 and table["station"].unique().tolist() == ["Aotizhongxin"]
    assert np.isnan(table.loc[74, "SO2"])  # line 76 holds ' ' in SO2
    assert str(table["timestamp"].dt.tz) == "Asia/Shanghai" and table["timestamp"].iloc[0].hour == 0
    assert time_gaps(table, "station", PRSA.time.step_delta) == {
        "Aotizhongxin": {"missing_steps": 0, "first_missing": None}}


def test_missing_column_names_the_file_and_the_column(tmp_path):
    path = write(real_head().drop(columns=["TEMP"]), tmp_path)
    with pytest.raises(TableError, match=rf"{path}: column\(s\) \['TEMP'\] named in the config's table block are "
                                         "not in the file"):
        read_rows(path, PRSA)


def test_bad_input_is_an_input_error_and_a_pattern_matching_nothing_is_named(tmp_path):
    assert issubclass(TableError, InputError)
    with pytest.raises(TableError, match=r"input '.*nothing-\*\.csv' matches no file"):
        find_files([str(tmp_path / "nothing-*.csv")], "station tables")


def test_text_in_a_numeric_column_names_the_file_line_and_value(tmp_path):
    frame = real_head()
    frame.loc[10, "NO2"] = "n/a?"
    path = write(frame, tmp_path)
    with pytest.raises(TableError, match=rf"{path}: line 12, column 'NO2': 'n/a\?' is not a number"):
        read_rows(path, PRSA)


def test_gaps_in_time_are_counted_or_refused(tmp_path):
    path = write(real_head().drop(index=[20, 21, 22]), tmp_path)  # 2013-03-01 20:00 to 22:00 missing
    counted = steps.ingest(small_config(path, tmp_path))
    assert counted.summary["missing_steps"] == 3 and counted.summary["rows"] == 97
    with pytest.raises(TableError, match=rf"{path}: station 'Aotizhongxin' misses 3 step\(s\) of 1h, the first at "
                                         r"2013-03-01T20:00:00\+08:00"):
        steps.ingest(small_config(path, tmp_path, allow_time_gaps=False))


def test_repeated_hour_names_both_lines(tmp_path):
    frame = real_head()
    path = write(pd.concat([frame.iloc[:6], frame.iloc[5:]]), tmp_path)
    with pytest.raises(TableError, match=rf"{path}: line 8: station 'Aotizhongxin' at 2013-03-01 05:00:00\+08:00 "
                                         "repeats line 7"):
        read_rows(path, PRSA)


def test_unknown_station_names_the_file_line_and_station(tmp_path):
    frame = real_head()
    frame.loc[3:, "station"] = "Atlantis"
    path = write(frame, tmp_path)
    with pytest.raises(TableError, match=rf"{path}: line 5, column 'station': station 'Atlantis' is not in the "
                                         "locations file prsa_stations.geojson"):
        steps.ingest(small_config(path, tmp_path))


def test_locations_file_lists_the_12_prsa_stations_with_a_source():
    path = catalogs_dir() / "prsa_stations.geojson"
    locations = gpd.read_file(path)
    assert len(locations) == 12 and locations.crs.to_epsg() == 4326
    assert locations.total_bounds[[0, 2]].round(0).tolist() == [116.0, 117.0]
    assert "Beijing Municipal Environmental Monitoring Center" in json.loads(path.read_text())["metadata"]["source"]


def test_config_needs_train_or_checkpoint_and_the_example_validates(tmp_path):
    path = tmp_path / "no-train.yaml"
    path.write_text("inputs: [x.csv]\ntable: {id: s, time: {column: t}, targets: [y]}\ntrain: null\n")
    with pytest.raises(ConfigError, match=rf"invalid sensors config \({path}\): .*give either train .* or checkpoint"):
        load_sensors_config(path)
    example = load_sensors_config(Path(__file__).resolve().parents[1] / "deployments" / "sensors-prsa.yaml")
    assert example.language.layers == 2 and example.train.max_train_rows == 2000 and example.fine_tunes
    assert example.table.targets == ["PM2.5"] and example.table.time.timezone == "Asia/Shanghai"
    assert example.model.numeric_embedding == "periodic"  # the library's default is linear (README)


@pytest.mark.parametrize("table, message", [
    ({"id": "s", "time": {"column": "t"}}, "table.targets names no column"),
    ({"id": "s", "time": {"column": "t"}, "targets": ["y"], "continuous": ["y"]}, r"column\(s\) \['y'\] named twice"),
    ({"id": "s", "time": {"column": "t", "timezone": "Mars/Olympus"}, "targets": ["y"]}, "unknown time zone 'Mars/Olympus'"),
    ({"id": "s", "time": {"column": "t", "step": "often"}, "targets": ["y"]}, "step 'often' is not a positive"),
    ({"id": "s", "time": {"column": "t"}, "targets": ["y"], "location": {"x": "lon"}}, "give location x and y together"),
    ({"id": "s", "time": {"column": "t"}, "targets": ["y"], "colour": "red"}, r"table.colour: Extra inputs"),
])
def test_a_table_block_that_cannot_work_is_refused_naming_the_key(tmp_path, table, message):
    with pytest.raises(ConfigError, match=message):
        load_sensors_config(None, inputs=["x.csv"], table=table)


def test_a_changed_input_file_gets_a_new_work_folder(tmp_path):
    path = write(real_head(), tmp_path)
    config = small_config(path, tmp_path, name="changed")
    before = steps.ingest(config)
    assert before.work_dir == config.work_dir() and before.summary["rows"] == 100
    write(real_head().drop(index=[50]), tmp_path)  # rewritten in place: same path, other content
    after = steps.ingest(config)
    assert after.work_dir != before.work_dir and after.summary["rows"] == 99


def hourly_frame() -> tuple[pd.DataFrame, pd.DataFrame]:
    """Two stations, 48 hours each (one hour missing at A), a known target, and their locations."""
    hours = pd.date_range("2014-01-06 00:00", periods=48, freq="h", tz="Asia/Shanghai")
    frame = pd.DataFrame({
        "station": np.repeat(["A", "B"], 48), "timestamp": np.concatenate([hours, hours]),
        "y": np.concatenate([np.arange(48.0), 100 + np.arange(48.0)]),
        "temp": np.tile(np.linspace(-5, 5, 48), 2), "wind": np.tile(["N", "S", None, "N"], 24),
    }).drop(index=10).reset_index(drop=True)
    places = pd.DataFrame({"longitude": [116.0, 116.5], "latitude": [40.0, 39.5]}, index=["A", "B"])
    return frame, places


def preprocessing_for(frame, places, **config) -> inputs.SensorPreprocessing:
    table = {"id": "station", "time": {"column": "timestamp"}, "targets": ["y"], "continuous": ["temp"],
             "categorical": ["wind"]}
    settings = SensorsConfig(inputs=["x.csv"], table=table, train={}, **config)
    is_train = (frame["timestamp"] < frame["timestamp"].min() + pd.Timedelta(hours=24)).to_numpy()
    return inputs.SensorPreprocessing.fit(settings, frame, places, is_train), is_train


def test_features_standardise_with_training_statistics_and_keep_missing_cells():
    frame, places = hourly_frame()
    preprocessing, is_train = preprocessing_for(frame, places)
    assert preprocessing.continuous_inputs() == ["temp", "longitude", "latitude"]
    assert preprocessing.categorical_inputs() == ["station", "wind", "hour", "weekday", "month"]
    assert preprocessing.categories == {"wind": ["N", "S"]} and preprocessing.stations == ["A", "B"]
    continuous, categorical = preprocessing.raw_inputs(frame, places)
    model_inputs = preprocessing.inputs(frame, places)
    scaled = model_inputs["continuous"].numpy()
    np.testing.assert_allclose(scaled[is_train].mean(0), 0, atol=1e-6)  # training statistics
    np.testing.assert_allclose(continuous[:, 1], np.where(frame["station"] == "A", 116.0, 116.5))
    # station, wind (-1 = missing), hour, weekday (Monday = 0), month - 1
    np.testing.assert_array_equal(categorical[:3], [[0, 0, 0, 0, 0], [0, 1, 1, 0, 0], [0, -1, 2, 0, 0]])
    config = SensorModelConfig().allspark_config(LanguageModelSettings(), 3, preprocessing.cardinalities(), ["y"])
    assert config.encoder["categorical_cardinalities"] == [2, 2, 24, 7, 12]


def test_a_forecast_reads_only_what_is_known_at_the_issue_time():
    frame, places = hourly_frame()
    preprocessing, is_train = preprocessing_for(frame, places, horizon=3, history=2)
    assert preprocessing.lag_names() == ["y@-3", "y@-4"]
    continuous, _ = preprocessing.raw_inputs(frame, places)
    at = frame.index[(frame["station"] == "B") & (frame["timestamp"].dt.hour == 20)][0]
    # temp from 3 hours before; y 3 and 4 hours before (B's y is 100 + hour)
    np.testing.assert_allclose(continuous[at, :3], [frame.loc[at - 3, "temp"], 117.0, 116.0])
    a_after_gap = frame.index[(frame["station"] == "A") & (frame["timestamp"].dt.hour == 13)][0]
    assert np.isnan(continuous[a_after_gap, 1]) and continuous[a_after_gap, 2] == 9.0  # hour 10 is missing
    last_known = inputs.persistence(frame, preprocessing)["y"].to_numpy()
    assert last_known[at] == 117.0
    seasonal = inputs.seasonal_mean(frame, is_train, preprocessing)["y"].to_numpy()
    assert seasonal[at] == 120.0  # B's own training mean on Mondays at 20:00 (training is the Monday)
    tuesday = frame.index[(frame["station"] == "B") & (frame["timestamp"].dt.hour == 20)][1]
    assert seasonal[tuesday] == pytest.approx(frame.loc[is_train, "y"].mean())  # no Tuesday in training: overall
    ahead = inputs.with_forecast_rows(frame, "station", 3, pd.Timedelta("1h"))
    future = ahead.iloc[len(frame):]
    assert len(future) == 6 and future["timestamp"].dt.hour.tolist() == [0, 1, 2] * 2
    assert future["y"].isna().all()


def test_chronological_split_never_trains_on_a_later_hour_and_random_takes_its_share():
    hours = pd.date_range("2014-01-01", periods=100, freq="h", tz="Asia/Shanghai")
    frame = pd.DataFrame({"station": ["A"] * 100 + ["B"] * 100, "timestamp": hours.append(hours),
                          "PM2.5": np.arange(200.0)})
    train = inputs.split_rows(frame, "station", "chronological", 0.4, [], seed=0)
    assert train.sum() == 80 and frame["timestamp"][train].max() < frame["timestamp"][~train].min()
    random_train = inputs.split_rows(frame, "station", "random", 0.4, [], seed=0)
    assert random_train.sum() == 80 and not np.array_equal(random_train, train)
    held_out = inputs.split_rows(frame, "station", "chronological", 0.4, ["B"], seed=0)
    assert held_out.sum() == 40 and not held_out[100:].any()


def test_the_rows_held_out_for_early_stopping_are_whole_days_or_a_seeded_draw_of_rows():
    hours = pd.date_range("2014-01-01", periods=240, freq="h", tz="UTC")
    frame = pd.DataFrame({"station": ["A"] * 240 + ["B"] * 240, "timestamp": hours.append(hours)})
    rows = np.arange(0, 480, 2)
    fitted, held_out = inputs.validation_rows(frame, rows, 0.2, "chronological", seed=0)
    assert sorted([*fitted, *held_out]) == rows.tolist()

    def days(part: np.ndarray) -> set:
        return set(frame["timestamp"][part].dt.date)

    assert len(days(held_out)) == 2 and not days(held_out) & days(fitted) and len(held_out) == 2 * 2 * 12
    again = inputs.validation_rows(frame, rows, 0.2, "chronological", seed=0)[1]
    assert np.array_equal(again, held_out)
    drawn = inputs.validation_rows(frame, rows, 0.2, "random", seed=0)[1]
    assert len(drawn) == 48 and set(drawn) <= set(rows) and len(days(drawn)) > 2
    assert len(inputs.validation_rows(frame, rows, 0.0, "random", seed=0)[1]) == 0


def test_metrics_leave_out_rows_without_an_observation():
    metrics = inputs.regression_metrics(np.array([1.0, np.nan, 3.0]), np.array([2.0, 100.0, 3.0]))
    assert metrics == {"rows": 2, "rmse": pytest.approx(np.sqrt(0.5)), "mae": 0.5, "r2": 0.5}


# -- the flow and the steps end to end --------------------------------------------------------------


@pytest.fixture(scope="module")
def first_run(tmp_path_factory, prefect_server):
    from flows.files import run_file_flow

    config = sensors_config(tmp_path_factory.mktemp("outputs"))
    published = run_file_flow(config)
    return config, published, gpd.read_parquet(published.paths["predictions"])


def test_flow_publishes_one_point_per_station_and_hour(first_run):
    config, published, table = first_run
    out = config.publish_dir
    geo = json.loads(pq.read_schema(published.paths["predictions"]).metadata[b"geo"])
    assert geo["version"] == "1.1.0" and geo["primary_column"] == "geometry"
    assert len(table) == 2 * 240
    assert list(table) == ["station", "timestamp", "PM2.5_observed", "PM2.5_predicted", "split", "trained_on",
                           "seen_station", "geometry"]
    assert table.crs.to_epsg() == 4326 and set(table.geom_type) == {"Point"}
    assert table.groupby("station").size().to_dict() == {"Aotizhongxin": 240, "Dingling": 240}
    assert table["PM2.5_predicted"].notna().all() and table["seen_station"].all()
    assert set(table["split"]) == {"train", "test"}
    assert table.loc[table["split"] == "train", "timestamp"].max() < table.loc[table["split"] == "test", "timestamp"].min()
    # 96 training rows drawn, those of a tenth of their days held out to keep the best epoch (never trained on).
    tuning = json.loads(Path(published.paths["metrics"]).read_text())["fine_tuning"]
    assert tuning["validation_rows"] > 0 and tuning["train_rows_used"] + tuning["validation_rows"] == 96
    assert table["trained_on"].sum() == tuning["train_rows_used"]
    assert (table.loc[table["trained_on"], "split"] == "train").all()

    metrics = json.loads(Path(published.paths["metrics"]).read_text())
    assert metrics == json.loads(json.dumps(dict(published.metrics), default=str))
    test = table[table["split"] == "test"]
    assert metrics["test"]["PM2.5"]["rows"] == test["PM2.5_observed"].notna().sum()
    assert metrics["test"]["PM2.5"]["rmse"] > 0 and metrics["fine_tuning"]["llm_layers"] == 1
    assert tuning["best_epoch"] == 1 and len(tuning["epoch_validation_losses"]) == 1
    assert tuning["epoch_validation_losses"][0] > 0
    assert metrics["ingest"]["missing_steps"] == 0 and "rows_without_target" in metrics["skipped"]
    compared = metrics["baselines"]["PM2.5"]
    assert compared["allspark"]["rows"] == compared["persistence"]["rows"] == compared["seasonal_mean"]["rows"] > 0
    assert compared["rmse_skill"]["persistence"] == pytest.approx(
        1 - compared["allspark"]["rmse"] / compared["persistence"]["rmse"])
    assert metrics["stations"]["unseen"] == [] and metrics["stations"]["trained_on"] == ["Aotizhongxin", "Dingling"]

    catalog = pystac.Catalog.from_file(str(out / "catalog.json"))
    assert published.catalog == out / "catalog.json"
    (item,) = list(catalog.get_items(recursive=True))
    for key in ("predictions", "metrics", "config", "model"):
        assert (out / item.assets[key].get_absolute_href()).exists(), f"asset {key} link does not resolve"
    assert item.assets["predictions"].extra_fields["table:row_count"] == 480
    assert sorted(link.title for link in item.get_links("derived_from")) == sorted([AOTI, DINGLING, "prsa_stations.geojson"])
    assert item.properties["mlm:tasks"] == ["regression"]
    assert item.properties["allspark:config"]["name"] == "test-sensors"
    # the stations' Beijing hours (UTC+8), written in UTC as STAC 1.1 requires
    assert (item.properties["start_datetime"], item.properties["end_datetime"]) == (
        "2013-12-31T16:00:00Z", "2014-01-10T15:00:00Z")
    assert len(validate_catalog(published.catalog)) == 2  # the catalog and its item
    assert not [p for p in out.iterdir() if p.name.startswith(".")], "temporary files left behind"

    model = config.work_dir() / "model"
    assert json.loads((model / "preprocessing.json").read_text())["type"] == "SensorPreprocessing"
    assert sorted(p.name for p in model.iterdir()) == ["bundle.json", "config.json", "model.safetensors",
                                                       "preprocessing.json", "training_metrics.json"]


def stamps(work_dir: Path) -> dict[str, int]:
    """Modification times of the work folder's stores: unchanged when a rerun reuses them."""
    return {path.name: path.stat().st_mtime_ns
            for path in (work_dir / "observations" / "rows.parquet", work_dir / "model" / "model.safetensors",
                         *work_dir.glob("predictions-*.parquet"))}


def test_rerun_reuses_ingest_fine_tuning_and_predictions(first_run):
    from flows.files import run_file_flow

    config, _, table = first_run
    before = stamps(config.work_dir())
    assert len(before) == 3
    again = run_file_flow(config)
    assert stamps(config.work_dir()) == before  # ingest, fine-tuning and predictions reused, not redone
    pd.testing.assert_frame_equal(table, gpd.read_parquet(again.paths["predictions"]))


def test_a_deleted_work_folder_is_rebuilt_and_publishes_the_same_result(first_run):
    from flows.files import run_file_flow

    config, _, table = first_run
    shutil.rmtree(config.work_dir())
    again = run_file_flow(config)
    assert len(stamps(config.work_dir())) == 3
    pd.testing.assert_frame_equal(table, gpd.read_parquet(again.paths["predictions"]))


def test_half_written_stores_are_rebuilt(first_run):
    config, _, table = first_run
    work_dir = config.work_dir()
    for store in ("observations", "model"):  # a run killed while writing them: only the partial folder is left
        shutil.rmtree(work_dir / store)
        (work_dir / f".{store}.partial").mkdir()
        (work_dir / f".{store}.partial" / "junk").write_text("half written")
    for predictions in work_dir.glob("predictions-*.parquet"):
        predictions.unlink()
    published = run_pipeline(steps, config)
    assert (work_dir / "observations" / "rows.parquet").is_file() and (work_dir / "model" / "bundle.json").is_file()
    assert not list(work_dir.glob(".*")), "partial stores left behind"
    pd.testing.assert_frame_equal(table, gpd.read_parquet(published.paths["predictions"]))


def test_a_checkpoint_is_applied_without_fine_tuning(first_run, tmp_path):
    config, _, table = first_run
    applied = config.model_copy(update={"checkpoint": config.work_dir() / "model", "train": None,
                                        "output_dir": tmp_path})
    published = run_pipeline(steps, applied)
    assert not (applied.work_dir() / "model").exists()
    result = gpd.read_parquet(published.paths["predictions"])
    np.testing.assert_allclose(result["PM2.5_predicted"], table["PM2.5_predicted"])
    assert not result["trained_on"].any() and published.metrics["fine_tuning"]["llm_layers"] == 1


# -- another table, forecasts and new stations -----------------------------------------------------

RENAMED = {"station": "site", "PM2.5": "pm25", "NO2": "no2", "TEMP": "air_temp_c", "wd": "wind_dir"}


def reshaped_prsa(folder: Path, station_file: str) -> Path:
    """A real PRSA station table rewritten as another network would ship it: other column names and order, one
    ISO 8601 timestamp in UTC instead of year/month/day/hour in Beijing time, -999 for missing, Parquet."""
    raw = pd.read_csv(shared_data("prsa_beijing", station_file), nrows=24 * 12, na_values=[" "])
    local = pd.to_datetime(raw[["year", "month", "day", "hour"]]).dt.tz_localize("Asia/Shanghai")
    table = raw.drop(columns=["No", "year", "month", "day", "hour"]).rename(columns=RENAMED)
    table.insert(0, "observed_at", local.dt.tz_convert("UTC").dt.strftime("%Y-%m-%dT%H:%MZ"))
    table = table[list(reversed(table.columns))].fillna(-999)
    path = folder / f"{station_file.split('_')[2]}.parquet"
    table.astype({"wind_dir": str}).to_parquet(path, index=False)
    return path


def test_a_table_that_is_not_prsa_runs_through_its_config_alone_with_the_same_numbers(tmp_path):
    """The must-show: renamed and reordered columns, a timestamp column, NO2 as the target, Parquet: same numbers."""
    # one prompt for both: by default it names the target column, which the other table calls no2
    common = {"period": ("2013-03-01T00:00", "2013-03-12T23:00"),
              "language": {"layers": 1, "prompt": "Predict nitrogen dioxide from this station record"},
              "train": {"epochs": 1, "max_train_rows": 64}, "horizon": 2, "history": 3}
    prsa = prsa_table() | {"targets": ["NO2"], "continuous": ["PM2.5", "TEMP"], "categorical": ["wd"]}
    reference = run_pipeline(steps, sensors_config(tmp_path / "prsa", table=prsa, **common))
    files = [reshaped_prsa(tmp_path, name) for name in (AOTI, DINGLING)]
    other = {
        "id": "site",
        "time": {"column": "observed_at", "format": "%Y-%m-%dT%H:%M%z", "timezone": "Asia/Shanghai", "step": "1h"},
        "location": {"file": str(catalogs_dir() / "prsa_stations.geojson"), "id": "station"},
        "targets": ["no2"], "continuous": ["pm25", "air_temp_c"], "categorical": ["wind_dir"],
        "missing_values": ["-999", "-999.0", "nan"],
    }
    reshaped = run_pipeline(steps, sensors_config(tmp_path / "other", inputs=[str(f) for f in files], table=other,
                                                  **common))
    ours, theirs = (gpd.read_parquet(p.paths["predictions"]) for p in (reference, reshaped))
    np.testing.assert_allclose(theirs["no2_predicted"], ours["NO2_predicted"], rtol=1e-5)
    np.testing.assert_array_equal(theirs["no2_observed"], ours["NO2_observed"])
    assert (theirs["timestamp"] == ours["timestamp"]).all() and (theirs["site"] == ours["station"]).all()
    for key in ("test", "train"):
        assert reshaped.metrics[key]["no2"] == pytest.approx(reference.metrics[key]["NO2"], rel=1e-5)
    assert reshaped.metrics["baselines"]["no2"]["persistence"] == reference.metrics["baselines"]["NO2"]["persistence"]


@pytest.fixture(scope="module")
def forecast_run(tmp_path_factory):
    """6 hours ahead from the last 12 hours, on Aotizhongxin and Dingling; Gucheng only tested (never trained on)."""
    data = shared_data("prsa_beijing")
    config = sensors_config(tmp_path_factory.mktemp("forecast"), name="forecast", horizon=6, history=12,
                            inputs=[str(data / AOTI), str(data / DINGLING),
                                    str(data / "PRSA_Data_Gucheng_20130301-20170228.csv")],
                            test_stations=["Gucheng"])
    return config, run_pipeline(steps, config)


def test_a_forecast_publishes_the_hours_ahead_and_its_baselines(forecast_run):
    config, published = forecast_run
    table = gpd.read_parquet(published.paths["predictions"])
    ahead = table[table["split"] == "forecast"]
    assert len(ahead) == 3 * 6 and ahead["PM2.5_observed"].isna().all() and ahead["PM2.5_predicted"].notna().all()
    last = pd.Timestamp("2014-01-10T23:00", tz="Asia/Shanghai")
    assert ahead["timestamp"].min() == last + pd.Timedelta(hours=1) and ahead["issued_at"].max() == last
    assert (table["timestamp"] - table["issued_at"] == pd.Timedelta(hours=6)).all()
    metrics = published.metrics
    assert metrics["horizon"] == {"steps": 6, "step": "1h", "history_steps": 12}
    assert metrics["features"]["continuous"][-14:] == [*(f"PM2.5@-{6 + lag}" for lag in range(12)),
                                                       "longitude", "latitude"]
    assert not table.loc[table["station"] == "Gucheng", "trained_on"].any()
    assert metrics["stations"]["unseen"] == ["Gucheng"]
    assert metrics["stations"]["test_unseen"]["PM2.5"]["rows"] == table.loc[
        (table["station"] == "Gucheng") & (table["split"] == "test"), "PM2.5_observed"].notna().sum()
    for baseline in ("persistence", "seasonal_mean"):
        assert metrics["baselines"]["PM2.5"][baseline]["rmse"] > 0


def test_a_checkpoint_predicts_stations_it_never_saw_and_says_so(forecast_run, tmp_path):
    config, _ = forecast_run
    data = shared_data("prsa_beijing")
    applied = config.model_copy(update={
        "checkpoint": config.work_dir() / "model", "train": None, "output_dir": tmp_path, "test_stations": [],
        "inputs": [str(data / AOTI), str(data / "PRSA_Data_Changping_20130301-20170228.csv")]})
    published = run_pipeline(steps, applied)
    table = gpd.read_parquet(published.paths["predictions"])
    assert published.metrics["stations"]["unseen"] == ["Changping"]
    assert published.metrics["stations"]["trained_on"] == ["Aotizhongxin", "Dingling"]
    assert table.loc[table["station"] == "Changping", "PM2.5_predicted"].notna().all()
    assert not table.loc[table["station"] == "Changping", "seen_station"].any()
    assert published.metrics["stations"]["test_unseen"]["PM2.5"]["rmse"] > 0


def test_a_checkpoint_for_another_target_or_horizon_is_refused_naming_both(forecast_run, tmp_path):
    config, _ = forecast_run
    no2 = prsa_table() | {"targets": ["NO2"], "continuous": ["PM2.5"]}
    for change, field in (({"horizon": 1}, "horizon is 6 there, 1 in this run"),
                          ({"table": no2}, r'targets is \["PM2.5"\] there, \["NO2"\] in this run')):
        other = SensorsConfig.model_validate(config.model_dump() | {
            "checkpoint": config.work_dir() / "model", "train": None, "output_dir": tmp_path, **change})
        with pytest.raises(InputError, match=field):
            run_pipeline(steps, other)
        assert not other.publish_dir.exists()


def located_table(tmp_path, change) -> Path:
    """A real station table with its location as lon/lat columns, changed by ``change``."""
    frame = real_head(48)
    frame["lon"], frame["lat"] = "116.397", "39.982"
    change(frame)
    return write(frame, tmp_path)


def swap_axes(frame):
    frame["lon"], frame["lat"] = frame["lat"], frame["lon"]


@pytest.mark.parametrize("change, table, message", [
    (lambda f: f.__setitem__("PM2.5", "NA"), {}, r"target column 'PM2.5' is missing in every row"),
    (lambda f: f.loc.__setitem__((7, "hour"), "25"), {}, r"line 9: year='2013', month='3', day='1', hour='25' is not a valid date and time"),
    (lambda f: f.loc.__setitem__((7, "day"), ""), {}, r"line 9, column 'day' is empty"),
    (lambda f: f.__setitem__("lon", ""), {}, r"line 2: station 'Aotizhongxin' has no location"),
    (swap_axes, {}, r"line 2: station 'Aotizhongxin' at x=39.982, y=116.397 is outside the area of use of EPSG:4326"),
    (lambda f: None, {"location": {"x": "lon", "y": "lat", "crs": "EPSG:32650"}},
     r"line 2: station 'Aotizhongxin' at x=116.397, y=39.982 is outside the area of use of EPSG:32650"),
    (lambda f: None, {"continuous": ["TEMP", "humidity"]}, r"column\(s\) \['humidity'\] named in the config"),
])
def test_bad_tables_stop_before_work_naming_file_row_and_column(tmp_path, change, table, message):
    path = located_table(tmp_path, change)
    schema = prsa_table() | {"location": {"x": "lon", "y": "lat"}} | table
    config = small_config(path, tmp_path, table=schema)
    with pytest.raises(TableError, match=message) as caught:
        run_pipeline(steps, config)
    assert str(path) in str(caught.value)
    assert not config.publish_dir.exists() and not (config.work_dir() / "observations").exists()

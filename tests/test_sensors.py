"""Sensor tables (PRSA): schema checks on bad input, feature building, splits, the steps and the flow end to end."""

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
from allspark.errors import ConfigError, InputError
from allspark.sensors import inputs, read, steps
from allspark.sensors.config import SensorModelConfig, SensorsConfig, load_sensors_config
from allspark.sensors.read import SensorTableError
from tests.conftest import shared_data
from tests.file_flows import AOTI, DINGLING, sensors_config
from tests.stac_schemas import validate_catalog

KNOWN = read.read_locations("prsa_stations")["station"].tolist()


def real_head(rows: int = 100, name: str = AOTI) -> pd.DataFrame:
    """The first rows of a real station table, as text (what a user's file holds)."""
    return pd.read_csv(shared_data("prsa_beijing", name), nrows=rows, dtype=str, keep_default_na=False)


def write(frame: pd.DataFrame, tmp_path, name: str = "station.csv"):
    path = tmp_path / name
    frame.to_csv(path, index=False)
    return path


def test_real_table_reads_with_its_blank_cell_as_missing():
    table = read.read_station_table(shared_data("prsa_beijing", AOTI), KNOWN)
    assert len(table) == 35064 and table["station"].unique().tolist() == ["Aotizhongxin"]
    assert np.isnan(table.loc[74, "SO2"])  # line 76 holds ' ' in SO2
    assert str(table["timestamp"].dt.tz) == read.TIMEZONE
    assert read.time_gaps(table) == {"Aotizhongxin": {"missing_hours": 0, "first_missing": None}}


def test_missing_column_names_the_file_and_the_column(tmp_path):
    path = write(real_head().drop(columns=["TEMP"]), tmp_path)
    with pytest.raises(SensorTableError, match=rf"{path}: missing column\(s\) \['TEMP'\]"):
        read.read_station_table(path, KNOWN)


def test_bad_input_is_an_input_error_and_a_pattern_matching_nothing_is_named(tmp_path):
    assert issubclass(SensorTableError, InputError) and SensorTableError.__bases__ == (InputError,)
    with pytest.raises(SensorTableError, match=r"input '.*nothing-\*\.csv' matches no file"):
        read.find_input_files([str(tmp_path / "nothing-*.csv")])


def test_text_in_a_numeric_column_names_the_file_line_and_value(tmp_path):
    frame = real_head()
    frame.loc[10, "NO2"] = "n/a?"
    path = write(frame, tmp_path)
    with pytest.raises(SensorTableError, match=rf"{path}: line 12, column 'NO2': 'n/a\?' is not a number"):
        read.read_station_table(path, KNOWN)


def test_gaps_in_time_are_counted_or_refused(tmp_path):
    frame = real_head().drop(index=[20, 21, 22])  # 2013-03-01 20:00 to 22:00 missing
    path = write(frame, tmp_path)
    table = read.read_station_table(path, KNOWN)
    assert read.time_gaps(table) == {
        "Aotizhongxin": {"missing_hours": 3, "first_missing": "2013-03-01T20:00:00+08:00"}
    }
    counted = steps.ingest(SensorsConfig(name="gaps", inputs=[str(path)], output_dir=tmp_path / "outputs"))
    assert counted.summary["missing_hours"] == 3 and counted.summary["rows"] == 97
    with pytest.raises(SensorTableError, match=rf"{path}: station 'Aotizhongxin' misses 3 hour\(s\), the first at "
                                               r"2013-03-01T20:00:00\+08:00"):
        steps.ingest(SensorsConfig(name="gaps", inputs=[str(path)], allow_time_gaps=False,
                                   output_dir=tmp_path / "outputs"))


def test_repeated_hour_names_the_line(tmp_path):
    frame = real_head()
    path = write(pd.concat([frame.iloc[:6], frame.iloc[5:]]), tmp_path)
    with pytest.raises(SensorTableError, match=rf"{path}: line 8: station 'Aotizhongxin' .* repeats the previous hour"):
        read.read_station_table(path, KNOWN)


def test_unknown_station_names_the_file_line_and_station(tmp_path):
    frame = real_head()
    frame.loc[3:, "station"] = "Atlantis"
    path = write(frame, tmp_path)
    with pytest.raises(SensorTableError, match=rf"{path}: line 5: station 'Atlantis' is not in the locations file"):
        read.read_station_table(path, KNOWN)


def test_locations_file_lists_the_12_prsa_stations_with_a_source():
    locations = read.read_locations("prsa_stations")
    assert len(locations) == 12 and locations.crs.to_epsg() == 4326
    assert locations.total_bounds[[0, 2]].round(0).tolist() == [116.0, 117.0]
    document = json.loads(read.locations_path("prsa_stations").read_text())
    assert "Beijing Municipal Environmental Monitoring Center" in document["metadata"]["source"]


def test_config_needs_train_or_checkpoint_and_the_example_validates(tmp_path):
    path = tmp_path / "no-train.yaml"
    path.write_text("inputs: [x.csv]\ntrain: null\n")
    with pytest.raises(ConfigError, match=rf"invalid sensors config \({path}\): .*give either train .* or checkpoint"):
        load_sensors_config(path)
    example = load_sensors_config(Path(__file__).resolve().parents[1] / "deployments" / "sensors-prsa.yaml")
    assert example.language.layers == 2 and example.train.max_train_rows == 2000 and example.fine_tunes


def test_a_changed_input_file_gets_a_new_work_folder(tmp_path):
    path = write(real_head(), tmp_path)
    config = SensorsConfig(name="changed", inputs=[str(path)], output_dir=tmp_path / "outputs")
    before = steps.ingest(config)
    assert before.work_dir == config.work_dir() and before.summary["rows"] == 100
    write(real_head().drop(index=[50]), tmp_path)  # rewritten in place: same path, other content
    after = steps.ingest(config)
    assert after.work_dir != before.work_dir and after.summary["rows"] == 99


def tiny_frame() -> pd.DataFrame:
    return pd.DataFrame({
        "station": ["Dongsi", "Aotizhongxin", "Wanliu"],
        "timestamp": pd.to_datetime(["2014-01-06 05:00", "2014-07-01 23:00", "2015-12-31 00:00"]).tz_localize(
            read.TIMEZONE),
        "year": [2014.0, 2014.0, 2015.0], "SO2": [10.0, np.nan, 30.0], "NO2": [1.0, 2.0, 3.0],
        "CO": [300.0, 400.0, 500.0], "O3": [50.0, 60.0, 70.0], "TEMP": [-5.0, 30.0, 0.0],
        "PRES": [1020.0, 1000.0, 1030.0], "DEWP": [-20.0, 20.0, -10.0], "RAIN": [0.0, 1.0, 0.0],
        "WSPM": [1.0, 2.0, 3.0], "wd": ["N", None, "NNW"], "PM10": [999.0, 999.0, 999.0], "PM2.5": [5.0, 50.0, 500.0],
    })


def test_features_standardise_with_training_statistics_and_keep_missing_cells():
    frame = tiny_frame()
    preprocessing = inputs.SensorPreprocessing.fit(frame.iloc[:2], KNOWN)  # the first two rows are the training split
    model_inputs = preprocessing.inputs(frame)
    continuous, categorical = model_inputs["continuous"].numpy(), model_inputs["categorical"].numpy()
    assert continuous.shape == (3, len(inputs.CONTINUOUS_FEATURES)) and "PM10" not in inputs.CONTINUOUS_FEATURES
    so2 = inputs.CONTINUOUS_FEATURES.index("SO2")
    assert np.isnan(continuous[1, so2]) and continuous[0, so2] == 0.0  # one training value: mean 10, std 1
    temp = inputs.CONTINUOUS_FEATURES.index("TEMP")
    np.testing.assert_allclose(continuous[:2, temp], [-1.0, 1.0])
    np.testing.assert_allclose(continuous[2, temp], (0.0 - 12.5) / 17.5)
    # station (locations order), wind (-1 = missing), month - 1, hour, weekday (Monday = 0)
    np.testing.assert_array_equal(categorical, [[3, 0, 0, 5, 0], [0, -1, 6, 23, 1], [10, 15, 11, 0, 3]])
    config = SensorModelConfig().allspark_config(LanguageModelSettings(), len(KNOWN))
    assert config.encoder["continuous_columns"] == 10
    assert config.encoder["categorical_cardinalities"] == [12, 16, 12, 24, 7]


def test_chronological_split_never_trains_on_a_later_hour_and_random_takes_its_share():
    hours = pd.date_range("2014-01-01", periods=100, freq="h", tz=read.TIMEZONE)
    frame = pd.DataFrame({"timestamp": hours.append(hours), "PM2.5": np.arange(200.0)})
    train = inputs.split_rows(frame, "chronological", 0.4, seed=0)
    assert train.sum() == 80 and frame["timestamp"][train].max() < frame["timestamp"][~train].min()
    random_train = inputs.split_rows(frame, "random", 0.4, seed=0)
    assert random_train.sum() == 80 and not np.array_equal(random_train, train)


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
    assert {"station", "timestamp", "pm25_observed", "pm25_predicted", "split", "trained_on", "geometry"} <= set(table)
    assert table.crs.to_epsg() == 4326 and set(table.geom_type) == {"Point"}
    assert table.groupby("station").size().to_dict() == {"Aotizhongxin": 240, "Dingling": 240}
    assert table["pm25_predicted"].notna().all()
    assert set(table["split"]) == {"train", "test"}
    assert table.loc[table["split"] == "train", "timestamp"].max() < table.loc[table["split"] == "test", "timestamp"].min()
    assert table["trained_on"].sum() == 96 and (table.loc[table["trained_on"], "split"] == "train").all()

    metrics = json.loads(Path(published.paths["metrics"]).read_text())
    assert metrics == json.loads(json.dumps(dict(published.metrics), default=str))
    test = table[table["split"] == "test"]
    assert metrics["test"]["rows"] == test["pm25_observed"].notna().sum()
    assert metrics["test"]["rmse"] > 0 and metrics["fine_tuning"]["llm_layers"] == 1
    assert metrics["ingest"]["missing_hours"] == 0 and "rows_without_pm25" in metrics["skipped"]

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
    np.testing.assert_allclose(result["pm25_predicted"], table["pm25_predicted"])
    assert not result["trained_on"].any() and published.metrics["fine_tuning"]["llm_layers"] == 1

"""The four steps of a sensors run: ingest the station tables, fine-tune, predict the targets, publish.

Each step is idempotent on the run's work folder (:meth:`SensorsConfig.work_dir`, keyed by the
config and the content of the input files): a complete store is reused, a missing or half-written
one rebuilt. The work folder holds

    observations/                 the checked, selected rows (rows.parquet), the stations' locations
                                  (stations.parquet) and what ingest found (ingest.json)
    model/                        the fine-tuned model bundle (preprocessing: SensorPreprocessing)
    predictions-<bundle>.parquet  the targets predicted for every row (and the forecast) by that bundle

Splits (``split``): ``random`` (the paper's 40/60 row split; the neighbouring times of a test row
are in training, so it is easy) or ``chronological`` (the first ``train_fraction`` of the times
train, the rest test: no leakage across time; the default); ``test_stations`` are never trained
on. With a ``horizon``, the published table also holds each station's forecast beyond its last
row (split ``forecast``). Gaps in time are counted in ``metrics.json``; no row is invented for a
missing step. ``allow_time_gaps: false`` makes a gap an error.
"""

from __future__ import annotations

import json
import re

import numpy as np
import pandas as pd

from allspark.core.atomic import atomic_dir, atomic_file
from allspark.core.bundle import bundle_digest, check_checkpoint, load_bundle, load_preprocessing, save_bundle
from allspark.core.publish import mlm_fields, publish_table
from allspark.core.steps import (
    Ingested,
    Log,
    Mapper,
    Predicted,
    Published,
    Trained,
    given_checkpoint,
    serial_map,
)
from allspark.core.storage import check_writable, total_size
from allspark.core.tables import FILE, ROW, TIMESTAMP, TableError
from allspark.sensors.config import SensorsConfig
from allspark.sensors.inputs import (
    SensorPreprocessing,
    fit_table_model,
    observed,
    persistence,
    predict_targets,
    prediction_frame,
    regression_metrics,
    seasonal_mean,
    split_rows,
    training_rows,
    validation_rows,
    with_forecast_rows,
)
from allspark.sensors.read import read_observations

ROWS_FILE = "rows.parquet"
STATIONS_FILE = "stations.parquet"
RECORD_FILE = "ingest.json"


def ingest(config: SensorsConfig, log: Log = print) -> Ingested:
    """Check every station table and store the selected rows in ``<work>/observations`` (reused when complete).

    The summary counts the rows, stations, rows without any target and missing steps; with
    ``allow_time_gaps: false`` a missing step is an error naming the file and the time.
    """
    files = config.station_files()
    work_dir = config.work_dir()
    check_writable(config.publish_location, work_dir, min_free_bytes=total_size(files))
    store = work_dir / "observations"
    if store.is_dir():
        log(f"reusing the ingested rows in {store}")
    else:
        frame, places, gaps = read_observations(files, config.table, config.stations, config.period,
                                                config.allow_time_gaps)
        record = {
            "files": [str(f) for f in files],
            "rows": len(frame),
            "stations": sorted(frame[config.table.id].unique().tolist()),
            "rows_without_target": int((~observed(frame, config.table.targets)).sum()),
            "missing_steps": sum(g["missing_steps"] for g in gaps.values()),
            "time_gaps": gaps,
        }
        with atomic_dir(store) as tmp:
            frame.drop(columns=[ROW, FILE, "geometry"], errors="ignore").to_parquet(tmp / ROWS_FILE, index=False)
            places.to_parquet(tmp / STATIONS_FILE)
            (tmp / RECORD_FILE).write_text(json.dumps(record, indent=2))
    record = _ingest_record(store)
    summary = {key: record[key] for key in ("rows", "stations", "rows_without_target", "missing_steps")}
    return Ingested(work_dir=work_dir, store=store, summary=summary)


def _ingest_record(store) -> dict:
    """What ingest found: the station files, counts and the missing steps per station."""
    return json.loads((store / RECORD_FILE).read_text())


def _observations(config: SensorsConfig, ingested: Ingested) -> tuple[pd.DataFrame, pd.DataFrame, np.ndarray]:
    """The ingested rows, the stations' locations and the rows' training mask under the config's split."""
    frame = pd.read_parquet(ingested.store / ROWS_FILE)
    is_train = split_rows(frame, config.table.id, config.split, config.train_fraction, config.test_stations,
                          config.seed)
    return frame, pd.read_parquet(ingested.store / STATIONS_FILE), is_train


def train(config: SensorsConfig, ingested: Ingested, log: Log = print) -> Trained:
    """The config's checkpoint, or the bundle fine-tuned on the training split in ``<work>/model`` (reused)."""
    if not config.fine_tunes:
        check_checkpoint(config)
        return given_checkpoint(config.checkpoint)
    directory = ingested.work_dir / "model"
    if directory.is_dir():
        log(f"reusing the fine-tuned model in {directory}")
        return given_checkpoint(directory)
    frame, places, is_train = _observations(config, ingested)
    targets = config.table.targets
    rows = training_rows(frame, targets, is_train, config.train.max_train_rows, config.seed)
    if not len(rows):
        raise TableError(f"the {config.split} training split has no row with an observed {' or '.join(targets)}")
    preprocessing = SensorPreprocessing.fit(config, frame, places, is_train)
    model, metrics = fit_table_model(config.model, config.language, config.train, frame, places, rows, preprocessing,
                                     config.split, config.seed, log)
    metrics["train_rows_available"] = int((is_train & observed(frame, targets)).sum())
    save_bundle(directory, model, preprocessing, config, metrics)
    return Trained(checkpoint=directory, metrics=metrics)


def predict(config: SensorsConfig, ingested: Ingested, trained: Trained, mapper: Mapper = serial_map) -> Predicted:
    """The targets for every row and the forecast rows into ``<work>/predictions-<bundle digest>.parquet`` (reused).

    The rows are few enough for one process, so ``mapper`` is not used.
    """
    store = ingested.work_dir / f"predictions-{bundle_digest(trained.checkpoint)}.parquet"
    if not store.is_file():
        frame, places, _ = _observations(config, ingested)
        bundle = load_bundle(trained.checkpoint, SensorPreprocessing)
        preprocessing = bundle.preprocessing
        rows = with_forecast_rows(frame, preprocessing.id_column, preprocessing.horizon, preprocessing.step_delta)
        predicted = predict_targets(bundle.model, preprocessing, rows, places, config.inference_batch)
        with atomic_file(store) as tmp:
            pd.DataFrame(predicted, columns=preprocessing.targets).to_parquet(tmp, index=False)
    return Predicted(store=store, summary={"rows": len(pd.read_parquet(store))})


def _per_target(targets, observations: pd.DataFrame, predictions: np.ndarray, rows: np.ndarray) -> dict:
    """:func:`regression_metrics` of each target over ``rows``."""
    return {target: regression_metrics(observations[target].to_numpy("float64")[rows], predictions[rows, i])
            for i, target in enumerate(targets)}


def forecast_metrics(frame: pd.DataFrame, predictions: np.ndarray, is_train: np.ndarray,
                     preprocessing: SensorPreprocessing) -> dict:
    """Test scores: per target, AllSpark against persistence and the seasonal mean on the same test rows, and
    on the stations seen and not seen in training."""
    targets, is_test = preprocessing.targets, ~is_train
    last_known, seasonal = persistence(frame, preprocessing), seasonal_mean(frame, is_train, preprocessing)
    comparison = {}
    for i, target in enumerate(targets):
        truth = frame[target].to_numpy("float64")
        same_rows = is_test & np.isfinite(truth) & np.isfinite(last_known[target].to_numpy())
        scores = {name: regression_metrics(truth[same_rows], values[same_rows]) for name, values in (
            ("allspark", predictions[:, i]), ("persistence", last_known[target].to_numpy()),
            ("seasonal_mean", seasonal[target].to_numpy()))}
        ours = scores["allspark"]["rmse"]
        comparison[target] = {**scores, "rmse_skill": {
            name: None if ours is None or not scores[name]["rmse"] else 1 - ours / scores[name]["rmse"]
            for name in ("persistence", "seasonal_mean")}}
    seen = frame[preprocessing.id_column].isin(preprocessing.stations).to_numpy()
    return {
        "test": _per_target(targets, frame, predictions, is_test),
        "train": _per_target(targets, frame, predictions, is_train),
        "baselines": {"rule": "on the test rows whose target and last known value are observed: persistence = the "
                              "last value known at the issue time; seasonal_mean = the training mean of the station "
                              "at that hour of day and weekday (of all stations for a new one)",
                      **comparison},
        "stations": {
            "trained_on": preprocessing.stations,
            "unseen": sorted(frame.loc[~seen, preprocessing.id_column].unique().tolist()),
            "test_seen": _per_target(targets, frame, predictions, is_test & seen),
            "test_unseen": _per_target(targets, frame, predictions, is_test & ~seen),
        },
    }


def publish(config: SensorsConfig, ingested: Ingested, trained: Trained, predicted: Predicted) -> Published:
    """Write the GeoParquet (one point per station and target time), metrics, config, model and STAC catalog."""
    frame, places, is_train = _observations(config, ingested)
    preprocessing = load_preprocessing(trained.checkpoint, SensorPreprocessing)
    rows = with_forecast_rows(frame, preprocessing.id_column, preprocessing.horizon, preprocessing.step_delta)
    predictions = pd.read_parquet(predicted.store)[preprocessing.targets].to_numpy("float64")
    ahead = len(rows) - len(frame)  # the forecast rows after each station's last row
    split = np.concatenate([np.where(is_train, "train", "test"), np.full(ahead, "forecast")])
    trained_on = np.zeros(len(rows), dtype=bool)
    if config.fine_tunes:
        drawn = training_rows(frame, config.table.targets, is_train, config.train.max_train_rows, config.seed)
        trained_on[validation_rows(frame, drawn, config.train.validation_fraction, config.split, config.seed)[0]] = True
    table = prediction_frame(rows, predictions, split, trained_on, places, preprocessing)
    record = _ingest_record(ingested.store)
    metrics = {
        "flow": "sensors",
        "name": config.name,
        "targets": preprocessing.targets,
        "horizon": {"steps": preprocessing.horizon, "step": preprocessing.step, "history_steps": preprocessing.history},
        "features": {"continuous": preprocessing.continuous_inputs(),
                     "categorical": preprocessing.categorical_inputs()},
        "split": {"rule": config.split, "train_fraction": config.train_fraction, "test_stations": config.test_stations,
                  "train_rows": int(is_train.sum()), "test_rows": int((~is_train).sum()),
                  "forecast_rows": ahead},
        **forecast_metrics(frame, predictions[: len(frame)], is_train, preprocessing),
        "fine_tuning": trained.metrics,
        "ingest": record,
        "skipped": {
            "rows_without_target": record["rows_without_target"],
            "rule": "rows without an observed target are predicted and published (observed empty) but not trained "
                    "on nor scored",
            "missing_steps": record["missing_steps"],
            "missing_steps_rule": "times absent from a station's table get no row and no prediction",
        },
    }
    inputs = len(preprocessing.continuous_inputs()) + len(preprocessing.categorical_inputs())
    model_fields = mlm_fields(
        trained.checkpoint,
        architecture="AllSpark table: TabFormer-style column encoder, Lynx resampler bridge, frozen causal LM "
                     "with bottleneck adapters, linear regression head",
        tasks=["regression"],
        inputs=[{
            "name": "station-time row",
            "bands": [],
            "input": {"shape": [-1, inputs], "dim_order": ["batch", "column"], "data_type": "float32"},
            "description": f"continuous {preprocessing.continuous_inputs()} standardised; categorical "
                           f"{preprocessing.categorical_inputs()}",
        }],
        outputs=[{
            "name": ", ".join(preprocessing.targets),
            "tasks": ["regression"],
            "result": {"shape": [-1, len(preprocessing.targets)], "dim_order": ["batch", "value"],
                       "data_type": "float32"},
        }],
    )
    stamps = rows[TIMESTAMP]
    lead = f" {preprocessing.horizon} x {preprocessing.step} ahead" if preprocessing.horizon else ""
    return publish_table(
        config,
        item_id="-".join([config.name, *(re.sub(r"[^a-z0-9]+", "", t.lower()) for t in preprocessing.targets)]),
        frame=table,
        title=f"Predicted{lead} and observed {', '.join(preprocessing.targets)} per station and time",
        time_range=(stamps.min().to_pydatetime(), stamps.max().to_pydatetime()),
        input_files=config.input_files(),
        metrics=metrics,
        checkpoint=trained.checkpoint,
        model_fields=model_fields,
    )

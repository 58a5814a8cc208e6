"""The four steps of a sensors run: ingest the station tables, fine-tune, predict PM2.5, publish.

Each step is idempotent on the run's work folder (:meth:`SensorsConfig.work_dir`, keyed by the
config and the content of the input files): a complete store is reused, a missing or half-written
one rebuilt. The work folder holds

    observations/                 the checked, selected rows (rows.parquet) and what ingest found (ingest.json)
    model/                        the fine-tuned model bundle (preprocessing: SensorPreprocessing)
    predictions-<bundle>.parquet  PM2.5 predicted for every row by that bundle

Splits (``split``): ``random`` (the paper's 40/60 row split; the neighbouring hours of a test row
are in training, so it is easy) or ``chronological`` (the first ``train_fraction`` of the hours
train, the rest test: no leakage across time; the default). Gaps in time (hours missing between
a station's first and last hour) are counted and reported in ``metrics.json``; no row is invented
for a missing hour, so it gets no prediction. ``allow_time_gaps: false`` makes a gap an error.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from allspark.core.atomic import atomic_dir, atomic_file
from allspark.core.bundle import bundle_digest, check_checkpoint, load_bundle, save_bundle
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
from allspark.sensors.config import SensorsConfig
from allspark.sensors.inputs import (
    CATEGORICAL_FEATURES,
    CONTINUOUS_FEATURES,
    SensorPreprocessing,
    fit_table_model,
    predict_pm25,
    prediction_frame,
    regression_metrics,
    split_rows,
    training_rows,
)
from allspark.sensors.read import (
    TARGET,
    SensorTableError,
    locations_path,
    read_locations,
    read_station_table,
    select_rows,
    time_gaps,
)

ROWS_FILE = "rows.parquet"
RECORD_FILE = "ingest.json"


def ingest(config: SensorsConfig, log: Log = print) -> Ingested:
    """Check every station table and store the selected rows in ``<work>/observations`` (reused when complete).

    The summary counts the rows, stations, rows without PM2.5 and missing hours; with
    ``allow_time_gaps: false`` a missing hour is an error naming the file and the hour.
    """
    files = config.station_files()
    work_dir = config.work_dir()
    check_writable(config.publish_dir, work_dir, min_free_bytes=total_size(files))
    store = work_dir / "observations"
    if store.is_dir():
        log(f"reusing the ingested rows in {store}")
    else:
        _store_observations(config, files, store)
    record = _ingest_record(store)
    summary = {key: record[key] for key in ("rows", "stations", "rows_without_pm25", "missing_hours")}
    return Ingested(work_dir=work_dir, store=store, summary=summary)


def _store_observations(config: SensorsConfig, files: list[Path], store: Path) -> None:
    """Read, check and select the rows of ``files``; write them and what was found into ``store`` atomically."""
    known = read_locations(config.locations)["station"].tolist()
    parts, gaps = [], {}
    for path in files:
        table = select_rows(read_station_table(path, known), config.stations, config.period)
        for station, gap in time_gaps(table).items():
            if gap["missing_hours"] and not config.allow_time_gaps:
                raise SensorTableError(
                    f"{path}: station {station!r} misses {gap['missing_hours']} hour(s), the first at "
                    f"{gap['first_missing']} (allow_time_gaps is false)"
                )
            gaps[station] = {"file": str(path), **gap}
        parts.append(table)
    observations = pd.concat(parts, ignore_index=True)
    if config.stations is not None:
        absent = sorted(set(config.stations) - set(observations["station"]))
        if absent:
            raise SensorTableError(f"station(s) {absent} have no rows in {[str(f) for f in files]}")
    if observations.empty:
        raise SensorTableError(f"no rows in the period {config.period} in {[str(f) for f in files]}")
    record = {
        "files": [str(f) for f in files],
        "rows": len(observations),
        "stations": sorted(observations["station"].unique().tolist()),
        "rows_without_pm25": int(observations[TARGET].isna().sum()),
        "missing_hours": sum(g["missing_hours"] for g in gaps.values()),
        "time_gaps": gaps,
    }
    with atomic_dir(store) as tmp:
        observations.to_parquet(tmp / ROWS_FILE, index=False)
        (tmp / RECORD_FILE).write_text(json.dumps(record, indent=2))


def _ingest_record(store: Path) -> dict:
    """What ingest found: the station files, counts and the missing hours per station."""
    return json.loads((store / RECORD_FILE).read_text())


def _observations(config: SensorsConfig, ingested: Ingested) -> tuple[pd.DataFrame, np.ndarray]:
    """The ingested rows and their training mask under the config's split."""
    frame = pd.read_parquet(ingested.store / ROWS_FILE)
    return frame, split_rows(frame, config.split, config.train_fraction, config.seed)


def train(config: SensorsConfig, ingested: Ingested, log: Log = print) -> Trained:
    """The config's checkpoint, or the bundle fine-tuned on the training split in ``<work>/model`` (reused)."""
    if not config.fine_tunes:
        check_checkpoint(config)
        return given_checkpoint(config.checkpoint)
    directory = ingested.work_dir / "model"
    if directory.is_dir():
        log(f"reusing the fine-tuned model in {directory}")
        return given_checkpoint(directory)
    frame, is_train = _observations(config, ingested)
    rows = training_rows(frame, is_train, config.train.max_train_rows, config.seed)
    if not len(rows):
        raise SensorTableError(f"the {config.split} training split has no row with an observed {TARGET}")
    stations = read_locations(config.locations)["station"].tolist()
    preprocessing = SensorPreprocessing.fit(frame[is_train], stations)
    model, metrics = fit_table_model(config.model, config.language, config.train, frame, rows, preprocessing,
                                     config.seed, log)
    metrics["train_rows_available"] = int((is_train & frame[TARGET].notna().to_numpy()).sum())
    save_bundle(directory, model, preprocessing, config, metrics)
    return Trained(checkpoint=directory, metrics=metrics)


def predict(config: SensorsConfig, ingested: Ingested, trained: Trained, mapper: Mapper = serial_map) -> Predicted:
    """PM2.5 for every row into ``<work>/predictions-<bundle digest>.parquet`` (reused when there).

    The rows are few enough for one process, so ``mapper`` is not used.
    """
    store = ingested.work_dir / f"predictions-{bundle_digest(trained.checkpoint)}.parquet"
    if not store.is_file():
        frame = pd.read_parquet(ingested.store / ROWS_FILE)
        bundle = load_bundle(trained.checkpoint, SensorPreprocessing)
        predicted = predict_pm25(bundle.model, bundle.preprocessing, frame, config.inference_batch)
        with atomic_file(store) as tmp:
            pd.DataFrame({"pm25_predicted": predicted}).to_parquet(tmp, index=False)
    return Predicted(store=store, summary={"rows": len(pd.read_parquet(store))})


def publish(config: SensorsConfig, ingested: Ingested, trained: Trained, predicted: Predicted) -> Published:
    """Write the GeoParquet (one point per station and hour), metrics, config, model and STAC catalog."""
    frame, is_train = _observations(config, ingested)
    pm25 = pd.read_parquet(predicted.store)["pm25_predicted"].to_numpy()
    trained_on = np.zeros(len(frame), dtype=bool)
    if config.fine_tunes:
        trained_on[training_rows(frame, is_train, config.train.max_train_rows, config.seed)] = True
    table = prediction_frame(frame, pm25, is_train, trained_on, read_locations(config.locations))
    observed = table["pm25_observed"].to_numpy()
    record = _ingest_record(ingested.store)
    metrics = {
        "flow": "sensors",
        "name": config.name,
        "target": "PM2.5 (µg/m³)",
        "features": {"continuous": list(CONTINUOUS_FEATURES), "categorical": list(CATEGORICAL_FEATURES)},
        "split": {"rule": config.split, "train_fraction": config.train_fraction,
                  "train_rows": int(is_train.sum()), "test_rows": int((~is_train).sum())},
        "test": regression_metrics(observed[~is_train], pm25[~is_train]),
        "train": regression_metrics(observed[is_train], pm25[is_train]),
        "fine_tuning": trained.metrics,
        "ingest": record,
        "skipped": {
            "rows_without_pm25": record["rows_without_pm25"],
            "rule": "rows without an observed PM2.5 are predicted and published (pm25_observed empty) but not "
                    "trained on nor scored",
            "missing_hours": record["missing_hours"],
            "missing_hours_rule": "hours absent from a station's table get no row and no prediction",
        },
    }
    model_fields = mlm_fields(
        trained.checkpoint,
        architecture="AllSpark table: TabFormer-style column encoder, Lynx resampler bridge, frozen causal LM "
                     "with bottleneck adapters, linear regression head",
        tasks=["regression"],
        inputs=[{
            "name": "station-hour row",
            "bands": [],
            "input": {"shape": [-1, len(CONTINUOUS_FEATURES) + len(CATEGORICAL_FEATURES)],
                      "dim_order": ["batch", "column"], "data_type": "float32"},
            "description": f"continuous {list(CONTINUOUS_FEATURES)} standardised; categorical "
                           f"{list(CATEGORICAL_FEATURES)}",
        }],
        outputs=[{
            "name": "PM2.5",
            "tasks": ["regression"],
            "result": {"shape": [-1, 1], "dim_order": ["batch", "value"], "data_type": "float32"},
        }],
    )
    stamps = frame["timestamp"]
    return publish_table(
        config,
        item_id=f"{config.name}-pm25",
        frame=table,
        title="Predicted and observed PM2.5 per station and hour",
        time_range=(stamps.min().to_pydatetime(), stamps.max().to_pydatetime()),
        input_files=[*map(Path, record["files"]), locations_path(config.locations)],
        metrics=metrics,
        checkpoint=trained.checkpoint,
        model_fields=model_fields,
    )

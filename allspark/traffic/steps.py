"""The four steps of a traffic run: ingest the graph, fine-tune (or take a checkpoint), forecast, publish.

Each step is idempotent on the run's work folder: ``graph.zarr`` (the checked inputs), ``model/``
(the bundle: weights and :class:`~allspark.traffic.inputs.GraphScaling`) and
``predictions-<bundle digest>.zarr`` (every test window's forecast, with the metrics of the model
and both baselines) are written atomically and reused when complete.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import geopandas as gpd
import numpy as np
import pandas as pd
import xarray as xr

from allspark.core.atomic import atomic_dir
from allspark.core.bundle import bundle_digest, check_checkpoint, load_bundle, save_bundle, training_metrics
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
from allspark.errors import InputError, NoDataError
from allspark.traffic.config import TrafficConfig
from allspark.traffic.inputs import (
    GraphScaling,
    GraphWindows,
    compare_with_baselines,
    forecast,
    forecast_metrics,
    graph_times,
    split_windows,
)
from allspark.traffic.read import read_graph

GRAPH_STORE = "graph.zarr"
MODEL_DIR = "model"


def ingest(config: TrafficConfig, log: Log = print) -> Ingested:
    """Check the input files and store the graph in ``<work>/graph.zarr`` (reused when complete)."""
    for path in config.input_files():
        if not path.is_file():
            raise InputError(f"traffic input {path} does not exist or is not a file")
    work_dir = config.work_dir()
    check_writable(config.publish_location, work_dir, min_free_bytes=total_size(config.input_files()))
    store = work_dir / GRAPH_STORE
    if not store.is_dir():
        write_zarr(graph_dataset(config), store)
    stored = xr.open_zarr(store, consolidated=False, zarr_format=3)
    summary = {"sensors": stored.sizes["sensor"], "steps": stored.sizes["time"],
               "missing_speeds": int(stored.attrs["missing_speeds"]),
               "dropped_sensors": list(stored.attrs["dropped_sensors"])}
    if summary["dropped_sensors"]:
        log(f"dropped {len(summary['dropped_sensors'])} sensor(s) without a location: "
            f"{', '.join(summary['dropped_sensors'])}")
    return Ingested(work_dir=work_dir, store=store, summary=summary)


def graph_dataset(config: TrafficConfig) -> xr.Dataset:
    """The checked graph as a dataset: speed (time, sensor), lat/lon, adjacency if given, and what was read.

    Its attributes time the steps (:func:`~allspark.traffic.inputs.graph_times`): the start (a long
    table's first time, else the config's), the step and a long table's time zone.
    """
    table = config.table
    graph = read_graph(config.speeds, config.adjacency, config.locations, config.missing_location, table)
    steps = len(graph.speeds)
    if steps < config.input_steps + config.horizon:
        raise NoDataError(f"{config.speeds}: {steps} steps, fewer than one window "
                          f"({config.input_steps} + {config.horizon})")
    missing = "NaN (0 in the source)" if table is None else "NaN (a missing value or step in the source)"
    sensors = np.array(graph.sensor_ids, dtype=object)  # object: Zarr's variable-length strings
    dataset = xr.Dataset(
        {
            "speed": (("time", "sensor"), graph.speeds, {"units": "mph", "missing": missing}),
            "latitude": ("sensor", graph.latitude),
            "longitude": ("sensor", graph.longitude),
        },
        coords={"time": np.arange(steps), "sensor": sensors},
        attrs={"sources": [str(p) for p in config.input_files()],
               "start": (config.start if graph.start is None else graph.start).isoformat(),
               "step_minutes": config.step_minutes, "missing_speeds": graph.missing_speeds,
               "dropped_sensors": graph.dropped_sensors, "timezone": None if table is None else table.time.timezone},
    )
    if graph.adjacency is not None:
        dataset["adjacency"] = xr.DataArray(graph.adjacency, dims=("sensor", "neighbour"),
                                            coords={"neighbour": sensors})
    return dataset


def write_zarr(dataset: xr.Dataset, store: Path) -> None:
    """Write a small dataset to a Zarr store atomically (complete under its name, or absent)."""
    with atomic_dir(store) as tmp:
        dataset.to_zarr(tmp, mode="w", zarr_format=3, consolidated=False)


def open_store(store: Path) -> xr.Dataset:
    """A graph or predictions store, read into memory."""
    return xr.open_zarr(store, consolidated=False, zarr_format=3).load()


def train(config: TrafficConfig, ingested: Ingested, log: Log = print) -> Trained:
    """The config's checkpoint, or the model bundle in ``<work>/model`` (fine-tuned there when absent)."""
    if config.checkpoint is not None:
        check_checkpoint(config)
        return given_checkpoint(config.checkpoint)
    directory = ingested.work_dir / MODEL_DIR
    if not directory.is_dir():
        model, scaling, metrics = fit_model(config, open_store(ingested.store), log)
        save_bundle(directory, model, scaling, config, metrics)
    return Trained(checkpoint=directory, metrics=training_metrics(directory))


def fit_model(config: TrafficConfig, graph: xr.Dataset, log: Log = print):
    """Fine-tune a fresh AllSpark graph model on the training windows; return it, its scaling and its metrics.

    The weights kept are those of the epoch with the lowest MAE on the validation windows (the
    part of the series between training and test), not necessarily the last epoch's.
    """
    from allspark.model.model import AllSpark
    from allspark.model.training import Trainer, seed_everything

    settings = config.train
    generator = seed_everything(config.seed)
    parts = split_windows(graph.sizes["time"], config.input_steps, config.horizon, config.split)
    train_steps = round(graph.sizes["time"] * config.split[0])
    if len(parts["train"]) == 0:
        raise NoDataError(f"{config.speeds}: the training part ({train_steps} steps) holds no full window")
    scaling = GraphScaling.fit(graph, train_steps, config)
    windows = GraphWindows.of(graph, scaling, config)
    model = AllSpark(config.model.allspark_config(graph.sizes["sensor"], config.horizon, config.step_minutes,
                                                  config.language))
    model.head.scaling.fit(windows.model_targets(parts["train"]))
    train_starts = parts["train"][:: settings.window_stride]

    def batch(indices):
        starts = train_starts[indices.numpy()]
        return windows.inputs(starts), windows.model_targets(starts)

    def validate() -> dict:
        predicted = forecast(model, windows, parts["validation"], config.inference_batch)
        scores = forecast_metrics(predicted, windows.targets(parts["validation"]), config.step_minutes)
        return {"validation_mae": scores["all horizons"]["mae"]}

    trainer = Trainer(model, settings.schedule(), batches_per_epoch=-(-len(train_starts) // settings.batch_size))
    history = trainer.fit(len(train_starts), batch, settings.batch_size, generator, log, validate,
                          keep_best="validation_mae")
    return model, scaling, {
        "llm_layers": config.language.layers,
        "epochs": history["epochs"],
        "best_epoch": history["best_epoch"],
        "train_windows": len(train_starts),
        "validation_windows": len(parts["validation"]),
        "training_seconds": history["seconds"],
    }


def predict(config: TrafficConfig, ingested: Ingested, trained: Trained, mapper: Mapper = serial_map) -> Predicted:
    """Forecast every test window into ``<work>/predictions-<bundle digest>.zarr`` and score it (reused when there).

    ``mapper`` is unused: a graph's test windows are forecast in one piece.
    """
    store = ingested.work_dir / f"predictions-{bundle_digest(trained.checkpoint)}.zarr"
    if not store.is_dir():
        write_zarr(forecast_dataset(config, open_store(ingested.store), trained.checkpoint), store)
    attrs = xr.open_zarr(store, consolidated=False, zarr_format=3).attrs
    metrics = json.loads(attrs["metrics"])
    summary = {"test_windows": attrs["test_windows"], "inference_seconds": attrs["inference_seconds"],
               **{f"{method} 60 min MAE": scores.get("60 min", {}).get("mae") for method, scores in metrics.items()}}
    return Predicted(store=store, summary=summary)


def forecast_dataset(config: TrafficConfig, graph: xr.Dataset, checkpoint: Path) -> xr.Dataset:
    """Forecasts and observations of every test window, with the metrics of the model and both baselines."""
    bundle = load_bundle(checkpoint, GraphScaling)
    windows = GraphWindows.of(graph, bundle.preprocessing, config)
    starts = split_windows(graph.sizes["time"], config.input_steps, config.horizon, config.split)["test"]
    if len(starts) == 0:
        raise NoDataError(f"{config.speeds}: the test part holds no full window")
    started = time.perf_counter()
    predicted = forecast(bundle.model, windows, starts, config.inference_batch)
    seconds = round(time.perf_counter() - started, 1)
    train_steps = round(graph.sizes["time"] * config.split[0])
    metrics = compare_with_baselines(predicted, windows, starts, train_steps, config.step_minutes)
    dims = ("window", "sensor", "horizon")
    return xr.Dataset(
        {"predicted": (dims, predicted), "observed": (dims, windows.targets(starts)),
         "issued_step": ("window", starts + config.input_steps - 1)},
        coords={"sensor": graph["sensor"].values.astype(object), "horizon": np.arange(1, config.horizon + 1)},
        attrs={"metrics": json.dumps(metrics), "test_windows": len(starts), "inference_seconds": seconds},
    )


def forecast_frame(forecasts: xr.Dataset, graph: xr.Dataset, config: TrafficConfig) -> gpd.GeoDataFrame:
    """One point row per forecast, sensor and horizon: issue and valid times, predicted and observed speed."""
    windows, sensors, horizons = forecasts["predicted"].shape
    issued = np.repeat(forecasts["issued_step"].values, sensors * horizons)
    horizon = np.tile(forecasts["horizon"].values, windows * sensors)
    sensor = np.tile(np.repeat(np.arange(sensors), horizons), windows)
    issued_at = graph_times(graph)[issued]
    return gpd.GeoDataFrame(
        {
            "sensor_id": graph["sensor"].values.astype(object)[sensor],
            "issued_at": issued_at,
            "horizon_minutes": (horizon * config.step_minutes).astype("int16"),
            "valid_at": issued_at + pd.to_timedelta(horizon * config.step_minutes, unit="min"),
            "predicted_speed": forecasts["predicted"].values.ravel(),
            "observed_speed": forecasts["observed"].values.ravel(),
        },
        geometry=gpd.points_from_xy(graph["longitude"].values[sensor], graph["latitude"].values[sensor]),
        crs="EPSG:4326",
    )


def publish(config: TrafficConfig, ingested: Ingested, trained: Trained, predicted: Predicted) -> Published:
    """Publish the forecasts as GeoParquet (one point per sensor and horizon) with metrics, config, model, STAC."""
    graph = open_store(ingested.store)
    forecasts = open_store(predicted.store)
    if config.forecast == "latest":
        forecasts = forecasts.isel(window=[-1])
    frame = forecast_frame(forecasts, graph, config)
    metrics = {
        "flow": "traffic",
        "name": config.name,
        "note": "Test-split metrics over all test windows; zeros (missing speeds) are masked. "
                "Published rows: " + ("the latest forecast whose 12 future steps are observed."
                                      if config.forecast == "latest" else "every test window's forecast."),
        "data": {key: ingested.summary[key] for key in ("sensors", "steps", "missing_speeds", "dropped_sensors")}
                | {"test_windows": predicted.summary["test_windows"], "adjacency_used_by_model": False},
        "fine_tuning": trained.metrics,
        "test": json.loads(forecasts.attrs["metrics"]),
        "inference_seconds": predicted.summary["inference_seconds"],
        "published_rows": len(frame),
    }
    sensors, horizon = graph.sizes["sensor"], config.horizon
    model_fields = mlm_fields(
        trained.checkpoint,
        architecture="AllSpark graph: STAEformer-style spatio-temporal encoder, Lynx resampler bridge, "
                     "frozen causal LM with bottleneck adapters, linear per-sensor head",
        tasks=["regression"],
        inputs=[{
            "name": "sensor speeds",
            "bands": [],
            "input": {"shape": [-1, config.input_steps, sensors, config.model.in_features],
                      "dim_order": ["batch", "time", "nodes", "features"],
                      "data_type": "float32"},
        }],
        outputs=[{
            "name": ("speed change from the last deviation carried onto the sensor's time-of-day profile (mph)"
                     if config.model.predict_change and config.model.use_profile
                     else "speed change from the last observed speed (mph)" if config.model.predict_change
                     else "speed forecast (mph)"),
            "tasks": ["regression"],
            "result": {"shape": [-1, sensors, horizon], "dim_order": ["batch", "nodes", "time"], "data_type": "float32"},
        }],
    )
    times = graph_times(graph)
    return publish_table(
        config,
        item_id=f"{config.name}-speed-forecast",
        frame=frame,
        title="Speed forecasts: one point per sensor and horizon (5 to 60 min), predicted and observed",
        time_range=(times[0].to_pydatetime(), times[-1].to_pydatetime()),
        input_files=config.input_files(),
        metrics=metrics,
        checkpoint=trained.checkpoint,
        model_fields=model_fields,
    )

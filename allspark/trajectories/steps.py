"""The trajectories pipeline: ingest track files into windows, fine-tune, predict K futures, publish.

Each step is idempotent on the run's work folder::

    <work>/windows/{predict,train,validation}.zarr   ingest: the windows of each split (one atomic folder)
    <work>/model/                                    train: the model bundle (target rule as its preprocessing)
    <work>/predictions-<bundle digest>.zarr          predict: K futures and their probabilities per window
"""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta
from pathlib import Path

import geopandas as gpd
import numpy as np
import pyproj
import zarr

from allspark.core.atomic import atomic_dir
from allspark.core.bundle import bundle_digest, check_checkpoint, load_bundle, save_bundle, training_metrics
from allspark.core.publish import mlm_fields, publish_table
from allspark.core.steps import Ingested, Log, Mapper, Predicted, Published, Trained, given_checkpoint, serial_map
from allspark.core.storage import check_writable, total_size
from allspark.errors import NoDataError
from allspark.trajectories.config import TrajectoriesConfig
from allspark.trajectories.inputs import (
    FORECAST,
    TrajectoryPreprocessing,
    constant_velocity,
    displacement_errors,
    predict_windows,
    prediction_frame,
    scores,
    summarise,
)
from allspark.trajectories.read import (
    WINDOW_RULE,
    Tracks,
    Windows,
    build_windows,
    concat_windows,
    model_crs,
    read_eth_ucy,
    read_table,
    read_windows,
    to_model_crs,
    write_windows,
)

WINDOWS_STORE = "windows"
MODEL_DIR = "model"


def ingest(config: TrajectoriesConfig, log: Log = print) -> Ingested:
    """Read, check and window the predict (train, validation) files into ``<work>/windows/<split>.zarr``.

    Every file is read and checked before anything is written; a complete store is reused.
    The summary holds the counts of each split (files, tracks, windows, skips).
    """
    work_dir = config.work_dir()
    splits = config.split_files()
    # checked on every run: the output folder may have become unwritable since the store was made
    check_writable(config.publish_location, work_dir,
                   min_free_bytes=total_size(f for files in splits.values() for f in files))
    store = work_dir / WINDOWS_STORE
    if not store.is_dir():
        tracks = {split: [_read_tracks(file, config) for file in files] for split, files in splits.items()}
        crs = model_crs([t for ts in tracks.values() for t in ts], config.tracks_crs or config.crs)
        windows = {split: _split_windows(split, split_tracks, config, crs) for split, split_tracks in tracks.items()}
        with atomic_dir(store) as tmp:
            for split, split_tracks in tracks.items():
                write_windows(windows[split], tmp / f"{split}.zarr", {
                    "files": [str(t.file) for t in split_tracks],
                    "frames_per_step": [t.frames_per_step for t in split_tracks],
                    "time_origins": [t.time_origin.isoformat() if t.time_origin else None for t in split_tracks],
                    "step_seconds": config.step_length_seconds, "crs": crs.to_wkt(),
                })
    else:
        log(f"reusing the windows in {store}")
    summary = {split.stem: {"files": len(attrs["files"]), **attrs["counts"]}
               for split, attrs in ((path, dict(zarr.open_group(path, mode="r").attrs))
                                    for path in sorted(store.glob("*.zarr")))}
    return Ingested(work_dir=work_dir, store=store, summary=summary)


def _read_tracks(file: Path, config: TrajectoriesConfig) -> Tracks:
    if config.format == "eth_ucy":
        return read_eth_ucy(file, config.frame_step, config.start_time)
    return read_table(file, config.table)


def _split_windows(split: str, tracks: list[Tracks], config: TrajectoriesConfig, crs: pyproj.CRS) -> Windows:
    """The windows of one split's files in the model CRS; an error when there are none."""
    for t in tracks:
        to_model_crs(t, crs, source_crs=config.tracks_crs, origin=config.origin)
    windows = concat_windows([build_windows(t, config.window_rule, i) for i, t in enumerate(tracks)])
    if not len(windows):
        raise NoDataError(f"no {config.observed_steps}+{config.future_steps}-step windows in the {split} files "
                          f"{[str(t.file) for t in tracks]} ({windows.counts})")
    return windows


def train(config: TrajectoriesConfig, ingested: Ingested, log: Log = print) -> Trained:
    """The config's checkpoint, the bundle already in ``<work>/model``, or a model fine-tuned now.

    Fine-tuning draws ``max_windows`` training windows (seeded), fits the head's target scaling on
    their targets (in the heading frame when ``model.heading_frame``), starts the K candidates at
    k-means clusters of them when ``model.cluster_modes``, and trains on randomly mirrored (and,
    without the heading frame, rotated) scenes when ``train.augment``. With ``validation_files``
    the weights kept are those of the epoch with the lowest ``train.keep_best`` (best-of-K ADE by
    default) on their windows, not necessarily the last epoch's; every epoch's ADE/FDE there joins
    the metrics.
    """
    if not config.fine_tunes:
        check_checkpoint(config)
        return given_checkpoint(config.checkpoint)
    directory = ingested.work_dir / MODEL_DIR
    if directory.is_dir():
        log(f"reusing the model in {directory}")
        return Trained(checkpoint=directory, metrics=training_metrics(directory))
    from allspark.model import AllSpark, Trainer, seed_everything

    settings = config.train
    windows, _ = read_windows(ingested.store / "train.zarr")
    generator = seed_everything(config.seed)
    available = len(windows)
    chosen = np.arange(available)
    if settings.max_windows and settings.max_windows < available:
        chosen = np.sort(np.random.default_rng(config.seed).choice(available, settings.max_windows, replace=False))
    model = AllSpark(config.model.allspark_config(config.future_steps, config.language))
    preprocessing = TrajectoryPreprocessing(residual_to_constant_velocity=config.model.predict_residual,
                                            heading_frame=config.model.heading_frame)
    targets = preprocessing.targets(windows, chosen)
    model.head.scaling.fit(targets)
    if config.model.cluster_modes:
        model.head.start_modes_at_clusters(targets, config.seed)

    def make_batch(batch):
        index = chosen[batch.numpy()]
        inputs, target = preprocessing.inputs(windows, index), preprocessing.targets(windows, index)
        return preprocessing.augment(inputs, target, generator) if settings.augment else (inputs, target)

    early_stopping = {}
    if config.validation_files:
        validation, _ = read_windows(ingested.store / "validation.zarr")
        early_stopping = {"keep_best": f"validation_{settings.keep_best}", "validate": lambda: {
            f"validation_{name}": value
            for name, value in scores(model, preprocessing, validation, config.inference_batch).items()}}
    batches = math.ceil(len(chosen) / settings.batch_size)
    history = Trainer(model, settings.schedule(), batches).fit(len(chosen), make_batch, settings.batch_size,
                                                                generator, log, **early_stopping)
    metrics = {"training_windows": len(chosen), "available_windows": int(available),
               "epochs": settings.epochs, "llm_layers": config.language.layers,
               "epoch_losses": [epoch["loss"] for epoch in history["epochs"]],
               "training_seconds": history["seconds"]}
    if early_stopping:
        epochs = [{key.removeprefix("validation_"): value for key, value in epoch.items() if key != "loss"}
                  for epoch in history["epochs"]]
        kept = {key: value for key, value in epochs[history["best_epoch"] - 1].items() if key != "epoch"}
        metrics |= {"validation_windows": len(validation), "best_epoch": history["best_epoch"],
                    "epoch_validation": epochs, "validation": kept}
    return Trained(checkpoint=save_bundle(directory, model, preprocessing, config, metrics), metrics=metrics)


def predict(config: TrajectoriesConfig, ingested: Ingested, trained: Trained, mapper: Mapper = serial_map) -> Predicted:
    """K futures, their probabilities and the expected future of every predict window into
    ``<work>/predictions-<bundle digest>.zarr``.

    Reused when present with every array of :data:`FORECAST` (a store written before the expected
    future existed is predicted again); ``mapper`` is unused (one batch loop in this process).
    """
    store = ingested.work_dir / f"predictions-{bundle_digest(trained.checkpoint)}.zarr"
    if not (store.is_dir() and set(FORECAST) <= set(zarr.open_group(store, mode="r").array_keys())):
        bundle = load_bundle(trained.checkpoint, TrajectoryPreprocessing)
        windows, _ = read_windows(ingested.store / "predict.zarr")
        forecast = predict_windows(bundle.model, bundle.preprocessing, windows, config.inference_batch)
        chunk = min(len(windows), 1024)
        with atomic_dir(store) as tmp:
            group = zarr.open_group(tmp, mode="w", zarr_format=3)
            for name, values in forecast.items():
                group.create_array(name, data=values.astype("float32"), chunks=(chunk, *values.shape[1:]))
    windows, modes = zarr.open_group(store, mode="r")["futures"].shape[:2]
    return Predicted(store=store, summary={"windows": windows, "modes": modes})


def publish(config: TrajectoriesConfig, ingested: Ingested, trained: Trained, predicted: Predicted) -> Published:
    """Score the predictions against the truth and constant velocity; publish GeoParquet, metrics and STAC."""
    windows, attrs = read_windows(ingested.store / "predict.zarr")
    group = zarr.open_group(predicted.store, mode="r")
    forecast = {name: group[name][:] for name in FORECAST}
    futures = forecast["futures"]
    errors = displacement_errors(futures, windows.future, forecast["expected"])
    frame = prediction_frame(windows, attrs, forecast, errors)
    baseline = summarise(displacement_errors(constant_velocity(windows.observed, config.future_steps),
                                             windows.future))
    metrics = {
        "name": config.name,
        "windows_published": len(frame),
        "allspark": summarise(errors),
        "constant_velocity": {"ade": baseline["ade"], "fde": baseline["fde"]},
        "modes": int(futures.shape[1]),
        "counts": dict(ingested.summary),
        "window_rule": WINDOW_RULE,
        "fine_tuning": trained.metrics,
    }
    model_fields = mlm_fields(
        trained.checkpoint,
        architecture="AllSpark trajectory: TUTR-style step and neighbour encoder, Lynx resampler bridge, "
                     "frozen causal LM with bottleneck adapters, K-future head",
        tasks=["regression"],
        inputs=[{"name": "observed path and neighbours", "bands": [],
                 "input": {"shape": [-1, config.observed_steps, 2], "dim_order": ["batch", "time", "xy"],
                           "data_type": "float32"}}],
        outputs=[{"name": "candidate futures", "tasks": ["regression"],
                  "result": {"shape": [-1, int(futures.shape[1]), config.future_steps, 2],
                             "dim_order": ["batch", "mode", "time", "xy"], "data_type": "float32"}},
                 {"name": "expected future", "tasks": ["regression"],
                  "result": {"shape": [-1, config.future_steps, 2], "dim_order": ["batch", "time", "xy"],
                             "data_type": "float32"}}],
    )
    return publish_table(
        config, item_id=f"{config.name}-trajectories", frame=frame,
        title="Observed paths and K predicted futures per agent and window", time_range=_time_range(frame),
        input_files=[Path(f) for f in attrs["files"]], metrics=metrics, checkpoint=trained.checkpoint,
        model_fields=model_fields,
    )


def _time_range(frame: gpd.GeoDataFrame) -> tuple[datetime, datetime]:
    """First observed and last future time; seconds from frame 0 (no date) count from 1970 for STAC."""
    times = [row[0] for row in frame["observed_times"]] + [row[-1] for row in frame["future_times"]]
    if isinstance(times[0], datetime):
        return min(times), max(times)
    epoch = datetime(1970, 1, 1, tzinfo=UTC)
    return epoch + timedelta(seconds=min(times)), epoch + timedelta(seconds=max(times))

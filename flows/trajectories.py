"""The trajectories flow: track files -> windows in Zarr -> fine-tuned AllSpark -> GeoParquet and STAC.

Each step is one task calling :mod:`allspark.trajectories`. Ingest and fine-tuning are cached by
Prefect on their inputs (the config, the input files' sizes and modification times, the task and
library source), so a rerun with the same config and files reuses the windows and the checkpoint;
inference reuses its prediction store when the checkpoint is unchanged.
"""

from __future__ import annotations

from pathlib import Path

from prefect import flow, get_run_logger, task

from allspark import trajectories
from allspark.paths import file_stamps
from allspark.trajectories import TrajectoriesConfig
from flows.region import CACHED


def input_stamp(config: TrajectoriesConfig) -> list[tuple[str, int, int]]:
    """(path, size, mtime) of every input file, so that a changed file invalidates the cached ingest."""
    files = trajectories.input_files(config.predict_files, config.format)
    if config.train is not None and config.checkpoint is None:
        files += trajectories.input_files(config.train_files, config.format)
    return file_stamps(files)


@task(name="ingest", **CACHED)
def ingest_task(config: TrajectoriesConfig, stamp: list) -> dict:
    return trajectories.ingest_trajectories(config)


@task(name="fine-tune", **CACHED)
def fine_tune_task(config: TrajectoriesConfig, train_store: str, stamp: list) -> dict:
    return trajectories.fine_tune_trajectories(config, train_store, log=get_run_logger().info)


@task(name="infer")
def infer_task(config: TrajectoriesConfig, predict_store: str, checkpoint: str) -> str:
    return trajectories.infer_trajectories(config, predict_store, checkpoint)


@task(name="publish")
def publish_task(config: TrajectoriesConfig, ingest: dict, checkpoint: str, predictions: str) -> dict:
    return trajectories.publish_trajectories(config, ingest, checkpoint, predictions)


@flow(name="trajectories", log_prints=True)
def trajectories_flow(config: TrajectoriesConfig) -> dict:
    """Ingest, fine-tune (or use the given checkpoint), infer and publish; returns the published paths."""
    logger = get_run_logger()
    stamp = input_stamp(config)
    ingest = ingest_task(config, stamp)
    for split, counts in ingest["counts"].items():
        logger.info("%s: %s", split, counts)
    if config.checkpoint is not None:
        checkpoint = str(Path(config.checkpoint))
    else:
        checkpoint = fine_tune_task(config, ingest["stores"]["train"], stamp)["checkpoint"]
    predictions = infer_task(config, ingest["stores"]["predict"], checkpoint)
    outputs = publish_task(config, ingest, checkpoint, predictions)
    logger.info("published %s; ADE/FDE %s", outputs["catalog"], outputs["metrics_summary"]["allspark"])
    return outputs


def run_trajectories(config: TrajectoriesConfig) -> dict:
    """Run the trajectories flow (default task runner: the steps are sequential)."""
    return trajectories_flow(config)

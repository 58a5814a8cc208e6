"""The sensors flow: station tables (CSV) -> Parquet -> AllSpark table model -> GeoParquet and STAC.

Each step is one task calling :mod:`allspark.sensors`. Ingest and fine-tuning are cached by
Prefect on their inputs (the config, the input files' sizes and modification times) and on the
code; predictions are kept in the work folder under the checkpoint's digest, so a rerun with the
same config and files reuses all three and only publishes again.
"""

from __future__ import annotations

from pathlib import Path

from prefect import flow, get_run_logger, task

from allspark import sensors
from allspark.paths import file_stamps
from allspark.sensors import SensorsConfig
from flows.region import CACHED


def input_stamps(config: SensorsConfig) -> list[tuple[str, int, int]]:
    """Stamps of the station tables and the locations file: a changed file invalidates the cached ingest."""
    return file_stamps([*sensors.input_files(config), sensors.locations_path(config.locations)])


@task(name="ingest", **CACHED)
def ingest_task(config: SensorsConfig, stamps: list[tuple[str, int, int]]) -> dict:
    return sensors.ingest_tables(config)


@task(name="fine-tune", **CACHED)
def fine_tune_task(config: SensorsConfig, ingested: dict) -> dict:
    return sensors.train_sensors(config, ingested, log=get_run_logger().info)


@task(name="infer")
def infer_task(config: SensorsConfig, ingested: dict, checkpoint: str) -> str:
    return sensors.infer_sensors(config, ingested, checkpoint)


@task(name="publish")
def publish_task(config: SensorsConfig, ingested: dict, trained: dict, predictions: str) -> dict:
    return sensors.publish_sensors(config, ingested, trained, predictions)


@flow(name="sensors", log_prints=True)
def sensors_flow(config: SensorsConfig) -> dict:
    """Ingest, fine-tune, infer and publish one sensor-table run; returns the published paths and metrics."""
    logger = get_run_logger()
    ingested = ingest_task(config, input_stamps(config))
    if not Path(ingested["store"]).exists():  # the work folder was cleared since the cached run
        ingested = ingest_task.with_options(refresh_cache=True)(config, input_stamps(config))
    logger.info("ingested %(rows)d rows of %(stations)s; %(rows_without_pm25)d without PM2.5, "
                "%(missing_hours)d missing hour(s)", ingested)
    trained = fine_tune_task(config, ingested)
    if not Path(trained["checkpoint"]).exists():
        trained = fine_tune_task.with_options(refresh_cache=True)(config, ingested)
    predictions = infer_task(config, ingested, trained["checkpoint"])
    outputs = publish_task(config, ingested, trained, predictions)
    logger.info("test RMSE %s, published %s", outputs["metrics_summary"]["test"]["rmse"], outputs["catalog"])
    return outputs


def run_sensors(config: SensorsConfig) -> dict:
    """Run the sensors flow (default task runner: the steps are sequential)."""
    return sensors_flow(config)

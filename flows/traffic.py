"""The traffic flow: sensor speeds, locations and adjacency -> Zarr -> AllSpark graph -> GeoParquet and STAC.

Each step is one task calling :mod:`allspark.traffic`. Ingest and fine-tuning are cached by
Prefect on their inputs (the config, the input files' size and modification time, the task and
the library source), so a rerun with the same config only forecasts and publishes again.
"""

from __future__ import annotations

from prefect import flow, get_run_logger, task

from allspark import traffic
from allspark.traffic import TrafficConfig
from flows.region import CACHED


@task(name="ingest", **CACHED)
def ingest_task(config: TrafficConfig, file_signature: list) -> dict:
    """``file_signature`` (size and mtime of the input files) is only there to key the cache."""
    return traffic.ingest_traffic(config)


@task(name="fine-tune", **CACHED)
def fine_tune_task(config: TrafficConfig, ingested: dict) -> dict:
    return traffic.train_traffic(config, ingested["store"], log=get_run_logger().info)


@task(name="infer")
def infer_task(config: TrafficConfig, ingested: dict, checkpoint: str) -> dict:
    return traffic.infer_traffic(config, ingested["store"], checkpoint)


@task(name="publish")
def publish_task(config: TrafficConfig, ingested: dict, checkpoint: str, inferred: dict) -> dict:
    return traffic.publish_traffic(config, ingested, checkpoint, inferred)


@flow(name="traffic", log_prints=True)
def traffic_flow(config: TrafficConfig) -> dict:
    """Run one traffic graph end to end; returns the published paths and the metrics summary."""
    logger = get_run_logger()
    ingested = ingest_task(config, traffic.input_signature(config))
    logger.info("graph: %(sensors)d sensors x %(steps)d steps, %(missing_speeds)d missing speed(s) (zeros)", ingested)
    if ingested["dropped_sensors"]:
        logger.warning("dropped %d sensor(s) without a location: %s", len(ingested["dropped_sensors"]),
                       ", ".join(ingested["dropped_sensors"]))
    checkpoint = str(config.checkpoint) if config.checkpoint else fine_tune_task(config, ingested)["checkpoint"]
    inferred = infer_task(config, ingested, checkpoint)
    for name, scores in inferred["metrics"].items():
        logger.info("%s, 60 min: %s", name, scores.get("60 min"))
    outputs = publish_task(config, ingested, checkpoint, inferred)
    logger.info("published %s", outputs["catalog"])
    return outputs


def run_traffic(config: TrafficConfig) -> dict:
    """Run the traffic flow (default task runner: the steps are sequential)."""
    return traffic_flow(config)

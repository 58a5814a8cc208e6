"""Map one area of interest with a model fine-tuned once: the entry of the scheduled region deployments.

A weekly run of an AOI should neither fine-tune again every week nor fine-tune per AOI (an AOI may
hold no labelled pixel at all). So the model applied is the one the region config fine-tunes on
its own catalog and area: the same ingest and train steps, in the same work folder, as ``allspark
run region --config <that file>``, so the first run of any AOI trains it (or finds ``make demo``'s
model in the work folder) and every later run and every other AOI reuses it; runs that start together (the AOIs
share a cron) wait for each other on the work folder's lock instead of training twice. A config
that names a ``checkpoint`` applies that model instead, with no fine-tuning.
"""

from __future__ import annotations

from prefect import flow, get_run_logger

from allspark.core.steps import Published
from allspark.region.config import RegionConfig
from allspark.region.steps import run_lock
from flows.common import ingest_task, train_task
from flows.region import run_region


def fine_tuned_checkpoint(config: RegionConfig) -> str:
    """The checkpoint ``config`` fine-tunes (found in its work folder, or trained now), under the run's lock."""
    with run_lock(config, on_wait=get_run_logger().info):
        trained = train_task("region", config, ingest_task("region", config))
    return str(trained.checkpoint)


@flow(name="region-aoi", log_prints=True)
def region_aoi_flow(config: RegionConfig, aoi: str, name: str) -> Published | None:
    """Map ``aoi`` (GeoJSON or bbox) into ``config.output_dir/name`` with the config's model."""
    checkpoint = config.checkpoint or fine_tuned_checkpoint(config)
    get_run_logger().info("mapping AOI %s as %r with the model in %s", aoi, name, checkpoint)
    mapping = RegionConfig.model_validate(
        config.model_dump(exclude_unset=True) | {"aoi": aoi, "name": name, "checkpoint": checkpoint, "train": None}
    )
    return run_region(mapping)

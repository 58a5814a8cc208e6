"""The region flow: STAC catalog -> chips in Zarr -> AllSpark -> COGs, GeoParquet and STAC.

Each step is one task calling :mod:`allspark.region`. Planning, tiling, fine-tuning and
publishing run in the flow's process; inference fans out over chip batches on Dask (a local
cluster, or the one at ``config.dask_address``), each worker loading the model once.
Tiling and fine-tuning are cached by Prefect on their inputs; each inference batch marks its
chunk of the prediction store done, so a rerun with the same config reuses finished work and an
interrupted run resumes where it stopped. A run holds its work and output folders' locks
throughout: a second run of the same config waits, then finds the work done (and, with
``skip_published``, the outputs published).
"""

from __future__ import annotations

from prefect import flow, get_run_logger, task, unmapped
from prefect.cache_policies import TASK_SOURCE, CacheKeyFnPolicy
from prefect.utilities.hashing import hash_objects
from prefect_dask import DaskTaskRunner

from allspark import region, source_digest
from allspark.config import RegionConfig

# A cached step is reused while what it computes from (the config's fingerprint, which leaves out
# where and how a run happens, and its other inputs), its task and the library's source code are
# unchanged: a run on another Dask cluster or into another output folder reuses the tiles and the model.
RUN_INPUTS = CacheKeyFnPolicy(
    cache_key_fn=lambda context, parameters: hash_objects(
        parameters["config"].fingerprint(), {k: v for k, v in parameters.items() if k != "config"}
    )
)
LIBRARY_SOURCE = CacheKeyFnPolicy(cache_key_fn=lambda context, parameters: source_digest())
CACHED = {"cache_policy": RUN_INPUTS + TASK_SOURCE + LIBRARY_SOURCE, "persist_result": True}


@task(name="plan")
def plan_task(config: RegionConfig) -> region.RegionPlan:
    return region.plan_region(config)


@task(name="tile", **CACHED)
def tile_task(config: RegionConfig, plan: region.RegionPlan) -> dict:
    return region.tile_region(config, plan)


@task(name="fine-tune", **CACHED)
def fine_tune_task(config: RegionConfig, plan: region.RegionPlan) -> dict:
    return region.train_region(config, plan, log=get_run_logger().info)


@task(name="predict", retries=2, retry_delay_seconds=1)
def predict_task(chips: str, predictions: str, checkpoint: str, start: int, stop: int, batch_size: int) -> int:
    return region.predict_chip_range(chips, predictions, checkpoint, start, stop, batch_size)


@task(name="publish")
def publish_task(config, plan, chips, predictions, checkpoint, stats) -> dict:
    return region.publish_region(config, plan, chips, predictions, checkpoint, stats)


@flow(name="region", log_prints=True)
def region_flow(config: RegionConfig, skip_published: bool = False) -> dict:
    """Run one region end to end; returns the published paths and the metrics summary.

    With ``skip_published``, outputs this config already published (see
    :func:`allspark.region.published_catalog`) are kept and only ``{"catalog", "skipped"}`` returned.
    """
    logger = get_run_logger()
    with region.run_lock(config, on_wait=logger.info):
        published = region.published_catalog(config) if skip_published else None
        if published is not None:
            logger.info("already published by an earlier run of this config: %s", published)
            return {"catalog": str(published), "skipped": True}
        return _run_steps(config, logger)


def _run_steps(config: RegionConfig, logger) -> dict:
    """Plan, tile, fine-tune, predict and publish (under the run's locks)."""
    plan = plan_task(config)
    logger.info("found %d item(s): %s", len(plan.items), ", ".join(d["id"] for d in plan.items))
    tiled = tile_task(config, plan)
    logger.info("chips: %(chips)d (%(valid_chips)d with data, %(nodata_chips)d all nodata skipped)", tiled)
    checkpoint = str(config.checkpoint) if config.checkpoint else fine_tune_task(config, plan)["checkpoint"]
    predictions = region.prediction_store(config, tiled["store"], checkpoint)
    pending, done = region.pending_ranges(tiled["store"], predictions)
    if done:
        logger.info("%d chip batch(es) already predicted by an earlier run: resuming with %d", done, len(pending))
    futures = predict_task.map(
        unmapped(tiled["store"]), unmapped(predictions), unmapped(checkpoint),
        [start for start, _ in pending], [stop for _, stop in pending], unmapped(config.inference_batch),
    )
    futures.result()  # raises if a batch failed after its retries
    outputs = publish_task(config, plan, tiled["store"], predictions, checkpoint, tiled)
    logger.info("published %s", outputs["catalog"])
    return outputs


def task_runner(config: RegionConfig) -> DaskTaskRunner:
    """An existing Dask cluster when an address is given, else a local one on 127.0.0.1."""
    if config.dask_address:
        return DaskTaskRunner(address=config.dask_address)
    return DaskTaskRunner(
        cluster_kwargs={
            "n_workers": config.n_workers,
            "threads_per_worker": 1,
            "host": "127.0.0.1",
            "dashboard_address": None,
        }
    )


def run_region(config: RegionConfig) -> dict:
    """Run the region flow on the Dask cluster the config names."""
    return region_flow.with_options(task_runner=task_runner(config))(config)

"""The region flow: STAC catalog -> scene in Zarr -> AllSpark block by block on Dask -> COGs, GeoParquet and STAC.

The steps are :mod:`allspark.region.steps`, run as tasks by :func:`flows.common.run_steps`.
Ingest, training and publishing run in the flow's process; inference fans out over the scene's
blocks on Dask (a local cluster, or the one at ``config.dask_address``), each worker loading the
model once. Every step is idempotent on the run's work folder and each block marks itself done,
so a rerun reuses finished work and an interrupted run resumes where it stopped. A run holds its
work and output locks throughout: a second run of the same config waits, then finds the work
done (and, with ``skip_published``, the outputs published).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from prefect import flow, get_run_logger, task, unmapped
from prefect_dask import DaskTaskRunner

from allspark.core.steps import Published
from allspark.region.config import RegionConfig
from allspark.region.steps import published_catalog, run_lock
from flows.common import run_steps


@task(name="predict-block", retries=2, retry_delay_seconds=1)
def call_task(function: Callable[[Any], Any], item: Any) -> Any:
    return function(item)


def dask_mapper(function: Callable[[Any], Any], items: Sequence[Any]) -> list[Any]:
    """Run ``function`` over ``items`` as tasks of the flow's task runner; raise if one failed after its retries."""
    return call_task.map(unmapped(function), list(items)).result()


@flow(name="region", log_prints=True)
def region_flow(config: RegionConfig, skip_published: bool = False) -> Published | None:
    """Run one region end to end; returns what was published.

    With ``skip_published``, outputs this config already published (see
    :func:`allspark.region.steps.published_catalog`) are kept and None is returned.
    """
    logger = get_run_logger()
    with run_lock(config, on_wait=logger.info):
        if skip_published and (published := published_catalog(config)) is not None:
            logger.info("already published by an earlier run of this config: %s", published)
            return None
        return run_steps("region", config, mapper=dask_mapper)


LOCAL_WORKER_CONFIG = {"distributed.worker.profile.enabled": False}
"""Dask settings of the workers of the flow's own local cluster. The statistical profiler samples
every worker thread's stack every 10 ms; beside the model on a 2-core machine it made inference
tasks 1.26x slower (``bench.overhead --size 1``: 93 s against 74 s). A user's existing cluster keeps
its own settings."""


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
            "config": LOCAL_WORKER_CONFIG,  # passed to each worker's nanny
        }
    )


def run_region(config: RegionConfig, skip_published: bool = False) -> Published | None:
    """Run the region flow on the Dask cluster the config names."""
    return region_flow.with_options(task_runner=task_runner(config))(config, skip_published)

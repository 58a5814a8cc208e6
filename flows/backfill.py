"""The backfill flow: the region flow over AOIs and a date range, a bounded number of windows at a time.

Each (AOI, window) job (see :mod:`allspark.region.backfill`) runs the region flow as a subflow inside a
``window`` task. The flow submits a new window only when fewer than ``concurrency`` are running,
so the bound holds under any task runner (a deployment's too) and leaks nothing when a process
dies; a server-side Prefect concurrency limit would have to be created beforehand, is shared by
every run on the server, and a killed run's slots stay taken until their lease expires. All
windows send inference to ONE Dask cluster (the base config's ``dask_address``, or one local
cluster started for the whole backfill), so N windows do not start N clusters.

A window whose outputs are already published (its output STAC catalog carries the same config)
is skipped, checked again under the region run's lock, so two backfills over the same window
publish it once. A window without imagery is "empty", not a failure. A failed window is retried
(task retries), then reported with its error. The summary table is logged, written beside the
outputs (``backfill-report.json`` / ``.md``) with a root STAC catalog over the windows, and
returned; the flow run fails (with the summary as its data) when a window failed.
"""

from __future__ import annotations

import contextlib
import datetime as dt
from collections.abc import Iterator, Sequence
from pathlib import Path

from distributed import LocalCluster
from prefect import flow, get_run_logger, task
from prefect.futures import as_completed
from prefect.states import Failed
from prefect.task_runners import ThreadPoolTaskRunner

from allspark.core.storage import check_writable
from allspark.errors import ConfigError
from allspark.region import backfill
from allspark.region.config import RegionConfig, load_region_config
from allspark.region.steps import published_catalog
from flows.region import region_flow, task_runner

MAX_CONCURRENCY = 16  # threads of the flow's task runner: the most windows that can run at once


@task(name="window", retries=1, retry_delay_seconds=5)
def window_task(job: backfill.WindowJob) -> backfill.WindowResult:
    """Run the region flow for one window; empty and already-published windows are results, not errors."""
    started = dt.datetime.now(dt.UTC)
    run = region_flow.with_options(task_runner=task_runner(job.config), flow_run_name=job.config.name)
    try:
        published = run(job.config, skip_published=True)
    except backfill.EMPTY_ERRORS as err:
        return job.result("empty", str(err), started)
    if published is None:
        return job.result("skipped", str(published_catalog(job.config)), started)
    return job.result("published", str(published.catalog), started)


@contextlib.contextmanager
def shared_cluster(base: RegionConfig) -> Iterator[str]:
    """The Dask scheduler every window uses: the base config's, or a local cluster for the whole backfill."""
    if base.dask_address:
        yield base.dask_address
        return
    with LocalCluster(n_workers=base.n_workers, threads_per_worker=1, host="127.0.0.1",
                      dashboard_address=None) as cluster:
        yield cluster.scheduler_address


@flow(name="backfill", log_prints=True, task_runner=ThreadPoolTaskRunner(max_workers=MAX_CONCURRENCY))
def backfill_flow(
    aois: list[str],
    start: dt.date,
    end: dt.date,
    step: str = "monthly",
    config: RegionConfig | Path | None = None,
    name: str = "backfill",
    concurrency: int = 2,
    retries: int = 1,
) -> dict:
    """Run the region flow for every AOI and window not yet published; return the summary.

    ``aois``: GeoJSON files or names in ``deployments/aois/``; ``step``: ``monthly``, ``weekly``,
    ``P14D``...; ``config``: the base region config (a YAML path, a config, or the defaults);
    outputs go to ``<config.output_dir>/<name>/<aoi>-<start>_<end>/``.
    """
    logger = get_run_logger()
    if not 1 <= concurrency <= MAX_CONCURRENCY:
        raise ConfigError(f"concurrency must be between 1 and {MAX_CONCURRENCY}, got {concurrency}")
    base = config if isinstance(config, RegionConfig) else load_region_config(config)
    jobs = backfill.plan_backfill(base, aois, start, end, step, name)
    root = backfill.backfill_root(base, name)
    check_writable(root)  # bad storage (a bucket without credentials...) is one error, not a failure per window
    results: dict[int, backfill.WindowResult] = {}
    pending = []
    for index, job in enumerate(jobs):
        published = published_catalog(job.config)
        if published is not None:  # checked again under the run's lock; this only saves starting a subflow
            results[index] = job.result("skipped", str(published), dt.datetime.now(dt.UTC))
        else:
            pending.append(index)
    logger.info("%d window(s) over %d AOI(s): %d already published, %d to run, %d at a time",
                len(jobs), len(aois), len(results), len(pending), concurrency)
    if pending:
        with shared_cluster(base) as address:
            window = window_task.with_options(retries=retries)
            futures = _submit_bounded(window, [jobs[i].on_cluster(address) for i in pending], concurrency)
            for index, future in zip(pending, futures):
                future.wait()
                state = future.state
                if state.is_completed():
                    results[index] = future.result()
                else:
                    error = state.result(raise_on_failure=False)
                    detail = f"{type(error).__name__}: {error}" if isinstance(error, BaseException) else state.message
                    results[index] = jobs[index].result("failed", detail or "failed")
    ordered = [results[i] for i in range(len(jobs))]
    table = backfill.summary_table(ordered)
    settings = {"aois": [str(a) for a in aois], "start": start.isoformat(), "end": end.isoformat(), "step": step,
                "concurrency": concurrency, "retries": retries, "base_config": base.model_dump(mode="json")}
    summary = {
        "root": str(root),
        "catalog": str(backfill.write_root_catalog(root)),
        "report": backfill.write_report(root, ordered, settings),
        "counts": backfill.count_statuses(ordered),
        "windows": [r.model_dump(mode="json") for r in ordered],
        "table": table,
    }
    logger.info("backfill %s:\n%s\nreport: %s", name, table, summary["report"]["markdown"])
    if summary["counts"]["failed"]:
        return Failed(message=f"{summary['counts']['failed']} of {len(jobs)} window(s) failed; see "
                              f"{summary['report']['markdown']}", data=summary)
    return summary


def _submit_bounded(window, jobs: Sequence[backfill.WindowJob], concurrency: int) -> list:
    """Submit the jobs in order, never more than ``concurrency`` running; return their futures."""
    futures, running = [], []
    for job in jobs:
        if len(running) >= concurrency:
            running.remove(next(as_completed(running)))
        future = window.submit(job)
        futures.append(future)
        running.append(future)
    return futures


def run_backfill(**parameters) -> dict:
    """Run the backfill flow; return its summary, also when windows failed (``summary["counts"]["failed"]``).

    An error before any window ran (an unknown AOI, a bad step) is raised.
    """
    result = backfill_flow(**parameters, return_state=True).result(raise_on_failure=False)
    if isinstance(result, BaseException):
        raise result
    return result

"""Run the region flow on the benchmark mosaic in a fresh process and sample its memory (memory, scaling, overhead).

- :func:`checkpoint`: a small model fine-tuned briefly on the demo catalog, made once and kept in
  its config's work folder (the region steps reuse a complete one), so measured runs never fine-tune.
- :func:`mosaic_config`: a region config over ``size`` times the demo area of the mosaic, with
  the checkpoint and ``train: null``.
- :func:`prefect_server`: one Prefect server on 127.0.0.1 for all runs of a benchmark (as
  ``make serve`` runs one). Without it, every flow process and every Dask worker process
  starts a temporary server of its own (10-20 s each on 2 cores, and hundreds of MB).
- :func:`run_measured`: ``python -m bench.flowrun <config>`` in a subprocess whose process tree
  (and any extra processes, e.g. the workers of a cluster the benchmark started) is sampled
  with psutil every 0.1 s: peak resident memory in total, per process kind and per worker. The
  measured process reports the flow's wall time, each step's span (from its task runs), what the
  run predicted and the bytes of its work stores and published files.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import psutil

from allspark.core.location import Location, basename, exists, filesystem, glob, is_remote, remove
from allspark.region.config import RegionConfig
from bench.mosaic import CONFIG, build_mosaic, window_aoi, year_range
from flows.serve import HOST, PREFECT, START_TIMEOUT, api_url, server_healthy

DEMO_ROWS, DEMO_COLS = 443, 489
SAMPLE_SECONDS = 0.1
SMALL_MODEL = {"stem_dim": 32, "num_queries": 4, "bridge_depth": 1}
"""A narrow stem and bridge: inference of 16x the demo area takes minutes, not an hour, on 2 cores."""
SETTINGS = {  # of the memory and scaling runs: the region model (what is not named is the demo's) and the chips
    "quick": {"model": SMALL_MODEL, "language": {"layers": 1},
              "chips": {"size": 16, "overlap": 0, "block": 256}, "inference_batch": 64},
    "full": {"model": SMALL_MODEL, "language": {"layers": 2},
             "chips": {"size": 16, "overlap": 8, "block": 256}, "inference_batch": 64},
}
TRAIN = {"epochs": 1, "batch_size": 32, "max_train_pixels": 512}
"""The checkpoint's fine-tuning: just enough to make a real checkpoint; its accuracy is not the point."""
KINDS = ("flow", "dask worker", "other")
STEPS = ("ingest", "train", "predict", "publish")
"""The region flow's steps, by the name of their task runs (``predict`` gathers the ``predict-block`` runs)."""


def checkpoint(model: dict, language: dict | None = None, log=lambda *_: None) -> Path:
    """A model bundle of ``model`` (and ``language``) fine-tuned briefly on the demo catalog.

    Made once: the region steps keep the scene and the bundle in the config's work folder and
    reuse them when complete.
    """
    from allspark.region import steps

    config = RegionConfig(name="bench-checkpoint", model=model, language=language or {}, train=TRAIN)
    ingested = steps.ingest(config, log=log)
    return steps.train(config, ingested, log=log).checkpoint


def add_area_arguments(parser) -> None:
    """``--quick`` and ``--size`` of the benchmarks that run the region flow over the mosaic at one area."""
    parser.add_argument("--quick", action="store_true",
                        help="1x the demo area, 1 LM layer instead of 2, chips without overlap")
    parser.add_argument("--size", type=int, default=None, help="multiple of the demo area (default 4, quick 1)")


def prepared_area(args) -> tuple[dict, int, Path]:
    """The settings, area multiple and checkpoint of those options; the mosaic is built and the checkpoint made once."""
    setting = SETTINGS["quick" if args.quick else "full"]
    build_mosaic()
    return setting, args.size or (1 if args.quick else 4), checkpoint(setting["model"], setting["language"])


def mosaic_config(size: float, ckpt: Path, output_dir: Path, **changes) -> RegionConfig:
    """A region config over ``size`` times the demo area: the top-left window of the mosaic's first item.

    The name is unique per call, so no earlier work folder is reused (every run does all its work).
    """
    scale = math.sqrt(size)
    settings = {
        "name": f"bench-{size:g}x-{os.getpid()}-{time.time_ns()}",
        "catalog": str(CONFIG),
        "datetime": year_range(),
        "aoi": window_aoi(round(DEMO_ROWS * scale), round(DEMO_COLS * scale)),
        "train": None,
        "checkpoint": str(ckpt),
        "output_dir": str(output_dir),
    }
    return RegionConfig(**(settings | changes))


def work_folders(config: RegionConfig) -> list[Location]:
    """The work folders of ``config``'s run (``<name>-<key>``; the names of :func:`mosaic_config` are unique)."""
    return glob(config.work_location, f"{config.name}-*")


def remove_location(location: Location) -> None:
    """Delete a local folder or everything under a URL."""
    if is_remote(location):
        remove(location)
    else:
        shutil.rmtree(location, ignore_errors=True)


@contextlib.contextmanager
def prefect_server(log: Path) -> Iterator[str]:
    """A Prefect server on a free port of 127.0.0.1 for the duration of the block; yields its API URL.

    It is set as ``PREFECT_API_URL`` in this process's environment (inherited by the flow
    processes and Dask workers started inside the block) and stopped afterwards.
    """
    with socket.socket() as probe:
        probe.bind((HOST, 0))
        port = probe.getsockname()[1]
    url = api_url(port)
    env = {key: value for key, value in os.environ.items() if key != "PREFECT_API_URL"}
    with open(log, "ab") as out:
        server = subprocess.Popen([*PREFECT, "server", "start", "--host", HOST, "--port", str(port)], env=env,
                                  stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                  start_new_session=True)
    previous = os.environ.get("PREFECT_API_URL")
    try:
        deadline = time.monotonic() + START_TIMEOUT
        while not server_healthy(url):
            if server.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the Prefect server did not start; see {log}:\n{log.read_text()[-2000:]}")
            time.sleep(0.5)
        os.environ["PREFECT_API_URL"] = url
        yield url
    finally:
        if previous is None:
            os.environ.pop("PREFECT_API_URL", None)
        else:
            os.environ["PREFECT_API_URL"] = previous
        _stop(server)


def _stop(server: subprocess.Popen) -> None:
    """SIGINT to the server's process group (a clean shutdown), SIGKILL to whatever is left after 20 s."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(server.pid, signal.SIGINT)
    with contextlib.suppress(subprocess.TimeoutExpired):
        server.wait(timeout=20)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(server.pid, signal.SIGKILL)
    server.wait()


def _kind(process: psutil.Process) -> str:
    command = " ".join(process.cmdline())
    if "multiprocessing" in command and "resource_tracker" not in command:
        return "dask worker"  # LocalCluster starts its workers with multiprocessing (spawn)
    return "other"


def run_sampled(command: list[str], log: Path, workers: list[psutil.Process] = ()) -> dict:
    """Run ``command``; sample the RSS of its process tree (and of ``workers``) until it exits.

    Returns the exit status, the wall time and the peaks in bytes: of the sum over all processes,
    of the sum per kind (the command's own process is ``flow``), and of each Dask worker.
    """
    started = time.perf_counter()
    with open(log, "w") as out:
        root = psutil.Popen(command, stdout=out, stderr=subprocess.STDOUT)
    kinds: dict[int, str] = {root.pid: "flow", **{worker.pid: "dask worker" for worker in workers}}
    peak_total, peak_kind, peak_process = 0, Counter(), Counter()
    while root.poll() is None:
        tree = [root, *workers]
        with contextlib.suppress(psutil.Error):
            tree += root.children(recursive=True)
        by_kind = Counter()
        for process in tree:
            try:
                rss = process.memory_info().rss
                kind = kinds.setdefault(process.pid, _kind(process))
            except psutil.Error:  # exited between listing and reading
                continue
            by_kind[kind] += rss
            peak_process[(kind, process.pid)] = max(peak_process[(kind, process.pid)], rss)
        peak_total = max(peak_total, sum(by_kind.values()))
        for kind, rss in by_kind.items():
            peak_kind[kind] = max(peak_kind[kind], rss)
        time.sleep(SAMPLE_SECONDS)
    return {
        "exit_status": root.returncode,
        "wall_seconds": time.perf_counter() - started,
        "peak_total_bytes": peak_total,
        "peak_by_kind_bytes": {kind: peak_kind.get(kind, 0) for kind in KINDS},
        "peak_per_worker_bytes": sorted((rss for (kind, _), rss in peak_process.items() if kind == "dask worker"),
                                        reverse=True),
    }


def run_measured(config: RegionConfig, work: Path, workers: list[psutil.Process] = ()) -> dict:
    """The region flow for ``config`` in a fresh process, sampled; what it did and its peaks.

    The run's work folder and outputs are removed afterwards (the mosaic can make large ones).
    """
    log = work / f"{config.name}.log"
    try:
        sampled = run_sampled([sys.executable, "-m", "bench.flowrun", config.model_dump_json()], log, workers)
        lines = [line for line in log.read_text().splitlines() if line.startswith("RESULT ")]
        if sampled["exit_status"] != 0 or not lines:
            raise RuntimeError(f"region run {config.name} failed (exit {sampled['exit_status']}):\n"
                               + log.read_text()[-3000:])
        return {**json.loads(lines[-1][len("RESULT "):]), **sampled}
    finally:
        for folder in work_folders(config):
            remove_location(folder)
        remove_location(config.publish_location)


def mib(value: float) -> float:
    return value / 2**20


def step_cells(row: dict) -> str:
    """A result row's ingest, predict and publish seconds as three Markdown table cells."""
    return " | ".join(f"{row['steps_seconds'].get(step, 0):.1f}" for step in ("ingest", "predict", "publish"))


def folder_bytes(path: Location) -> int:
    """Bytes of the files under ``path`` (or of the file itself), a local path or a URL."""
    if is_remote(path):
        return int(filesystem(path).du(path))
    path = Path(path)
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def step_spans(flow_run_id, origin: float) -> tuple[dict[str, list[float]], dict[str, int]]:
    """Each step's span of a flow run, ``[first start, last end]`` in seconds after ``origin`` (epoch
    seconds), from its task runs on the server, and the number of task runs per step."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    runs, page = [], 200
    with get_client(sync_client=True) as client:
        while True:
            batch = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])),
                                          limit=page, offset=len(runs))
            runs += batch
            if len(batch) < page:
                break
    times: dict[str, list[float]] = {}
    counts: Counter = Counter()
    for run in runs:
        if run.start_time and run.end_time:
            step = run.name.rsplit("-", 1)[0]  # task run names are "<task name>-<suffix>"
            step = "predict" if step == "predict-block" else step
            times.setdefault(step, []).extend([run.start_time.timestamp() - origin, run.end_time.timestamp() - origin])
            counts[step] += 1
    return {step: [round(min(t), 2), round(max(t), 2)] for step, t in times.items()}, dict(counts)


def main(config_json: str) -> None:
    """In the measured process: run the region flow once; print what it did, its times and sizes as one JSON line.

    Times: ``process_start_seconds`` from the process's start to the flow call (interpreter and
    imports); ``flow_seconds`` from the flow call to its return; ``step_spans`` per step, in
    seconds after the flow call; ``steps_seconds`` each step's span length.
    """
    import rasterio

    from flows.region import region_flow, task_runner

    config = RegionConfig.model_validate_json(config_json)
    called = time.time()
    state = region_flow.with_options(task_runner=task_runner(config))(config, return_state=True)
    published = state.result()
    returned = time.time()
    with rasterio.open(published.paths["classmap"]) as classmap:
        height, width = classmap.height, classmap.width
        transform = list(classmap.transform)[:6]
    inference = published.metrics["inference"]
    spans, task_runs = step_spans(state.state_details.flow_run_id, called)
    (work,) = work_folders(config)
    print("RESULT " + json.dumps({
        "process_start_seconds": round(called - psutil.Process().create_time(), 2),
        "flow_seconds": returned - called,
        "step_spans": spans, "steps_seconds": {step: round(b - a, 2) for step, (a, b) in spans.items()},
        "task_runs": task_runs, "height": height, "width": width, "transform": transform,
        "chips": inference["chips_predicted"], "blocks": inference["blocks"],
        "store_bytes": {basename(p): folder_bytes(p) for p in glob(work, "*.zarr")},
        "published_bytes": {name: folder_bytes(path) for name, path in published.paths.items() if exists(path)},
    }))


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description="Run the region flow once for a config (what run_measured starts).")
    parser.add_argument("config_json", help="the RegionConfig as JSON (RegionConfig.model_dump_json())")
    main(parser.parse_args().config_json)

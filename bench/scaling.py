"""Scaling out: the same region on a local Dask cluster of 1 and of 2 workers, started by the benchmark.

For each worker count the benchmark starts ``dask.distributed.LocalCluster`` on 127.0.0.1 (one
thread per worker process) and runs the region flow in a fresh process against it
(``dask_address`` in the run config), over 4x the demo area of the benchmark mosaic (1x in the quick
setting) with a checkpoint (no fine-tuning) and a small model; the runs report to one Prefect server started
by the benchmark. Reported: wall time of the flow process, time per step (from the task runs),
and the peak resident memory of each worker (sampled with psutil every 0.1 s) and of the flow
process. Only inference (one task per block of the scene store) runs on the workers; the ingest
(search, load, one scene write to Zarr) and publishing run in the flow process, so they do not
scale with workers.

    python -m bench.scaling [--quick] [--size 4] [--workers 1 2]
"""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path

import psutil
from dask.distributed import Client, LocalCluster

from bench.common import environment, write_results
from bench.flowrun import (
    TRAIN,
    add_area_arguments,
    mib,
    mosaic_config,
    prefect_server,
    prepared_area,
    run_measured,
    step_cells,
)


def run_on_cluster(workers: int, size: int, setting: dict, ckpt: Path, work: Path) -> dict:
    """The region flow on a fresh LocalCluster of ``workers`` single-threaded worker processes."""
    with (
        LocalCluster(n_workers=workers, threads_per_worker=1, host="127.0.0.1", dashboard_address=None,
                     processes=True) as cluster,
        Client(cluster) as client,
    ):
        processes = [psutil.Process(pid) for pid in client.run(os.getpid).values()]
        idle = [process.memory_info().rss for process in processes]
        config = mosaic_config(size, ckpt, work / "outputs", dask_address=cluster.scheduler_address, **setting)
        row = run_measured(config, work, processes)
    return {"workers": workers, "idle_worker_bytes": idle, **row}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_area_arguments(parser)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    args = parser.parse_args()
    setting, size, ckpt = prepared_area(args)
    load = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="bench-scaling-") as tmp, prefect_server(Path(tmp) / "server.log"):
        rows = [run_on_cluster(n, size, setting, ckpt, Path(tmp)) for n in args.workers]
    base = rows[0]
    for row in rows:
        row["speedup"] = base["flow_seconds"] / row["flow_seconds"]
        row["predict_speedup"] = base["steps_seconds"]["predict"] / row["steps_seconds"]["predict"]
    last = rows[-1]
    notes = [
        (f"{last['workers']} workers against {base['workers']}: the whole run {last['speedup']:.2f}x as fast, "
         f"inference {last['predict_speedup']:.2f}x (ideal {last['workers'] / base['workers']:.0f}x)."),
        (f"This machine has {os.cpu_count()} cores (load average {load[0]:.1f} before the runs, "
         f"{os.getloadavg()[0]:.1f} after; above {os.cpu_count()} other jobs competed for them). Each worker runs torch on one thread (Dask's "
         "nanny sets OMP_NUM_THREADS=1), so one worker uses one core and a second can use the other when the "
         "machine is otherwise idle. Only inference runs on the workers: the ingest and publishing (in "
         "the flow process) and process start-up do not scale with them."),
        ("Worker memory: each worker loads the model (and the LM) once; its peak is that plus one block of the "
         f"scene with its halo, its chips and their probabilities ({setting['chips']['block']} px blocks, "
         f"batches of {setting['inference_batch']} chips)."),
    ]
    result = {
        "benchmark": "scaling",
        "title": "Region flow on a local Dask cluster of 1 and 2 workers: wall time and per-worker memory",
        **environment(),
        "settings": {"size": f"{size}x the demo area (mosaic, 2000 item)", "workers": args.workers,
                     "threads_per_worker": 1, **setting, "checkpoint": f"fine-tuned on the demo catalog: {TRAIN}",
                     "cluster": "dask.distributed.LocalCluster on 127.0.0.1, started by the benchmark",
                     "load_average_before": load,
                     "quick": args.quick},
        "rows": rows,
        "headline": [f"{last['workers']} Dask workers against {base['workers']} on {os.cpu_count()} cores: the run "
                     f"{last['speedup']:.2f}x as fast, inference {last['predict_speedup']:.2f}x."],
        "notes": notes,
    }
    table = [
        ("| workers | chips predicted | wall s (flow process) | ingest s | predict s | publish s | speed-up | "
         "peak per worker (MiB) | worker idle (MiB) | flow process peak (MiB) |"),
        "|---:|---:|---:|---:|---:|---:|---:|---|---|---:|",
        *(f"| {r['workers']} | {r['chips']} | {r['wall_seconds']:.0f} | {step_cells(r)} | {r['speedup']:.2f}x | "
          f"{', '.join(f'{mib(b):.0f}' for b in r['peak_per_worker_bytes'])} | "
          f"{', '.join(f'{mib(b):.0f}' for b in r['idle_worker_bytes'])} | "
          f"{mib(r['peak_by_kind_bytes']['flow']):.0f} |" for r in rows),
    ]
    write_results("scaling", result, table)


if __name__ == "__main__":
    main()

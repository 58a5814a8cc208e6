"""Work and outputs on object storage against local disk: the region flow over 4x the demo area, side by side.

Two runs of one config (the same checkpoint, model and chips) in fresh processes, each on a local
Dask cluster of 2 workers started by its flow: one with its work folder (scene and prediction
Zarr stores) and outputs on local disk, one with both on an S3-compatible server on 127.0.0.1
(moto in server mode, started by the benchmark, objects in memory), which the workers write their
blocks to directly. Reported: wall time, time per step, bytes stored, and bytes moved to and from
the server: the server process's socket reads and writes (``read_chars``/``write_chars``, every
request and response with its headers). The server is on this machine, so the figures are the
cost of going through the S3 protocol and writing without renames, not of a network.

    python -m bench.storage [--quick] [--size 4]
"""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path

import psutil

from allspark.core.atomic import atomic_dir
from allspark.core.location import upload_folder
from bench.common import environment, write_results
from bench.flowrun import (TRAIN, add_area_arguments, mib, mosaic_config, prefect_server, prepared_area, run_measured,
                           step_cells)
from flows.s3_server import local_s3_server

BUCKET = "bench-storage"


def moved_bytes(server: psutil.Process) -> tuple[int, int]:
    """Bytes the server has received (requests, uploads) and sent (responses, downloads) so far."""
    counters = server.io_counters()
    return counters.read_chars, counters.write_chars


def run_row(storage: str, config, work: Path, server: psutil.Process) -> dict:
    received, sent = moved_bytes(server)
    row = run_measured(config, work)
    after_received, after_sent = moved_bytes(server)
    return {"storage": storage, **row, "bytes_to_server": after_received - received,
            "bytes_from_server": after_sent - sent}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_area_arguments(parser)
    args = parser.parse_args()
    setting, size, ckpt = prepared_area(args)
    load = os.getloadavg()
    with (tempfile.TemporaryDirectory(prefix="bench-storage-") as tmp,
          prefect_server(Path(tmp) / "server.log"),
          local_s3_server(Path(tmp) / "moto.log") as (s3, moto)):
        os.environ.update(s3.environment())  # the flow processes and their workers inherit it
        s3.create_bucket(BUCKET)
        work, server = Path(tmp), psutil.Process(moto.pid)
        local = mosaic_config(size, ckpt, work / "outputs", work_root=str(work / "work"), **setting)
        model = f"s3://{BUCKET}/models/bench"  # the workers download it, as on a cluster without a shared disk
        with atomic_dir(model):
            upload_folder(ckpt, model)
        bucket = mosaic_config(size, model, f"s3://{BUCKET}/outputs", work_root=f"s3://{BUCKET}/work", **setting)
        rows = [run_row("local disk", local, work, server), run_row("S3 (moto on 127.0.0.1)", bucket, work, server)]
    base, remote = rows
    for row in rows:
        row["stored_bytes"] = sum(row["store_bytes"].values()) + sum(row["published_bytes"].values())
        row["vs_local"] = row["flow_seconds"] / base["flow_seconds"]
    headline = (f"Work and outputs on S3 (local moto server) against local disk, {size}x the demo area: "
                f"{remote['vs_local']:.2f}x the wall time; {mib(remote['bytes_to_server']):.0f} MiB sent to the "
                f"server and {mib(remote['bytes_from_server']):.0f} MiB read back.")
    result = {
        "benchmark": "storage",
        "title": "Work and outputs on object storage (S3 protocol, local server) against local disk",
        **environment(),
        "settings": {"size": f"{size}x the demo area (mosaic, 2000 item)", **setting,
                     "checkpoint": f"fine-tuned on the demo catalog: {TRAIN}", "n_workers": 2,
                     "server": "moto in server mode on 127.0.0.1, objects in memory, started by the benchmark",
                     "load_average_before": load, "quick": args.quick},
        "rows": rows,
        "headline": [headline],
        "notes": [
            headline,
            ("Bytes moved are the server process's socket reads and writes: the scene store written by the flow's "
             "ingest, each block's probabilities and chip table written by the workers, the model downloaded once "
             "per worker, the probability store and scene read back by publishing, the published set uploaded, "
             "and every request's headers and listings."),
            ("The server runs on this machine and shares its 2 cores with the flow and the workers, so the time "
             "includes the server's own work; against a real object store over a network, latency and bandwidth "
             "come on top."),
        ],
    }
    table = [
        "| storage | wall s | ingest s | predict s | publish s | vs local | stored (MiB) | sent to server (MiB) | "
        "read from server (MiB) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
        *(f"| {r['storage']} | {r['flow_seconds']:.0f} | {step_cells(r)} | {r['vs_local']:.2f}x | {mib(r['stored_bytes']):.1f} | {mib(r['bytes_to_server']):.1f} | "
          f"{mib(r['bytes_from_server']):.1f} |" for r in rows),
    ]
    write_results("storage", result, table)


if __name__ == "__main__":
    main()

"""Ingest against its limit, and odc-stac against stackstac, on the benchmark mosaic.

(a) The region flow's ingest of one 4096 x 4096 px scene (six uint16 COGs): STAC search and
checks (:func:`allspark.region.plan_region`), lazy load, chipping and the Zarr write
(:func:`allspark.region.tile_region`), against (b) a plain rasterio read of the same pixels
from the same COGs: block-aligned 512 px windows, every band, in a thread pool (the best of 1
thread and one per core), nothing kept. Both rates are in megapixels of the scene per second
(a megapixel holds all six bands). With overlapping chips every scene pixel is written several
times (4x for the demo's 16 px chips at overlap 8), so the ingest runs with the demo chip
settings and with overlap 0, and the chip pixels written are reported beside. Stages of the
ingest (load only, load + chipping without the write) show where the time goes.

(c) odc-stac against stackstac through :func:`allspark.region.open_raster` (same items, same
grid, the flow's chunking, median composite over time): one item, and the four-year time
stack. Every chunk is computed (reduced to a sum, so the result is not held in memory).

The COGs are read warm (from the page cache): decoding is measured, not the disk.

    python -m bench.ingest [--quick] [--repeats N]
"""

from __future__ import annotations

import argparse
import os
import shutil
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import dask
import rasterio
from rasterio.windows import Window

from allspark.chips import ChipGrid, stack_chips
from allspark.config import RegionConfig
from allspark.region import open_raster, plan_region, tile_region
from bench.common import environment, write_results
from bench.mosaic import (
    BLOCK,
    CONFIG,
    SIZE,
    YEARS,
    build_mosaic,
    window_aoi,
    year_range,
)

GOAL = 0.7
DEMO_CHIPS = {"size": 16, "overlap": 8, "batch": 64}


def best_seconds(step: Callable[[], object], repeats: int) -> float:
    """The shortest wall time of ``repeats`` calls (no warm-up call: the steps are long)."""
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        step()
        best = min(best, time.perf_counter() - started)
    return best


def raw_read(hrefs: list[str], rows: int, cols: int, threads: int) -> None:
    """Read the top-left ``rows`` x ``cols`` px of every COG in block-aligned windows, one row of blocks per task."""

    def read_block_row(task: tuple[str, int]) -> None:
        href, top = task
        with rasterio.open(href) as src:
            for left in range(0, cols, BLOCK):
                src.read(1, window=Window(left, top, min(BLOCK, cols - left), min(BLOCK, rows - top)))

    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(read_block_row, [(href, top) for href in hrefs for top in range(0, rows, BLOCK)]))


def scene_config(chips: dict, **changes) -> RegionConfig:
    """The region config of the 2000 scene of the mosaic (the whole scene unless an AOI is given)."""
    settings = {"name": "bench-ingest", "catalog": str(CONFIG), "datetime": year_range(), "train": None,
                "checkpoint": "unused-no-inference", "chips": chips}
    return RegionConfig(**(settings | changes))


def ingest_rows(repeats: int) -> tuple[list[dict], dict]:
    """Raw read, the ingest stages and the whole ingest of the full scene, with the demo chips and overlap 0."""
    plan = plan_region(scene_config(DEMO_CHIPS))
    rows, cols = open_raster(scene_config(DEMO_CHIPS), plan).shape[1:]
    hrefs = [asset["href"] for asset in plan.items[0]["assets"].values()]
    megapixels = rows * cols / 1e6
    raw = {threads: best_seconds(lambda t=threads: raw_read(hrefs, rows, cols, t), repeats)
           for threads in sorted({1, os.cpu_count() or 1})}
    threads, raw_s = min(raw.items(), key=lambda kv: kv[1])
    out = [{"step": f"raw rasterio read ({threads} thread{'s' * (threads > 1)}, {BLOCK} px blocks)",
            "chips": None, "seconds": raw_s}]
    for chips in (DEMO_CHIPS, {**DEMO_CHIPS, "overlap": 0}):
        config = scene_config(chips)
        label = f"{chips['size']} px chips, overlap {chips['overlap']}"
        raster = open_raster(config, plan)
        grid = ChipGrid.over(raster, chips["size"], chips["overlap"])
        chipped = stack_chips(raster, grid, chips["batch"])
        with dask.config.set(scheduler="threads"):
            if chips is DEMO_CHIPS:  # the stages once: the load does not depend on the chips
                out.append({"step": "load only (lazy load, every chunk computed)", "chips": None,
                            "seconds": best_seconds(raster.data.sum().compute, repeats)})
            out.append({"step": f"load + chipping, no write ({label})", "chips": len(grid),
                        "seconds": best_seconds(chipped.sum().compute, repeats)})

        def ingest(config=config):
            tile_region(config, plan_region(config))
            shutil.rmtree(config.work_dir())

        out.append({"step": f"ingest: search + load + chipping + Zarr write ({label})", "chips": len(grid),
                    "seconds": best_seconds(ingest, repeats), "ingest": True})
    for row in out:
        row["megapixels"] = megapixels
        row["mpx_per_s"] = megapixels / row["seconds"]
        row["vs_raw"] = raw_s / row["seconds"]
        row["chip_mpx_written_per_s"] = (row["chips"] * DEMO_CHIPS["size"] ** 2 / 1e6 / row["seconds"]
                                         if row.get("ingest") else None)
    return out, {"rows": rows, "cols": cols, "raw_seconds_by_threads": raw}


def loader_rows(stack_px: int, repeats: int) -> list[dict]:
    """odc-stac and stackstac on one item (the full scene) and on the time stack (all years, a
    ``stack_px`` window: the median over four items of the full scene takes minutes)."""
    out = []
    for label, datetime, aoi in (
        ("1 item", year_range(), None),
        (f"{len(YEARS)} items (time stack, median)", (year_range(YEARS[0])[0], year_range(YEARS[-1])[1]),
         window_aoi(stack_px, stack_px)),
    ):
        row = {"items": label}
        for loader in ("odc", "stackstac"):
            config = scene_config(DEMO_CHIPS, datetime=datetime, aoi=aoi, loader=loader)
            raster = open_raster(config, plan_region(config))
            row["grid"] = f"{raster.sizes['y']} x {raster.sizes['x']} px x {raster.sizes['band']} bands"
            with dask.config.set(scheduler="threads"):
                row[f"{loader}_seconds"] = best_seconds(raster.data.sum().compute, repeats)
        row["stackstac_over_odc"] = row["stackstac_seconds"] / row["odc_seconds"]
        out.append(row)
    return out


def _number(value: float | None) -> str:
    return "" if value is None else f"{value:.1f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="one repeat, the time stack on a 1024 px window")
    parser.add_argument("--repeats", type=int, default=None, help="best of N (default 3, quick 1)")
    args = parser.parse_args()
    repeats = args.repeats or (1 if args.quick else 3)
    load = os.getloadavg()  # 1, 5, 15 min: above the core count, other jobs shared the machine
    stack_px = 1024 if args.quick else 2048
    build_mosaic()
    ingest, sizes = ingest_rows(repeats)
    loaders = loader_rows(stack_px, repeats)
    raw, load_only, chipped, demo, _, best = ingest
    notes = [
        f"Ingest against the raw read: {demo['vs_raw']:.2f} with the demo chips (overlap 8, every pixel written "
        f"4 times) and {best['vs_raw']:.2f} at overlap 0; the goal is {GOAL}: "
        + ("met." if best["vs_raw"] >= GOAL else f"missed by {GOAL - best['vs_raw']:.2f} at overlap 0."),
        (f"Where the time goes (demo chips, stage rows): the lazy load alone runs at {load_only['vs_raw']:.2f} of the raw "
        f"read ({load_only['seconds']:.2f} s against {raw['seconds']:.2f} s); chipping brings it to "
        f"{chipped['seconds']:.2f} s and the Zarr write (and the search) to {demo['seconds']:.2f} s. The load is held "
        "back by odc-stac's per-chunk work (opening the COG, planning the read, float32 conversion, nodata to NaN); "
        "chipping copies every pixel into overlapping chips; the write checks each chip for data and compresses "
        "4x the scene (Blosc LZ4 with shuffle, one shard per ~32 MB block of chips). The raw read only decodes "
        "uint16 blocks."),
        ("odc-stac against stackstac (time to compute, stackstac / odc-stac): "
        + "; ".join(f"{r['items']}: {r['stackstac_over_odc']:.2f}" for r in loaders) + "."),
    ]
    result = {
        "benchmark": "ingest",
        "title": "Ingest (STAC search, lazy load, chips, Zarr) against a raw rasterio read; odc-stac against stackstac",
        **environment(),
        "settings": {
            "scene": f"mosaic item {YEARS[0]}: {SIZE} x {SIZE} px, 6 bands uint16 COG (512 px tiles, deflate)",
            "grid_rows_cols": [sizes["rows"], sizes["cols"]],
            "chips": [DEMO_CHIPS, {**DEMO_CHIPS, "overlap": 0}],
            "loader": "odc (the flow's default), chunks as the region flow sets them",
            "dask_scheduler": "threads",
            "time_stack_window_px": stack_px,
            "repeats": repeats,
            "quick": args.quick, "load_average_before": load,
        },
        "ingest": ingest,
        "raw_seconds_by_threads": sizes["raw_seconds_by_threads"],
        "loaders": loaders,
        "headline": [
            (f"Ingest (search, load, chips, Zarr) at {best['vs_raw']:.2f} of the raw rasterio read at chip overlap 0, "
             f"{demo['vs_raw']:.2f} with the demo's overlap 8 (goal {GOAL})."),
            ("stackstac's time over odc-stac's: "
             + "; ".join(f"{r['items']} {r['stackstac_over_odc']:.2f}" for r in loaders) + "."),
        ],
        "notes": notes,
    }
    table = [
        f"Scene: {sizes['rows']} x {sizes['cols']} px, 6 bands ({sizes['rows'] * sizes['cols'] / 1e6:.1f} Mpx).",
        "",
        "| step | chips | seconds | scene Mpx/s | vs raw read | chip Mpx written/s |",
        "|---|---:|---:|---:|---:|---:|",
        *(f"| {r['step']} | {r['chips'] or ''} | {r['seconds']:.2f} | {r['mpx_per_s']:.1f} | {r['vs_raw']:.2f} | "
          f"{_number(r['chip_mpx_written_per_s'])} |" for r in ingest),
        "",
        "| items | grid | odc-stac s | stackstac s | stackstac / odc-stac |",
        "|---|---|---:|---:|---:|",
        *(f"| {r['items']} | {r['grid']} | {r['odc_seconds']:.2f} | {r['stackstac_seconds']:.2f} | "
          f"{r['stackstac_over_odc']:.2f} |" for r in loaders),
    ]
    write_results("ingest", result, table)


if __name__ == "__main__":
    main()

"""The whole region run against the model alone: what the pipeline costs beyond the forward pass.

One run of the Prefect region flow (``flows.region``: ingest the scene into Zarr once, predict it
block by block on a local Dask cluster, publish) with a trained checkpoint and no fine-tuning
(``checkpoint:`` set, ``train: null``) over ``--size`` times the demo area of the benchmark mosaic
(4x; the top-left window of the 2000 item), in a fresh process, reporting to one Prefect server
started by the benchmark (not measured, as under ``make serve``). Against it, side by side: the
model's forward pass alone (:func:`allspark.region.inputs.predict_chips`, the function every
inference task calls) over the same chips held in memory, with the same batch size on the same
device: every chip the run predicts (each block's chips with data, cut from the scene as
:func:`allspark.region.steps.predict_block` cuts them, halo chips included) is cut into one array
first, then only the prediction is timed (after one warm-up batch).

Stage breakdown of the run, from its task runs: flow/Prefect start-up (the flow run and its Dask
cluster, until the first task starts), ingest, train (the checkpoint is taken as it is), predict
(first to last block task), publish, and what the flow spends between and after them; the
process start-up (interpreter, imports) is reported beside, outside the whole run. Goal: the
whole run (flow call to return) at most 1.3x the model's time.

Storage: the bytes of the run's Zarr stores (the scene and the probabilities) against the bytes
of the source COGs for the same pixels (their full-resolution tiles, pro rata; the tiles the run
actually read are reported too) plus the probability COG it published. Goal: at most 1.5x.

The checkpoint is fine-tuned once into the cache (:func:`bench.flowrun.checkpoint`: 1 epoch on
512 demo pixels) unless ``--checkpoint`` names a bundle, e.g. ``outputs/demo/model`` of ``make demo``.
On a CUDA device the model runs under bf16 autocast, as the pipeline runs it; chips/s and the
fraction of the card's peak dense bf16 throughput are reported as ``bench.inference`` does.

    python -m bench.overhead [--quick] [--size 4] [--checkpoint DIR] [--batch N]
    python -m bench.overhead --device cuda --dtype bfloat16 --llm-layers 30 --batch 256
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np

from bench.flowrun import (
    DEMO_COLS,
    DEMO_ROWS,
    SETTINGS,
    STEPS,
    TRAIN,
    checkpoint,
    mib,
    mosaic_config,
    prefect_server,
    run_measured,
)

GOAL = 1.3
STORAGE_GOAL = 1.5
DEMO_LAYERS = 4


def scene_chips(config) -> tuple[np.ndarray, list[float], dict]:
    """Every chip the run of ``config`` predicts, as one ``(n, band, size, size)`` array, and the wavelengths.

    The scene is ingested by the pipeline's own step under ``config``'s (unique) name, so the
    measured run does not find it; each block's chips are cut exactly as ``predict_block`` cuts
    them (the block plus its halo, chips without data dropped).
    """
    import shutil

    from allspark.raster.scene import block_chips, open_scene
    from allspark.region import steps

    ingested = steps.ingest(config, log=lambda *_: None)
    try:
        scene, dn = open_scene(ingested.store)
        size, overlap = config.chips.size, config.chips.overlap
        parts = []
        for window in scene.blocks():
            chips, _, _ = block_chips(scene, dn, window, size, overlap)
            parts.append(chips[np.isfinite(chips).any(axis=(1, 2, 3))])
        info = {"height": scene.height, "width": scene.width, "blocks": len(scene.blocks())}
        return np.concatenate(parts), [b.center_wavelength for b in scene.bands], info
    finally:
        shutil.rmtree(ingested.work_dir, ignore_errors=True)


def time_model(ckpt: Path, chips: np.ndarray, wavelengths: list[float], batch: int, repeats: int) -> dict:
    """Seconds of :func:`predict_chips` over ``chips`` (best of ``repeats``, after one warm-up batch), and FLOPs."""
    import torch

    from allspark.core.bundle import load_bundle
    from allspark.region.inputs import Normalizer, predict_chips
    from bench.inference import forward_flops

    bundle = load_bundle(ckpt, Normalizer)
    model, normalizer = bundle.model, bundle.preprocessing
    predict_chips(model, normalizer, chips[:batch], wavelengths, batch)  # CUDA context, kernels, prefix cache
    best = float("inf")
    for _ in range(repeats):
        if model.device.type == "cuda":
            torch.cuda.synchronize()
        started = time.perf_counter()
        predict_chips(model, normalizer, chips, wavelengths, batch)
        if model.device.type == "cuda":
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - started)
    inputs, _ = normalizer.apply(chips[:batch])
    flops = forward_flops(model, {"image": inputs.to(model.device),
                                  "wavelengths": torch.tensor(wavelengths, dtype=torch.float32, device=model.device)})
    return {"seconds": best, "device": str(model.device), "llm_layers": model.config.llm_layers,
            "flop_per_chip": flops / len(inputs)}


def source_bytes(hrefs: list[str], height: int, width: int, transform: list[float]) -> dict:
    """Bytes of the source COGs for the run's grid: full-resolution tiles pro rata to its pixels, the
    tiles it intersects (what the run read), and the whole files (with overviews)."""
    import rasterio

    share = tiles = files = 0
    for href in hrefs:
        path = Path(href.removeprefix("file://"))
        files += path.stat().st_size
        with rasterio.open(path) as src:
            col0 = round((transform[2] - src.transform.c) / src.transform.a)
            row0 = round((transform[5] - src.transform.f) / src.transform.e)
            bh, bw = src.block_shapes[0]
            level0 = 0
            for (i, j), window in src.block_windows(1):
                nbytes = src.block_size(1, i, j)
                level0 += nbytes
                if (window.row_off < row0 + height and window.row_off + window.height > row0
                        and window.col_off < col0 + width and window.col_off + window.width > col0):
                    tiles += nbytes
            share += level0 * (height * width) / (src.height * src.width)
    return {"pro_rata": int(share), "tiles_read": tiles, "files": files}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true",
                        help="1x the demo area, the benchmarks' small model with 1 LM layer, chips without overlap")
    parser.add_argument("--size", type=float, default=None, help="multiple of the demo area (default 4, quick 1)")
    parser.add_argument("--checkpoint", type=Path, default=None,
                        help="a region model bundle (e.g. outputs/demo/model); default: fine-tune one once into the cache")
    parser.add_argument("--device", choices=["cpu", "cuda"], default=None,
                        help="default: CUDA when available (the pipeline's choice), else CPU")
    parser.add_argument("--dtype", choices=["float32", "bfloat16"], default=None,
                        help="the pipeline runs bf16 autocast on CUDA and fp32 on the CPU; default: the device's")
    parser.add_argument("--llm-layers", type=int, default=None,
                        help=f"LM layers of the fine-tuned checkpoint (default {DEMO_LAYERS}, the demo's; quick 1)")
    parser.add_argument("--batch", type=int, default=None, help="inference batch of the run and the model (default 32, quick 64)")
    parser.add_argument("--repeats", type=int, default=1, help="best of N timings of the model alone")
    args = parser.parse_args()
    if args.device == "cpu":
        os.environ["CUDA_VISIBLE_DEVICES"] = ""  # before torch initialises CUDA; inherited by the run and its workers
    import torch

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device here")
    dtype = args.dtype or ("bfloat16" if device == "cuda" else "float32")
    if dtype != ("bfloat16" if device == "cuda" else "float32"):
        parser.error(f"--dtype {dtype} on {device}: the pipeline runs bfloat16 autocast on CUDA and float32 on the CPU")
    from allspark.core.bundle import bundle_info
    from bench.common import environment, write_results
    from bench.inference import peak_bf16_tflops
    from bench.mosaic import build_mosaic, mosaic_items

    size = args.size or (1 if args.quick else 4)
    if args.quick:
        setting = dict(SETTINGS["quick"])
    else:
        setting = {"model": {}, "chips": {"size": 16, "overlap": 8, "block": 256}, "inference_batch": 32}
    setting["language"] = {"layers": args.llm_layers or (1 if args.quick else DEMO_LAYERS)}
    if args.batch:
        setting["inference_batch"] = args.batch
    load = os.getloadavg()  # 1, 5, 15 min: above the core count, other jobs shared the machine
    build_mosaic()
    ckpt = args.checkpoint or checkpoint(setting["model"], setting["language"])
    info = bundle_info(ckpt)
    with tempfile.TemporaryDirectory(prefix="bench-overhead-") as tmp:
        work = Path(tmp)
        chips, wavelengths, scene = scene_chips(mosaic_config(size, ckpt, work / "outputs", **setting))
        model = time_model(ckpt, chips, wavelengths, setting["inference_batch"], args.repeats)
        n_chips = len(chips)
        del chips
        with prefect_server(work / "server.log"):
            config = mosaic_config(size, ckpt, work / "outputs", **setting)
            run = run_measured(config, work)
    spans, flow = run["step_spans"], run["flow_seconds"]
    steps_total = sum(run["steps_seconds"].get(step, 0.0) for step in STEPS)
    startup = spans["ingest"][0]
    stages = [
        {"stage": "process start-up (interpreter, imports; outside the whole run)", "seconds": run["process_start_seconds"]},
        {"stage": "flow/Prefect start-up (flow run, Dask cluster, until the first task)", "seconds": startup},
        *({"stage": f"{step} ({run['task_runs'].get(step, 0)} task run{'s' * (run['task_runs'].get(step, 0) != 1)})",
           "seconds": run["steps_seconds"].get(step, 0.0)} for step in STEPS),
        {"stage": "flow/Prefect between and after the steps", "seconds": flow - startup - steps_total},
        {"stage": "whole run (flow call to return)", "seconds": flow},
        {"stage": f"model alone: predict_chips over the same {n_chips} chips, in memory", "seconds": model["seconds"]},
    ]
    for row in stages:
        row["vs_model"] = row["seconds"] / model["seconds"]
    ratio = flow / model["seconds"]
    chips_per_s = n_chips / model["seconds"]
    achieved = model["flop_per_chip"] * chips_per_s
    peak = peak_bf16_tflops(torch.cuda.get_device_name()) if device == "cuda" else None
    gpu = {"device": torch.cuda.get_device_name(), "peak_bf16_tflops": peak,
           "fraction_of_peak": achieved / (peak * 1e12) if peak else None} if device == "cuda" else None
    hrefs = [item.assets[band].get_absolute_href()
             for item in mosaic_items((int(config.datetime[0][:4]),)) for band in config.bands]
    source = source_bytes(hrefs, run["height"], run["width"], run["transform"])
    zarr_bytes = sum(run["store_bytes"].values())
    probability_cog = run["published_bytes"]["probabilities"]
    storage_ratio = zarr_bytes / (source["pro_rata"] + probability_cog)
    storage = {"zarr_stores_bytes": run["store_bytes"], "source_cog_bytes": source,
               "probability_cog_bytes": probability_cog, "published_bytes": run["published_bytes"],
               "ratio": storage_ratio,
               "ratio_vs_tiles_read": zarr_bytes / (source["tiles_read"] + probability_cog)}
    notes = [
        (f"The whole run took {flow:.1f} s, {ratio:.2f}x the model's {model['seconds']:.1f} s over the same "
         f"{n_chips} chips (goal at most {GOAL}x): " + ("met." if ratio <= GOAL else f"missed by {ratio - GOAL:.2f}x.")),
        (f"The steps alone (ingest, train, predict, publish) took {steps_total:.1f} s "
         f"({steps_total / model['seconds']:.2f}x the model); flow/Prefect start-up {startup:.1f} s and "
         f"{flow - startup - steps_total:.1f} s between and after the steps; the process start-up "
         f"({run['process_start_seconds']:.1f} s) comes before the flow is called."),
        (f"The run predicted {run['chips']} chips, the model alone {n_chips}"
         + (" (the same)." if run["chips"] == n_chips else ": they differ, so the comparison is off.")),
        (f"Storage: the run's Zarr stores hold {mib(zarr_bytes):.1f} MiB (scene and probabilities) against "
         f"{mib(source['pro_rata'] + probability_cog):.1f} MiB of source COG tiles for the same pixels plus the "
         f"probability COG: {storage_ratio:.2f}x (goal at most {STORAGE_GOAL}x: "
         + ("met" if storage_ratio <= STORAGE_GOAL else "missed") + f"); against the COG tiles the run read "
         f"({mib(source['tiles_read']):.1f} MiB, whole 512 px tiles) {storage['ratio_vs_tiles_read']:.2f}x."),
        (f"Model alone on {model['device']} ({dtype}): {chips_per_s:.0f} chips/s at batch {setting['inference_batch']}, "
         f"{model['flop_per_chip'] / 1e9:.2f} GFLOP per chip, {achieved / 1e12:.3f} TFLOP/s"
         + (f", {gpu['fraction_of_peak']:.2%} of the card's {peak:.0f} TFLOPS dense bf16 peak." if gpu and peak else ".")),
    ]
    result = {
        "benchmark": "overhead",
        "title": "The whole region run (no fine-tuning) against the model's forward pass alone; storage",
        **environment(),
        "settings": {
            "size": f"{size:g}x the demo area ({DEMO_ROWS} x {DEMO_COLS} px), mosaic 2000 item",
            **setting, "checkpoint": str(args.checkpoint) if args.checkpoint else f"fine-tuned on the demo catalog: {TRAIN}",
            "checkpoint_llm_layers": info.llm_layers, "device": device, "dtype": dtype, "repeats": args.repeats,
            "n_workers": config.n_workers, "prefect": "one server started by the benchmark, not measured",
            "quick": args.quick, "load_average_before": load,
        },
        "scene": {**scene, "chips": n_chips},
        "stages": stages,
        "run": run,
        "model": {**model, "chips": n_chips, "chips_per_s": chips_per_s, "tflop_per_s": achieved / 1e12, "gpu": gpu},
        "storage": storage,
        "headline": [
            (f"The whole region run (no fine-tuning, {size:g}x the demo area, {device}) took {ratio:.2f}x the model's "
             f"forward pass alone over the same chips (goal at most {GOAL}x); its Zarr stores "
             f"{storage_ratio:.2f}x the source COGs plus the probability COG (goal at most {STORAGE_GOAL}x)."),
        ],
        "notes": notes,
    }
    table = [
        (f"Scene {run['height']} x {run['width']} px, {run['blocks']} blocks, {n_chips} chips predicted; model: "
         f"{info.llm_layers or 30} LM layers, batch {setting['inference_batch']}, {model['device']}, {dtype}."),
        "",
        "| stage | seconds | vs model alone |",
        "|---|---:|---:|",
        *(f"| {r['stage']} | {r['seconds']:.2f} | {r['vs_model']:.2f}x |" for r in stages),
        "",
        "| storage | MiB |",
        "|---|---:|",
        *(f"| Zarr store {name} | {mib(nbytes):.2f} |" for name, nbytes in run["store_bytes"].items()),
        f"| source COG tiles, same pixels (pro rata) | {mib(source['pro_rata']):.2f} |",
        f"| source COG tiles read (whole tiles) | {mib(source['tiles_read']):.2f} |",
        f"| probability COG published | {mib(probability_cog):.2f} |",
        f"| Zarr / (COG same pixels + probability COG) | {storage_ratio:.2f}x |",
    ]
    write_results("overhead", result, table)


if __name__ == "__main__":
    main()

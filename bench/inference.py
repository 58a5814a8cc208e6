"""Inference speed of the region flow's model: language-model depth, the prompt-prefix cache, the GPU.

Measures, side by side in one run, chips/s of the multispectral AllSpark model of the region
flow (the demo config's model, depth varied) at batch 32 on real 16x16 chips of the demo scene:
inference with and without the prompt-prefix cache and training steps, fp32 on the CPU, for
SmolLM2 depths of 30 (full), 8 and 4 layers. The floating-point operations of one forward pass
are counted with ``torch.utils.flop_counter.FlopCounterMode``, which gives the GFLOP/s reached.
On a CUDA device it also measures bf16 (autocast) inference and the fraction of the card's peak
dense bf16 throughput that it uses. Writes bench/results/inference.json and .md.

    python -m bench.inference [--quick] [--depths 30 8 4] [--repeats 3]
"""

from __future__ import annotations

import argparse
import os

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

from allspark.model import AllSpark
from allspark.raster.load import load_stack, physical_values
from allspark.region import read
from allspark.region.config import RegionConfig
from allspark.region.inputs import Normalizer
from bench.common import best_rate, environment, write_results

BATCH = 32
GPU_BATCH = 256
PEAK_BF16_TFLOPS = {  # dense (no sparsity), from the vendors' data sheets
    "H200": 989.0,
    "H100 NVL": 835.0,
    "H100 PCIe": 756.0,
    "H100": 989.0,  # SXM5 (reports as "H100 80GB HBM3")
    "A100": 312.0,
}


def demo_chips(config: RegionConfig, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` normalised 16x16 chips from the middle of the demo scene, and their wavelengths."""
    plan = read.plan(config)
    raster = load_stack(plan.pystac_items(), plan.bands, plan.encoding, bbox_4326=plan.aoi_bbox)
    dn = raster.isel(y=slice(150, 150 + 16 * 4), x=slice(150, 150 + 16 * 8)).values
    image = physical_values(dn, plan.bands, plan.encoding)
    chips = np.stack([image[:, r : r + 16, c : c + 16] for r in range(0, 64, 16) for c in range(0, 128, 16)])
    chips = np.concatenate([chips] * (n // len(chips) + 1))[:n]
    pixels = image.reshape(image.shape[0], -1)
    inputs, _ = Normalizer.fit(config.bands, pixels).apply(chips)
    return inputs, torch.tensor([b.center_wavelength for b in plan.bands], dtype=torch.float32)


def region_model(depth: int, cached: bool, device: str) -> AllSpark:
    """The region flow's model (demo config) with ``depth`` LM layers, in eval mode."""
    region = RegionConfig()
    language = region.language.model_copy(update={"layers": depth, "use_prefix_cache": cached})
    return AllSpark(region.model.allspark_config(region.class_names, language), device=device).eval()


def forward_flops(model: AllSpark, batch: dict) -> int:
    """Floating-point operations of one forward pass over ``batch`` (matmuls and convolutions).

    Counted with autograd on: FlopCounterMode's module hooks fail under ``torch.no_grad``.
    """
    with FlopCounterMode(display=False) as counter:
        model(batch)
    return counter.get_total_flops()


def measure_cpu(depth: int, batch: dict, repeats: int, uncached: bool) -> dict:
    """fp32 CPU inference chips/s with (and without) the prefix cache, GFLOP/s, and training chips/s."""
    row = {"llm_layers": depth, "infer_chips_per_s_uncached": None}
    models = {"cached": region_model(depth, True, "cpu")}
    if uncached:
        models["uncached"] = region_model(depth, False, "cpu")
    for name, model in models.items():
        with torch.no_grad():
            row[f"infer_chips_per_s_{name}"] = best_rate(lambda m=model: m(batch), BATCH, repeats)
        row[f"gflop_per_chip_{name}"] = forward_flops(model, batch) / BATCH / 1e9
        row[f"gflop_per_s_{name}"] = row[f"gflop_per_chip_{name}"] * row[f"infer_chips_per_s_{name}"]
    row["cache_speedup"] = (row["infer_chips_per_s_cached"] / row["infer_chips_per_s_uncached"]
                            if row["infer_chips_per_s_uncached"] else None)
    model = models["cached"].train()  # the flow trains with the cache on, as it infers
    optimizer = torch.optim.AdamW(model.trainable_parameters(), lr=1e-4)
    targets = torch.zeros(BATCH, 16, 16, dtype=torch.long)

    def train_step():
        loss = model.loss(batch, targets)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    row["train_chips_per_s"] = best_rate(train_step, BATCH, repeats)
    return row


def peak_bf16_tflops(device_name: str) -> float | None:
    """The card's peak dense bf16 TFLOPS by its name (None for a card not in the table)."""
    for key, tflops in PEAK_BF16_TFLOPS.items():
        if all(word in device_name for word in key.split()):
            return tflops
    return None


def measure_gpu(depth: int, inputs: torch.Tensor, wavelengths: torch.Tensor, repeats: int) -> list[dict]:
    """bf16 (autocast) inference chips/s on the GPU with the prefix cache, at batch 32 and 256."""
    name = torch.cuda.get_device_name()
    peak = peak_bf16_tflops(name)
    model = region_model(depth, True, "cuda")
    rows = []
    for size in (BATCH, GPU_BATCH):
        chips = torch.cat([inputs] * (size // len(inputs))).cuda()
        batch = {"image": chips, "wavelengths": wavelengths.cuda()}
        flops = forward_flops(model, batch)

        def step(batch=batch):
            model(batch)
            torch.cuda.synchronize()

        with torch.no_grad():
            rate = best_rate(step, size, repeats)
        achieved = flops / size * rate
        rows.append({"device": name, "llm_layers": depth, "batch": size, "chips_per_s": rate,
                     "tflop_per_s": achieved / 1e12, "peak_bf16_tflops": peak,
                     "fraction_of_peak": achieved / (peak * 1e12) if peak else None})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="one repeat; the 30-layer model only with the cache")
    parser.add_argument("--depths", type=int, nargs="+", default=[30, 8, 4])
    parser.add_argument("--repeats", type=int, default=None, help="best of N after a warm-up (default 3, quick 1)")
    args = parser.parse_args()
    repeats = args.repeats or (1 if args.quick else 3)
    load = os.getloadavg()  # 1, 5, 15 min: above the core count, other jobs shared the machine
    torch.manual_seed(0)
    inputs, wavelengths = demo_chips(RegionConfig(), BATCH)
    batch = {"image": inputs, "wavelengths": wavelengths}
    rows = [measure_cpu(depth, batch, repeats, uncached=not (args.quick and depth >= 30)) for depth in args.depths]
    gpu = []
    for depth in args.depths if torch.cuda.is_available() else []:  # after the CPU runs: the LM moves to the GPU
        gpu += measure_gpu(depth, inputs, wavelengths, repeats)
    speedups = [f"{r['llm_layers']} layers {r['cache_speedup']:.2f}x" for r in rows if r["cache_speedup"]]
    notes = [
        f"Prompt-prefix cache speed-up of inference (fp32, CPU): {', '.join(speedups)}.",
        ("GFLOP per chip counts the matmuls and convolutions of one forward pass (FlopCounterMode); the cache "
         "saves the prompt's share of them."),
    ]
    if gpu:
        best = max(gpu, key=lambda r: r["fraction_of_peak"] or 0)
        notes.append(
            f"GPU ({best['device']}): bf16 autocast, best {best['chips_per_s']:.0f} chips/s at batch {best['batch']} "
            f"with {best['llm_layers']} layers, "
            + (f"{best['fraction_of_peak']:.1%} of the peak {best['peak_bf16_tflops']:.0f} TFLOPS: small 16x16 chips "
               "and a 135M LM give short kernels, so launch overhead dominates." if best["fraction_of_peak"]
               else "peak unknown for this card.")
        )
    else:
        notes.append("No CUDA device here: the bf16 GPU rows (chips/s, fraction of peak bf16) were not run.")
    if args.quick:
        notes.append("Quick setting: one repeat, and the 30-layer model without the cache is not timed.")
    result = {
        "benchmark": "inference",
        "title": "Region model inference and training chips/s by LM depth, prefix cache on/off (CPU fp32; GPU bf16)",
        **environment(),
        "settings": {"batch": BATCH, "gpu_batches": [BATCH, GPU_BATCH], "chip": "6 bands x 16 x 16",
                     "model": "region flow demo config (DOFA stem 128, 16 queries, bridge depth 2, adapters every 2)",
                     "cpu_dtype": "fp32", "gpu_dtype": "bf16 autocast", "depths": args.depths, "repeats": repeats,
                     "quick": args.quick, "load_average_before": load},
        "rows": rows,
        "gpu_rows": gpu,
        "headline": [("Region inference, fp32 on this CPU, chips/s with the prompt-prefix cache: "
                      + ", ".join(f"{r['llm_layers']} LM layers {r['infer_chips_per_s_cached']:.0f}" for r in rows)
                      + f"; the cache's speed-up: {', '.join(speedups) or 'not measured'}.")],
        "notes": notes,
    }
    table = [
        ("| LM layers | inference chips/s (prefix cache) | inference chips/s (no cache) | cache speed-up | "
         "GFLOP/chip (cache) | GFLOP/s (cache) | training chips/s |"),
        "|---:|---:|---:|---:|---:|---:|---:|",
        *(f"| {r['llm_layers']} | {r['infer_chips_per_s_cached']:.0f} | {_fmt(r['infer_chips_per_s_uncached'], '.0f')} | "
          f"{_fmt(r['cache_speedup'], '.2f', 'x')} | {r['gflop_per_chip_cached']:.2f} | {r['gflop_per_s_cached']:.0f} | "
          f"{r['train_chips_per_s']:.0f} |" for r in rows),
    ]
    if gpu:
        table += [
            "",
            "| GPU | LM layers | batch | bf16 chips/s | TFLOP/s | fraction of peak bf16 |",
            "|---|---:|---:|---:|---:|---:|",
            *(f"| {r['device']} | {r['llm_layers']} | {r['batch']} | {r['chips_per_s']:.0f} | {r['tflop_per_s']:.1f} | "
              f"{_fmt(r['fraction_of_peak'], '.1%')} |" for r in gpu),
        ]
    write_results("inference", result, table)


def _fmt(value: float | None, spec: str, suffix: str = "") -> str:
    return "n/a" if value is None else f"{value:{spec}}{suffix}"


if __name__ == "__main__":
    main()

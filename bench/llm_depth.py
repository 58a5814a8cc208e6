"""How the language-model depth sets the cost of the region model on this machine.

Measures, side by side in one run, chips/s of the multispectral AllSpark model at batch 32 for
several depths of SmolLM2 (inference with and without the prompt-prefix cache, and training
steps), on real 16x16 chips of the demo scene. Writes bench/results/llm_depth.json and .md.

    python -m bench.llm_depth [--depths 30 8 4] [--repeats 3]
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

from allspark.config import RegionConfig
from allspark.finetune import Normalizer
from allspark.model import AllSpark
from allspark.region import open_raster, plan_region
from bench.common import best_rate, environment, write_results


def demo_chips(config: RegionConfig, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` normalised 16x16 chips from the middle of the demo scene, and their wavelengths."""
    raster = open_raster(config, plan_region(config))
    image = raster.isel(y=slice(150, 150 + 16 * 4), x=slice(150, 150 + 16 * 8)).values
    chips = np.stack([image[:, r : r + 16, c : c + 16] for r in range(0, 64, 16) for c in range(0, 128, 16)])
    chips = np.concatenate([chips] * (n // len(chips) + 1))[:n]
    pixels = image.reshape(image.shape[0], -1)
    inputs, _ = Normalizer.fit(config.bands, pixels).apply(chips)
    return inputs, torch.tensor(raster["wavelength"].values, dtype=torch.float32)


def measure(depth: int, inputs: torch.Tensor, wavelengths: torch.Tensor, repeats: int) -> dict:
    row = {"llm_layers": depth}
    region = RegionConfig()
    batch = {"image": inputs, "wavelengths": wavelengths}
    for cached in (True, False):
        config = region.model.model_copy(update={"llm_layers": depth, "use_prefix_cache": cached})
        model = AllSpark(config.allspark_config(region.class_names))
        model.eval()
        with torch.no_grad():
            row[f"infer_chips_per_s_{'cached' if cached else 'uncached'}"] = best_rate(
                lambda: model(batch), len(inputs), repeats
            )
    model.train()
    optimizer = torch.optim.AdamW(model.trainable_parameters(), lr=1e-4)
    targets = torch.zeros(len(inputs), 16, 16, dtype=torch.long)

    def train_step():
        loss = model.loss(batch, targets)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    row["train_chips_per_s"] = best_rate(train_step, len(inputs), repeats)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--depths", type=int, nargs="+", default=[30, 8, 4])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.manual_seed(0)
    inputs, wavelengths = demo_chips(RegionConfig(), 32)
    rows = [measure(depth, inputs, wavelengths, args.repeats) for depth in args.depths]
    result = {
        "benchmark": "llm_depth",
        **environment(),
        "settings": {"batch": 32, "chip": "6 bands x 16 x 16", "dtype": "fp32", "repeats": args.repeats},
        "rows": rows,
    }
    table = [
        "| LM layers | inference chips/s (prefix cache) | inference chips/s (no cache) | training chips/s |",
        "|---:|---:|---:|---:|",
        *(f"| {r['llm_layers']} | {r['infer_chips_per_s_cached']:.0f} | {r['infer_chips_per_s_uncached']:.0f} | "
          f"{r['train_chips_per_s']:.0f} |" for r in rows),
    ]
    write_results("llm_depth", result, table)


if __name__ == "__main__":
    main()

"""Throughput of every AllSpark modality, and what the prompt-prefix cache and the adapters cost.

Side by side in one run, at batch 32 on the registry's default encoders and this machine's
device, for the full language model and a truncated one:

- inference samples/s with the prompt's keys and values cached, and without (the speed-up);
- the largest difference between the two paths' outputs (they must agree within 1e-4);
- training samples/s (forward, backward, AdamW step) with adapters and without, and the
  trainable parameter counts, on the truncated LM.

    python -m bench.modalities [--modalities rgb table ...] [--depths 30 4] [--batch 32] [--repeats 2]

Writes bench/results/modalities.json and bench/results/modalities.md.
"""

from __future__ import annotations

import argparse

import torch

from allspark.model import MODALITIES, AllSpark, AllSparkConfig, seed_everything
from allspark.model.llm import load_language_model
from bench.common import best_rate, environment, write_results


def head_output(output) -> torch.Tensor:
    return output["futures"] if isinstance(output, dict) else output


def inference_row(modality: str, depth: int, batch: int, repeats: int) -> dict:
    """Samples/s with and without the prefix cache, and how far their outputs differ."""
    row, outputs = {"modality": modality, "llm_layers": depth}, {}
    for cached in (True, False):
        seed_everything(0)
        model = AllSpark(AllSparkConfig(modality=modality, llm_layers=depth, use_prefix_cache=cached)).eval()
        inputs, _ = model.example_batch(batch, seed=0)
        with torch.no_grad():
            row["cached" if cached else "uncached"] = best_rate(lambda: model(inputs), batch, repeats)
            outputs[cached] = head_output(model(inputs)).float()
    row["speedup"] = row["cached"] / row["uncached"]
    row["max_abs_difference"] = float((outputs[True] - outputs[False]).abs().max())
    print(row, flush=True)
    return row


def training_row(modality: str, depth: int, batch: int, repeats: int) -> dict:
    """Training samples/s and trainable parameters, with adapters (every second layer) and without."""
    row = {"modality": modality, "llm_layers": depth}
    for every in (2, 0):
        seed_everything(0)
        model = AllSpark(AllSparkConfig(modality=modality, llm_layers=depth, adapters={"every": every}))
        inputs, target = model.example_batch(batch, seed=0)
        parameters = [p for p in model.trainable_parameters() if p.requires_grad]
        label = "adapters" if every else "no_adapters"
        row[f"{label}_trainable_parameters"] = sum(p.numel() for p in parameters)
        if not parameters:  # text and code train nothing but their adapters
            row[label] = None
            continue
        optimizer = torch.optim.AdamW(parameters, lr=1e-4)
        model.train()

        def step():
            loss = model.loss(inputs, target)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()

        row[label] = best_rate(step, batch, repeats)
    row["adapter_cost"] = 1 - row["adapters"] / row["no_adapters"] if row["no_adapters"] else None
    print(row, flush=True)
    return row


def _optional(value: float | None, spec: str) -> str:
    return "n/a (nothing else trains)" if value is None else format(value, spec)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--modalities", nargs="+", default=list(MODALITIES), choices=list(MODALITIES))
    parser.add_argument("--depths", type=int, nargs="+", default=[30, 4], help="LM decoder layers (30 = all)")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--quick", action="store_true", help="the shallowest depth only, one repeat")
    args = parser.parse_args()
    if args.quick:
        args.depths, args.repeats = [min(args.depths)], 1
    full_depth = load_language_model("smollm2")[0].config.num_hidden_layers
    shallowest = min(args.depths)
    inference = [inference_row(m, d, args.batch, args.repeats) for d in args.depths for m in args.modalities]
    training = [training_row(m, shallowest, args.batch, args.repeats) for m in args.modalities]
    result = {
        "benchmark": "modalities",
        "title": "Every modality: samples/s with and without the prompt-prefix cache, and the cost of adapters",
        **environment(),
        "settings": {
            "batch": args.batch, "repeats": args.repeats, "llm": "SmolLM2-135M-Instruct",
            "llm_full_depth": full_depth, "dtype": "bf16 autocast" if torch.cuda.is_available() else "fp32",
            "inputs": "each encoder's example_inputs at the registry's default config",
        },
        "inference": inference,
        "training": training,
    }
    table = [
        f"Samples/s at batch {args.batch} ({result['machine']}).",
        "",
        "| modality | LM layers | inference, prefix cache | inference, no cache | cache speed-up | max abs diff |",
        "|---|---:|---:|---:|---:|---:|",
        *(f"| {r['modality']} | {r['llm_layers']} | {r['cached']:.1f} | {r['uncached']:.1f} | {r['speedup']:.2f}x | "
          f"{r['max_abs_difference']:.1e} |" for r in inference),
        "",
        "| modality | LM layers | training, adapters | training, no adapters | adapter cost | "
        "trainable params (adapters) | (no adapters) |",
        "|---|---:|---:|---:|---:|---:|---:|",
        *(f"| {r['modality']} | {r['llm_layers']} | {r['adapters']:.1f} | {_optional(r['no_adapters'], '.1f')} | "
          f"{_optional(r['adapter_cost'], '.0%')} | {r['adapters_trainable_parameters']:,} | "
          f"{r['no_adapters_trainable_parameters']:,} |" for r in training),
    ]
    write_results("modalities", result, table)


if __name__ == "__main__":
    main()

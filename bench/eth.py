"""ETH (ETH/UCY leave-one-scene-out): AllSpark's trajectory path against constant velocity, 8 -> 12 steps.

Trains on the training splits of the other four scenes (hotel, univ, zara1, zara2: the files in
``eth_ucy/eth/train``) and tests on the eth test file, with Social-GAN windows (see
:data:`allspark.trajectories.WINDOW_RULE`). Reports ADE/FDE in metres of the single most likely
future and best-of-20 (min over K, ADE and FDE each on its own), the constant-velocity baseline
on the same windows, the training time, the LM depth, the epochs and the training windows.

The default is a CPU setting that fits about 10 minutes: a seeded subsample of the training
windows, 4 of SmolLM2's 30 layers, 1 epoch at a higher learning rate than the paper's. The
paper's setting is one flag away::

    python -m bench.eth                     # CPU default (~10 min)
    python -m bench.eth --full              # all windows, all LM layers, the paper's 30 epochs at 1e-5
    python -m bench.eth --train-windows 0 --epochs 10 --llm-layers 8   # anything in between
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from allspark import trajectories as tr
from bench.common import environment, write_results

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "eth_ucy" / "eth"
PAPER = {"ade": 0.43, "fde": 0.69, "note": "AllSpark paper, best-of-20 (as TUTR)"}
PAPER_SETTING = {"train_windows": 0, "epochs": 30, "llm_layers": 0, "learning_rate": 1e-5, "warmup_epochs": 5}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DATA, help="the eth leave-one-out folder (train/, test/)")
    parser.add_argument("--train-windows", type=int, default=12000, help="random subsample; 0 = all")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--llm-layers", type=int, default=4, help="0 = all of SmolLM2's 30 layers")
    parser.add_argument("--learning-rate", type=float, default=1e-3)
    parser.add_argument("--warmup-epochs", type=float, default=0.2)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--modes", type=int, default=20)
    parser.add_argument("--positions", action="store_true",
                        help="learn future positions (as TUTR) instead of the offset from constant velocity")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--full", action="store_true", help="the paper's setting: " + str(PAPER_SETTING))
    args = parser.parse_args()
    if args.full:
        for key, value in PAPER_SETTING.items():
            setattr(args, key, value)

    config = tr.TrajectoriesConfig(
        name="bench-eth", train_files=[args.data / "train"], predict_files=[args.data / "test"], seed=args.seed,
        model={"llm_layers": args.llm_layers or None, "modes": args.modes, "predict_residual": not args.positions},
        train={"epochs": args.epochs, "batch_size": args.batch_size, "learning_rate": args.learning_rate,
               "warmup_epochs": args.warmup_epochs, "max_windows": args.train_windows or None},
    )
    started = time.perf_counter()
    ingest = tr.ingest_trajectories(config)
    ingest_seconds = time.perf_counter() - started
    trained = tr.fine_tune_trajectories(config, ingest["stores"]["train"])
    test, _ = tr.read_windows(ingest["stores"]["predict"])
    started = time.perf_counter()
    futures, _ = tr.predict_windows(trained["checkpoint"], test, config.inference_batch)
    inference_seconds = time.perf_counter() - started
    allspark = tr.summarise(tr.displacement_errors(futures, test.future))
    baseline = tr.summarise(tr.displacement_errors(tr.constant_velocity(test.observed, config.future_steps),
                                                   test.future))
    fine_tuning = trained["metrics"]
    depth = args.llm_layers or 30
    result = {
        "benchmark": "eth",
        **environment(),
        "protocol": "ETH/UCY leave-one-scene-out: train eth/train (hotel, univ, zara1, zara2), test eth/test; "
                    "8 observed -> 12 future steps at 2.5 fps; " + tr.WINDOW_RULE,
        "settings": {**vars(args), "data": str(args.data), "paper_setting": PAPER_SETTING,
                     "cpu_reduced": not args.full},
        "counts": ingest["counts"],
        "test_windows": len(test),
        "training": fine_tuning,
        "ingest_seconds": round(ingest_seconds, 1),
        "inference_seconds": round(inference_seconds, 1),
        "allspark": allspark,
        "constant_velocity": {"ade": baseline["ade"], "fde": baseline["fde"]},
        "paper": PAPER,
    }
    setting = (f"LM {depth} layers, {fine_tuning['epochs']} epochs, {fine_tuning['training_windows']} of "
               f"{fine_tuning['available_windows']} training windows, {fine_tuning['training_seconds']:.0f} s training")
    table = [
        f"ETH leave-one-scene-out, 8 -> 12, {len(test)} test windows (metres). {setting}"
        + ("" if args.full else "; CPU-reduced setting, `--full` for the paper's") + ".",
        "",
        "| method | ADE (most likely) | FDE (most likely) | ADE best-of-K | FDE best-of-K | LM layers | training s |",
        "|---|---:|---:|---:|---:|---:|---:|",
        (f"| AllSpark (K={args.modes}, {'positions' if args.positions else 'offset from constant velocity'}) "
         f"| {allspark['ade']:.3f} | {allspark['fde']:.3f} | {allspark['min_ade']:.3f} | "
         f"{allspark['min_fde']:.3f} | {depth} | {fine_tuning['training_seconds']:.0f} |"),
        f"| constant velocity | {baseline['ade']:.3f} | {baseline['fde']:.3f} | - | - | - | 0 |",
        f"| paper AllSpark (best-of-20) | - | - | {PAPER['ade']:.2f} | {PAPER['fde']:.2f} | 32 (Vicuna-7B) | - |",
    ]
    write_results("eth", result, table)


if __name__ == "__main__":
    main()

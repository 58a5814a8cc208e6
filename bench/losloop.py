"""Los-loop week: AllSpark's graph model against last value and historical average, 12 -> 12 steps.

One real week of METR-LA (207 sensors, 2,016 five-minute steps; ../shared/data/traffic_la),
split in time 70/10/20; MAE, RMSE and MAPE (zeros masked) at 15, 30 and 60 minutes on the test
windows. The model is fine-tuned with the traffic flow's own library steps (ingest, fine-tune,
infer). A proxy, not the paper's METR-LA figure. Writes bench/results/losloop.json and .md.

The defaults fit about 10 minutes on a 2-core CPU: 2 SmolLM2 layers, encoder width 32 with one
temporal and one spatial layer, 3 epochs at 1e-3 over every 3rd training window. ``--full`` is
the paper's schedule (10 epochs at 8e-5, 2 warm-up) over every window, with STAEformer's encoder
size (width 152, 3 + 3 layers) and all 30 SmolLM2 layers (the paper's LM is Vicuna-7B). The model
learns the change from each sensor's last observed speed unless ``--absolute`` (STAEformer's
absolute speeds; with the short CPU schedule it stays behind both baselines).

    python -m bench.losloop [--llm-layers 2] [--epochs 3] [--window-stride 3] [--absolute] [--full]
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from allspark.traffic import (
    PROXY_NOTE,
    TrafficConfig,
    infer_traffic,
    ingest_traffic,
    train_traffic,
)
from bench.common import environment, write_results

DATA = Path(os.environ.get("ALLSPARK_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data")) / "traffic_la"
REFERENCES = [
    "AllSpark paper, METR-LA (four months), 60 min: MAE 3.81 / RMSE 7.52 / MAPE 11.24 %",
    "data README, Los-loop week, last value, 60 min: MAE 5.80 / RMSE 10.90 / MAPE 15.7 %",
]
FULL = {"llm_layers": 0, "epochs": 10, "learning_rate": 8e-5, "warmup_epochs": 2.0, "window_stride": 1,
        "width": 152, "temporal_depth": 3, "spatial_depth": 3}


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--llm-layers", type=int, default=2, help="SmolLM2 decoder layers kept; 0 = all 30")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--learning-rate", type=float, default=1e-3)
    parser.add_argument("--warmup-epochs", type=float, default=0.5)
    parser.add_argument("--window-stride", type=int, default=3, help="train on every N-th training window")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--width", type=int, default=32, help="graph encoder width (STAEformer: 152)")
    parser.add_argument("--temporal-depth", type=int, default=1)
    parser.add_argument("--spatial-depth", type=int, default=1)
    parser.add_argument("--start", default="2012-03-05T00:00:00-08:00",
                        help="nominal time of the first row (sets the day of week; the file has no timestamps)")
    parser.add_argument("--absolute", action="store_true",
                        help="learn absolute speeds (STAEformer) instead of the change from the last observed speed")
    parser.add_argument("--full", action="store_true", help="the paper's schedule and STAEformer's size (slow on CPU)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if args.full:
        for key, value in FULL.items():
            setattr(args, key, value)
    return args


def main() -> None:
    args = parse_args()
    config = TrafficConfig(
        name="bench-losloop",
        speeds=DATA / "tgcn_los" / "los_speed.csv",
        adjacency=DATA / "tgcn_los" / "los_adj.csv",
        locations=DATA / "dcrnn_sensor_graph" / "graph_sensor_locations.csv",
        start=args.start,
        model={"llm_layers": args.llm_layers or None, "width": args.width, "temporal_depth": args.temporal_depth,
               "spatial_depth": args.spatial_depth, "predict_change": not args.absolute},
        train={"epochs": args.epochs, "learning_rate": args.learning_rate, "warmup_epochs": args.warmup_epochs,
               "window_stride": args.window_stride, "batch_size": args.batch_size},
        seed=args.seed,
    )
    ingested = ingest_traffic(config)
    trained = train_traffic(config, ingested["store"])
    inferred = infer_traffic(config, ingested["store"], trained["checkpoint"])
    depth = config.model.llm_layers or "all (30)"
    setting = "full (paper schedule, STAEformer size)" if args.full else "CPU (smaller than the paper's)"
    result = {
        "benchmark": "losloop",
        **environment(),
        "note": PROXY_NOTE,
        "references": REFERENCES,
        "setting": setting,
        "protocol": "12 five-minute steps in, 12 out; chronological 70/10/20 split of the week's steps, windows "
                    "wholly inside one part; zeros (missing) masked; historical average = mean training speed "
                    "per sensor and time-of-day slot",
        "config": config.model_dump(mode="json", include={"start", "split", "model", "train", "seed"}),
        "data": ingested | {"test_windows": inferred["test_windows"]},
        "llm_layers": depth,
        "training": {key: trained[key] for key in ("epochs", "train_windows", "validation_windows", "training_seconds")},
        "inference_seconds": inferred["inference_seconds"],
        "metrics": inferred["metrics"],
    }
    names = {"allspark": f"AllSpark graph (LM layers: {depth})", "last_value": "last value",
             "historical_average": "historical average"}
    horizons = ("15 min", "30 min", "60 min")
    target = "learns the change from the last value" if config.model.predict_change else "learns absolute speeds"

    def cell(scores: dict) -> str:
        return f"{scores['mae']:.2f} / {scores['rmse']:.2f} / {scores['mape']:.1f} %"

    table = [
        (f"Los-loop week, 12 -> 12, chronological 70/10/20, {inferred['test_windows']} test windows x "
         f"{ingested['sensors']} sensors; MAE / RMSE / MAPE (mph, zeros masked)."),
        "",
        "| method | " + " | ".join(horizons) + " |",
        "|---|" + "---:|" * len(horizons),
        *(f"| {names[key]} | " + " | ".join(cell(scores[h]) for h in horizons) + " |"
          for key, scores in inferred["metrics"].items()),
        "",
        (f"Setting: {setting}. LM depth: {depth} SmolLM2 layers; encoder width {config.model.width}, "
         f"{config.model.temporal_depth} + {config.model.spatial_depth} layers, {target}; {config.train.epochs} "
         f"epoch(s) at {config.train.learning_rate:g} over {trained['train_windows']} training windows (window "
         f"stride {config.train.window_stride}); training {trained['training_seconds']:.0f} s, inference "
         f"{inferred['inference_seconds']:.0f} s on {result['machine']}. Full setting: `python -m bench.losloop --full`."),
        "",
        f"**{PROXY_NOTE}**",
        "",
        *(f"- Reference: {line}" for line in REFERENCES),
    ]
    write_results("losloop", result, table)


if __name__ == "__main__":
    main()

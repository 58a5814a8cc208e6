"""Los-loop week: AllSpark's graph model against last value and historical average, 12 -> 12 steps.

One real week of METR-LA (207 sensors, 2,016 five-minute steps; ../shared/data/traffic_la),
split in time 70/10/20; MAE, RMSE and MAPE (zeros masked) at 15, 30 and 60 minutes on the test
windows. The model is fine-tuned with the traffic pipeline's own steps (``allspark.traffic.steps``:
ingest, train, predict). A proxy, not the paper's METR-LA figure. Writes bench/results/losloop.json and .md.

The defaults fit about 10 minutes on a 2-core CPU: 2 SmolLM2 layers, encoder width 32 with one
temporal and one spatial layer, 3 epochs at 1e-3 over every 3rd training window. ``--full`` is
the paper's schedule (10 epochs at 8e-5, 2 warm-up) over every window, with STAEformer's encoder
size (width 152, 3 + 3 layers) and all 30 SmolLM2 layers (the paper's LM is Vicuna-7B). The model
sees each sensor's time-of-day profile (fitted on the training part) and learns the change from
the decaying anomaly (:mod:`allspark.traffic.inputs`), which is scored beside it as a baseline of
its own, unless ``--absolute`` (STAEformer's absolute speeds; with the short CPU schedule it stays
behind both baselines).

    python -m bench.losloop [--llm-layers 2] [--epochs 3] [--window-stride 3] [--absolute] [--full]
    python -m bench.losloop --quick     # 1 epoch over every 6th training window (~1 min)

:func:`losloop_config` and :func:`run_allspark` are what the ablation (``bench.ablation``) calls.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from dataclasses import replace
from pathlib import Path

import xarray as xr

from allspark.core.steps import Ingested
from allspark.traffic import steps
from allspark.traffic.config import TrafficConfig
from bench.common import environment, write_results

DATA = Path(os.environ.get("ALLSPARK_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data")) / "traffic_la"
REFERENCES = [
    "AllSpark paper, METR-LA (four months), 60 min: MAE 3.81 / RMSE 7.52 / MAPE 11.24 %",
    "data README, Los-loop week, last value, 60 min: MAE 5.80 / RMSE 10.90 / MAPE 15.7 %",
]
PROXY_NOTE = (
    "Los-loop is one real week of METR-LA (207 sensors, 2,016 five-minute steps): a proxy, not the "
    "paper's METR-LA figure (four months; AllSpark 60 min MAE 3.81 / RMSE 7.52 / MAPE 11.24 %)."
)
DEFAULT = {"llm_layers": 2, "epochs": 3, "learning_rate": 1e-3, "warmup_epochs": 0.5, "window_stride": 3}
"""The CPU headline (what :func:`losloop_config` takes): 2 LM layers, 3 epochs over every 3rd training window."""
QUICK = {"epochs": 1, "window_stride": 6}
FULL = {"llm_layers": 0, "epochs": 10, "learning_rate": 8e-5, "warmup_epochs": 2.0, "window_stride": 1,
        "width": 152, "temporal_depth": 3, "spatial_depth": 3}


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--llm-layers", type=int, default=DEFAULT["llm_layers"],
                        help="SmolLM2 decoder layers kept; 0 = all 30")
    parser.add_argument("--epochs", type=int, default=DEFAULT["epochs"])
    parser.add_argument("--learning-rate", type=float, default=DEFAULT["learning_rate"])
    parser.add_argument("--warmup-epochs", type=float, default=DEFAULT["warmup_epochs"])
    parser.add_argument("--window-stride", type=int, default=DEFAULT["window_stride"],
                        help="train on every N-th training window")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--width", type=int, default=32, help="graph encoder width (STAEformer: 152)")
    parser.add_argument("--temporal-depth", type=int, default=1)
    parser.add_argument("--spatial-depth", type=int, default=1)
    parser.add_argument("--start", default="2012-03-05T00:00:00-08:00",
                        help="nominal time of the first row (sets the day of week; the file has no timestamps)")
    parser.add_argument("--absolute", action="store_true",
                        help="learn absolute speeds (STAEformer) instead of the change from the last observed speed")
    parser.add_argument("--full", action="store_true", help="the paper's schedule and STAEformer's size (slow on CPU)")
    parser.add_argument("--quick", action="store_true", help=f"the quick setting: {QUICK}")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    for flag, setting in (("full", FULL), ("quick", QUICK)):
        if getattr(args, flag):
            for key, value in setting.items():
                setattr(args, key, value)
    return args


def losloop_config(seed: int, llm_layers: int, epochs: int, learning_rate: float, warmup_epochs: float,
                   window_stride: int, batch_size: int = 32, width: int = 32, temporal_depth: int = 1,
                   spatial_depth: int = 1, start: str = "2012-03-05T00:00:00-08:00", absolute: bool = False,
                   language: dict | None = None, name: str = "bench-losloop") -> TrafficConfig:
    """The traffic config of one run on the Los-loop week (``language``: LM overrides; ``llm_layers`` 0 = all)."""
    return TrafficConfig(
        name=name,
        speeds=DATA / "tgcn_los" / "los_speed.csv",
        adjacency=DATA / "tgcn_los" / "los_adj.csv",
        locations=DATA / "dcrnn_sensor_graph" / "graph_sensor_locations.csv",
        start=start,
        model={"width": width, "temporal_depth": temporal_depth, "spatial_depth": spatial_depth,
               "predict_change": not absolute},
        language={"layers": llm_layers or None, **(language or {})},
        train={"epochs": epochs, "learning_rate": learning_rate, "warmup_epochs": warmup_epochs,
               "window_stride": window_stride, "batch_size": batch_size},
        seed=seed,
    )


def run_allspark(config: TrafficConfig, ingested: Ingested, log=print) -> dict:
    """Fine-tune a fresh graph model on the ingested week; score it and both baselines on the test windows.

    The model and its forecasts live in a temporary folder, removed afterwards: every run trains
    anew, and the ablation's many runs leave nothing behind.
    """
    with tempfile.TemporaryDirectory(prefix="bench-losloop-") as scratch:
        run = replace(ingested, work_dir=Path(scratch))
        trained = steps.train(config, run, log=log)
        predicted = steps.predict(config, run, trained)
        metrics = json.loads(xr.open_zarr(predicted.store, consolidated=False, zarr_format=3).attrs["metrics"])
    return {"trained": trained.metrics, "metrics": metrics, "test_windows": predicted.summary["test_windows"],
            "inference_seconds": predicted.summary["inference_seconds"]}


def main() -> None:
    args = parse_args()
    config = losloop_config(args.seed, args.llm_layers, args.epochs, args.learning_rate, args.warmup_epochs,
                            args.window_stride, args.batch_size, args.width, args.temporal_depth, args.spatial_depth,
                            args.start, args.absolute)
    ingested = steps.ingest(config)
    inferred = run_allspark(config, ingested)
    trained = inferred.pop("trained")
    depth = config.language.layers or "all (30)"
    setting = ("full (paper schedule, STAEformer size)" if args.full else
               "quick (smaller than the CPU default)" if args.quick else "CPU (smaller than the paper's)")
    metrics = inferred["metrics"]
    hour = {name: scores["60 min"] for name, scores in metrics.items()}
    best_baseline = min(("last_value", "historical_average"), key=lambda name: hour[name]["mae"])
    gap = hour["allspark"]["mae"] - hour[best_baseline]["mae"]
    result = {
        "benchmark": "losloop",
        "title": "Los-loop week (METR-LA proxy), 12 -> 12 speeds: AllSpark's graph path vs last value and "
                 "historical average",
        **environment(),
        "settings": {**vars(args), "llm_layers": depth},
        "note": PROXY_NOTE,
        "references": REFERENCES,
        "setting": setting,
        "protocol": "12 five-minute steps in, 12 out; chronological 70/10/20 split of the week's steps, windows "
                    "wholly inside one part; zeros (missing) masked; historical average = mean training speed "
                    "per sensor and time-of-day slot",
        "config": config.model_dump(mode="json", include={"start", "split", "model", "language", "train", "seed"}),
        "data": dict(ingested.summary) | {"test_windows": inferred["test_windows"]},
        "llm_layers": depth,
        "training": {key: trained[key] for key in ("epochs", "best_epoch", "train_windows", "validation_windows",
                                                   "training_seconds")},
        "inference_seconds": inferred["inference_seconds"],
        "metrics": metrics,
        "notes": [
            (f"60 min MAE: AllSpark {hour['allspark']['mae']:.2f} vs the best baseline "
             f"({best_baseline.replace('_', ' ')}) {hour[best_baseline]['mae']:.2f} ({gap:+.2f} mph)."),
            *([f"What the learned model adds over its own reference (the decaying anomaly, "
               f"{hour['decaying_anomaly']['mae']:.2f}): {hour['decaying_anomaly']['mae'] - hour['allspark']['mae']:+.2f} "
               "mph of 60 min MAE."] if "decaying_anomaly" in hour else []),
            ("No paper figure on this data: the paper's METR-LA 60 min MAE 3.81 is on four months of 207 sensors, "
             "this is one week (a proxy, not comparable)."),
            (f"Budget: {depth} SmolLM2 layers, {config.train.epochs} epoch(s) over {trained['train_windows']} windows "
             f"(window stride {config.train.window_stride}); the paper: 10 epochs at 8e-5 through Vicuna-7B with "
             "STAEformer's encoder size (`--full`)."),
        ],
    }
    names = {"allspark": f"AllSpark graph (LM layers: {depth})", "last_value": "last value",
             "historical_average": "historical average",
             "decaying_anomaly": "decaying anomaly (profile + fitted decay of the last deviation: the model's reference)"}
    horizons = ("15 min", "30 min", "60 min")
    target = ("learns the change from the decaying anomaly" if config.model.predict_change and config.model.use_profile
              else "learns the change from the last value" if config.model.predict_change else "learns absolute speeds")

    def cell(scores: dict) -> str:
        return f"{scores['mae']:.2f} / {scores['rmse']:.2f} / {scores['mape']:.1f} %"

    table = [
        (f"Los-loop week, 12 -> 12, chronological 70/10/20, {inferred['test_windows']} test windows x "
         f"{ingested.summary['sensors']} sensors; MAE / RMSE / MAPE (mph, zeros masked)."),
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

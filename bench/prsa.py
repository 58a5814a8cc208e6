"""PRSA Beijing PM2.5: AllSpark's table path against gradient-boosted trees, random and chronological splits.

Predict PM2.5 from time (year, month, hour, weekday), station, SO2, NO2, CO, O3 and the six
weather variables (TEMP, PRES, DEWP, RAIN, wd, WSPM); no PM10. 40 % trains, 60 % tests:

- ``random``: a seeded 40/60 row split, the paper's setting (AllSpark: RMSE 29.03 / MAE 18.04 /
  R2 0.87). The neighbouring hours of every test row are in training, so it is easy.
- ``chronological``: the first 40 % of the hours train, the rest test (no leakage across time).

Baseline in the same run: sklearn's HistGradientBoostingRegressor on the same features (station
and wind direction as categories), once on the same training subsample as AllSpark and once on
every training row. Rows without PM2.5 are neither trained on nor scored.

CPU forces a smaller setting than the paper's (30 epochs at lr 2e-5 over all 168k training rows,
the full SmolLM2): by default AllSpark fine-tunes 1 epoch on a seeded subsample of training rows
with the first 2 LM layers, and is scored on a seeded subsample of test rows (the baselines on
the same subsample too). The full setting is one option away:

    python -m bench.prsa                                   # CPU default, about 10 minutes
    python -m bench.prsa --quick                           # random split only, 1,000 training / test rows
    python -m bench.prsa --train-rows 0 --test-rows 0 --epochs 30 --llm-layers 0 --lr 2e-5   # paper-sized

Writes bench/results/prsa.json and prsa.md. :func:`make_split`, :func:`run_allspark` and
:func:`run_baselines` are what the ablation (``bench.ablation``) calls.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from sklearn.ensemble import HistGradientBoostingRegressor

from allspark.core.config import LanguageModelSettings
from allspark.sensors.config import SensorModelConfig, SensorsConfig, SensorsTrainSettings
from allspark.sensors.inputs import (
    CONTINUOUS_FEATURES,
    SensorPreprocessing,
    feature_columns,
    fit_table_model,
    predict_pm25,
    regression_metrics,
    split_rows,
    training_rows,
)
from allspark.sensors.read import TARGET, read_locations, read_station_table
from bench.common import environment, write_results

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "prsa_beijing"
PAPER = {"rmse": 29.03, "mae": 18.04, "r2": 0.87}
QUICK_SETTING = {"splits": ["random"], "train_rows": 1000, "test_rows": 1000}


def load_prsa(data: Path) -> tuple[pd.DataFrame, list[str]]:
    """Every station table in ``data``, checked, and the station order of the locations file."""
    stations = read_locations("prsa_stations")["station"].tolist()
    files = sorted(data.glob("PRSA_Data_*.csv"))
    if not files:
        raise SystemExit(f"no PRSA_Data_*.csv in {data} (the real data lives in ../shared/data)")
    return pd.concat([read_station_table(f, stations) for f in files], ignore_index=True), stations


def gbt_fit_predict(frame: pd.DataFrame, stations: list[str], train: np.ndarray, test: np.ndarray,
                    iterations: int, seed: int) -> tuple[np.ndarray, float]:
    """Gradient-boosted trees on the raw features; test predictions and training seconds."""
    continuous, categorical = feature_columns(frame, stations)
    features = np.concatenate([continuous, np.where(categorical < 0, np.nan, categorical)], axis=1)
    is_category = [False] * len(CONTINUOUS_FEATURES) + [True, True, False, False, False]  # station, wd
    model = HistGradientBoostingRegressor(max_iter=iterations, categorical_features=is_category, random_state=seed)
    started = time.perf_counter()
    model.fit(features[train], frame[TARGET].to_numpy()[train])
    return model.predict(features[test]), time.perf_counter() - started


def subsample(rows: np.ndarray, limit: int, seed: int) -> np.ndarray:
    if limit and len(rows) > limit:
        return np.sort(np.random.default_rng(seed).choice(rows, limit, replace=False))
    return rows


@dataclass
class Split:
    """One split of the PRSA rows: AllSpark's training and test rows, every training/test row, the preprocessing."""

    rule: str
    train: np.ndarray
    test: np.ndarray
    train_all: np.ndarray
    test_all: np.ndarray
    preprocessing: SensorPreprocessing


def make_split(frame: pd.DataFrame, stations: list[str], rule: str, train_rows: int, test_rows: int,
               seed: int) -> Split:
    """The 40/60 split and the seeded subsamples (0 = every row) AllSpark trains and is scored on."""
    is_train = split_rows(frame, rule, 0.4, seed)
    observed = frame[TARGET].to_numpy()
    train_all = np.flatnonzero(is_train & np.isfinite(observed))
    test_all = np.flatnonzero(~is_train & np.isfinite(observed))
    return Split(rule, training_rows(frame, is_train, train_rows or None, seed), subsample(test_all, test_rows, seed + 1),
                 train_all, test_all, SensorPreprocessing.fit(frame[is_train], stations))


def run_allspark(frame: pd.DataFrame, split: Split, seed: int, epochs: int, lr: float, llm_layers: int,
                 batch_size: int = 64, inference_batch: int = 256, language: dict | None = None, log=print) -> dict:
    """Fine-tune a fresh table model (seeded) on ``split.train``; RMSE/MAE/R2 on ``split.test``.

    ``language``: overrides of :class:`LanguageModelSettings` (the ablation's switches); ``llm_layers`` 0 = all 30.
    """
    settings = LanguageModelSettings(layers=llm_layers or None, **(language or {}))
    train = SensorsTrainSettings(**SensorsConfig.block_defaults["train"] | {"epochs": epochs, "batch_size": batch_size,
                                                                          "learning_rate": lr})
    network, summary = fit_table_model(SensorModelConfig(), settings, train, frame, split.train, split.preprocessing,
                                       seed, log)
    started = time.perf_counter()
    predicted = predict_pm25(network, split.preprocessing, frame.iloc[split.test], inference_batch)
    return {"train_rows": len(split.train), "train_seconds": summary["train_seconds"],
            "infer_seconds": round(time.perf_counter() - started, 1),
            **regression_metrics(frame[TARGET].to_numpy()[split.test], predicted)}


def run_baselines(frame: pd.DataFrame, stations: list[str], split: Split, iterations: int, seed: int) -> dict:
    """Gradient-boosted trees on AllSpark's training rows (scored on its test rows), and on every row."""
    observed = frame[TARGET].to_numpy()
    results = {}
    for name, rows, scored in (("GBT, same training rows", split.train, split.test),
                               ("GBT, every training row", split.train_all, split.test_all)):
        predicted, seconds = gbt_fit_predict(frame, stations, rows, scored, iterations, seed)
        results[name] = {"train_rows": len(rows), "train_seconds": round(seconds, 1),
                         **regression_metrics(observed[scored], predicted)}
    return results


def run_split(frame, stations, rule: str, args) -> list[dict]:
    split = make_split(frame, stations, rule, args.train_rows, args.test_rows, args.seed)
    allspark = run_allspark(frame, split, args.seed, args.epochs, args.lr, args.llm_layers, args.batch_size,
                            args.inference_batch)
    depth = args.llm_layers or "all (30)"
    return [{"split": rule, "model": "AllSpark table", "llm_layers": depth, "epochs": args.epochs, **allspark},
            *({"split": rule, "model": name, "llm_layers": "-", "epochs": "-", **row}
              for name, row in run_baselines(frame, stations, split, args.gbt_iterations, args.seed).items())]


def notes(rows: list[dict], args) -> list[str]:
    """Goal met or missed, by how much, and what holds AllSpark back, per split."""
    lines = []
    for rule in args.splits:
        ours = next(r for r in rows if r["split"] == rule and r["model"] == "AllSpark table")
        trees = next(r for r in rows if r["split"] == rule and r["model"] == "GBT, every training row")
        line = (f"{rule}: AllSpark RMSE {ours['rmse']:.2f} vs trees on every row {trees['rmse']:.2f} "
                f"({ours['rmse'] - trees['rmse']:+.2f})")
        if rule == "random":
            line += f"; the paper's AllSpark: {PAPER['rmse']} ({ours['rmse'] - PAPER['rmse']:+.2f} here)"
        lines.append(line + ".")
    depth = args.llm_layers or 30
    lines.append(f"Budget: {args.train_rows or 'every'} training rows, {args.epochs} epoch(s), {depth} of SmolLM2's "
                 "30 layers; the paper: every training row, 30 epochs at 2e-5, Vicuna-7B. The gap to the "
                 "paper's figure is at least partly this budget.")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--splits", nargs="+", default=["random", "chronological"], choices=["random", "chronological"])
    parser.add_argument("--train-rows", type=int, default=4000, help="AllSpark training subsample; 0 = every row")
    parser.add_argument("--test-rows", type=int, default=4000, help="test rows scored for AllSpark; 0 = every row")
    parser.add_argument("--epochs", type=int, default=1, help="paper: 30")
    parser.add_argument("--llm-layers", type=int, default=2, help="first N SmolLM2 layers; 0 = all 30 (paper)")
    parser.add_argument("--lr", type=float, default=1e-3, help="paper: 2e-5 (over 30 epochs)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--inference-batch", type=int, default=256)
    parser.add_argument("--gbt-iterations", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="the quick setting: " + str(QUICK_SETTING))
    args = parser.parse_args()
    if args.quick:
        for key, value in QUICK_SETTING.items():
            setattr(args, key, value)

    torch.manual_seed(args.seed)
    frame, stations = load_prsa(args.data)
    rows = [row for rule in args.splits for row in run_split(frame, stations, rule, args)]
    result = {"benchmark": "prsa", "title": "PRSA Beijing PM2.5 (40/60): AllSpark's table path vs gradient-boosted trees",
              **environment(), "settings": vars(args) | {"data": str(args.data)},
              "stations": sorted(frame["station"].unique().tolist()), "rows": len(frame),
              "paper_allspark_random_40_60": PAPER, "results": rows, "notes": notes(rows, args)}
    table = [
        "| split | model | LM layers | epochs | train rows | test rows | RMSE | MAE | R2 | train s |",
        "|---|---|---|---|---|---|---|---|---|---|",
        *(f"| {r['split']} | {r['model']} | {r['llm_layers']} | {r['epochs']} | {r['train_rows']} | {r['rows']} | "
          f"{r['rmse']:.2f} | {r['mae']:.2f} | {r['r2']:.3f} | {r['train_seconds']} |" for r in rows),
        (f"| random | paper AllSpark | 32 (Vicuna-7B) | 30 | all (40 %) | all (60 %) | {PAPER['rmse']:.2f} | {PAPER['mae']:.2f} | "
         f"{PAPER['r2']:.2f} | - |"),
        "",
        (f"Paper (AllSpark, random 40/60, full LM, 30 epochs): RMSE {PAPER['rmse']} / MAE {PAPER['mae']} / "
         f"R2 {PAPER['r2']}. PRSA {len(frame)} rows, {len(result['stations'])} of the 12 stations; rows without "
         "PM2.5 are not trained on nor scored. AllSpark here: CPU setting (training and test subsamples, "
         f"{args.epochs} epoch(s), {args.llm_layers or 'all'} LM layers); see `python -m bench.prsa --help` for the full one."),
    ]
    write_results("prsa", result, table)


if __name__ == "__main__":
    main()

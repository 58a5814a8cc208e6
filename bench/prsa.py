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
    python -m bench.prsa --train-rows 0 --test-rows 0 --epochs 30 --llm-layers 0 --lr 2e-5   # paper-sized

Writes bench/results/prsa.json and prsa.md.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from sklearn.ensemble import HistGradientBoostingRegressor

from allspark.sensors import (
    CONTINUOUS_FEATURES,
    TARGET,
    FeatureScaling,
    SensorModelConfig,
    SensorTrainConfig,
    feature_columns,
    fit_table_model,
    predict_pm25,
    read_locations,
    read_station_table,
    regression_metrics,
    split_rows,
    training_rows,
)
from bench.common import environment, write_results

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "prsa_beijing"
PAPER = {"rmse": 29.03, "mae": 18.04, "r2": 0.87}


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


def run_split(frame, stations, rule: str, args) -> list[dict]:
    is_train = split_rows(frame, rule, 0.4, args.seed)
    observed = frame[TARGET].to_numpy()
    train_all = np.flatnonzero(is_train & np.isfinite(observed))
    test_all = np.flatnonzero(~is_train & np.isfinite(observed))
    train = training_rows(frame, is_train, args.train_rows or None, args.seed)
    test = subsample(test_all, args.test_rows, args.seed + 1)
    model_config = SensorModelConfig(llm_layers=args.llm_layers or None)
    train_config = SensorTrainConfig(epochs=args.epochs, batch_size=args.batch_size, learning_rate=args.lr,
                                     max_train_rows=args.train_rows or None)
    scaling = FeatureScaling.fit(frame[is_train], stations)
    model, summary = fit_table_model(model_config, train_config, frame, train, scaling, args.seed)
    started = time.perf_counter()
    predicted = predict_pm25(model, scaling, frame.iloc[test], args.inference_batch)
    infer_seconds = time.perf_counter() - started
    del model
    depth = args.llm_layers or "all (30)"
    results = [{
        "split": rule, "model": "AllSpark table", "llm_layers": depth, "epochs": args.epochs,
        "train_rows": len(train), "train_seconds": summary["train_seconds"], "infer_seconds": round(infer_seconds, 1),
        **regression_metrics(observed[test], predicted),
    }]
    for name, rows, scored in (("GBT, same training rows", train, test), ("GBT, every training row", train_all, test_all)):
        predicted, seconds = gbt_fit_predict(frame, stations, rows, scored, args.gbt_iterations, args.seed)
        results.append({"split": rule, "model": name, "llm_layers": "-", "epochs": "-", "train_rows": len(rows),
                        "train_seconds": round(seconds, 1), **regression_metrics(observed[scored], predicted)})
    return results


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
    args = parser.parse_args()

    torch.manual_seed(args.seed)
    frame, stations = load_prsa(args.data)
    rows = [row for rule in args.splits for row in run_split(frame, stations, rule, args)]
    result = {"environment": environment(), "settings": vars(args) | {"data": str(args.data)},
              "stations": sorted(frame["station"].unique().tolist()), "rows": len(frame),
              "paper_allspark_random_40_60": PAPER, "results": rows}
    table = [
        "| split | model | LM layers | epochs | train rows | test rows | RMSE | MAE | R2 | train s |",
        "|---|---|---|---|---|---|---|---|---|---|",
        *(f"| {r['split']} | {r['model']} | {r['llm_layers']} | {r['epochs']} | {r['train_rows']} | {r['rows']} | "
          f"{r['rmse']:.2f} | {r['mae']:.2f} | {r['r2']:.3f} | {r['train_seconds']} |" for r in rows),
        "",
        (f"Paper (AllSpark, random 40/60, full LM, 30 epochs): RMSE {PAPER['rmse']} / MAE {PAPER['mae']} / "
         f"R2 {PAPER['r2']}. PRSA {len(frame)} rows, {len(result['stations'])} of the 12 stations; rows without "
         "PM2.5 are not trained on nor scored. AllSpark here: CPU setting (training and test subsamples, "
         f"{args.epochs} epoch(s), {args.llm_layers or 'all'} LM layers); see `python -m bench.prsa --help` for the full one."),
    ]
    write_results("prsa", result, table)


if __name__ == "__main__":
    main()

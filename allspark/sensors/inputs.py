"""From stored station-hour rows to model inputs and back: features, splits, fitting, prediction, metrics.

The model predicts PM2.5 from time (year, month, hour, weekday), station, SO2, NO2, CO, O3 and
the six weather variables (TEMP, PRES, DEWP, RAIN, wd, WSPM); PM10 is left out (it nearly equals
PM2.5 and would leak it). Continuous columns are standardised with training-split statistics,
which with the station order are the bundle's :class:`SensorPreprocessing`; missing cells stay
missing (NaN, -1) for the encoder's learned *missing* embeddings. Rows without an observed PM2.5
are never trained on nor scored.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import geopandas as gpd
import numpy as np
import pandas as pd
import torch
from pydantic import BaseModel, ConfigDict

from allspark.core.config import LanguageModelSettings
from allspark.core.steps import Log
from allspark.sensors.config import SensorModelConfig, SensorsTrainSettings
from allspark.sensors.read import LOCATIONS_CRS, TARGET, WIND_DIRECTIONS

CONTINUOUS_FEATURES = ("year", "SO2", "NO2", "CO", "O3", "TEMP", "PRES", "DEWP", "RAIN", "WSPM")
"""Continuous inputs, in encoder order (no PM10: it would leak the target)."""
CATEGORICAL_FEATURES = ("station", "wd", "month", "hour", "weekday")
"""Categorical inputs, in encoder order; station's cardinality is the number of known stations."""


def feature_columns(frame: pd.DataFrame, stations: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """Raw continuous ``(N, 10)`` float (NaN = missing) and categorical ``(N, 5)`` int (-1 = missing) features."""
    continuous = frame[list(CONTINUOUS_FEATURES)].to_numpy(dtype="float64")
    wind = pd.Categorical(frame["wd"], categories=WIND_DIRECTIONS).codes
    station = pd.Categorical(frame["station"], categories=list(stations)).codes
    local = frame["timestamp"]
    categorical = np.stack(
        [station, wind, local.dt.month - 1, local.dt.hour, local.dt.weekday], axis=1
    ).astype("int64")
    return continuous, categorical


class SensorPreprocessing(BaseModel):
    """Station order and the training split's per-column mean and std: the model bundle's preprocessing."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    stations: list[str]
    mean: list[float]
    std: list[float]

    @classmethod
    def fit(cls, frame: pd.DataFrame, stations: Sequence[str]) -> SensorPreprocessing:
        continuous, _ = feature_columns(frame, stations)
        mean, std = np.nanmean(continuous, axis=0), np.nanstd(continuous, axis=0)
        return cls(stations=list(stations), mean=np.nan_to_num(mean).tolist(),
                   std=np.where(np.nan_to_num(std) > 0, std, 1.0).tolist())

    def inputs(self, frame: pd.DataFrame) -> dict[str, torch.Tensor]:
        """The table encoder's inputs: standardised ``continuous`` (NaN kept) and ``categorical``."""
        continuous, categorical = feature_columns(frame, self.stations)
        standardised = (continuous - np.asarray(self.mean)) / np.asarray(self.std)
        return {
            "continuous": torch.from_numpy(standardised.astype("float32")),
            "categorical": torch.from_numpy(categorical),
        }


def split_rows(frame: pd.DataFrame, rule: str, train_fraction: float, seed: int) -> np.ndarray:
    """Boolean training mask: a seeded random share of rows, or the first share of the hours."""
    if rule == "random":
        order = np.random.default_rng(seed).permutation(len(frame))
        train = np.zeros(len(frame), dtype=bool)
        train[order[: round(train_fraction * len(frame))]] = True
        return train
    hours = np.sort(frame["timestamp"].unique())
    cutoff = hours[min(len(hours) - 1, max(1, round(train_fraction * len(hours))))]
    return (frame["timestamp"] < cutoff).to_numpy()


def training_rows(frame: pd.DataFrame, is_train: np.ndarray, max_rows: int | None, seed: int) -> np.ndarray:
    """Indices of training rows with an observed PM2.5, subsampled (seeded) to ``max_rows``."""
    rows = np.flatnonzero(is_train & frame[TARGET].notna().to_numpy())
    if max_rows is not None and len(rows) > max_rows:
        rows = np.sort(np.random.default_rng(seed).choice(rows, max_rows, replace=False))
    return rows


def regression_metrics(observed: np.ndarray, predicted: np.ndarray) -> dict:
    """RMSE, MAE and R2 over rows with an observation (NaN observations are left out)."""
    known = np.isfinite(observed)
    error = predicted[known] - observed[known]
    if not known.any():
        return {"rows": 0, "rmse": None, "mae": None, "r2": None}
    spread = ((observed[known] - observed[known].mean()) ** 2).sum()
    return {
        "rows": int(known.sum()),
        "rmse": float(np.sqrt((error**2).mean())),
        "mae": float(np.abs(error).mean()),
        "r2": float(1 - (error**2).sum() / spread) if spread > 0 else None,
    }


def fit_table_model(
    model_config: SensorModelConfig,
    language: LanguageModelSettings,
    train: SensorsTrainSettings,
    frame: pd.DataFrame,
    rows: np.ndarray,
    preprocessing: SensorPreprocessing,
    seed: int,
    log: Log = print,
):
    """Build AllSpark's table model and fine-tune it on ``frame.iloc[rows]``; return it and a summary."""
    from allspark.model import AllSpark, Trainer, seed_everything

    generator = seed_everything(seed)
    model = AllSpark(model_config.allspark_config(language, len(preprocessing.stations)))
    rows_frame = frame.iloc[rows]
    inputs = preprocessing.inputs(rows_frame)
    targets = torch.tensor(rows_frame[TARGET].to_numpy(dtype="float32"))[:, None]
    model.head.scaling.fit(targets)
    batches = math.ceil(len(rows) / train.batch_size)
    history = Trainer(model, train.schedule(), batches).fit(
        len(rows), lambda batch: ({name: value[batch] for name, value in inputs.items()}, targets[batch]),
        train.batch_size, generator, log,
    )
    return model, {
        "train_rows_used": len(rows),
        "epochs": train.epochs,
        "epoch_losses": [epoch["loss"] for epoch in history["epochs"]],
        "train_seconds": history["seconds"],
        "llm_layers": language.layers,
    }


def predict_pm25(model, preprocessing: SensorPreprocessing, frame: pd.DataFrame, batch_size: int) -> np.ndarray:
    """Predicted PM2.5 for every row of ``frame`` (µg/m³)."""
    inputs = preprocessing.inputs(frame)
    out = [
        model.predict({name: value[start : start + batch_size] for name, value in inputs.items()})[:, 0].cpu()
        for start in range(0, len(frame), batch_size)
    ]
    return torch.cat(out).numpy().astype("float64") if out else np.zeros(0)


def prediction_frame(
    frame: pd.DataFrame, predicted: np.ndarray, is_train: np.ndarray, trained_on: np.ndarray,
    locations: gpd.GeoDataFrame,
) -> gpd.GeoDataFrame:
    """One point per station and hour: observed and predicted PM2.5 and the row's split."""
    points = locations.set_index("station").geometry
    return gpd.GeoDataFrame(
        {
            "station": frame["station"].to_numpy(),
            "timestamp": frame["timestamp"].array,
            "pm25_observed": frame[TARGET].to_numpy(dtype="float64"),
            "pm25_predicted": predicted,
            "split": np.where(is_train, "train", "test"),
            "trained_on": trained_on,
        },
        geometry=points.loc[frame["station"]].to_numpy(),
        crs=LOCATIONS_CRS,
    )

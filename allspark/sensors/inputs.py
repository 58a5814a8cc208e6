"""From stored station rows to model inputs and back: features, forecasts, splits, baselines, fitting, metrics.

A model row is one station at one *target time* T. It reads what is known at the *issue time*
T - horizon steps:

- the table's continuous and categorical feature columns at the issue time (with horizon 0,
  the row's own columns: same-time estimation);
- the last ``history`` values of each target, up to the issue time (with horizon 0, before T);
- the calendar of T (hour, weekday, month...: known in advance);
- the station: its longitude, latitude and static attributes (so a station never seen in
  training is predicted from where it is), and optionally its id embedding (an unknown station
  gets the encoder's *missing* id, which training learns by hiding the id of a share of rows).

Continuous inputs are standardised with training-split statistics; missing cells stay missing
(NaN, -1) for the encoder's learned *missing* embeddings. Rows without any observed target are
never trained on nor scored. Two baselines come from the same rows: *persistence* (the last value
known at the issue time) and the *seasonal mean* (the training mean of the station at that hour
of day and weekday).
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
from allspark.core.tables import TIME_FEATURE_SIZES, TIMESTAMP, calendar_features
from allspark.model.encoders.table import MISSING_CATEGORY
from allspark.sensors.config import SensorModelConfig, SensorsConfig, SensorsTrainSettings

LOCATION_FEATURES = ("longitude", "latitude")


def value_before(frame: pd.DataFrame, id_column: str, columns: Sequence[str], steps: int,
                 step: pd.Timedelta) -> pd.DataFrame:
    """``columns`` of the same station ``steps`` steps before each row's time (NaN where that row is absent)."""
    values = frame[list(columns)].copy()
    if steps == 0:
        return values.reset_index(drop=True)
    values.index = pd.MultiIndex.from_arrays([frame[id_column].to_numpy(), frame[TIMESTAMP] + steps * step])
    wanted = pd.MultiIndex.from_arrays([frame[id_column].to_numpy(), frame[TIMESTAMP]])
    return values.reindex(wanted).reset_index(drop=True)


def with_forecast_rows(frame: pd.DataFrame, id_column: str, horizon: int, step: pd.Timedelta) -> pd.DataFrame:
    """The rows plus, per station, the ``horizon`` target times after its last row (the forecast to publish)."""
    if horizon == 0:
        return frame
    last = frame.groupby(id_column, sort=True)[TIMESTAMP].max().repeat(horizon)
    ahead = pd.Series(np.tile(np.arange(1, horizon + 1), len(last) // horizon)) * step
    future = pd.DataFrame({id_column: last.index.to_numpy(), TIMESTAMP: last.reset_index(drop=True) + ahead})
    return pd.concat([frame, future], ignore_index=True)


class SensorPreprocessing(BaseModel):
    """What turns stored rows into model inputs, fitted on the training split: the model bundle's preprocessing.

    Holds the columns and their order, the categories seen in training, the training stations
    (the id vocabulary) and the mean and std of every continuous input.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)
    id_column: str
    targets: list[str]
    continuous: list[str]
    categories: dict[str, list[str]]
    static: list[str]
    time_features: list[str]
    horizon: int
    history: int
    step: str
    stations: list[str]
    use_location: bool
    use_station_id: bool
    predict_change: bool
    target_mean: list[float]
    mean: list[float]
    std: list[float]

    @property
    def step_delta(self) -> pd.Timedelta:
        return pd.Timedelta(pd.tseries.frequencies.to_offset(self.step))

    def lag_names(self) -> list[str]:
        """The target-history inputs, e.g. ``PM2.5@-1``: the value that many steps before the target time."""
        first = max(self.horizon, 1)
        return [f"{target}@-{first + lag}" for target in self.targets for lag in range(self.history)]

    def continuous_inputs(self) -> list[str]:
        """Every continuous input in encoder order: feature columns, target history, station description."""
        station = [*LOCATION_FEATURES, *self.static] if self.use_location else []
        return [*self.continuous, *self.lag_names(), *station]

    def categorical_inputs(self) -> list[str]:
        """Every categorical input in encoder order: station id, category columns, calendar of the target time."""
        return [*(["station"] if self.use_station_id else []), *self.categories, *self.time_features]

    def cardinalities(self) -> list[int]:
        return [*([len(self.stations)] if self.use_station_id else []),
                *(max(1, len(values)) for values in self.categories.values()),
                *(TIME_FEATURE_SIZES[name] for name in self.time_features)]

    @classmethod
    def fit(cls, config: SensorsConfig, frame: pd.DataFrame, places: pd.DataFrame,
            is_train: np.ndarray) -> SensorPreprocessing:
        """Categories, stations and scaling from the training rows of ``frame``."""
        schema = config.table
        training = frame[is_train]
        target_mean = training[schema.targets].mean().fillna(0.0).tolist()
        unfitted = cls(
            id_column=schema.id, targets=schema.targets, continuous=schema.continuous,
            categories={c: sorted(training[c].dropna().astype(str).unique().tolist()) for c in schema.categorical},
            static=config.static_attributes(), time_features=list(config.time_features), horizon=config.horizon,
            history=config.history, step=schema.time.step, stations=sorted(training[schema.id].unique().tolist()),
            use_location=config.model.use_location, use_station_id=config.model.use_station_id,
            predict_change=config.model.predict_change and config.history > 0, target_mean=target_mean, mean=[], std=[],
        )
        continuous, _ = unfitted.raw_inputs(frame, places)
        mean, std = np.nanmean(continuous[is_train], axis=0), np.nanstd(continuous[is_train], axis=0)
        return unfitted.model_copy(update={"mean": np.nan_to_num(mean).tolist(),
                                           "std": np.where(np.nan_to_num(std) > 0, std, 1.0).tolist()})

    def raw_inputs(self, frame: pd.DataFrame, places: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
        """Continuous ``(N, C)`` float (NaN = missing) and categorical ``(N, K)`` int (-1 = missing), unscaled."""
        step, lead = self.step_delta, self.horizon
        known = value_before(frame, self.id_column, [*self.continuous, *self.categories], lead, step)
        history = [value_before(frame, self.id_column, [target], max(lead, 1) + lag, step)[target].to_numpy()
                   for target in self.targets for lag in range(self.history)]
        station_rows = places.reindex(frame[self.id_column].to_numpy())
        described = [station_rows[c].to_numpy() for c in ([*LOCATION_FEATURES, *self.static] if self.use_location else [])]
        continuous = np.column_stack([known[c].to_numpy("float64") for c in self.continuous] + history + described) \
            if self.continuous_inputs() else np.zeros((len(frame), 0))
        codes = [pd.Categorical(known[c], categories=values).codes for c, values in self.categories.items()]
        if self.use_station_id:
            codes.insert(0, pd.Categorical(frame[self.id_column], categories=self.stations).codes)
        calendar = calendar_features(frame[TIMESTAMP], self.time_features)
        categorical = np.column_stack([*codes, calendar]) if codes else calendar
        return continuous.astype("float64"), categorical.astype("int64")

    def base(self, frame: pd.DataFrame) -> np.ndarray:
        """``(N, targets)`` values the model's answer is added to: with ``predict_change``, each target's last
        known value (the training mean where it is missing), else zeros."""
        if not self.predict_change:
            return np.zeros((len(frame), len(self.targets)))
        last = persistence(frame, self).to_numpy("float64")
        return np.where(np.isfinite(last), last, np.asarray(self.target_mean))

    def inputs(self, frame: pd.DataFrame, places: pd.DataFrame) -> dict[str, torch.Tensor]:
        """The table encoder's inputs: standardised ``continuous`` (NaN kept) and ``categorical``."""
        continuous, categorical = self.raw_inputs(frame, places)
        standardised = (continuous - np.asarray(self.mean)) / np.asarray(self.std)
        return {"continuous": torch.from_numpy(standardised.astype("float32")),
                "categorical": torch.from_numpy(categorical)}


def split_rows(frame: pd.DataFrame, id_column: str, rule: str, train_fraction: float, test_stations: Sequence[str],
               seed: int) -> np.ndarray:
    """Boolean training mask: a seeded random share of rows, or the first share of the times; never a test station."""
    if rule == "random":
        order = np.random.default_rng(seed).permutation(len(frame))
        train = np.zeros(len(frame), dtype=bool)
        train[order[: round(train_fraction * len(frame))]] = True
    else:
        times = np.sort(frame[TIMESTAMP].unique())
        cutoff = times[min(len(times) - 1, max(1, round(train_fraction * len(times))))]
        train = (frame[TIMESTAMP] < cutoff).to_numpy()
    return train & ~frame[id_column].isin(test_stations).to_numpy()


def observed(frame: pd.DataFrame, targets: Sequence[str]) -> np.ndarray:
    """Rows with at least one observed target."""
    return frame[list(targets)].notna().any(axis=1).to_numpy()


def training_rows(frame: pd.DataFrame, targets: Sequence[str], is_train: np.ndarray, max_rows: int | None,
                  seed: int) -> np.ndarray:
    """Indices of training rows with an observed target, subsampled (seeded) to ``max_rows``."""
    rows = np.flatnonzero(is_train & observed(frame, targets))
    if max_rows is not None and len(rows) > max_rows:
        rows = np.sort(np.random.default_rng(seed).choice(rows, max_rows, replace=False))
    return rows


def validation_rows(frame: pd.DataFrame, rows: np.ndarray, fraction: float, rule: str,
                    seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``rows`` parted into those fitted and those held out to pick the best epoch (about ``fraction`` of them).

    A seeded draw: of rows with a ``random`` split, as its test rows are drawn; of whole days
    with a ``chronological`` one, so that no held-out hour has its neighbouring hours in the
    fitted rows. Not the latest days: on PRSA those are one season, whose loss rose after the
    first epoch while the later years' fell (45.4 against 38.9 RMSE, issue 16).
    """
    held = round(fraction * len(rows))
    if held == 0:
        return rows, rows[:0]
    generator = np.random.default_rng(seed + 1)
    if rule == "chronological":
        days = frame[TIMESTAMP].values[rows].astype("datetime64[D]")  # UTC days (tz-aware or naive)
        every_day = np.unique(days)
        validation = np.isin(days, generator.choice(every_day, max(1, round(fraction * len(every_day))), replace=False))
    else:
        validation = np.zeros(len(rows), dtype=bool)
        validation[generator.choice(len(rows), held, replace=False)] = True
    return rows[~validation], rows[validation]


def regression_metrics(observations: np.ndarray, predicted: np.ndarray) -> dict:
    """RMSE, MAE and R2 over rows with an observation and a prediction (NaN in either is left out)."""
    known = np.isfinite(observations) & np.isfinite(predicted)
    if not known.any():
        return {"rows": 0, "rmse": None, "mae": None, "r2": None}
    error = predicted[known] - observations[known]
    spread = ((observations[known] - observations[known].mean()) ** 2).sum()
    return {
        "rows": int(known.sum()),
        "rmse": float(np.sqrt((error**2).mean())),
        "mae": float(np.abs(error).mean()),
        "r2": float(1 - (error**2).sum() / spread) if spread > 0 else None,
    }


def persistence(frame: pd.DataFrame, preprocessing: SensorPreprocessing) -> pd.DataFrame:
    """Each target's last value known at the issue time (with horizon 0: the step before)."""
    return value_before(frame, preprocessing.id_column, preprocessing.targets, max(preprocessing.horizon, 1),
                        preprocessing.step_delta)


def seasonal_mean(frame: pd.DataFrame, is_train: np.ndarray, preprocessing: SensorPreprocessing) -> pd.DataFrame:
    """Each target's training mean for the station at the target time's hour of day and weekday.

    A station without training rows at that hour and weekday (a new station) gets the mean of
    every training station there, then the overall training mean.
    """
    targets, station = preprocessing.targets, preprocessing.id_column
    keys = pd.DataFrame({station: frame[station].to_numpy(), "hour": frame[TIMESTAMP].dt.hour.to_numpy(),
                         "weekday": frame[TIMESTAMP].dt.weekday.to_numpy()})
    training = pd.concat([keys, frame[targets].reset_index(drop=True)], axis=1)[is_train]
    result = keys.merge(training.groupby([station, "hour", "weekday"])[targets].mean().reset_index(), how="left",
                        on=[station, "hour", "weekday"])[targets]
    every_station = keys.merge(training.groupby(["hour", "weekday"])[targets].mean().reset_index(), how="left",
                               on=["hour", "weekday"])[targets]
    return result.fillna(every_station).fillna(training[targets].mean())


def fit_table_model(model_config: SensorModelConfig, language: LanguageModelSettings, train: SensorsTrainSettings,
                    frame: pd.DataFrame, places: pd.DataFrame, rows: np.ndarray, preprocessing: SensorPreprocessing,
                    rule: str, seed: int, log: Log = print):
    """Build AllSpark's table model and fine-tune it on ``frame.iloc[rows]``; return it and a summary.

    ``train.validation_fraction`` of the ``rows`` are held out (:func:`validation_rows`, by the
    split ``rule``) and the epoch with the lowest loss on them is kept. The inputs are built
    from every row of ``frame`` (a row's history is in other rows), then the rows taken.
    """
    from allspark.model import AllSpark, Trainer, seed_everything

    generator = seed_everything(seed)
    model = AllSpark(model_config.allspark_config(language, len(preprocessing.continuous_inputs()),
                                                  preprocessing.cardinalities(), preprocessing.targets))
    fitted, held_out = validation_rows(frame, rows, train.validation_fraction, rule, seed)
    every_row = preprocessing.inputs(frame, places)  # lags need every row
    inputs = {name: value[fitted] for name, value in every_row.items()}
    if preprocessing.use_station_id and model_config.station_id_dropout:
        hidden = np.random.default_rng(seed).random(len(fitted)) < model_config.station_id_dropout
        inputs["categorical"][torch.from_numpy(hidden), 0] = MISSING_CATEGORY
    answers = torch.tensor(frame[preprocessing.targets].to_numpy("float64") - preprocessing.base(frame),
                           dtype=torch.float32)
    targets = answers[fitted]
    model.head.scaling.fit(targets)

    held_out_inputs = {name: value[held_out] for name, value in every_row.items()}

    def validate() -> dict:
        """The training loss (mean squared error in normalised units) on the held-out rows."""
        predicted = predict_in_batches(model, held_out_inputs, train.batch_size)
        error = (predicted - answers[held_out]) / model.head.scaling.std
        return {"validation_loss": float(error[torch.isfinite(error)].square().mean())}

    batches = math.ceil(len(fitted) / train.batch_size)
    history = Trainer(model, train.schedule(), batches).fit(
        len(fitted), lambda batch: ({name: value[batch] for name, value in inputs.items()}, targets[batch]),
        train.batch_size, generator, log, **({"validate": validate, "keep_best": "validation_loss"}
                                             if len(held_out) else {}),
    )
    return model, {
        "train_rows_used": len(fitted),
        "validation_rows": len(held_out),
        "epochs": train.epochs,
        "epoch_losses": [epoch["loss"] for epoch in history["epochs"]],
        "epoch_validation_losses": [epoch.get("validation_loss") for epoch in history["epochs"]],
        "best_epoch": history.get("best_epoch", train.epochs),
        "train_seconds": history["seconds"],
        "llm_layers": language.layers,
    }


def predict_targets(model, preprocessing: SensorPreprocessing, frame: pd.DataFrame, places: pd.DataFrame,
                    batch_size: int, rows: np.ndarray | None = None) -> np.ndarray:
    """Predicted targets ``(rows, targets)`` for ``rows`` of ``frame`` (None: every row).

    The inputs come from the whole ``frame`` (a row's history is in other rows), so pass every row
    and select with ``rows`` rather than passing a subset.
    """
    inputs = preprocessing.inputs(frame, places)
    base = preprocessing.base(frame)
    if rows is not None:
        inputs, base = {name: value[rows] for name, value in inputs.items()}, base[rows]
    if not len(base):
        return np.zeros((0, len(preprocessing.targets)))
    return predict_in_batches(model, inputs, batch_size).numpy().astype("float64") + base


def predict_in_batches(model, inputs: dict[str, torch.Tensor], batch_size: int) -> torch.Tensor:
    """The model's predictions for the rows of ``inputs`` (at least one), ``batch_size`` rows at a time, on the CPU."""
    rows = len(next(iter(inputs.values())))
    return torch.cat([model.predict({name: value[start : start + batch_size] for name, value in inputs.items()}).cpu()
                      for start in range(0, rows, batch_size)])


def prediction_frame(frame: pd.DataFrame, predicted: np.ndarray, split: np.ndarray, trained_on: np.ndarray,
                     places: pd.DataFrame, preprocessing: SensorPreprocessing) -> gpd.GeoDataFrame:
    """One point per station and target time: each target observed and predicted, the split and what trained."""
    station = preprocessing.id_column
    columns = {station: frame[station].to_numpy(), "timestamp": frame[TIMESTAMP].array}
    if preprocessing.horizon:
        columns["issued_at"] = (frame[TIMESTAMP] - preprocessing.horizon * preprocessing.step_delta).array
    for i, target in enumerate(preprocessing.targets):
        columns[f"{target}_observed"] = frame[target].to_numpy(dtype="float64")
        columns[f"{target}_predicted"] = predicted[:, i]
    points = places.reindex(frame[station].to_numpy())
    return gpd.GeoDataFrame(
        {**columns, "split": split, "trained_on": trained_on,
         "seen_station": frame[station].isin(preprocessing.stations).to_numpy()},
        geometry=gpd.points_from_xy(points["longitude"], points["latitude"]), crs="EPSG:4326",
    )

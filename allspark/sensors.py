"""Sensor tables (Beijing PRSA air quality): read, check, ingest, fine-tune, predict PM2.5, publish.

The steps of the ``sensors`` flow as plain functions (the Prefect flow is ``flows/sensors.py``):

1. :func:`ingest_tables` reads the station CSVs (PRSA layout: ``No, year, month, day, hour, PM2.5,
   PM10, SO2, NO2, CO, O3, TEMP, PRES, DEWP, RAIN, wd, WSPM, station``), checks their schema and
   writes one Parquet table (the natural form of a sensor table) to the run's work folder.
   Bad input stops the run with a :class:`SensorTableError` naming the file, the line and the
   column or station: a missing column, text in a numeric column, an impossible date, a station
   not in the locations file, an unknown wind direction, a repeated or out-of-order hour.
   **Gaps in time** (hours missing between a station's first and last hour) are counted per
   station and reported in ``metrics.json``; no row is invented for a missing hour, so it gets no
   prediction. ``allow_time_gaps: false`` turns a gap into an error naming the file and the hour.
2. :func:`train_sensors` fine-tunes AllSpark's table path to predict PM2.5 from time (year,
   month, hour, weekday), station, SO2, NO2, CO, O3 and the six weather variables (TEMP, PRES,
   DEWP, RAIN, wd, WSPM); PM10 is left out (it nearly equals PM2.5 and would leak it). Continuous
   columns are standardised with training-split statistics; missing cells stay missing (NaN, -1)
   for the encoder's learned *missing* embeddings. Rows without an observed PM2.5 are never
   trained on nor scored; they are still predicted and published with an empty observation.
3. :func:`infer_sensors` predicts every row; :func:`publish_sensors` writes GeoParquet (one point
   per station and hour) with metrics and a STAC catalog through :func:`allspark.publish.publish_table`.

Splits (``split``): ``random`` (the paper's 40/60 row split; the neighbouring hours of a test row
are in training, so it is easy) or ``chronological`` (the first ``train_fraction`` of the hours
train, the rest test: no leakage across time; the default).
"""

from __future__ import annotations

import glob
import hashlib
import json
import math
import os
import shutil
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import ClassVar, Literal

import geopandas as gpd
import numpy as np
import pandas as pd
import torch
from pydantic import BaseModel, ConfigDict, Field

from allspark import publish
from allspark.config import RunConfig, StrictModel, load_config
from allspark.model.llm import SMOLLM2
from allspark.paths import check_writable, total_size

PRSA_COLUMNS = ("No", "year", "month", "day", "hour", "PM2.5", "PM10", "SO2", "NO2", "CO", "O3",
                "TEMP", "PRES", "DEWP", "RAIN", "wd", "WSPM", "station")
"""Columns every station table must have."""
TEXT_COLUMNS = ("wd", "station")
NUMERIC_COLUMNS = tuple(c for c in PRSA_COLUMNS if c not in TEXT_COLUMNS)
TIME_COLUMNS = ("year", "month", "day", "hour")
TARGET = "PM2.5"
CONTINUOUS_FEATURES = ("year", "SO2", "NO2", "CO", "O3", "TEMP", "PRES", "DEWP", "RAIN", "WSPM")
"""Continuous inputs, in encoder order (no PM10: it would leak the target)."""
WIND_DIRECTIONS = ("N", "NNE", "NE", "ENE", "E", "ESE", "SE", "SSE", "S", "SSW", "SW", "WSW", "W", "WNW", "NW", "NNW")
CATEGORICAL_FEATURES = ("station", "wd", "month", "hour", "weekday")
"""Categorical inputs, in encoder order; station's cardinality is the number of known stations."""
TIMEZONE = "Asia/Shanghai"  # PRSA hours are Beijing time (UTC+8, no daylight saving)
LOCATIONS_CRS = "EPSG:4326"


class SensorTableError(ValueError):
    """A sensor table or locations file that cannot be used; the message names the file and the row."""


# -- configuration ----------------------------------------------------------------------------


class SensorModelConfig(StrictModel):
    """AllSpark's table path (TabFormer-style encoder, Lynx bridge, frozen LM, regression head)."""

    llm: str = Field(SMOLLM2, description='"smollm2" (registry wheel), a local path or a cached HF model id')
    llm_layers: int | None = Field(2, ge=1, description="keep the first N decoder layers of the LM (None: all)")
    width: int = Field(64, ge=4, description="column token width of the table encoder")
    depth: int = Field(1, ge=0, description="Transformer layers over the column tokens (paper: 1)")
    num_queries: int = Field(8, ge=1, description="bridge queries the LM reads per row")
    adapter_every: int = Field(2, ge=0, description="an LM adapter after every N-th decoder layer; 0 = none")
    prompt: str | None = Field(None, min_length=1, description="user prompt replacing the paper's table prompts")
    use_language_model: bool = Field(True, description="False: encoder, bridge and head only (the ablation)")

    def allspark_config(self, station_count: int):
        """The :class:`allspark.model.AllSparkConfig` for rows with ``station_count`` known stations."""
        from allspark.model.model import (
            AllSparkConfig,  # imports torch and transformers: only when needed
        )

        return AllSparkConfig(
            modality="table",
            llm=self.llm,
            llm_layers=self.llm_layers,
            encoder={
                "continuous_columns": len(CONTINUOUS_FEATURES),
                "categorical_cardinalities": [station_count, len(WIND_DIRECTIONS), 12, 24, 7],
                "width": self.width,
                "depth": self.depth,
            },
            bridge={"num_queries": self.num_queries},
            adapters={"every": self.adapter_every},
            head={"kind": "regression", "outputs": 1},
            prompt=self.prompt,
            use_language_model=self.use_language_model,
        )


class SensorTrainConfig(StrictModel):
    """Fine-tuning: CPU-sized defaults (a row subsample, 1 epoch); the paper trains 30 epochs at 2e-5."""

    epochs: int = Field(1, ge=1)
    batch_size: int = Field(64, ge=1)
    learning_rate: float = Field(1e-3, gt=0)
    warmup_epochs: float = Field(0.1, ge=0)
    weight_decay: float = Field(0.01, ge=0)
    max_train_rows: int | None = Field(
        4000, ge=1, description="random subsample of the training rows (seeded); None = every training row"
    )


class SensorsConfig(RunConfig):
    """Everything one run of the sensors flow needs."""

    kind: ClassVar[str] = "sensors"

    name: str = Field("prsa", pattern=r"^[A-Za-z0-9_.-]+$")
    inputs: list[str] = Field(min_length=1, description="station CSV files or glob patterns (PRSA layout)")
    locations: str = Field("prsa_stations", description="GeoJSON of station points: a name under catalogs/ or a path")
    stations: list[str] | None = Field(None, min_length=1, description="use only these stations; none = all in inputs")
    period: tuple[str, str] | None = Field(None, description="inclusive local-time range, ISO 8601; none = all")
    allow_time_gaps: bool = Field(True, description="count missing hours (true) or stop with an error (false)")
    split: Literal["random", "chronological"] = "chronological"
    train_fraction: float = Field(0.4, gt=0, lt=1, description="share of rows (random) or of hours (chronological)")
    model: SensorModelConfig = Field(default_factory=SensorModelConfig)
    train: SensorTrainConfig = Field(default_factory=SensorTrainConfig)
    inference_batch: int = Field(256, ge=1)

    @property
    def output_path(self) -> Path:
        """Where this run's published outputs live."""
        return self.output_dir / self.name


def load_sensors_config(path: str | Path, **overrides: object) -> SensorsConfig:
    """Read a sensors run config from YAML, apply overrides, validate; errors name the file and key."""
    return load_config(SensorsConfig, path, **overrides)


def input_files(config: SensorsConfig) -> list[Path]:
    """The station tables the config names, sorted; a pattern matching nothing is an error."""
    files = []
    for pattern in config.inputs:
        matched = sorted(Path(p) for p in glob.glob(os.path.expanduser(pattern)))
        if not matched:
            raise SensorTableError(f"input {pattern!r} matches no file")
        files.extend(matched)
    return list(dict.fromkeys(files))


# -- reading and checking ---------------------------------------------------------------------


def locations_path(name_or_path: str) -> Path:
    """``"prsa_stations"`` -> ``catalogs/prsa_stations.geojson``; anything with a suffix or a slash is a path."""
    if name_or_path.endswith((".geojson", ".json")) or os.sep in name_or_path:
        return Path(name_or_path)
    return Path(__file__).resolve().parents[1] / "catalogs" / f"{name_or_path}.geojson"


def read_locations(name_or_path: str) -> gpd.GeoDataFrame:
    """Station points (``station`` column, lon/lat EPSG:4326), in file order: the station index order."""
    path = locations_path(name_or_path)
    if not path.is_file():
        raise SensorTableError(f"station locations file {path} does not exist")
    frame = gpd.read_file(path)
    if "station" not in frame.columns or not (frame.geom_type == "Point").all():
        raise SensorTableError(f"{path}: expected Point features with a 'station' property")
    duplicated = frame["station"][frame["station"].duplicated()].tolist()
    if duplicated:
        raise SensorTableError(f"{path}: station(s) listed twice: {duplicated}")
    frame = frame.set_crs(LOCATIONS_CRS) if frame.crs is None else frame.to_crs(LOCATIONS_CRS)
    return frame[["station", "geometry"]].reset_index(drop=True)


def _line(index: int) -> int:
    """CSV line number of data row ``index`` (the header is line 1)."""
    return index + 2


def read_station_table(path: Path, known_stations: Sequence[str]) -> pd.DataFrame:
    """Read and check one PRSA-layout CSV; return it with a local-time ``timestamp`` column.

    Raises :class:`SensorTableError` naming the file, line and column (or station) for a missing
    column, text in a numeric column, a missing or impossible time, an unknown station or wind
    direction, and a repeated or out-of-order hour of one station. Gaps are left to :func:`time_gaps`.
    """
    try:
        raw = pd.read_csv(path, na_values=[" "], dtype=str, keep_default_na=True)
    except (OSError, pd.errors.ParserError, pd.errors.EmptyDataError) as err:
        raise SensorTableError(f"{path}: cannot be read as CSV: {err}") from None
    missing = [c for c in PRSA_COLUMNS if c not in raw.columns]
    if missing:
        raise SensorTableError(f"{path}: missing column(s) {missing}; expected {list(PRSA_COLUMNS)}")
    table = raw[list(PRSA_COLUMNS)].copy()
    for column in NUMERIC_COLUMNS:
        values = pd.to_numeric(table[column].str.strip(), errors="coerce")
        bad = np.flatnonzero(values.isna() & table[column].notna())
        if len(bad):
            i = bad[0]
            raise SensorTableError(
                f"{path}: line {_line(i)}, column {column!r}: {table[column].iloc[i]!r} is not a number "
                f"({len(bad)} such cell(s) in this column)"
            )
        table[column] = values
    for column in TIME_COLUMNS:
        absent = np.flatnonzero(table[column].isna())
        if len(absent):
            raise SensorTableError(f"{path}: line {_line(absent[0])}: {column!r} is empty (every row needs its time)")
    timestamps = pd.to_datetime(table[list(TIME_COLUMNS)].astype("int64"), errors="coerce")
    invalid = np.flatnonzero(timestamps.isna())
    if len(invalid):
        row = table.iloc[invalid[0]]
        raise SensorTableError(
            f"{path}: line {_line(invalid[0])}: {int(row.year)}-{int(row.month)}-{int(row.day)} hour {int(row.hour)} "
            "is not a valid date and hour"
        )
    table["timestamp"] = timestamps.dt.tz_localize(TIMEZONE)
    unknown = np.flatnonzero(~table["station"].isin(known_stations))
    if len(unknown):
        station = table["station"].iloc[unknown[0]]
        raise SensorTableError(
            f"{path}: line {_line(unknown[0])}: station {station!r} is not in the locations file "
            f"(known: {', '.join(known_stations)})"
        )
    odd_wind = np.flatnonzero(table["wd"].notna() & ~table["wd"].isin(WIND_DIRECTIONS))
    if len(odd_wind):
        raise SensorTableError(
            f"{path}: line {_line(odd_wind[0])}, column 'wd': {table['wd'].iloc[odd_wind[0]]!r} is not one of the "
            f"16 compass directions {list(WIND_DIRECTIONS)}"
        )
    for station, rows in table.groupby("station", sort=False):
        step = rows["timestamp"].diff().iloc[1:]
        wrong = step[step <= pd.Timedelta(0)]
        if len(wrong):
            i = table.index.get_loc(wrong.index[0])
            what = "repeats the previous hour" if step.loc[wrong.index[0]] == pd.Timedelta(0) else "goes back in time"
            raise SensorTableError(
                f"{path}: line {_line(i)}: station {station!r} at {table['timestamp'].iloc[i]} {what} "
                "(rows must be hourly and in time order)"
            )
    return table


def time_gaps(table: pd.DataFrame) -> dict[str, dict]:
    """Per station: hours missing between its first and last hour, and the first missing one."""
    gaps = {}
    for station, stamps in table.groupby("station", sort=False)["timestamp"]:
        expected = pd.date_range(stamps.iloc[0], stamps.iloc[-1], freq="h")
        missing = expected.difference(pd.DatetimeIndex(stamps))
        gaps[station] = {
            "missing_hours": len(missing),
            "first_missing": missing[0].isoformat() if len(missing) else None,
        }
    return gaps


def _local_time(text: str) -> pd.Timestamp:
    """An ISO time in Beijing time (times without a zone are taken as Beijing time, as PRSA's are)."""
    stamp = pd.Timestamp(text)
    return stamp.tz_localize(TIMEZONE) if stamp.tzinfo is None else stamp.tz_convert(TIMEZONE)


def select_rows(table: pd.DataFrame, config: SensorsConfig) -> pd.DataFrame:
    """The rows of the config's stations and period."""
    keep = np.ones(len(table), dtype=bool)
    if config.stations is not None:
        keep &= table["station"].isin(config.stations).to_numpy()
    if config.period is not None:
        start, end = (_local_time(t) for t in config.period)
        keep &= ((table["timestamp"] >= start) & (table["timestamp"] <= end)).to_numpy()
    return table[keep]


def ingest_tables(config: SensorsConfig) -> dict:
    """Check every input table and write the selected rows to ``<work>/observations.parquet``.

    Returns the store path, its content digest and a summary: files, rows, stations, rows without
    PM2.5, and the missing hours per station (an error instead when ``allow_time_gaps`` is false).
    """
    known = read_locations(config.locations)["station"].tolist()
    files = input_files(config)
    check_writable(config.output_path, config.work_dir(), min_free_bytes=total_size(files))
    parts, gaps = [], {}
    for path in files:
        table = select_rows(read_station_table(path, known), config)
        for station, gap in time_gaps(table).items():
            if gap["missing_hours"] and not config.allow_time_gaps:
                raise SensorTableError(
                    f"{path}: station {station!r} misses {gap['missing_hours']} hour(s), the first at "
                    f"{gap['first_missing']} (allow_time_gaps is false)"
                )
            gaps[station] = {"file": str(path), **gap}
        parts.append(table)
    observations = pd.concat(parts, ignore_index=True)
    if config.stations is not None:
        absent = sorted(set(config.stations) - set(observations["station"]))
        if absent:
            raise SensorTableError(f"station(s) {absent} have no rows in {[str(f) for f in files]}")
    if observations.empty:
        raise SensorTableError(f"no rows in the period {config.period} in {[str(f) for f in files]}")
    store = config.work_dir() / "observations.parquet"
    with publish.atomic_path(store) as tmp:
        observations.to_parquet(tmp, index=False)
    return {
        "store": str(store),
        "digest": hashlib.sha256(store.read_bytes()).hexdigest()[:16],
        "files": [str(f) for f in files],
        "rows": len(observations),
        "stations": sorted(observations["station"].unique().tolist()),
        "rows_without_pm25": int(observations[TARGET].isna().sum()),
        "time_gaps": gaps,
        "missing_hours": sum(g["missing_hours"] for g in gaps.values()),
    }


# -- features ---------------------------------------------------------------------------------


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


class FeatureScaling(BaseModel):
    """Station order and the training split's per-column mean and std; saved beside the checkpoint."""

    model_config = ConfigDict(extra="forbid")
    stations: list[str]
    mean: list[float]
    std: list[float]

    @classmethod
    def fit(cls, frame: pd.DataFrame, stations: Sequence[str]) -> FeatureScaling:
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


# -- model ------------------------------------------------------------------------------------


def fit_table_model(
    model_config: SensorModelConfig,
    train_config: SensorTrainConfig,
    frame: pd.DataFrame,
    rows: np.ndarray,
    scaling: FeatureScaling,
    seed: int,
    log: Callable[[str], None] = print,
):
    """Build AllSpark's table model and fine-tune it on ``frame.iloc[rows]``; return it and a summary."""
    from allspark.model import AllSpark, Trainer, TrainingSettings, seed_everything

    generator = seed_everything(seed)
    model = AllSpark(model_config.allspark_config(len(scaling.stations)))
    train = frame.iloc[rows]
    inputs = scaling.inputs(train)
    targets = torch.tensor(train[TARGET].to_numpy(dtype="float32"))[:, None]
    model.head.scaling.fit(targets)
    batches = math.ceil(len(rows) / train_config.batch_size)
    trainer = Trainer(
        model,
        TrainingSettings(learning_rate=train_config.learning_rate, epochs=train_config.epochs,
                         warmup_epochs=train_config.warmup_epochs, weight_decay=train_config.weight_decay),
        batches,
    )
    started, losses = time.perf_counter(), []
    for epoch in range(train_config.epochs):
        order = torch.randperm(len(rows), generator=generator)
        total = 0.0
        for batch in order.split(train_config.batch_size):
            total += trainer.step({name: value[batch] for name, value in inputs.items()}, targets[batch]) * len(batch)
        trainer.finish_epoch()
        losses.append(total / len(rows))
        log(f"epoch {epoch + 1}/{train_config.epochs}: mean loss {losses[-1]:.4f} (normalised PM2.5, MSE)")
    return model, {
        "train_rows_used": len(rows),
        "epochs": train_config.epochs,
        "epoch_losses": losses,
        "train_seconds": round(time.perf_counter() - started, 1),
        "llm_layers": model_config.llm_layers,
    }


def predict_pm25(model, scaling: FeatureScaling, frame: pd.DataFrame, batch_size: int) -> np.ndarray:
    """Predicted PM2.5 for every row of ``frame`` (µg/m³)."""
    inputs = scaling.inputs(frame)
    out = [
        model.predict({name: value[start : start + batch_size] for name, value in inputs.items()})[:, 0].cpu()
        for start in range(0, len(frame), batch_size)
    ]
    return torch.cat(out).numpy().astype("float64") if out else np.zeros(0)


FEATURES_FILE = "features.json"


def save_table_model(model, scaling: FeatureScaling, directory: Path) -> None:
    from allspark.model import save_checkpoint

    save_checkpoint(model, directory)
    (directory / FEATURES_FILE).write_text(scaling.model_dump_json(indent=2))


def load_table_model(directory: str | Path):
    """The fine-tuned model and its feature scaling from a checkpoint folder."""
    from allspark.model import load_checkpoint

    directory = Path(directory)
    return load_checkpoint(directory), FeatureScaling.model_validate_json((directory / FEATURES_FILE).read_text())


# -- flow steps -------------------------------------------------------------------------------


def observations_with_split(config: SensorsConfig, ingested: dict) -> tuple[pd.DataFrame, np.ndarray]:
    frame = pd.read_parquet(ingested["store"])
    return frame, split_rows(frame, config.split, config.train_fraction, config.seed)


def train_sensors(config: SensorsConfig, ingested: dict, log: Callable[[str], None] = print) -> dict:
    """Fine-tune on the training split; write ``<work>/checkpoint`` (moved into place when complete)."""
    frame, is_train = observations_with_split(config, ingested)
    rows = training_rows(frame, is_train, config.train.max_train_rows, config.seed)
    if not len(rows):
        raise SensorTableError(f"the {config.split} training split has no row with an observed {TARGET}")
    stations = read_locations(config.locations)["station"].tolist()
    scaling = FeatureScaling.fit(frame[is_train], stations)
    model, summary = fit_table_model(config.model, config.train, frame, rows, scaling, config.seed, log)
    summary["train_rows_available"] = int((is_train & frame[TARGET].notna().to_numpy()).sum())
    directory = config.work_dir() / "checkpoint"
    partial = directory.with_name("checkpoint.partial")
    shutil.rmtree(partial, ignore_errors=True)
    save_table_model(model, scaling, partial)
    (partial / "training_metrics.json").write_text(json.dumps(summary, indent=2))
    shutil.rmtree(directory, ignore_errors=True)
    partial.rename(directory)
    return {"checkpoint": str(directory), "metrics": summary}


def infer_sensors(config: SensorsConfig, ingested: dict, checkpoint: str) -> str:
    """Predict every row into ``<work>/predictions-<data>-<checkpoint>.parquet`` (digests); reuse it if present."""
    from allspark.inference import checkpoint_digest

    store = config.work_dir() / f"predictions-{ingested['digest']}-{checkpoint_digest(Path(checkpoint))}.parquet"
    if store.exists():
        return str(store)
    frame = pd.read_parquet(ingested["store"])
    model, scaling = load_table_model(checkpoint)
    predicted = predict_pm25(model, scaling, frame, config.inference_batch)
    with publish.atomic_path(store) as tmp:
        pd.DataFrame({"pm25_predicted": predicted}).to_parquet(tmp, index=False)
    return str(store)


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


def publish_sensors(config: SensorsConfig, ingested: dict, trained: dict, predictions: str) -> dict:
    """Write the GeoParquet, metrics, config, model and STAC catalog; return the paths and metrics."""
    frame, is_train = observations_with_split(config, ingested)
    predicted = pd.read_parquet(predictions)["pm25_predicted"].to_numpy()
    trained_on = np.zeros(len(frame), dtype=bool)
    trained_on[training_rows(frame, is_train, config.train.max_train_rows, config.seed)] = True
    locations = read_locations(config.locations)
    table = prediction_frame(frame, predicted, is_train, trained_on, locations)
    observed = table["pm25_observed"].to_numpy()
    metrics = {
        "flow": "sensors",
        "name": config.name,
        "target": "PM2.5 (µg/m³)",
        "features": {"continuous": list(CONTINUOUS_FEATURES), "categorical": list(CATEGORICAL_FEATURES)},
        "split": {"rule": config.split, "train_fraction": config.train_fraction,
                  "train_rows": int(is_train.sum()), "test_rows": int((~is_train).sum())},
        "test": regression_metrics(observed[~is_train], predicted[~is_train]),
        "train": regression_metrics(observed[is_train], predicted[is_train]),
        "fine_tuning": trained["metrics"],
        "ingest": {key: ingested[key] for key in ("files", "rows", "stations", "rows_without_pm25", "missing_hours",
                                                    "time_gaps")},
        "skipped": {
            "rows_without_pm25": ingested["rows_without_pm25"],
            "rule": "rows without an observed PM2.5 are predicted and published (pm25_observed empty) but not "
                    "trained on nor scored",
            "missing_hours": ingested["missing_hours"],
            "missing_hours_rule": "hours absent from a station's table get no row and no prediction",
        },
    }
    model, _ = load_table_model(trained["checkpoint"])
    model_fields = publish.mlm_fields(
        model,
        architecture="AllSpark table: TabFormer-style column encoder, Lynx resampler bridge, frozen causal LM "
                     "with bottleneck adapters, linear regression head",
        tasks=["regression"],
        inputs=[{
            "name": "station-hour row",
            "bands": [],
            "input": {"shape": [-1, len(CONTINUOUS_FEATURES) + len(CATEGORICAL_FEATURES)],
                      "dim_order": ["batch", "column"], "data_type": "float32"},
            "description": f"continuous {list(CONTINUOUS_FEATURES)} standardised; categorical "
                           f"{list(CATEGORICAL_FEATURES)}",
        }],
        outputs=[{
            "name": "PM2.5",
            "tasks": ["regression"],
            "result": {"shape": [-1, 1], "dim_order": ["batch", "value"], "data_type": "float32"},
        }],
    )
    stamps = frame["timestamp"]
    outputs = publish.publish_table(
        config.output_path,
        item_id=f"{config.name}-pm25",
        frame=table,
        title="Predicted and observed PM2.5 per station and hour",
        time_range=(stamps.min().to_pydatetime(), stamps.max().to_pydatetime()),
        input_files=[Path(f) for f in ingested["files"]] + [locations_path(config.locations)],
        config_yaml=config.to_yaml(),
        config=config.model_dump(mode="json"),
        metrics=metrics,
        checkpoint=Path(trained["checkpoint"]),
        model_fields=model_fields,
    )
    return outputs | {"metrics_summary": metrics}

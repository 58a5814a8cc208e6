"""Traffic graphs (METR-LA style): sensor speeds, locations and adjacency -> AllSpark speed forecasts.

The steps of the ``traffic`` flow as plain functions (the Prefect flow in ``flows/traffic.py``
calls one task each; the Los-loop benchmark calls them directly):

    read_graph      speeds CSV (header = sensor ids) + adjacency + sensor locations, schema-checked
    ingest_traffic  -> ``<work>/graph.zarr``: speed (time, sensor), sensor ids, lat/lon, adjacency
    train_traffic   12 steps in, 12 out, chronological 70/10/20 split -> AllSpark graph checkpoint
    infer_traffic   forecasts over the test windows, with metrics and the two baselines
    publish_traffic GeoParquet (one point per sensor and horizon), metrics, config, model, STAC

Conventions:

- **Missing speeds.** As in METR-LA, a speed of 0 means "no reading". Zeros become NaN at ingest
  (counted in metrics.json); they are filled with the training mean in the model's inputs and
  left out of the loss (NaN targets) and of every metric.
- **Time.** The files carry no timestamps: step ``i`` is ``start + i * step_minutes``, so with the
  default midnight start the time-of-day slot is the row index mod 288. ``start`` (a nominal
  Monday, 2012-03-05 00:00 Los Angeles time, by default) sets the day of the week and the
  timestamps written out; set it when the real start is known.
- **Split.** The series is cut at 70 % and 80 % of its steps; a window (inputs and targets) lies
  wholly inside one part, so no target of a later part is seen in training.
- **Adjacency.** Read, checked against the sensors and kept in the ingest store, but not used by
  the model: the STAEformer-style graph encoder learns the spatial relations by attention over
  the nodes (see :mod:`allspark.model.encoders.graph`).
- **Persistence plus correction.** By default (``model.predict_change``) the model learns the
  change from each sensor's last observed speed, which is added back to its answers; set it to
  false for absolute speeds, as STAEformer predicts them.
- **Sensors without a location** stop the run with an error naming them (``missing_location:
  error``), or, with ``missing_location: drop``, are dropped (their speeds and adjacency row and
  column too) and listed in metrics.json.
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import ClassVar, Literal

import geopandas as gpd
import numpy as np
import pandas as pd
import torch
import xarray as xr
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    field_validator,
    model_validator,
)

from allspark import publish
from allspark.config import RunConfig, StrictModel, load_config
from allspark.model.checkpoint import load_checkpoint, save_checkpoint
from allspark.model.llm import SMOLLM2
from allspark.model.model import AllSpark, AllSparkConfig
from allspark.model.training import Trainer, TrainingSettings, seed_everything
from allspark.paths import check_writable, file_stamps, total_size

MINUTES_PER_DAY = 24 * 60
REPORTED_MINUTES = (15, 30, 60)  # the horizons METR-LA papers report
SCALING_FILE = "graph_scaling.json"
PROXY_NOTE = (
    "Los-loop is one real week of METR-LA (207 sensors, 2,016 five-minute steps): a proxy, not the "
    "paper's METR-LA figure (four months; AllSpark 60 min MAE 3.81 / RMSE 7.52 / MAPE 11.24 %)."
)


# -- configuration --------------------------------------------------------------------------------


class TrafficModelConfig(BaseModel):
    """The AllSpark graph model (STAEformer-style encoder, Lynx bridge, frozen LM, dense head).

    The defaults are a CPU setting; the paper's is all LM layers, 10 epochs at 8e-5, and
    STAEformer's encoder (width 152, 3 + 3 layers).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    llm: str = Field(SMOLLM2, description='"smollm2" (registry wheel), a local path or a cached HF model id')
    llm_layers: int | None = Field(2, ge=1, description="keep the first N decoder layers of the LM (None: all)")
    width: int = Field(32, ge=2, multiple_of=2, description="encoder token width (STAEformer: 152)")
    temporal_depth: int = Field(1, ge=0, description="Transformer layers over the steps (STAEformer: 3)")
    spatial_depth: int = Field(1, ge=0, description="Transformer layers over the sensors (STAEformer: 3)")
    heads: int = Field(4, ge=1)
    use_locations: bool = Field(True, description="feed the sensors' lon/lat to the space embedding")
    predict_change: bool = Field(
        True, description="learn the change from each sensor's last observed speed (persistence plus a learned "
                          "correction: a short CPU schedule cannot learn to copy the input); false: absolute speeds "
                          "as STAEformer does",
    )
    num_queries: int = Field(16, ge=1)
    bridge_depth: int = Field(2, ge=1)
    bridge_heads: int = Field(8, ge=1)
    adapter_every: int = Field(2, ge=0, description="an LM adapter after every N-th decoder layer; 0 = none")
    prompt: str | None = Field(None, min_length=1, description="user prompt replacing the paper's graph prompts")
    use_prefix_cache: bool = True
    prompt_seed: int = 0
    use_language_model: bool = Field(True, description="False: encoder, bridge and head only (the ablation)")

    def allspark_config(self, num_nodes: int, horizon: int, step_minutes: int) -> AllSparkConfig:
        """The model's :class:`AllSparkConfig` for a graph of ``num_nodes`` sensors."""
        return AllSparkConfig(
            modality="graph",
            llm=self.llm,
            llm_layers=self.llm_layers,
            encoder={
                "num_nodes": num_nodes, "in_features": 1, "time_of_day_slots": MINUTES_PER_DAY // step_minutes,
                "width": self.width, "temporal_depth": self.temporal_depth, "spatial_depth": self.spatial_depth,
                "heads": self.heads,
            },
            bridge={"num_queries": self.num_queries, "depth": self.bridge_depth, "heads": self.bridge_heads},
            adapters={"every": self.adapter_every},
            head={"kind": "dense_regression", "outputs": horizon},
            prompt=self.prompt,
            use_prefix_cache=self.use_prefix_cache,
            prompt_seed=self.prompt_seed,
            use_language_model=self.use_language_model,
        )


class TrafficTrainConfig(StrictModel):
    """Fine-tuning on the training windows (AdamW, cosine schedule with warm-up)."""

    epochs: int = Field(3, ge=1, description="paper: 10")
    batch_size: int = Field(32, ge=1)
    learning_rate: float = Field(1e-3, gt=0, description="paper: 8e-5 (over 10 epochs)")
    warmup_epochs: float = Field(0.5, ge=0, description="paper: 2")
    weight_decay: float = Field(0.05, ge=0)
    window_stride: int = Field(3, ge=1, description="train on every N-th training window (1 = all; CPU: 3)")


class TrafficConfig(RunConfig):
    """Everything one run of the traffic flow needs."""

    kind: ClassVar[str] = "traffic"

    name: str = Field("losloop", pattern=r"^[A-Za-z0-9_.-]+$")
    speeds: Path = Field(description="CSV of speeds: header = sensor ids, one row per step, 0 = missing")
    adjacency: Path = Field(description="N x N adjacency: CSV without header, or .npz with 'adjacency' [+ 'sensor_ids']")
    locations: Path = Field(description="CSV with columns sensor_id, latitude, longitude (EPSG:4326)")
    missing_location: Literal["error", "drop"] = Field(
        "error", description="a sensor without a location: stop with an error, or drop it (counted)"
    )
    start: datetime = Field(
        datetime.fromisoformat("2012-03-05T00:00:00-08:00"),
        description="time of the first row, with its UTC offset (nominal by default: the file has no timestamps)",
    )
    step_minutes: int = Field(5, ge=1, description="minutes between rows; must divide a day")
    input_steps: int = Field(12, ge=1)
    horizon: int = Field(12, ge=1, description="steps forecast (12 x 5 min = 60 min)")
    split: tuple[float, float, float] = Field((0.7, 0.1, 0.2), description="train / validation / test, in time order")
    forecast: Literal["latest", "test"] = Field(
        "latest",
        description="published rows: the latest forecast whose future is observed (sensors x horizons), "
                    "or every test window's forecast",
    )
    model: TrafficModelConfig = Field(default_factory=TrafficModelConfig)
    train: TrafficTrainConfig | None = Field(default_factory=TrafficTrainConfig)
    checkpoint: Path | None = Field(None, description="use this checkpoint instead of fine-tuning")
    inference_batch: int = Field(32, ge=1)

    @field_validator("start")
    @classmethod
    def _aware(cls, value: datetime) -> datetime:
        if value.tzinfo is None:
            raise ValueError("start needs a UTC offset, e.g. 2012-03-05T00:00:00-08:00")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> TrafficConfig:
        if MINUTES_PER_DAY % self.step_minutes:
            raise ValueError(f"step_minutes ({self.step_minutes}) must divide a day (1440 minutes)")
        if abs(sum(self.split) - 1) > 1e-6 or min(self.split) <= 0:
            raise ValueError(f"split {self.split} must be three positive fractions summing to 1")
        if self.train is None and self.checkpoint is None:
            raise ValueError("give either train (fine-tune first) or checkpoint (use a trained model)")
        return self

    @property
    def flow_dir(self) -> Path:
        """Where this run's published outputs live."""
        return self.output_dir / self.name

    @property
    def input_files(self) -> list[Path]:
        return [self.speeds, self.adjacency, self.locations]


def load_traffic_config(path: str | Path, **overrides: object) -> TrafficConfig:
    """Read a traffic config from YAML, apply overrides, validate; errors name the file and keys."""
    return load_config(TrafficConfig, path, **overrides)


def input_signature(config: TrafficConfig) -> list[tuple[str, int, int]]:
    """Path, size and modification time of each input file: a changed file invalidates the cache."""
    return file_stamps(p for p in config.input_files if p.exists())


# -- readers with schema checks -------------------------------------------------------------------


@dataclass
class TrafficGraph:
    """A checked sensor graph: speeds (time, sensor) with NaN for missing, locations, adjacency."""

    sensor_ids: list[str]
    speeds: np.ndarray  # (steps, sensors) float32, NaN = missing (0 in the file)
    latitude: np.ndarray
    longitude: np.ndarray
    adjacency: np.ndarray  # (sensors, sensors)
    missing_speeds: int
    dropped_sensors: list[str]


def read_speeds(path: Path) -> tuple[list[str], np.ndarray]:
    """Sensor ids (header) and speeds (steps, sensors), zeros (missing readings) turned to NaN.

    Raises ValueError naming the file, the line and the sensor for a value that is not a number
    (an empty cell included) or a negative speed, and for duplicate sensor ids.
    """
    frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    ids = [column.strip() for column in frame.columns]
    duplicates = sorted({i for i in ids if ids.count(i) > 1})
    if duplicates:
        raise ValueError(f"{path}: sensor id(s) {', '.join(duplicates)} appear more than once in the header")
    if frame.empty:
        raise ValueError(f"{path}: no rows of speeds under the header")
    numbers = frame.apply(pd.to_numeric, errors="coerce").to_numpy(dtype="float64")
    for bad, expected in ((~np.isfinite(numbers), "a number"), (numbers < 0, "a speed >= 0")):
        rows, cols = np.nonzero(bad)
        if len(rows):
            raise ValueError(
                f"{path}, line {rows[0] + 2}, sensor {ids[cols[0]]}: expected {expected}, got "
                f"{frame.iat[rows[0], cols[0]]!r} ({len(rows)} such value(s) in the file)"
            )
    return ids, np.where(numbers == 0, np.nan, numbers).astype("float32")


def read_adjacency(path: Path, sensor_ids: list[str], speeds_path: Path) -> np.ndarray:
    """The (sensors, sensors) adjacency, in the order of ``sensor_ids``.

    A CSV holds the matrix alone (rows in the speeds' column order); an .npz holds ``adjacency``
    and optionally ``sensor_ids`` (then rows are matched by id). Raises ValueError naming both
    files when the matrix does not match the sensors.
    """
    ids_in_file = None
    try:
        if path.suffix == ".npz":
            with np.load(path, allow_pickle=False) as store:
                matrix = store["adjacency"].astype("float32")
                if "sensor_ids" in store:
                    ids_in_file = [str(i) for i in store["sensor_ids"]]
        else:
            matrix = np.loadtxt(path, delimiter=",", dtype="float32", ndmin=2)
    except (ValueError, KeyError) as err:
        raise ValueError(f"{path}: not a numeric adjacency matrix ({err})") from None
    if matrix.ndim != 2 or matrix.shape[0] != matrix.shape[1]:
        raise ValueError(f"{path}: the adjacency must be square, got {' x '.join(map(str, matrix.shape))}")
    if len(matrix) != len(sensor_ids):
        raise ValueError(
            f"the graph has {len(sensor_ids)} sensors ({speeds_path}) but its adjacency is "
            f"{len(matrix)} x {len(matrix)} ({path}): they must describe the same sensors"
        )
    if ids_in_file is not None:
        missing = [i for i in sensor_ids if i not in ids_in_file]
        if missing:
            raise ValueError(f"{path}: no adjacency row for sensor(s) {', '.join(missing[:10])} of {speeds_path}")
        order = [ids_in_file.index(i) for i in sensor_ids]
        matrix = matrix[np.ix_(order, order)]
    return matrix


def read_locations(path: Path) -> pd.DataFrame:
    """Sensor locations indexed by sensor id (str), columns latitude and longitude (degrees)."""
    frame = pd.read_csv(path, dtype={"sensor_id": str})
    missing = {"sensor_id", "latitude", "longitude"} - set(frame.columns)
    if missing:
        raise ValueError(f"{path}: missing column(s) {', '.join(sorted(missing))} (need sensor_id, latitude, longitude)")
    frame["sensor_id"] = frame["sensor_id"].str.strip()
    frame = frame.set_index("sensor_id")[["latitude", "longitude"]].apply(pd.to_numeric, errors="coerce")
    bad = frame.index[~(frame["latitude"].between(-90, 90) & frame["longitude"].between(-180, 180))]
    if len(bad):
        raise ValueError(f"{path}: sensor {bad[0]} has no valid latitude/longitude ({len(bad)} such row(s))")
    return frame[~frame.index.duplicated()]


def read_graph(config: TrafficConfig) -> TrafficGraph:
    """Read and check the speeds, the adjacency and the locations of ``config`` (see the module docstring)."""
    ids, speeds = read_speeds(config.speeds)
    adjacency = read_adjacency(config.adjacency, ids, config.speeds)
    locations = read_locations(config.locations)
    unplaced = [i for i in ids if i not in locations.index]
    if unplaced and config.missing_location == "error":
        raise ValueError(
            f"{len(unplaced)} sensor(s) of {config.speeds} have no location in {config.locations}: "
            f"{', '.join(unplaced[:10])}{' ...' if len(unplaced) > 10 else ''} "
            "(set missing_location: drop to leave them out)"
        )
    keep = np.array([i not in unplaced for i in ids])
    if not keep.any():
        raise ValueError(f"no sensor of {config.speeds} has a location in {config.locations}")
    kept = [i for i in ids if i not in unplaced]
    return TrafficGraph(
        sensor_ids=kept,
        speeds=speeds[:, keep],
        missing_speeds=int(np.isnan(speeds[:, keep]).sum()),
        latitude=locations.loc[kept, "latitude"].to_numpy("float64"),
        longitude=locations.loc[kept, "longitude"].to_numpy("float64"),
        adjacency=adjacency[np.ix_(keep, keep)],
        dropped_sensors=unplaced,
    )


# -- ingest -----------------------------------------------------------------------------------------


def ingest_traffic(config: TrafficConfig) -> dict:
    """Check the inputs and write ``<work>/graph.zarr``; return its path and what was read."""
    graph = read_graph(config)
    check_writable(config.flow_dir, config.work_dir(), min_free_bytes=total_size(config.input_files))
    steps = len(graph.speeds)
    if steps < config.input_steps + config.horizon:
        raise ValueError(f"{config.speeds}: {steps} steps, fewer than one window ({config.input_steps} + {config.horizon})")
    dataset = xr.Dataset(
        {
            "speed": (("time", "sensor"), graph.speeds, {"units": "mph", "missing": "NaN (0 in the source)"}),
            "latitude": ("sensor", graph.latitude),
            "longitude": ("sensor", graph.longitude),
            "adjacency": (("sensor", "neighbour"), graph.adjacency),
        },
        coords={"time": np.arange(steps), "sensor": np.array(graph.sensor_ids, dtype=object),
                "neighbour": np.array(graph.sensor_ids, dtype=object)},  # object: Zarr's variable-length strings
        attrs={"sources": [str(p) for p in config.input_files], "start": config.start.isoformat(),
               "step_minutes": config.step_minutes},
    )
    store = config.work_dir() / "graph.zarr"
    _write_zarr(dataset, store)
    return {
        "store": str(store),
        "sensors": len(graph.sensor_ids),
        "steps": steps,
        "missing_speeds": graph.missing_speeds,
        "dropped_sensors": graph.dropped_sensors,
    }


def _write_zarr(dataset: xr.Dataset, store: Path) -> None:
    """Write a small dataset to a Zarr store under a temporary name, then move it into place."""
    partial = store.with_name(store.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.parent.mkdir(parents=True, exist_ok=True)
    dataset.to_zarr(partial, mode="w", zarr_format=3, consolidated=False)
    shutil.rmtree(store, ignore_errors=True)
    partial.rename(store)


def open_graph(store: str | Path) -> xr.Dataset:
    return xr.open_zarr(store, consolidated=False, zarr_format=3).load()


# -- windows and model inputs ---------------------------------------------------------------------


def calendar(steps: int, start: datetime, step_minutes: int) -> tuple[np.ndarray, np.ndarray]:
    """Time-of-day slot (``step_minutes`` each) and day of week (0 = Monday) of each step from ``start``.

    With a midnight start and 5-minute steps, the slot is the row index mod 288.
    """
    minutes = start.hour * 60 + start.minute + np.arange(steps) * step_minutes
    return (minutes % MINUTES_PER_DAY) // step_minutes, (start.weekday() + minutes // MINUTES_PER_DAY) % 7


def split_windows(
    steps: int, input_steps: int, horizon: int, split: tuple[float, float, float]
) -> dict[str, np.ndarray]:
    """First-step indices of the train, validation and test windows (chronological, no straddling)."""
    cuts = [0, round(steps * split[0]), round(steps * (split[0] + split[1])), steps]
    span = input_steps + horizon
    return {name: np.arange(cuts[i], max(cuts[i], cuts[i + 1] - span + 1))
            for i, name in enumerate(("train", "validation", "test"))}


class GraphScaling(BaseModel):
    """What turns a graph store into model inputs; fitted on the training part, saved with the model."""

    model_config = ConfigDict(extra="forbid")
    sensor_ids: list[str]
    signal_mean: float
    signal_std: float
    location_centre: tuple[float, float]  # lon, lat
    location_scale: float
    use_locations: bool
    predict_change: bool  # the model answers the change from the last observed speed

    @classmethod
    def fit(cls, graph: xr.Dataset, train_steps: int, model: TrafficModelConfig) -> GraphScaling:
        train = graph["speed"].values[:train_steps]
        lonlat = np.stack([graph["longitude"].values, graph["latitude"].values], axis=1)
        centre = (lonlat.max(0) + lonlat.min(0)) / 2
        return cls(
            sensor_ids=[str(s) for s in graph["sensor"].values],
            signal_mean=float(np.nanmean(train)),
            signal_std=float(max(np.nanstd(train), 1e-6)),
            location_centre=tuple(centre.tolist()),
            location_scale=float(max(np.abs(lonlat - centre).max(), 1e-6)),
            use_locations=model.use_locations,
            predict_change=model.predict_change,
        )


@dataclass
class GraphWindows:
    """Model inputs and targets of windows of a graph store (``starts`` = first input step)."""

    speeds: np.ndarray  # (steps, sensors), NaN = missing
    slot: np.ndarray  # time-of-day slot of each step
    slots_per_day: int
    day_of_week: np.ndarray
    locations: torch.Tensor | None  # (sensors, 2), normalised
    scaling: GraphScaling
    input_steps: int
    horizon: int

    @classmethod
    def of(cls, graph: xr.Dataset, scaling: GraphScaling, config: TrafficConfig) -> GraphWindows:
        ids = [str(s) for s in graph["sensor"].values]
        if ids != scaling.sensor_ids:
            raise ValueError(
                f"the model was trained on {len(scaling.sensor_ids)} sensors, this graph has {len(ids)} "
                "(or in another order): a graph model is tied to its sensors"
            )
        speeds = graph["speed"].values
        slot, day_of_week = calendar(len(speeds), config.start, config.step_minutes)
        locations = None
        if scaling.use_locations:
            lonlat = np.stack([graph["longitude"].values, graph["latitude"].values], axis=1)
            locations = torch.tensor((lonlat - scaling.location_centre) / scaling.location_scale, dtype=torch.float32)
        return cls(speeds, slot, MINUTES_PER_DAY // config.step_minutes, day_of_week, locations, scaling,
                   config.input_steps, config.horizon)

    def inputs(self, starts: np.ndarray) -> dict[str, torch.Tensor]:
        """The graph encoder's inputs: standardised speeds (missing -> the training mean), calendar, places."""
        steps = starts[:, None] + np.arange(self.input_steps)  # (B, T)
        signals = (self.speeds[steps] - self.scaling.signal_mean) / self.scaling.signal_std
        inputs = {
            "signals": torch.tensor(np.nan_to_num(signals, nan=0.0)[..., None], dtype=torch.float32),
            "time_of_day": torch.tensor(self.slot[steps] / self.slots_per_day, dtype=torch.float32),
            "day_of_week": torch.tensor(self.day_of_week[steps], dtype=torch.long),
        }
        if self.locations is not None:
            inputs["locations"] = self.locations
        return inputs

    def targets(self, starts: np.ndarray) -> np.ndarray:
        """Observed speeds ``(B, sensors, horizon)``, NaN where missing."""
        steps = starts[:, None] + self.input_steps + np.arange(self.horizon)
        return self.speeds[steps].transpose(0, 2, 1)

    def reference(self, starts: np.ndarray) -> np.ndarray:
        """What the model's answer is added to: the last observed speeds, or zero for absolute speeds."""
        if self.scaling.predict_change:
            return last_value_forecast(self, starts)
        return np.zeros((len(starts), self.speeds.shape[1], self.horizon), "float32")

    def model_targets(self, starts: np.ndarray) -> torch.Tensor:
        """Training targets in the model's terms (speeds, or changes from the last observed speed)."""
        return torch.tensor(self.targets(starts) - self.reference(starts))


def forecast(model: AllSpark, windows: GraphWindows, starts: np.ndarray, batch_size: int) -> np.ndarray:
    """Predicted speeds ``(windows, sensors, horizon)`` for windows starting at ``starts``."""
    parts = [model.predict(windows.inputs(batch)).cpu().numpy() + windows.reference(batch)
             for batch in (starts[i : i + batch_size] for i in range(0, len(starts), batch_size))]
    return np.concatenate(parts) if parts else np.empty((0, windows.speeds.shape[1], windows.horizon), "float32")


# -- baselines and metrics ------------------------------------------------------------------------


def last_value_forecast(windows: GraphWindows, starts: np.ndarray) -> np.ndarray:
    """Each sensor's last observed input speed, held for every horizon (training mean if none)."""
    steps = starts[:, None] + np.arange(windows.input_steps)
    history = pd.DataFrame(windows.speeds[steps].reshape(-1, windows.speeds.shape[1]))
    last = history.groupby(np.repeat(np.arange(len(starts)), windows.input_steps)).last().to_numpy()
    last = np.where(np.isnan(last), windows.scaling.signal_mean, last)
    return np.repeat(last[:, :, None], windows.horizon, axis=2).astype("float32")


def historical_average_forecast(windows: GraphWindows, starts: np.ndarray, train_steps: int) -> np.ndarray:
    """Mean training speed of each sensor at the target's time-of-day slot (training mean if unseen)."""
    train = pd.DataFrame(windows.speeds[:train_steps])
    table = train.groupby(windows.slot[:train_steps]).mean().reindex(range(windows.slots_per_day)).to_numpy()
    table = np.where(np.isnan(table), windows.scaling.signal_mean, table)
    steps = starts[:, None] + windows.input_steps + np.arange(windows.horizon)  # (B, H)
    return table[windows.slot[steps]].transpose(0, 2, 1).astype("float32")


def forecast_metrics(predicted: np.ndarray, observed: np.ndarray, step_minutes: int) -> dict:
    """MAE, RMSE and MAPE (%) at 15, 30 and 60 minutes and over all horizons; missing (NaN or 0) masked.

    ``predicted`` and ``observed`` are ``(..., horizon)``.
    """
    def score(p: np.ndarray, o: np.ndarray) -> dict:
        known = np.isfinite(o) & (o != 0) & np.isfinite(p)
        error = p[known] - o[known]
        if not known.any():
            return {"mae": None, "rmse": None, "mape": None, "n": 0}
        return {"mae": float(np.abs(error).mean()), "rmse": float(np.sqrt((error**2).mean())),
                "mape": float(np.abs(error / o[known]).mean() * 100), "n": int(known.sum())}

    horizon = observed.shape[-1]
    result = {f"{m} min": score(predicted[..., m // step_minutes - 1], observed[..., m // step_minutes - 1])
              for m in REPORTED_MINUTES if m % step_minutes == 0 and m // step_minutes <= horizon}
    result["all horizons"] = score(predicted, observed)
    return result


# -- fine-tuning and inference --------------------------------------------------------------------


def fit_model(config: TrafficConfig, graph: xr.Dataset, log=print) -> tuple[AllSpark, GraphScaling, dict]:
    """Fine-tune a fresh AllSpark graph model on the training windows; return it, its scaling, its log."""
    if config.train is None:
        raise ValueError(f"traffic run {config.name!r} has no train settings: nothing to fine-tune")
    settings = config.train
    generator = seed_everything(config.seed)
    parts = split_windows(graph.sizes["time"], config.input_steps, config.horizon, config.split)
    train_steps = round(graph.sizes["time"] * config.split[0])
    if len(parts["train"]) == 0:
        raise ValueError(f"{config.speeds}: the training part ({train_steps} steps) holds no full window")
    scaling = GraphScaling.fit(graph, train_steps, config.model)
    windows = GraphWindows.of(graph, scaling, config)
    model = AllSpark(config.model.allspark_config(graph.sizes["sensor"], config.horizon, config.step_minutes))
    model.head.scaling.fit(windows.model_targets(parts["train"]))
    train_starts = parts["train"][:: settings.window_stride]
    batches = -(-len(train_starts) // settings.batch_size)
    trainer = Trainer(model, TrainingSettings(learning_rate=settings.learning_rate, epochs=settings.epochs,
                                              warmup_epochs=settings.warmup_epochs,
                                              weight_decay=settings.weight_decay), batches)
    history = []
    started = time.perf_counter()
    for epoch in range(settings.epochs):
        order = train_starts[torch.randperm(len(train_starts), generator=generator).numpy()]
        losses = [trainer.step(windows.inputs(b), windows.model_targets(b))
                  for b in np.array_split(order, batches)]
        trainer.finish_epoch()
        validation = forecast_metrics(forecast(model, windows, parts["validation"], config.inference_batch),
                                      windows.targets(parts["validation"]), config.step_minutes)["all horizons"]
        history.append({"epoch": epoch + 1, "loss": float(np.mean(losses)), "validation_mae": validation["mae"]})
        log(f"epoch {epoch + 1}/{settings.epochs}: loss {history[-1]['loss']:.4f}, "
            f"validation MAE {validation['mae'] if validation['mae'] is None else round(validation['mae'], 3)}")
    return model, scaling, {
        "llm_layers": config.model.llm_layers,
        "epochs": history,
        "train_windows": len(train_starts),
        "validation_windows": len(parts["validation"]),
        "training_seconds": round(time.perf_counter() - started, 1),
    }


def train_traffic(config: TrafficConfig, store: str, log=print) -> dict:
    """Fine-tune on the graph store and save the checkpoint (model + scaling) in the work folder."""
    model, scaling, training = fit_model(config, open_graph(store), log)
    directory = config.work_dir() / "checkpoint"
    partial = directory.with_name("checkpoint.partial")
    shutil.rmtree(partial, ignore_errors=True)
    save_checkpoint(model, partial)
    (partial / SCALING_FILE).write_text(scaling.model_dump_json(indent=2))
    (partial / "training_metrics.json").write_text(json.dumps(training, indent=2))
    shutil.rmtree(directory, ignore_errors=True)
    partial.rename(directory)
    return {"checkpoint": str(directory), **training}


def load_traffic_model(checkpoint: str | Path) -> tuple[AllSpark, GraphScaling]:
    """A fine-tuned graph model and the scaling saved beside it."""
    path = Path(checkpoint)
    if not (path / SCALING_FILE).exists():
        raise FileNotFoundError(f"checkpoint {path} has no {SCALING_FILE}: it was not written by the traffic flow")
    return load_checkpoint(path), GraphScaling.model_validate_json((path / SCALING_FILE).read_text())


def infer_traffic(config: TrafficConfig, store: str, checkpoint: str) -> dict:
    """Forecast every test window into ``<work>/forecast.zarr``; score the model and both baselines."""
    graph = open_graph(store)
    model, scaling = load_traffic_model(checkpoint)
    windows = GraphWindows.of(graph, scaling, config)
    starts = split_windows(graph.sizes["time"], config.input_steps, config.horizon, config.split)["test"]
    if len(starts) == 0:
        raise ValueError(f"{config.speeds}: the test part holds no full window")
    started = time.perf_counter()
    predicted = forecast(model, windows, starts, config.inference_batch)
    seconds = time.perf_counter() - started
    observed = windows.targets(starts)
    train_steps = round(graph.sizes["time"] * config.split[0])
    metrics = {
        "allspark": forecast_metrics(predicted, observed, config.step_minutes),
        "last_value": forecast_metrics(last_value_forecast(windows, starts), observed, config.step_minutes),
        "historical_average": forecast_metrics(historical_average_forecast(windows, starts, train_steps), observed,
                                               config.step_minutes),
    }
    dims = ("window", "sensor", "horizon")
    forecasts = xr.Dataset(
        {"predicted": (dims, predicted), "observed": (dims, observed), "issued_step": ("window", starts + config.input_steps - 1)},
        coords={"sensor": graph["sensor"].values.astype(object), "horizon": np.arange(1, config.horizon + 1)},
        attrs={"metrics": json.dumps(metrics)},
    )
    path = config.work_dir() / "forecast.zarr"
    _write_zarr(forecasts, path)
    return {"store": str(path), "test_windows": len(starts), "inference_seconds": round(seconds, 1), "metrics": metrics}


# -- publishing -----------------------------------------------------------------------------------


def forecast_frame(forecasts: xr.Dataset, graph: xr.Dataset, start: datetime, step_minutes: int) -> gpd.GeoDataFrame:
    """One point row per forecast, sensor and horizon: issue and valid times, predicted and observed speed."""
    windows, sensors, horizons = forecasts["predicted"].shape
    issued = np.repeat(forecasts["issued_step"].values, sensors * horizons)
    horizon = np.tile(forecasts["horizon"].values, windows * sensors)
    sensor = np.tile(np.repeat(np.arange(sensors), horizons), windows)
    issued_at = pd.Timestamp(start) + pd.to_timedelta(issued * step_minutes, unit="min")
    return gpd.GeoDataFrame(
        {
            "sensor_id": graph["sensor"].values.astype(object)[sensor],
            "issued_at": issued_at,
            "horizon_minutes": (horizon * step_minutes).astype("int16"),
            "valid_at": issued_at + pd.to_timedelta(horizon * step_minutes, unit="min"),
            "predicted_speed": forecasts["predicted"].values.ravel(),
            "observed_speed": forecasts["observed"].values.ravel(),
        },
        geometry=gpd.points_from_xy(graph["longitude"].values[sensor], graph["latitude"].values[sensor]),
        crs="EPSG:4326",
    )


def publish_traffic(config: TrafficConfig, ingested: dict, checkpoint: str, inferred: dict) -> dict:
    """Write the GeoParquet of forecasts with metrics, config, model and STAC (``publish_table``)."""
    graph = open_graph(ingested["store"])
    forecasts = xr.open_zarr(inferred["store"], consolidated=False, zarr_format=3).load()
    if config.forecast == "latest":
        forecasts = forecasts.isel(window=[-1])
    frame = forecast_frame(forecasts, graph, config.start, config.step_minutes)
    training_file = Path(checkpoint) / "training_metrics.json"
    metrics = {
        "flow": "traffic",
        "name": config.name,
        "note": "Test-split metrics over all test windows; zeros (missing speeds) are masked. "
                "Published rows: " + ("the latest forecast whose 12 future steps are observed."
                                      if config.forecast == "latest" else "every test window's forecast."),
        "data": {key: ingested[key] for key in ("sensors", "steps", "missing_speeds", "dropped_sensors")}
                | {"test_windows": inferred["test_windows"], "adjacency_used_by_model": False},
        "fine_tuning": json.loads(training_file.read_text()) if training_file.exists() else None,
        "test": inferred["metrics"],
        "inference_seconds": inferred["inference_seconds"],
        "published_rows": len(frame),
    }
    model, _ = load_traffic_model(checkpoint)
    sensors, horizon = len(graph["sensor"]), config.horizon
    model_fields = publish.mlm_fields(
        model,
        architecture="AllSpark graph: STAEformer-style spatio-temporal encoder, Lynx resampler bridge, "
                     "frozen causal LM with bottleneck adapters, linear per-sensor head",
        tasks=["regression"],
        inputs=[{
            "name": "sensor speeds",
            "bands": [],
            "input": {"shape": [-1, config.input_steps, sensors, 1], "dim_order": ["batch", "time", "nodes", "features"],
                      "data_type": "float32"},
        }],
        outputs=[{
            "name": "speed change from the last observed speed (mph)" if config.model.predict_change
                    else "speed forecast (mph)",
            "tasks": ["regression"],
            "result": {"shape": [-1, sensors, horizon], "dim_order": ["batch", "nodes", "time"], "data_type": "float32"},
        }],
    )
    first = config.start
    last = first + timedelta(minutes=config.step_minutes * (graph.sizes["time"] - 1))
    outputs = publish.publish_table(
        config.flow_dir,
        item_id=f"{config.name}-speed-forecast",
        frame=frame,
        title="Speed forecasts: one point per sensor and horizon (5 to 60 min), predicted and observed",
        time_range=(first, last),
        input_files=config.input_files,
        config_yaml=config.to_yaml(),
        config=config.model_dump(mode="json"),
        metrics=metrics,
        checkpoint=Path(checkpoint),
        model_fields=model_fields,
    )
    return outputs | {"metrics_summary": metrics}

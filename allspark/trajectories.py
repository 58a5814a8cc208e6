"""Pedestrian and vehicle trajectories: read, window, fine-tune AllSpark, predict, publish.

The steps of the ``trajectories`` flow as plain functions (``flows/trajectories.py`` calls them one
task each):

- **Read** (:func:`read_tracks`): the ETH/UCY text format (``frame ped_id x y``, whitespace
  separated, metres; ``frame_step`` frame numbers per step) or a table (CSV or Parquet) whose
  agent, time and x/y columns the config names. Schema errors name the file and the row: a
  missing column, text in a numeric column, NaN coordinates, a duplicate (time, agent) row, a
  time off the step grid. Rows out of time order are *sorted*, and counted in the summary.
- **Windows** (:func:`build_windows`): ``observed_steps`` + ``future_steps`` consecutive steps on
  the file's time grid. An agent is a focal agent of a window when it is seen at every step of
  it; a window is kept when it has at least ``min_agents`` focal agents (2 = the Social-GAN rule
  "more than one pedestrian"). Neighbours are all other agents seen in at least one observed
  step (the nearest ``max_neighbours``), relative to the focal agent's last observed position,
  NaN where not seen, as :mod:`allspark.model.encoders.trajectory` expects. Tracks shorter than a
  window are skipped and counted.
- **Fine-tune** (:func:`fine_tune_trajectories`): the AllSpark trajectory modality with K
  candidate futures; targets are future positions relative to the last observed one, minus the
  constant-velocity extrapolation by default (``model.predict_residual``: the model learns how
  people deviate from walking straight on, a strong prior on a small training budget; off, it
  learns the positions themselves, as TUTR does); the head's target scaling is fitted on the
  training targets; scenes are randomly rotated in training.
- **Infer, score, publish**: K futures and their probabilities per window; ADE/FDE of the most
  likely future and best-of-K; a GeoParquet with one row per agent and window.

Coordinates: ETH/UCY metres are local to the scene. With ``origin`` and ``crs`` in the config the
published geometries are ``origin + local metres`` in that CRS; without them they are written in
:data:`LOCAL_CRS_WKT`, a local engineering CRS (metres, x east, y north) that GIS tools open but
that has no place on Earth. Table inputs are in a projected CRS (``input_crs``), or in lon/lat,
which is projected to its UTM zone for modelling and publishing.
"""

from __future__ import annotations

import json
import math
import shutil
import time
import warnings
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import ClassVar, Literal

import geopandas as gpd
import numpy as np
import pandas as pd
import pyproj
import torch
import zarr
from pydantic import Field, model_validator
from shapely import LineString, MultiLineString

from allspark import publish
from allspark.config import RunConfig, StrictModel, load_config
from allspark.model.llm import SMOLLM2
from allspark.paths import check_writable, total_size

LOCAL_CRS_WKT = (
    'ENGCRS["AllSpark local scene (metres from the data set origin)",EDATUM["scene origin"],'
    'CS[Cartesian,2],AXIS["easting (x)",east,ORDER[1],LENGTHUNIT["metre",1]],'
    'AXIS["northing (y)",north,ORDER[2],LENGTHUNIT["metre",1]]]'
)
TABLE_SUFFIXES = {".csv", ".parquet"}
TARGET_FILE = "target.json"  # in a checkpoint: what its futures are relative to
WINDOW_RULE = (
    "windows of observed+future consecutive steps on each file's time grid; focal agents are seen at every "
    "step; a window is kept when it has at least min_agents focal agents (2 = Social-GAN's 'more than one "
    "pedestrian'); neighbours are the other agents seen in at least one observed step"
)


class TableColumns(StrictModel):
    """Column names of a table input (CSV or Parquet)."""

    agent: str = "agent_id"
    time: str = Field("timestamp", description="seconds (numbers) or date-times")
    x: str = "x"
    y: str = "y"


class TrajectoryModelConfig(StrictModel):
    """The AllSpark trajectory model (encoder, bridge, LM depth, K futures)."""

    llm: str = Field(SMOLLM2, description='"smollm2", a local path or a cached HF model id')
    llm_layers: int | None = Field(4, ge=1, description="keep the first N decoder layers of the LM (None: all)")
    width: int = Field(64, ge=2, description="encoder token width")
    depth: int = Field(2, ge=0, description="encoder Transformer layers (paper: 2)")
    num_queries: int = Field(8, ge=1)
    bridge_depth: int = Field(2, ge=1)
    adapter_every: int = Field(2, ge=0)
    modes: int = Field(20, ge=1, description="candidate futures K")
    predict_residual: bool = Field(True, description="learn the offset from the constant-velocity extrapolation")
    prompt: str | None = Field(None, min_length=1, description="user prompt replacing the paper's trajectory prompts")
    use_language_model: bool = Field(True, description="False: encoder, bridge and head only (the ablation)")

    def allspark_config(self, horizon: int):
        from allspark.model.model import AllSparkConfig

        return AllSparkConfig(
            modality="trajectory",
            llm=self.llm,
            llm_layers=self.llm_layers,
            encoder={"width": self.width, "depth": self.depth},
            bridge={"num_queries": self.num_queries, "depth": self.bridge_depth},
            adapters={"every": self.adapter_every},
            head={"kind": "trajectory", "horizon": horizon, "modes": self.modes},
            prompt=self.prompt,
            use_language_model=self.use_language_model,
        )


class TrajectoryTrainConfig(StrictModel):
    """Fine-tuning settings (AdamW, cosine schedule with warm-up)."""

    epochs: int = Field(2, ge=1)
    batch_size: int = Field(32, ge=1)
    learning_rate: float = Field(5e-4, gt=0, description="paper: 1e-5 over 30 epochs; higher for short CPU runs")
    warmup_epochs: float = Field(0.2, ge=0)
    weight_decay: float = Field(0.05, ge=0)
    max_windows: int | None = Field(None, ge=1, description="random subsample of training windows (seeded)")
    rotate: bool = Field(True, description="rotate each training scene by a random angle (augmentation)")


class TrajectoriesConfig(RunConfig):
    """Everything one run of the trajectories flow needs."""

    kind: ClassVar[str] = "trajectories"

    name: str = Field("trajectories", pattern=r"^[A-Za-z0-9_.-]+$")
    format: Literal["eth_ucy", "table"] = "eth_ucy"
    train_files: list[Path] = Field(default_factory=list, description="files or folders (all inputs inside)")
    predict_files: list[Path] = Field(min_length=1, description="files or folders to predict and publish")
    columns: TableColumns = Field(default_factory=TableColumns, description="table format only")
    input_crs: str | None = Field(None, description="table format: CRS of x/y (projected, or lon/lat)")
    frame_step: int = Field(10, ge=1, description="eth_ucy: frame numbers between two steps")
    step_seconds: float = Field(0.4, gt=0, description="time between two steps (ETH/UCY: 0.4 s = 2.5 fps)")
    observed_steps: int = Field(8, ge=2)
    future_steps: int = Field(12, ge=1)
    min_agents: int = Field(2, ge=1, description="focal agents a window needs (2: the Social-GAN rule)")
    max_neighbours: int = Field(16, ge=0, description="nearest neighbours kept per focal agent")
    start_time: datetime | None = Field(None, description="eth_ucy: date-time of frame 0 (else times in seconds)")
    origin: tuple[float, float] | None = Field(None, description="eth_ucy: map position of local (0, 0) in crs")
    crs: str | None = Field(None, description="eth_ucy: CRS of origin (a projected CRS in metres)")
    model: TrajectoryModelConfig = Field(default_factory=TrajectoryModelConfig)
    train: TrajectoryTrainConfig | None = Field(default_factory=TrajectoryTrainConfig)
    checkpoint: Path | None = Field(None, description="use this checkpoint instead of fine-tuning")
    inference_batch: int = Field(64, ge=1)

    @model_validator(mode="after")
    def _consistent(self) -> TrajectoriesConfig:
        if (self.origin is None) != (self.crs is None):
            raise ValueError("give origin and crs together (or neither: a local engineering CRS)")
        if self.crs is not None and not pyproj.CRS(self.crs).is_projected:
            raise ValueError(f"crs {self.crs!r} must be projected (metres), since origin + local metres are added")
        if self.format == "table" and self.input_crs is None:
            raise ValueError("the table format needs input_crs (the CRS of its x/y columns)")
        if self.train is None and self.checkpoint is None:
            raise ValueError("give either train (fine-tune first) or checkpoint (use a trained model)")
        if self.train is not None and self.checkpoint is None and not self.train_files:
            raise ValueError("fine-tuning needs train_files")
        return self

    @property
    def window(self) -> int:
        return self.observed_steps + self.future_steps

    @property
    def run_dir(self) -> Path:
        return self.output_dir / self.name



def load_trajectories_config(path: str | Path, **overrides: object) -> TrajectoriesConfig:
    """Read a trajectories config from YAML, apply overrides, validate (errors name the file and keys)."""
    return load_config(TrajectoriesConfig, path, **overrides)


# -- reading --------------------------------------------------------------------------------------


class TrackError(ValueError):
    """Trajectory input that cannot be used; the message names the file and the row."""


@dataclass
class Tracks:
    """One file's points on its step grid: ``frame`` (int), ``agent`` (str), ``x``, ``y`` (metres), ``row``."""

    file: Path
    points: pd.DataFrame
    frames_per_step: int
    time_origin: datetime | None  # date-time of frame 0; None = times are seconds from frame 0
    rows_out_of_order: int = 0


def input_files(paths: list[Path], format: str) -> list[Path]:
    """Files named, and the input files inside folders named, sorted; a missing path is an error."""
    suffixes = {".txt"} if format == "eth_ucy" else TABLE_SUFFIXES
    files = []
    for path in paths:
        if path.is_dir():
            found = sorted(p for p in path.iterdir() if p.suffix.lower() in suffixes)
            if not found:
                raise TrackError(f"{path}: no {'/'.join(sorted(suffixes))} files in this folder")
            files += found
        elif path.is_file():
            files.append(path)
        else:
            raise TrackError(f"{path}: no such file or folder")
    return files


def _numeric(frame: pd.DataFrame, column: str, file: Path, rows: np.ndarray) -> np.ndarray:
    """A column as float, or an error naming the first row whose text is not a number."""
    values = pd.to_numeric(frame[column], errors="coerce")
    text = frame[column].astype("string")
    bad = values.isna() & text.notna() & ~text.str.strip().str.lower().isin(["nan", "", "<na>"])
    if bad.any():
        i = int(np.flatnonzero(bad.to_numpy())[0])
        raise TrackError(f"{file}: row {rows[i]}: column {column!r} holds {text.iloc[i]!r}, expected a number")
    return values.to_numpy(dtype="float64")


def _check_points(file: Path, points: pd.DataFrame) -> int:
    """Check NaN coordinates and duplicate (frame, agent) rows; sort by frame; return rows out of order."""
    missing = ~np.isfinite(points[["x", "y"]].to_numpy()).all(axis=1)
    if missing.any():
        row = points["row"].to_numpy()[missing][0]
        raise TrackError(f"{file}: row {row}: missing or NaN coordinates; every row needs a finite x and y")
    duplicated = points.duplicated(["frame", "agent"], keep=False).to_numpy()
    if duplicated.any():
        first = points[duplicated].iloc[0]
        rows = points["row"][duplicated & (points["frame"] == first["frame"]).to_numpy()
                             & (points["agent"] == first["agent"]).to_numpy()].tolist()
        raise TrackError(f"{file}: rows {rows}: agent {first['agent']!r} appears more than once at the same time "
                         f"(frame {first['frame']}); one position per agent and time is expected")
    out_of_order = int((np.diff(points["frame"].to_numpy()) < 0).sum())
    if out_of_order:
        points.sort_values(["frame", "agent"], kind="stable", inplace=True, ignore_index=True)
    return out_of_order


def read_eth_ucy(file: Path, config: TrajectoriesConfig) -> Tracks:
    """Read an ETH/UCY text file: ``frame ped_id x y`` per line, whitespace separated, metres."""
    try:
        raw = pd.read_csv(file, sep=r"\s+", header=None, dtype=str, names=["frame", "agent", "x", "y"],
                          skip_blank_lines=True)
    except pd.errors.EmptyDataError:
        raise TrackError(f"{file}: the file is empty") from None
    except pd.errors.ParserError as err:
        raise TrackError(f"{file}: not in the ETH/UCY format 'frame ped_id x y' ({err})") from None
    rows = np.arange(1, len(raw) + 1)
    frame = _numeric(raw, "frame", file, rows)
    agent = _numeric(raw, "agent", file, rows)
    for name, values in (("frame", frame), ("ped_id", agent)):
        bad = ~np.isfinite(values) | (values != np.round(values))
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise TrackError(f"{file}: row {rows[i]}: {name} {raw.iloc[i, 0 if name == 'frame' else 1]!r} "
                             "is not a whole number")
    frame = frame.astype(np.int64)
    off_grid = (frame - frame.min()) % config.frame_step != 0
    if off_grid.any():
        i = int(np.flatnonzero(off_grid)[0])
        raise TrackError(f"{file}: row {rows[i]}: frame {frame[i]} is not on the grid of frame_step="
                         f"{config.frame_step} starting at frame {frame.min()}")
    points = pd.DataFrame({"frame": frame, "agent": agent.astype(np.int64).astype(str),
                           "x": _numeric(raw, "x", file, rows), "y": _numeric(raw, "y", file, rows), "row": rows})
    out_of_order = _check_points(file, points)
    return Tracks(file, points, config.frame_step, config.start_time, out_of_order)


def read_table(file: Path, config: TrajectoriesConfig) -> Tracks:
    """Read a CSV or Parquet table of agent positions; times must lie on the ``step_seconds`` grid."""
    columns = config.columns
    names = [columns.agent, columns.time, columns.x, columns.y]
    if file.suffix.lower() == ".parquet":
        raw = pd.read_parquet(file)
        rows = np.arange(1, len(raw) + 1)  # 1-based data rows
    else:
        raw = pd.read_csv(file, dtype=str)
        rows = np.arange(2, len(raw) + 2)  # line numbers (the header is line 1)
    missing = [name for name in names if name not in raw.columns]
    if missing:
        raise TrackError(f"{file}: missing column(s) {missing}; found {list(raw.columns)} "
                         "(set columns.agent/time/x/y in the config)")
    stamps = raw[columns.time]
    numeric_time = pd.to_numeric(stamps, errors="coerce")
    if numeric_time.notna().all():
        seconds, origin = numeric_time.to_numpy("float64"), None
    else:
        parsed = pd.to_datetime(stamps, errors="coerce", utc=True, format="ISO8601")
        if parsed.isna().any():
            i = int(np.flatnonzero(parsed.isna().to_numpy())[0])
            raise TrackError(f"{file}: row {rows[i]}: column {columns.time!r} holds {stamps.iloc[i]!r}, "
                             "expected seconds or a date-time")
        origin = datetime(1970, 1, 1, tzinfo=UTC)
        seconds = (parsed - pd.Timestamp(origin)).dt.total_seconds().to_numpy()
    steps = seconds / config.step_seconds
    off_grid = np.abs(steps - np.round(steps)) > 0.05
    if off_grid.any():
        i = int(np.flatnonzero(off_grid)[0])
        raise TrackError(f"{file}: row {rows[i]}: time {stamps.iloc[i]!r} is not on the grid of step_seconds="
                         f"{config.step_seconds}; resample the tracks to that step first")
    x, y = _numeric(raw, columns.x, file, rows), _numeric(raw, columns.y, file, rows)
    points = pd.DataFrame({"frame": np.round(steps).astype(np.int64), "agent": raw[columns.agent].astype(str).to_numpy(),
                           "x": x, "y": y, "row": rows})
    out_of_order = _check_points(file, points)
    return Tracks(file, points, 1, origin, out_of_order)


def model_crs(config: TrajectoriesConfig, tracks: list[Tracks]) -> pyproj.CRS:
    """The metric CRS the model works in and outputs are published in (see the module docstring)."""
    if config.format == "eth_ucy":
        return pyproj.CRS(config.crs) if config.crs else pyproj.CRS(LOCAL_CRS_WKT)
    crs = pyproj.CRS(config.input_crs)
    if crs.is_projected:
        return crs
    if not crs.is_geographic:
        raise ValueError(f"input_crs {config.input_crs!r} is neither projected nor lon/lat")
    points = pd.concat([t.points for t in tracks])
    return gpd.GeoSeries(gpd.points_from_xy(points.x, points.y), crs=crs).estimate_utm_crs()


def to_model_crs(tracks: Tracks, config: TrajectoriesConfig, crs: pyproj.CRS) -> None:
    """Put a file's x/y into the model CRS, in place (ETH/UCY: origin + local metres)."""
    points = tracks.points
    if config.format == "eth_ucy":
        if config.origin is not None:
            points["x"] += config.origin[0]
            points["y"] += config.origin[1]
        return
    source = pyproj.CRS(config.input_crs)
    if source != crs:
        transformer = pyproj.Transformer.from_crs(source, crs, always_xy=True)
        points["x"], points["y"] = transformer.transform(points["x"].to_numpy(), points["y"].to_numpy())


def read_tracks(file: Path, config: TrajectoriesConfig) -> Tracks:
    return read_eth_ucy(file, config) if config.format == "eth_ucy" else read_table(file, config)


# -- windows --------------------------------------------------------------------------------------


@dataclass
class Windows:
    """Windows of one or more files; positions relative to each focal agent's last observed position."""

    observed: np.ndarray  # (W, T_obs, 2)
    future: np.ndarray  # (W, T_fut, 2)
    neighbours: np.ndarray  # (W, N, T_obs, 2), NaN = not seen
    now: np.ndarray  # (W, 2) absolute last observed position in the model CRS
    frame: np.ndarray  # (W,) frame number of the last observed step
    file_index: np.ndarray  # (W,)
    agent: np.ndarray  # (W,) str
    counts: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.observed)


def build_windows(tracks: Tracks, config: TrajectoriesConfig, file_index: int = 0) -> Windows:
    """All windows of one file (see the module docstring for the rule); counts what was skipped."""
    points = tracks.points
    length, obs = config.window, config.observed_steps
    per_agent = points.groupby("agent").size()
    # tracks shorter than a window are never focal agents (counted here), but stay as neighbours
    counts = {"tracks": len(per_agent), "short_tracks_skipped": int((per_agent < length).sum()),
              "rows_out_of_order_sorted": tracks.rows_out_of_order}
    if points.empty:
        return _no_windows(config, counts | {"windows": 0, "lone_agent_windows_skipped": 0})
    agents, agent_index = np.unique(points["agent"].to_numpy(), return_inverse=True)
    first = points["frame"].min()
    step_index = ((points["frame"].to_numpy() - first) // tracks.frames_per_step).astype(np.int64)
    positions = np.full((step_index.max() + 1, len(agents), 2), np.nan)
    positions[step_index, agent_index] = points[["x", "y"]].to_numpy()
    seen = np.isfinite(positions[..., 0])
    cumulative = np.concatenate([np.zeros((1, len(agents)), np.int64), np.cumsum(seen, axis=0)])
    complete = (cumulative[length:] - cumulative[:-length]) == length  # (starts, agents)
    focal_count = complete.sum(axis=1)
    kept = focal_count >= config.min_agents
    counts["lone_agent_windows_skipped"] = int(focal_count[~kept].sum())
    starts, focal = np.nonzero(complete & kept[:, None])
    counts["windows"] = len(starts)
    if not len(starts):
        return _no_windows(config, counts)
    scene = positions[starts[:, None] + np.arange(length)]  # (W, length, agents, 2)
    now = scene[np.arange(len(starts)), obs - 1, focal]  # (W, 2)
    relative = scene - now[:, None, None, :]
    rows = np.arange(len(starts))
    track = relative[rows, :, focal]  # (W, length, 2)
    others = relative[:, :obs].transpose(0, 2, 1, 3)  # (W, agents, obs, 2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # agents not seen in the observed steps: all NaN
        gap = others - track[:, None, :obs]  # (W, agents, obs, 2): neighbour minus focal, step by step
        distance = np.nanmin(np.linalg.norm(gap, axis=-1), axis=-1)  # (W, agents): closest approach
    distance = np.where(np.isfinite(distance), distance, np.inf)
    distance[rows, focal] = np.inf
    nearest = np.argsort(distance, axis=1, kind="stable")[:, : config.max_neighbours]
    neighbours = np.full((len(starts), config.max_neighbours, obs, 2), np.nan)
    chosen = others[rows[:, None], nearest]
    found = np.isfinite(np.take_along_axis(distance, nearest, axis=1))
    neighbours[:, : nearest.shape[1]] = np.where(found[..., None, None], chosen, np.nan)
    return Windows(
        observed=track[:, :obs].astype("float32"),
        future=track[:, obs:].astype("float32"),
        neighbours=neighbours.astype("float32"),
        now=now,
        frame=first + (starts + obs - 1) * tracks.frames_per_step,
        file_index=np.full(len(starts), file_index, np.int16),
        agent=agents[focal],
        counts=counts,
    )


def _no_windows(config: TrajectoriesConfig, counts: dict) -> Windows:
    obs, fut = config.observed_steps, config.future_steps
    return Windows(np.zeros((0, obs, 2), "float32"), np.zeros((0, fut, 2), "float32"),
                   np.zeros((0, config.max_neighbours, obs, 2), "float32"), np.zeros((0, 2)),
                   np.zeros(0, np.int64), np.zeros(0, np.int16), np.zeros(0, str), counts)


def concat_windows(parts: list[Windows]) -> Windows:
    """Windows of several files together; counts summed."""
    counts: dict = {}
    for part in parts:
        for key, value in part.counts.items():
            counts[key] = counts.get(key, 0) + value
    return Windows(*(np.concatenate([getattr(p, name) for p in parts]) for name in
                     ("observed", "future", "neighbours", "now", "frame", "file_index", "agent")), counts=counts)


# -- ingest into Zarr -----------------------------------------------------------------------------

ARRAYS = ("observed", "future", "neighbours", "now", "frame", "file_index")


def write_windows(windows: Windows, store: Path, attrs: dict) -> None:
    """Write windows to a Zarr group (``<store>.partial`` first, moved into place when complete)."""
    partial = store.with_name(store.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    group = zarr.open_group(partial, mode="w", zarr_format=3)
    agents, codes = np.unique(windows.agent.astype(str), return_inverse=True)
    for name in ARRAYS:
        values = getattr(windows, name)
        group.create_array(name, data=values, chunks=(max(1, min(len(values), 4096)), *values.shape[1:]))
    group.create_array("agent_code", data=codes.astype(np.int32), chunks=(max(1, min(len(codes), 4096)),))
    group.attrs.update({**attrs, "agents": agents.tolist(), "counts": windows.counts, "rule": WINDOW_RULE})
    shutil.rmtree(store, ignore_errors=True)
    partial.rename(store)


def read_windows(store: str | Path) -> tuple[Windows, dict]:
    """Windows and attributes of a store written by :func:`write_windows`."""
    group = zarr.open_group(store, mode="r")
    attrs = dict(group.attrs)
    arrays = {name: group[name][:] for name in ARRAYS}
    agent = np.asarray(attrs["agents"], dtype=object)[group["agent_code"][:]] if attrs["agents"] else np.zeros(0, str)
    return Windows(**arrays, agent=agent, counts=attrs["counts"]), attrs


def ingest_trajectories(config: TrajectoriesConfig) -> dict:
    """Read, check and window the train and predict files into ``<work>/{train,predict}.zarr``.

    Every file is read and checked before anything is written; returns the stores, the model
    CRS (WKT) and the per-split counts (files, tracks, windows, skips).
    """
    splits = {"predict": input_files(config.predict_files, config.format)}
    if config.train is not None and config.checkpoint is None:
        splits["train"] = input_files(config.train_files, config.format)
    check_writable(config.run_dir, config.work_dir(), min_free_bytes=total_size(f for fs in splits.values() for f in fs))
    tracks = {split: [read_tracks(f, config) for f in files] for split, files in splits.items()}
    crs = model_crs(config, [t for ts in tracks.values() for t in ts])
    result = {"crs": crs.to_wkt(), "stores": {}, "counts": {}}
    for split, split_tracks in tracks.items():
        for t in split_tracks:
            to_model_crs(t, config, crs)
        windows = concat_windows([build_windows(t, config, i) for i, t in enumerate(split_tracks)])
        if not len(windows):
            raise TrackError(f"no {config.observed_steps}+{config.future_steps}-step windows in the {split} files "
                             f"{[str(t.file) for t in split_tracks]} ({windows.counts})")
        store = config.work_dir() / f"{split}.zarr"
        time_origins = [t.time_origin.isoformat() if t.time_origin else None for t in split_tracks]
        write_windows(windows, store, {
            "files": [str(t.file) for t in split_tracks], "frames_per_step": [t.frames_per_step for t in split_tracks],
            "time_origins": time_origins, "step_seconds": config.step_seconds, "crs": crs.to_wkt(),
        })
        result["stores"][split] = str(store)
        result["counts"][split] = {"files": len(split_tracks), **windows.counts}
    return result


# -- model ----------------------------------------------------------------------------------------


def model_inputs(windows: Windows, index: np.ndarray | slice) -> dict[str, torch.Tensor]:
    return {"observed": torch.from_numpy(windows.observed[index]),
            "neighbours": torch.from_numpy(windows.neighbours[index])}


def rotate(inputs: dict[str, torch.Tensor], target: torch.Tensor, generator: torch.Generator):
    """Rotate each scene about the focal agent's last position by a random angle (NaN stays NaN)."""
    angle = torch.rand(len(target), generator=generator) * 2 * math.pi
    cos, sin = angle.cos(), angle.sin()
    matrix = torch.stack([torch.stack([cos, -sin], -1), torch.stack([sin, cos], -1)], -2)  # (B, 2, 2)

    def turn(values: torch.Tensor) -> torch.Tensor:
        shape = values.shape
        flat = values.reshape(len(values), -1, 2)
        return torch.einsum("bij,bnj->bni", matrix, flat).reshape(shape)

    return {name: turn(value) for name, value in inputs.items()}, turn(target)


def fine_tune_trajectories(config: TrajectoriesConfig, train_store: str, log=print) -> dict:
    """Fine-tune on the training windows; save the checkpoint in the work folder; return it and metrics."""
    from allspark.model import (
        AllSpark,
        Trainer,
        TrainingSettings,
        save_checkpoint,
        seed_everything,
    )

    settings = config.train
    windows, _ = read_windows(train_store)
    generator = seed_everything(config.seed)
    available = len(windows)
    chosen = np.arange(available)
    if settings.max_windows and settings.max_windows < available:
        chosen = np.sort(np.random.default_rng(config.seed).choice(available, settings.max_windows, replace=False))
    model = AllSpark(config.model.allspark_config(config.future_steps))
    residual = config.model.predict_residual
    model.head.scaling.fit(training_targets(windows, chosen, residual))
    batches = math.ceil(len(chosen) / settings.batch_size)
    trainer = Trainer(model, TrainingSettings(
        learning_rate=settings.learning_rate, epochs=settings.epochs, warmup_epochs=settings.warmup_epochs,
        weight_decay=settings.weight_decay), batches)
    started, losses = time.perf_counter(), []
    for epoch in range(settings.epochs):
        order = chosen[torch.randperm(len(chosen), generator=generator).numpy()]
        total = 0.0
        for b in range(batches):
            index = order[b * settings.batch_size : (b + 1) * settings.batch_size]
            inputs, target = model_inputs(windows, index), training_targets(windows, index, residual)
            if settings.rotate:
                inputs, target = rotate(inputs, target, generator)
            total += trainer.step(inputs, target) * len(index)
        trainer.finish_epoch()
        losses.append(total / len(chosen))
        log(f"epoch {epoch + 1}/{settings.epochs}: loss {losses[-1]:.4f}")
    metrics = {"training_windows": len(chosen), "available_windows": int(available),
               "epochs": settings.epochs, "llm_layers": config.model.llm_layers, "epoch_losses": losses,
               "training_seconds": round(time.perf_counter() - started, 1)}
    directory = config.work_dir() / "checkpoint"
    partial = directory.with_name("checkpoint.partial")
    shutil.rmtree(partial, ignore_errors=True)
    save_checkpoint(model, partial)
    (partial / TARGET_FILE).write_text(json.dumps({"residual_to_constant_velocity": residual}))
    (partial / "training_metrics.json").write_text(json.dumps(metrics, indent=2))
    shutil.rmtree(directory, ignore_errors=True)
    partial.rename(directory)
    return {"checkpoint": str(directory), "metrics": metrics}


def training_targets(windows: Windows, index: np.ndarray, residual: bool) -> torch.Tensor:
    """What the head learns: future positions relative to the last observed one, minus the
    constant-velocity extrapolation when ``residual``. Rotations commute with both."""
    future = windows.future[index]
    if residual:
        future = future - constant_velocity(windows.observed[index], future.shape[1])[:, 0]
    return torch.from_numpy(np.ascontiguousarray(future, dtype="float32"))


def predict_windows(checkpoint: str | Path, windows: Windows, batch_size: int) -> tuple[np.ndarray, np.ndarray]:
    """K futures ``(W, K, T, 2)`` (relative metres, most likely first) and probabilities ``(W, K)``."""
    from allspark.model import load_checkpoint

    model = load_checkpoint(checkpoint)
    target = json.loads((Path(checkpoint) / TARGET_FILE).read_text())
    futures, probabilities = [], []
    for start in range(0, len(windows), batch_size):
        out = model.predict(model_inputs(windows, slice(start, start + batch_size)))
        futures.append(out["futures"].cpu().numpy())
        probabilities.append(out["probabilities"].cpu().numpy())
    futures = np.concatenate(futures)
    if target["residual_to_constant_velocity"]:
        futures = futures + constant_velocity(windows.observed, futures.shape[2])
    return futures, np.concatenate(probabilities)


def infer_trajectories(config: TrajectoriesConfig, predict_store: str, checkpoint: str) -> str:
    """Predict every window into ``<work>/predictions-<checkpoint digest>.zarr`` (reused when present)."""
    from allspark.inference import checkpoint_digest

    store = config.work_dir() / f"predictions-{checkpoint_digest(Path(checkpoint))}.zarr"
    if store.exists():
        return str(store)
    windows, _ = read_windows(predict_store)
    futures, probabilities = predict_windows(checkpoint, windows, config.inference_batch)
    partial = store.with_name(store.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    group = zarr.open_group(partial, mode="w", zarr_format=3)
    group.create_array("futures", data=futures.astype("float32"), chunks=(min(len(futures), 1024), *futures.shape[1:]))
    group.create_array("probabilities", data=probabilities.astype("float32"),
                       chunks=(min(len(futures), 1024), probabilities.shape[1]))
    partial.rename(store)
    return str(store)


# -- metrics --------------------------------------------------------------------------------------


def displacement_errors(futures: np.ndarray, truth: np.ndarray) -> dict[str, np.ndarray]:
    """Per-window errors of K futures ``(W, K, T, 2)`` (most likely first) against ``truth`` ``(W, T, 2)``.

    ``ade``/``fde``: the most likely future's average / final displacement; ``min_ade``/``min_fde``:
    best-of-K, each minimised over K on its own (as Social-GAN and TUTR report them).
    """
    distance = np.linalg.norm(futures - truth[:, None], axis=-1)  # (W, K, T)
    ade, fde = distance.mean(axis=-1), distance[..., -1]
    return {"ade": ade[:, 0], "fde": fde[:, 0], "min_ade": ade.min(axis=1), "min_fde": fde.min(axis=1)}


def constant_velocity(observed: np.ndarray, steps: int) -> np.ndarray:
    """The last observed step's velocity, held for ``steps`` steps: ``(W, 1, steps, 2)`` relative futures."""
    velocity = observed[:, -1] - observed[:, -2]
    return (velocity[:, None] * np.arange(1, steps + 1)[:, None])[:, None]


def summarise(errors: dict[str, np.ndarray]) -> dict[str, float]:
    return {name: round(float(values.mean()), 4) for name, values in errors.items()}


# -- publishing -----------------------------------------------------------------------------------


def step_times(frames: np.ndarray, frames_per_step: int, step_seconds: float, origin: str | None) -> list:
    """Times of frame numbers: date-times after ``origin`` when given, else seconds from frame 0."""
    seconds = frames / frames_per_step * step_seconds
    if origin is None:
        return [list(map(float, row)) for row in np.atleast_2d(seconds)]
    start = datetime.fromisoformat(origin)
    return [[start + timedelta(seconds=float(s)) for s in row] for row in np.atleast_2d(seconds)]


def prediction_frame(windows: Windows, attrs: dict, futures: np.ndarray, probabilities: np.ndarray,
                     errors: dict[str, np.ndarray]) -> gpd.GeoDataFrame:
    """One row per agent and window: observed path (geometry), K futures, times, probabilities, errors.

    ``futures`` is a MultiLineString of the K predicted paths, most likely first (each starts at
    the last observed position, so it joins the observed path); ``most_likely`` and ``truth`` are
    LineStrings; ``probabilities`` is in the same order as ``futures``.
    """
    obs, fut = windows.observed.shape[1], windows.future.shape[1]
    now = windows.now[:, None]
    observed, truth, predicted = windows.observed + now, windows.future + now, futures + now[:, None]
    rows = []
    for i in range(len(windows)):
        file = int(windows.file_index[i])
        per_step, origin = attrs["frames_per_step"][file], attrs["time_origins"][file]
        frames = windows.frame[i] + np.arange(-obs + 1, fut + 1) * per_step
        times = step_times(frames, per_step, attrs["step_seconds"], origin)[0]
        start = observed[i, -1]
        rows.append({
            "agent_id": str(windows.agent[i]),
            "source_file": Path(attrs["files"][file]).name,
            "frame_now": int(windows.frame[i]),
            "time_now": times[obs - 1],
            "observed_times": times[:obs],
            "future_times": times[obs:],
            "probabilities": probabilities[i].tolist(),
            "top_probability": float(probabilities[i, 0]),
            **{name: float(values[i]) for name, values in errors.items()},
            "futures": MultiLineString([np.vstack([start, path]) for path in predicted[i]]),
            "most_likely": LineString(np.vstack([start, predicted[i, 0]])),
            "truth": LineString(np.vstack([start, truth[i]])),
            "geometry": LineString(observed[i]),
        })
    crs = pyproj.CRS(attrs["crs"])
    frame = gpd.GeoDataFrame(rows, geometry="geometry", crs=crs)
    for column in ("futures", "most_likely", "truth"):
        frame[column] = gpd.GeoSeries(frame[column], crs=crs)
    return frame


def publish_trajectories(config: TrajectoriesConfig, ingest: dict, checkpoint: str, predictions_store: str) -> dict:
    """Score the predictions and publish GeoParquet, metrics, config, model and STAC; return the paths."""
    windows, attrs = read_windows(ingest["stores"]["predict"])
    group = zarr.open_group(predictions_store, mode="r")
    futures, probabilities = group["futures"][:], group["probabilities"][:]
    errors = displacement_errors(futures, windows.future)
    frame = prediction_frame(windows, attrs, futures, probabilities, errors)
    training_file = Path(checkpoint) / "training_metrics.json"
    baseline = displacement_errors(constant_velocity(windows.observed, config.future_steps), windows.future)
    metrics = {
        "name": config.name,
        "windows_published": len(frame),
        "allspark": summarise(errors),
        "constant_velocity": {"ade": summarise(baseline)["ade"], "fde": summarise(baseline)["fde"]},
        "modes": int(futures.shape[1]),
        "counts": ingest["counts"],
        "window_rule": WINDOW_RULE,
        "fine_tuning": json.loads(training_file.read_text()) if training_file.exists() else None,
    }
    all_times = [t for row in frame["observed_times"] for t in row[:1]] + [row[-1] for row in frame["future_times"]]
    if isinstance(all_times[0], datetime):
        time_range = (min(all_times), max(all_times))
    else:  # times are seconds from frame 0 with no date: the STAC item still needs a range
        epoch = datetime(1970, 1, 1, tzinfo=UTC)
        time_range = (epoch + timedelta(seconds=min(all_times)), epoch + timedelta(seconds=max(all_times)))
    from allspark.model import load_checkpoint

    model = load_checkpoint(checkpoint)
    model_fields = publish.mlm_fields(
        model,
        architecture="AllSpark trajectory: TUTR-style step and neighbour encoder, Lynx resampler bridge, "
                     "frozen causal LM with bottleneck adapters, K-future head",
        tasks=["regression"],
        inputs=[{"name": "observed path and neighbours",
                 "input": {"shape": [-1, config.observed_steps, 2], "dim_order": ["batch", "time", "xy"],
                           "data_type": "float32"}}],
        outputs=[{"name": "candidate futures", "tasks": ["regression"],
                  "result": {"shape": [-1, model.config.head.modes, config.future_steps, 2],
                             "dim_order": ["batch", "mode", "time", "xy"], "data_type": "float32"}}],
    )
    paths = publish.publish_table(
        config.run_dir, item_id=f"{config.name}-trajectories", frame=frame,
        title="Observed paths and K predicted futures per agent and window", time_range=time_range,
        input_files=[Path(f) for f in attrs["files"]], config_yaml=config.to_yaml(),
        config=config.model_dump(mode="json"), metrics=metrics, checkpoint=Path(checkpoint), model_fields=model_fields,
    )
    return paths | {"metrics_summary": metrics}

"""Reading trajectories: track files into points on a step grid, points into windows, windows into Zarr.

- **Files** (:func:`read_eth_ucy`, :func:`read_table`): the ETH/UCY text format (``frame ped_id x
  y``, whitespace separated, metres; ``frame_step`` frame numbers per step) or a table (CSV or
  Parquet) whose agent id, time and x/y columns the config's ``table`` block names, read through
  :func:`allspark.core.tables.read_rows`. Errors name the file and the row: a missing column,
  text in a numeric column, a time that does not parse, NaN coordinates, a duplicate (time, agent)
  row, a time off the step grid. Rows out of time order (ETH/UCY: of the file; tables: of their
  agent's track) are *sorted*, and counted.
- **Coordinates** (:func:`model_crs`, :func:`to_model_crs`): ETH/UCY metres are local to the
  scene. With an ``origin`` and a ``crs`` they are placed at ``origin + local metres`` in that CRS;
  without, they stay in :data:`LOCAL_CRS_WKT`, a local engineering CRS (metres, x east, y north)
  that GIS tools open but that has no place on Earth. Tables are in a projected CRS, or in lon/lat,
  which is projected to its UTM zone.
- **Windows** (:func:`build_windows`): see :data:`WINDOW_RULE`. Neighbours are the nearest other
  agents, relative to the focal agent's last observed position, NaN where not seen, as
  :mod:`allspark.model.encoders.trajectory` expects. Tracks shorter than a window are counted.
- **Store** (:func:`write_windows`, :func:`read_windows`): one Zarr group per split.

Readers take the few values they use, not a run config.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import geopandas as gpd
import numpy as np
import pandas as pd
import pyproj
import zarr

from allspark.core.tables import ROW, TIMESTAMP, TableSchema, read_rows, row_label
from allspark.errors import InputError

LOCAL_CRS_WKT = (
    'ENGCRS["AllSpark local scene (metres from the data set origin)",EDATUM["scene origin"],'
    'CS[Cartesian,2],AXIS["easting (x)",east,ORDER[1],LENGTHUNIT["metre",1]],'
    'AXIS["northing (y)",north,ORDER[2],LENGTHUNIT["metre",1]]]'
)
SUFFIXES = {"eth_ucy": {".txt"}, "table": {".csv", ".parquet"}}
EPOCH = pd.Timestamp(0, tz="UTC")
"""Frame 0 of a table: its step grid counts from 1970-01-01 UTC."""
GRID_TOLERANCE = 0.05
"""Fraction of a step a table's time may be off its grid (rounding in written times), snapped to the grid."""
WINDOW_RULE = (
    "windows of observed+future consecutive steps on each file's time grid; focal agents are seen at every "
    "step; a window is kept when it has at least min_agents focal agents (2 = Social-GAN's 'more than one "
    "pedestrian'); neighbours are the other agents seen in at least one observed step"
)


# -- files ------------------------------------------------------------------------------------------


@dataclass
class Tracks:
    """One file's points on its step grid: ``frame`` (int), ``agent`` (str), ``x``, ``y`` (metres), ``row``."""

    file: Path
    points: pd.DataFrame
    frames_per_step: int
    time_origin: datetime | None  # date-time of frame 0; None = times are seconds from frame 0
    rows_out_of_order: int = 0


def find_input_files(paths: Sequence[Path], format: str) -> list[Path]:
    """Files named, and the input files of ``format`` inside folders named, sorted; a missing path is an error."""
    suffixes = SUFFIXES[format]
    files = []
    for path in map(Path, paths):
        if path.is_dir():
            found = sorted(p for p in path.iterdir() if p.suffix.lower() in suffixes)
            if not found:
                raise InputError(f"{path}: no {'/'.join(sorted(suffixes))} files in this folder")
            files += found
        elif path.is_file():
            files.append(path)
        else:
            raise InputError(f"{path}: no such file or folder")
    return files


def _numeric(frame: pd.DataFrame, column: str, file: Path, rows: np.ndarray) -> np.ndarray:
    """A column as float, or an error naming the first row whose text is not a number."""
    values = pd.to_numeric(frame[column], errors="coerce")
    text = frame[column].astype("string")
    bad = values.isna() & text.notna() & ~text.str.strip().str.lower().isin(["nan", "", "<na>"])
    if bad.any():
        i = int(np.flatnonzero(bad.to_numpy())[0])
        raise InputError(f"{file}: row {rows[i]}: column {column!r} holds {text.iloc[i]!r}, expected a number")
    return values.to_numpy(dtype="float64")


def _check_points(file: Path, points: pd.DataFrame) -> None:
    """NaN coordinates and a repeated (frame, agent) are errors naming the rows."""
    missing = ~np.isfinite(points[["x", "y"]].to_numpy()).all(axis=1)
    if missing.any():
        row = points["row"].to_numpy()[missing][0]
        raise InputError(f"{file}: row {row}: missing or NaN coordinates; every row needs a finite x and y")
    duplicated = points.duplicated(["frame", "agent"], keep=False).to_numpy()
    if duplicated.any():
        first = points[duplicated].iloc[0]
        rows = points["row"][duplicated & (points["frame"] == first["frame"]).to_numpy()
                             & (points["agent"] == first["agent"]).to_numpy()].tolist()
        raise InputError(f"{file}: rows {rows}: agent {first['agent']!r} appears more than once at the same time "
                         f"(frame {first['frame']}); one position per agent and time is expected")


def _sort_by_frame(points: pd.DataFrame) -> int:
    """Sort the points by frame, in place; return the rows whose frame is below the row before them."""
    out_of_order = int((np.diff(points["frame"].to_numpy()) < 0).sum())
    if out_of_order:
        points.sort_values(["frame", "agent"], kind="stable", inplace=True, ignore_index=True)
    return out_of_order


def read_eth_ucy(file: Path, frame_step: int = 10, start_time: datetime | None = None) -> Tracks:
    """Read an ETH/UCY text file: ``frame ped_id x y`` per line, whitespace separated, metres.

    ``frame_step``: frame numbers between two steps; ``start_time``: date-time of frame 0 (else
    times are seconds).
    """
    try:
        raw = pd.read_csv(file, sep=r"\s+", header=None, dtype=str, names=["frame", "agent", "x", "y"],
                          skip_blank_lines=True)
    except pd.errors.EmptyDataError:
        raise InputError(f"{file}: the file is empty") from None
    except (OSError, ValueError) as err:  # pandas' ParserError, UnicodeDecodeError
        raise InputError(f"{file}: not in the ETH/UCY format 'frame ped_id x y' ({err})") from None
    rows = np.arange(1, len(raw) + 1)
    frame = _numeric(raw, "frame", file, rows)
    agent = _numeric(raw, "agent", file, rows)
    for name, values in (("frame", frame), ("ped_id", agent)):
        bad = ~np.isfinite(values) | (values != np.round(values))
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise InputError(f"{file}: row {rows[i]}: {name} {raw.iloc[i, 0 if name == 'frame' else 1]!r} "
                             "is not a whole number")
    frame = frame.astype(np.int64)
    off_grid = (frame - frame.min()) % frame_step != 0
    if off_grid.any():
        i = int(np.flatnonzero(off_grid)[0])
        raise InputError(f"{file}: row {rows[i]}: frame {frame[i]} is not on the grid of frame_step="
                         f"{frame_step} starting at frame {frame.min()}")
    points = pd.DataFrame({"frame": frame, "agent": agent.astype(np.int64).astype(str),
                           "x": _numeric(raw, "x", file, rows), "y": _numeric(raw, "y", file, rows), "row": rows})
    _check_points(file, points)
    return Tracks(file, points, frame_step, start_time, _sort_by_frame(points))


def read_table(file: Path, schema: TableSchema) -> Tracks:
    """Read a CSV or Parquet table of agent positions through the shared ``table`` block (``schema``).

    Times lie on the grid of ``schema.time.step`` counted from 1970 UTC (within :data:`GRID_TOLERANCE`
    of a step); frame n is the n-th step. Numbers (``unit``) stay seconds, date-times keep their date
    (``time_origin``). Rows are counted out of order when their time is earlier than the row before
    them of the same agent.
    """
    rows = read_rows(file, schema)
    step = schema.time.step_delta.value  # nanoseconds
    nanoseconds = (rows[TIMESTAMP] - EPOCH).dt.as_unit("ns").astype("int64").to_numpy()
    frames = np.round(nanoseconds / step).astype(np.int64)
    off_grid = np.abs(nanoseconds - frames * step) > GRID_TOLERANCE * step
    if off_grid.any():
        i = int(np.flatnonzero(off_grid)[0])
        raise InputError(f"{file}: {row_label(rows[ROW], i, file)}, column(s) {schema.time.names()}: time "
                         f"{rows[TIMESTAMP].iloc[i]} is not on the grid of table.time.step={schema.time.step}; "
                         "resample the tracks to that step first")
    points = pd.DataFrame({"frame": frames, "agent": rows[schema.id].to_numpy(),
                           "x": rows[schema.location.x].to_numpy(), "y": rows[schema.location.y].to_numpy(),
                           "row": rows[ROW].to_numpy()})
    _check_points(file, points)
    in_file_order = points.sort_values("row")
    out_of_order = int((in_file_order.groupby("agent", sort=False)["frame"].diff() < 0).sum())
    return Tracks(file, points, 1, None if schema.time.unit else EPOCH.to_pydatetime(), out_of_order)


# -- coordinates ------------------------------------------------------------------------------------


def model_crs(tracks: Sequence[Tracks], crs: str | None) -> pyproj.CRS:
    """The metric CRS the model works in and outputs are published in.

    ``crs`` is the CRS of the tracks' x/y after :func:`to_model_crs`'s placement: None for ETH/UCY
    metres with no map origin (the local engineering CRS), a projected CRS as it is, and lon/lat
    replaced by the UTM zone of the points.
    """
    if crs is None:
        return pyproj.CRS(LOCAL_CRS_WKT)
    declared = pyproj.CRS(crs)
    if declared.is_projected:
        return declared
    if not declared.is_geographic:
        raise InputError(f"CRS {crs!r} is neither projected nor lon/lat")
    points = pd.concat([t.points for t in tracks])
    return gpd.GeoSeries(gpd.points_from_xy(points.x, points.y), crs=declared).estimate_utm_crs()


def to_model_crs(tracks: Tracks, crs: pyproj.CRS, source_crs: str | None = None,
                 origin: tuple[float, float] | None = None) -> None:
    """Put a file's x/y into the model CRS, in place: shifted by ``origin`` (ETH/UCY local metres)
    or transformed from ``source_crs`` (tables)."""
    points = tracks.points
    if origin is not None:
        points["x"] += origin[0]
        points["y"] += origin[1]
    if source_crs is not None and pyproj.CRS(source_crs) != crs:
        transformer = pyproj.Transformer.from_crs(pyproj.CRS(source_crs), crs, always_xy=True)
        points["x"], points["y"] = transformer.transform(points["x"].to_numpy(), points["y"].to_numpy())


# -- windows ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class WindowRule:
    """What makes a window (see :data:`WINDOW_RULE`)."""

    observed_steps: int = 8
    future_steps: int = 12
    min_agents: int = 2
    max_neighbours: int = 16

    @property
    def length(self) -> int:
        return self.observed_steps + self.future_steps


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


def build_windows(tracks: Tracks, rule: WindowRule, file_index: int = 0) -> Windows:
    """All windows of one file under ``rule``; counts what was skipped."""
    points = tracks.points
    length, obs = rule.length, rule.observed_steps
    per_agent = points.groupby("agent").size()
    # tracks shorter than a window are never focal agents (counted here), but stay as neighbours
    counts = {"tracks": len(per_agent), "short_tracks_skipped": int((per_agent < length).sum()),
              "rows_out_of_order_sorted": tracks.rows_out_of_order}
    if points.empty:
        return _no_windows(rule, counts | {"windows": 0, "lone_agent_windows_skipped": 0})
    agents, agent_index = np.unique(points["agent"].to_numpy(), return_inverse=True)
    first = points["frame"].min()
    step_index = ((points["frame"].to_numpy() - first) // tracks.frames_per_step).astype(np.int64)
    positions = np.full((step_index.max() + 1, len(agents), 2), np.nan)
    positions[step_index, agent_index] = points[["x", "y"]].to_numpy()
    seen = np.isfinite(positions[..., 0])
    cumulative = np.concatenate([np.zeros((1, len(agents)), np.int64), np.cumsum(seen, axis=0)])
    complete = (cumulative[length:] - cumulative[:-length]) == length  # (starts, agents)
    focal_count = complete.sum(axis=1)
    kept = focal_count >= rule.min_agents
    counts["lone_agent_windows_skipped"] = int(focal_count[~kept].sum())
    starts, focal = np.nonzero(complete & kept[:, None])
    counts["windows"] = len(starts)
    if not len(starts):
        return _no_windows(rule, counts)
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
    nearest = np.argsort(distance, axis=1, kind="stable")[:, : rule.max_neighbours]
    neighbours = np.full((len(starts), rule.max_neighbours, obs, 2), np.nan)
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


def _no_windows(rule: WindowRule, counts: dict) -> Windows:
    obs, fut = rule.observed_steps, rule.future_steps
    return Windows(np.zeros((0, obs, 2), "float32"), np.zeros((0, fut, 2), "float32"),
                   np.zeros((0, rule.max_neighbours, obs, 2), "float32"), np.zeros((0, 2)),
                   np.zeros(0, np.int64), np.zeros(0, np.int16), np.zeros(0, str), counts)


def concat_windows(parts: list[Windows]) -> Windows:
    """Windows of several files together; counts summed."""
    counts: dict = {}
    for part in parts:
        for key, value in part.counts.items():
            counts[key] = counts.get(key, 0) + value
    return Windows(*(np.concatenate([getattr(p, name) for p in parts]) for name in
                     ("observed", "future", "neighbours", "now", "frame", "file_index", "agent")), counts=counts)


# -- the window store -------------------------------------------------------------------------------

ARRAYS = ("observed", "future", "neighbours", "now", "frame", "file_index")


def write_windows(windows: Windows, store: Path, attrs: dict) -> None:
    """Write windows and ``attrs`` (files, time grid, CRS) to a new Zarr group at ``store``."""
    group = zarr.open_group(store, mode="w", zarr_format=3)
    agents, codes = np.unique(windows.agent.astype(str), return_inverse=True)
    for name in ARRAYS:
        values = getattr(windows, name)
        group.create_array(name, data=values, chunks=(max(1, min(len(values), 4096)), *values.shape[1:]))
    group.create_array("agent_code", data=codes.astype(np.int32), chunks=(max(1, min(len(codes), 4096)),))
    group.attrs.update({**attrs, "agents": agents.tolist(), "counts": windows.counts, "rule": WINDOW_RULE})


def read_windows(store: str | Path) -> tuple[Windows, dict]:
    """Windows and attributes of a store written by :func:`write_windows`."""
    group = zarr.open_group(store, mode="r")
    attrs = dict(group.attrs)
    arrays = {name: group[name][:] for name in ARRAYS}
    agent = np.asarray(attrs["agents"], dtype=object)[group["agent_code"][:]] if attrs["agents"] else np.zeros(0, str)
    return Windows(**arrays, agent=agent, counts=attrs["counts"]), attrs

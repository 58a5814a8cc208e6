"""Readers of a traffic graph's files, with schema checks; each takes the paths and values it uses.

The speeds come as a wide CSV (one column per sensor, one row per step) or as a long table read
through :func:`allspark.core.tables.read_rows` (one row per sensor and time) and pivoted to the
same (time, sensor) grid. Every problem raises :class:`~allspark.errors.InputError` naming the
file (and the line and sensor or column where there is one) and what was expected. As in
METR-LA, a speed of 0 in a wide CSV means "no reading": zeros become NaN here and are counted, as
are a long table's missing values and missing steps.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd

from allspark.core.tables import (
    TIMESTAMP,
    TableError,
    TableSchema,
    check_targets,
    off_step,
    read_rows,
    row_where,
    station_locations,
)
from allspark.errors import InputError, NoDataError


@dataclass
class TrafficGraph:
    """A checked sensor graph: speeds (time, sensor) with NaN for missing, locations, adjacency if given."""

    sensor_ids: list[str]
    speeds: np.ndarray  # (steps, sensors) float32, NaN = missing (0 in a wide file)
    latitude: np.ndarray
    longitude: np.ndarray
    adjacency: np.ndarray | None  # (sensors, sensors)
    missing_speeds: int
    dropped_sensors: list[str]
    start: pd.Timestamp | None = None  # a long table's first time; None: a wide file, timed by the config


def _read_csv(path: Path, expected: str, **options) -> pd.DataFrame:
    """``pd.read_csv``; a file that is empty, not text or not CSV is an :class:`InputError` naming it."""
    try:
        return pd.read_csv(path, **options)
    except (OSError, ValueError) as err:  # pandas' EmptyDataError and ParserError, UnicodeDecodeError
        raise InputError(f"{path}: cannot be read as CSV ({err}); expected {expected}") from None


def read_speeds(path: Path) -> tuple[list[str], np.ndarray]:
    """Sensor ids (header) and speeds (steps, sensors), zeros (missing readings) turned to NaN.

    Raises InputError naming the file, the line and the sensor for a value that is not a number
    (an empty cell included) or a negative speed, and for duplicate sensor ids.
    """
    frame = _read_csv(path, "speeds (one column per sensor id, one row per time step)", dtype=str,
                      keep_default_na=False)
    ids = [column.strip() for column in frame.columns]
    duplicates = sorted({i for i in ids if ids.count(i) > 1})
    if duplicates:
        raise InputError(f"{path}: sensor id(s) {', '.join(duplicates)} appear more than once in the header")
    if frame.empty:
        raise NoDataError(f"{path}: no rows of speeds under the header")
    numbers = frame.apply(pd.to_numeric, errors="coerce").to_numpy(dtype="float64")
    for bad, expected in ((~np.isfinite(numbers), "a number"), (numbers < 0, "a speed >= 0")):
        rows, cols = np.nonzero(bad)
        if len(rows):
            raise InputError(
                f"{path}, line {rows[0] + 2}, sensor {ids[cols[0]]}: expected {expected}, got "
                f"{frame.iat[rows[0], cols[0]]!r} ({len(rows)} such value(s) in the file)"
            )
    return ids, np.where(numbers == 0, np.nan, numbers).astype("float32")


def read_speed_table(path: Path, table: TableSchema) -> tuple[pd.DataFrame, pd.DataFrame]:
    """A long table's checked rows, and its speeds pivoted to (time, sensor).

    The grid's times are the regular ``table.time.step`` steps from the table's first to its last
    time (a step no sensor has is all NaN), its sensors sorted by id, whatever the rows' order.
    Raises :class:`TableError` naming the file, row and column for a speed column with no value, a
    negative speed, and a time off the step grid.
    """
    rows = read_rows(path, table)
    check_targets(rows, table.targets, [path])
    (column,) = table.targets
    negative = np.flatnonzero((rows[column] < 0) | np.isinf(rows[column]))
    if len(negative):
        raise TableError(f"{row_where(rows, negative[0])}, column {column!r}: expected a speed >= 0, got "
                         f"{rows[column].iloc[negative[0]]} ({len(negative)} such value(s) in the file)")
    step = table.time.step_delta
    off_step(rows, table.id, step, path)
    first = rows[TIMESTAMP].min()
    starts = rows.drop_duplicates(table.id)  # each sensor's first row: rows are sorted by sensor and time
    late = np.flatnonzero((starts[TIMESTAMP] - first) % step != pd.Timedelta(0))
    if len(late):
        row = starts.iloc[late[0]]
        raise TableError(f"{row_where(starts, late[0])}: sensor {row[table.id]!r} starts at {row[TIMESTAMP]}, off the "
                         f"{table.time.step} steps from the table's first time {first} (resample the table)")
    grid = pd.date_range(first, rows[TIMESTAMP].max(), freq=step)
    return rows, rows.pivot(index=TIMESTAMP, columns=table.id, values=column).reindex(grid).sort_index(axis=1)


def read_adjacency(path: Path, sensor_ids: list[str], speeds_path: Path) -> np.ndarray:
    """The (sensors, sensors) adjacency, in the order of ``sensor_ids`` (read from ``speeds_path``).

    A CSV holds the matrix alone (rows in the speeds' column order); an .npz holds ``adjacency``
    and optionally ``sensor_ids`` (then rows are matched by id). Raises InputError naming both
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
        raise InputError(f"{path}: not a numeric adjacency matrix ({err})") from None
    if matrix.ndim != 2 or matrix.shape[0] != matrix.shape[1]:
        raise InputError(f"{path}: the adjacency must be square, got {' x '.join(map(str, matrix.shape))}")
    if len(matrix) != len(sensor_ids):
        raise InputError(
            f"the graph has {len(sensor_ids)} sensors ({speeds_path}) but its adjacency is "
            f"{len(matrix)} x {len(matrix)} ({path}): they must describe the same sensors"
        )
    if ids_in_file is not None:
        missing = [i for i in sensor_ids if i not in ids_in_file]
        if missing:
            raise InputError(f"{path}: no adjacency row for sensor(s) {', '.join(missing[:10])} of {speeds_path}")
        order = [ids_in_file.index(i) for i in sensor_ids]
        matrix = matrix[np.ix_(order, order)]
    return matrix


def read_locations(path: Path) -> pd.DataFrame:
    """Sensor locations indexed by sensor id (str), columns latitude and longitude (degrees)."""
    frame = _read_csv(path, "sensor locations (sensor_id, latitude, longitude)", dtype={"sensor_id": str})
    missing = {"sensor_id", "latitude", "longitude"} - set(frame.columns)
    if missing:
        raise InputError(f"{path}: missing column(s) {', '.join(sorted(missing))} (need sensor_id, latitude, "
                         "longitude)")
    frame["sensor_id"] = frame["sensor_id"].str.strip()
    frame = frame.set_index("sensor_id")[["latitude", "longitude"]].apply(pd.to_numeric, errors="coerce")
    bad = frame.index[~(frame["latitude"].between(-90, 90) & frame["longitude"].between(-180, 180))]
    if len(bad):
        raise InputError(f"{path}: sensor {bad[0]} has no valid latitude/longitude ({len(bad)} such row(s))")
    return frame[~frame.index.duplicated()]


def read_graph(
    speeds: Path, adjacency: Path | None, locations: Path | None, missing_location: Literal["error", "drop"] = "error",
    table: TableSchema | None = None,
) -> TrafficGraph:
    """Read and check the files given: the speeds (a wide CSV, or with ``table`` a long table), the adjacency if
    any, and the locations (``locations``, or ``table.location``); a sensor without a location in ``locations``
    is an error or, with ``drop``, left out."""
    if table is None:
        ids, speed_table = read_speeds(speeds)
        start = None
    else:
        rows, grid = read_speed_table(speeds, table)
        ids, speed_table, start = [str(i) for i in grid.columns], grid.to_numpy("float32"), grid.index[0]
    matrix = None if adjacency is None else read_adjacency(adjacency, ids, speeds)
    if table is not None and table.location is not None:
        places = station_locations(rows, table)  # every sensor has one, or a TableError names it
    else:
        places = read_locations(locations)
    unplaced = [i for i in ids if i not in places.index]
    if unplaced and missing_location == "error":
        raise InputError(
            f"{len(unplaced)} sensor(s) of {speeds} have no location in {locations}: "
            f"{', '.join(unplaced[:10])}{' ...' if len(unplaced) > 10 else ''} "
            "(set missing_location: drop to leave them out)"
        )
    keep = np.array([i not in unplaced for i in ids])
    if not keep.any():
        raise NoDataError(f"no sensor of {speeds} has a location in {locations}")
    kept = [i for i in ids if i not in unplaced]
    return TrafficGraph(
        sensor_ids=kept,
        speeds=speed_table[:, keep],
        missing_speeds=int(np.isnan(speed_table[:, keep]).sum()),
        latitude=places.loc[kept, "latitude"].to_numpy("float64"),
        longitude=places.loc[kept, "longitude"].to_numpy("float64"),
        adjacency=None if matrix is None else matrix[np.ix_(keep, keep)],
        dropped_sensors=unplaced,
        start=start,
    )

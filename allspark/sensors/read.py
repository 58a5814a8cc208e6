"""Reading and checking station tables of any layout (the config's ``table`` block) and selecting their rows.

Readers take the few values they use (files, the schema, stations, a period), not a run config.
The checks per file are :func:`allspark.core.tables.read_rows`'s (absent column, text in a
numeric column, a time that does not parse or repeats, ...); here come those across files: a
station in two files at one time, a target missing everywhere, a station without a location,
and gaps in time, which are counted (or refused with ``allow_time_gaps: false``).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from allspark.core.tables import (
    TIMESTAMP,
    TableError,
    TableSchema,
    check_targets,
    off_step,
    read_rows,
    station_locations,
    time_gaps,
)
from allspark.settings import catalogs_dir


def local_time(text: str, zone: str) -> pd.Timestamp:
    """An ISO time in ``zone`` (a time without an offset is taken in that zone, as the table's are)."""
    stamp = pd.Timestamp(text)
    return stamp.tz_localize(zone) if stamp.tzinfo is None else stamp.tz_convert(zone)


def select_rows(table: pd.DataFrame, schema: TableSchema, stations: Sequence[str] | None,
                period: tuple[str, str] | None) -> pd.DataFrame:
    """The rows of these stations (None: all) within the inclusive ``period`` (None: all)."""
    keep = np.ones(len(table), dtype=bool)
    if stations is not None:
        keep &= table[schema.id].isin(stations).to_numpy()
    if period is not None:
        start, end = (local_time(t, schema.time.timezone) for t in period)
        keep &= ((table[TIMESTAMP] >= start) & (table[TIMESTAMP] <= end)).to_numpy()
    return table[keep]


def read_observations(files: Sequence[Path], schema: TableSchema, stations: Sequence[str] | None,
                      period: tuple[str, str] | None, allow_time_gaps: bool) -> tuple[pd.DataFrame, pd.DataFrame, dict]:
    """The checked, selected rows of every file, the stations' locations and per-station gaps in time.

    Raises :class:`TableError` naming the file, row and column for bad cells, a station found in
    two files at the same time, a target missing in every row, a station without a location, and
    (with ``allow_time_gaps`` false) a missing step.
    """
    step = schema.time.step_delta
    parts, gaps = [], {}
    for path in files:
        table = select_rows(read_rows(path, schema), schema, stations, period)
        off_step(table, schema.id, step, path)
        for station, gap in time_gaps(table, schema.id, step).items():
            if gap["missing_steps"] and not allow_time_gaps:
                raise TableError(f"{path}: station {station!r} misses {gap['missing_steps']} step(s) of "
                                 f"{schema.time.step}, the first at {gap['first_missing']} (allow_time_gaps is false)")
            gaps[station] = {"file": str(path), **gap}
        parts.append(table)
    observations = pd.concat(parts, ignore_index=True)
    names = [str(f) for f in files]
    if observations.empty:
        raise TableError(f"no rows of the stations {stations or 'any'} in the period {period} in {names}")
    if stations is not None:
        absent = sorted(set(stations) - set(observations[schema.id]))
        if absent:
            raise TableError(f"station(s) {absent} have no rows in {names}")
    twice = observations.duplicated([schema.id, TIMESTAMP])
    if twice.any():
        row = observations[twice].iloc[0]
        raise TableError(f"station {row[schema.id]!r} at {row[TIMESTAMP]} is in more than one file ({row['_file']} "
                         "and another): one row per station and time")
    observations = observations.sort_values([schema.id, TIMESTAMP], kind="stable").reset_index(drop=True)
    check_targets(observations, schema.targets, files)
    return observations, station_locations(observations, schema, catalogs_dir()), gaps

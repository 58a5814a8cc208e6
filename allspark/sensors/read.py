"""Reading and checking PRSA-layout station tables and the station locations file.

Readers take the few values they use (paths, station names, a period), not a run config. Bad
input stops the run with a :class:`SensorTableError` naming the file, the line and the column or
station: a missing column, text in a numeric column, an impossible date, a station not in the
locations file, an unknown wind direction, a repeated or out-of-order hour. Gaps in time are not
errors here: :func:`time_gaps` counts them.
"""

from __future__ import annotations

import glob
import os
from collections.abc import Sequence
from pathlib import Path

import geopandas as gpd
import numpy as np
import pandas as pd
from pyogrio.errors import DataSourceError

from allspark.errors import InputError
from allspark.settings import catalogs_dir

PRSA_COLUMNS = ("No", "year", "month", "day", "hour", "PM2.5", "PM10", "SO2", "NO2", "CO", "O3",
                "TEMP", "PRES", "DEWP", "RAIN", "wd", "WSPM", "station")
"""Columns every station table must have."""
TEXT_COLUMNS = ("wd", "station")
NUMERIC_COLUMNS = tuple(c for c in PRSA_COLUMNS if c not in TEXT_COLUMNS)
TIME_COLUMNS = ("year", "month", "day", "hour")
TARGET = "PM2.5"
WIND_DIRECTIONS = ("N", "NNE", "NE", "ENE", "E", "ESE", "SE", "SSE", "S", "SSW", "SW", "WSW", "W", "WNW", "NW", "NNW")
TIMEZONE = "Asia/Shanghai"  # PRSA hours are Beijing time (UTC+8, no daylight saving)
LOCATIONS_CRS = "EPSG:4326"


class SensorTableError(InputError):
    """A sensor table or locations file that cannot be used; the message names the file and the row."""


def find_input_files(patterns: Sequence[str]) -> list[Path]:
    """The station tables the patterns (files or globs) name, sorted, each once; a pattern matching none is an error."""
    files = []
    for pattern in patterns:
        matched = sorted(Path(p) for p in glob.glob(os.path.expanduser(pattern)))
        if not matched:
            raise SensorTableError(f"input {pattern!r} matches no file (expected PRSA station CSV files)")
        files.extend(matched)
    return list(dict.fromkeys(files))


def locations_path(name_or_path: str) -> Path:
    """``"prsa_stations"`` -> ``<catalogs>/prsa_stations.geojson``; anything with a suffix or a slash is a path."""
    if name_or_path.endswith((".geojson", ".json")) or os.sep in name_or_path:
        return Path(name_or_path)
    return catalogs_dir() / f"{name_or_path}.geojson"


def read_locations(name_or_path: str) -> gpd.GeoDataFrame:
    """Station points (``station`` column, lon/lat EPSG:4326), in file order: the station index order."""
    path = locations_path(name_or_path)
    if not path.is_file():
        raise SensorTableError(f"station locations file {path} does not exist")
    try:
        frame = gpd.read_file(path)
    except (OSError, DataSourceError) as err:
        raise SensorTableError(f"station locations file {path} cannot be read as GeoJSON: {err}") from None
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
    except (OSError, ValueError) as err:  # pandas' ParserError and EmptyDataError, UnicodeDecodeError
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


def local_time(text: str) -> pd.Timestamp:
    """An ISO time in Beijing time (times without a zone are taken as Beijing time, as PRSA's are)."""
    stamp = pd.Timestamp(text)
    return stamp.tz_localize(TIMEZONE) if stamp.tzinfo is None else stamp.tz_convert(TIMEZONE)


def select_rows(table: pd.DataFrame, stations: Sequence[str] | None, period: tuple[str, str] | None) -> pd.DataFrame:
    """The rows of these stations (None: all) within the inclusive local-time ``period`` (None: all)."""
    keep = np.ones(len(table), dtype=bool)
    if stations is not None:
        keep &= table["station"].isin(stations).to_numpy()
    if period is not None:
        start, end = (local_time(t) for t in period)
        keep &= ((table["timestamp"] >= start) & (table["timestamp"] <= end)).to_numpy()
    return table[keep]

"""Tables of any layout: the schema block a config names its columns with, and the checked reader.

Every file-driven kind (sensors, traffic, trajectories) reads its rows through :func:`read_rows`,
so a user's CSV, Parquet or GeoParquet file needs no rewriting into a house layout: the config's
``table`` block (:class:`TableSchema`) says which column is the time (one timestamp column, or
year/month/day/hour parts, in a time zone), which one identifies the station (sensor, agent),
where each station is (x/y columns with a CRS, a locations file joined on the id, or the
GeoParquet geometry), the targets, the continuous and categorical features, and the cell values
that mean *missing*.

Bad input stops with a :class:`TableError` naming the file, the row (a CSV's line number, a
Parquet file's row number) and the column: a column named in the config but absent, text in a
numeric column, a time that does not parse, a station at the same time twice, a target that is
all missing, a station without a location, a location outside its CRS's area of use.
"""

from __future__ import annotations

import os
import zoneinfo
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd
from pydantic import Field, field_validator, model_validator

from allspark.core.config import SettingsBlock
from allspark.errors import InputError

ROW = "_row"
"""Column :func:`read_rows` adds: each row's place in its file (CSV: line number; Parquet: row number from 1)."""
FILE = "_file"
"""Column :func:`read_rows` adds: the file each row comes from (for messages)."""
TEXT_SUFFIXES = (".csv", ".txt")
"""Tables read as CSV text (their rows are named by line number); anything else is Parquet."""
TIMESTAMP = "timestamp"
"""Column :func:`read_rows` adds: each row's time, zone-aware, in the schema's time zone."""
TimeFeature = Literal["hour", "weekday", "month", "season", "day_of_year"]
"""Calendar features a config may derive from the time (each a categorical input)."""
TIME_FEATURE_SIZES = {"hour": 24, "weekday": 7, "month": 12, "season": 4, "day_of_year": 366}


class TableError(InputError):
    """A table or locations file that cannot be used; the message names the file, the row and the column."""


class TimeParts(SettingsBlock):
    """Columns holding the parts of each row's time (PRSA's year, month, day, hour)."""

    year: str
    month: str
    day: str
    hour: str | None = None
    minute: str | None = None

    def names(self) -> list[str]:
        return [name for name in (self.year, self.month, self.day, self.hour, self.minute) if name is not None]


class TimeColumns(SettingsBlock):
    """Where each row's time is: one timestamp ``column`` or date ``parts``; its zone; the regular step."""

    column: str | None = Field(None, description="one column of date-times (ISO 8601 unless `format` says)")
    parts: TimeParts | None = Field(None, description="or: columns of year, month, day (and hour, minute)")
    format: str | None = Field(None, description="strptime format of `column`, e.g. '%d/%m/%Y %H:%M'")
    unit: Literal["s", "ms"] | None = Field(None, description="`column` holds numbers: seconds (ms) since 1970 UTC")
    timezone: str = Field("UTC", description="IANA zone of times written without an offset, and of the calendar "
                                             "features (hour of day...), e.g. Asia/Shanghai")
    step: str = Field("1h", description="the rows' regular step (pandas frequency: 5min, 1h, 1D)")

    @model_validator(mode="after")
    def _one_source(self) -> TimeColumns:
        if (self.column is None) == (self.parts is None):
            raise ValueError("give the time as either `column` or `parts` (year, month, day, hour)")
        if (self.format is not None or self.unit is not None) and self.column is None:
            raise ValueError("`format` and `unit` apply to a time `column` only")
        if self.format is not None and self.unit is not None:
            raise ValueError("give a time `format` (date-time text) or a `unit` (numbers), not both")
        return self

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, zone: str) -> str:
        try:
            zoneinfo.ZoneInfo(zone)
        except (zoneinfo.ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown time zone {zone!r} (expected an IANA name such as Europe/Paris or UTC)") from None
        return zone

    @field_validator("step")
    @classmethod
    def _frequency(cls, step: str) -> str:
        try:
            if pd.Timedelta(pd.tseries.frequencies.to_offset(step)) <= pd.Timedelta(0):
                raise ValueError
        except (ValueError, TypeError):
            raise ValueError(f"step {step!r} is not a positive fixed frequency (e.g. 5min, 1h, 1D)") from None
        return step

    @property
    def step_delta(self) -> pd.Timedelta:
        return pd.Timedelta(pd.tseries.frequencies.to_offset(self.step))

    def names(self) -> list[str]:
        return [self.column] if self.column is not None else self.parts.names()


class LocationColumns(SettingsBlock):
    """Where each station is: ``x``/``y`` columns (of the table, or of a locations ``file`` joined on ``id``).

    With a vector ``file`` (GeoJSON, GeoPackage, GeoParquet, Shapefile) and no ``x``/``y``, its point
    geometry is used. ``static`` names numeric attributes that describe a station (elevation, road
    class...): with ``file`` they are its columns, otherwise table columns constant per station.
    """

    file: str | None = Field(None, description="a file with one row per station; none: columns of the table")
    id: str | None = Field(None, description="the file's station id column (default: the table's id column)")
    x: str | None = Field(None, description="x / longitude column")
    y: str | None = Field(None, description="y / latitude column")
    crs: str | None = Field(None, description="CRS of x/y (default EPSG:4326); a vector file's own CRS otherwise")
    static: list[str] = Field(default_factory=list, description="numeric station attributes")

    @model_validator(mode="after")
    def _xy_together(self) -> LocationColumns:
        if (self.x is None) != (self.y is None):
            raise ValueError("give location x and y together")
        if self.file is None and self.x is None:
            raise ValueError("give location x and y columns, or a locations file")
        return self


class TableSchema(SettingsBlock):
    """The columns of a user's table, by name: the config's ``table`` block."""

    id: str = Field(description="column identifying the station (sensor, agent)")
    time: TimeColumns
    location: LocationColumns | None = Field(None, description="none: the geometry of a GeoParquet table")
    targets: list[str] = Field(default_factory=list, description="column(s) to predict")
    continuous: list[str] = Field(default_factory=list, description="numeric feature columns")
    categorical: list[str] = Field(default_factory=list, description="category feature columns (text or codes)")
    missing_values: list[str] = Field(default_factory=list, description="cell values meaning missing, e.g. NA, -999")

    @model_validator(mode="after")
    def _each_column_once(self) -> TableSchema:
        used = [self.id, *self.time.names(), *self.targets, *self.continuous, *self.categorical]
        twice = sorted({name for name in used if used.count(name) > 1})
        if twice:
            raise ValueError(f"column(s) {twice} named twice (id, time, targets, continuous and categorical "
                             "must be distinct)")
        return self

    def numeric_columns(self) -> list[str]:
        """Columns read as numbers: targets, continuous features, and table-held location and attributes."""
        location = [] if self.location is None or self.location.file else [
            *(c for c in (self.location.x, self.location.y) if c), *self.location.static]
        return list(dict.fromkeys([*self.targets, *self.continuous, *location]))

    def columns(self) -> list[str]:
        """Every table column the schema names (what must be in each file)."""
        return list(dict.fromkeys([self.id, *self.time.names(), *self.numeric_columns(), *self.categorical]))


def find_files(patterns: Sequence[str], expected: str) -> list[Path]:
    """The files the patterns (paths or globs) name, sorted, each once; a pattern matching none is an error."""
    import glob

    files = []
    for pattern in patterns:
        matched = sorted(Path(p) for p in glob.glob(os.path.expanduser(str(pattern))))
        if not matched:
            raise TableError(f"input {str(pattern)!r} matches no file (expected {expected})")
        files.extend(matched)
    return list(dict.fromkeys(files))


def row_label(rows: pd.Series | np.ndarray, i: int, path: Path | str) -> str:
    """``line 7`` of a CSV or ``row 6`` of a Parquet file, for the ``i``-th data row."""
    return f"{'line' if str(path).lower().endswith(TEXT_SUFFIXES) else 'row'} {int(np.asarray(rows)[i])}"


def row_where(places: pd.DataFrame, i: int) -> str:
    """``<file>: line 7`` for row ``i`` of a frame with :data:`FILE` and :data:`ROW` columns."""
    return f"{places[FILE].iloc[i]}: {row_label(places[ROW], i, places[FILE].iloc[i])}"


def _read_file(path: Path, missing_values: Sequence[str]) -> pd.DataFrame:
    """The raw table with its ``_row`` column: CSV cells as text, Parquet as stored (a GeoParquet geometry kept)."""
    suffix = path.suffix.lower()
    try:
        if suffix in (".parquet", ".geoparquet"):
            import pyarrow.parquet as pq

            if b"geo" in (pq.read_schema(path).metadata or {}):
                import geopandas as gpd

                frame = pd.DataFrame(gpd.read_parquet(path))
            else:
                frame = pd.read_parquet(path)
            numbers = pd.to_numeric(pd.Series(list(missing_values), dtype=object), errors="coerce").dropna()
            for column in frame.columns.drop("geometry", errors="ignore"):
                values = frame[column]
                missing = values.isin(numbers) if pd.api.types.is_numeric_dtype(values) else \
                    values.astype(str).isin(list(missing_values))
                frame[column] = values.mask(missing)
            frame[ROW] = np.arange(1, len(frame) + 1)
            return frame
        if suffix in TEXT_SUFFIXES:
            frame = pd.read_csv(path, dtype=str, na_values=list(missing_values), keep_default_na=True)
            frame[ROW] = np.arange(2, len(frame) + 2)
            return frame
    except (OSError, ValueError) as err:  # pyarrow's ArrowInvalid, pandas' ParserError and EmptyDataError, bad UTF-8
        raise TableError(f"{path}: cannot be read as {'CSV' if suffix in TEXT_SUFFIXES else 'Parquet'} ({err})") \
            from None
    raise TableError(f"{path}: unsupported table format {suffix!r} (expected .csv, .parquet or .geoparquet)")


def _to_numbers(frame: pd.DataFrame, column: str, path: Path) -> pd.Series:
    """``column`` as float64 (blank and missing cells NaN); text that is not a number is an error naming the row."""
    values = frame[column]
    if pd.api.types.is_numeric_dtype(values):
        return values.astype("float64")
    text = values.astype("string").str.strip().replace("", pd.NA)
    numbers = pd.to_numeric(text, errors="coerce")
    bad = np.flatnonzero((numbers.isna() & text.notna()).to_numpy())
    if len(bad):
        raise TableError(f"{path}: {row_label(frame[ROW], bad[0], path)}, column {column!r}: {values.iloc[bad[0]]!r} "
                         f"is not a number ({len(bad)} such cell(s) in this column)")
    return pd.Series(numbers.to_numpy(dtype="float64", na_value=np.nan), index=frame.index)


def _times(frame: pd.DataFrame, time: TimeColumns, path: Path) -> pd.Series:
    """Each row's time, zone-aware in ``time.timezone``; a missing or unparsable time is an error naming the row."""
    names = time.names()
    for name in names:
        empty = np.flatnonzero(frame[name].isna().to_numpy())
        if len(empty):
            raise TableError(f"{path}: {row_label(frame[ROW], empty[0], path)}, column {name!r} is empty "
                             "(every row needs its time)")
    if time.column is not None:
        raw = frame[time.column]
        if time.unit is not None:
            stamps = pd.to_datetime(_to_numbers(frame, time.column, path), unit=time.unit, utc=True)
        elif pd.api.types.is_datetime64_any_dtype(raw):
            stamps = raw
        else:
            stamps = pd.to_datetime(raw.astype(str).str.strip(), errors="coerce", format=time.format or "ISO8601")
        what = (f"a number of {time.unit}" if time.unit else
                f"a date-time{' in the format ' + repr(time.format) if time.format else ' (ISO 8601)'}")
    else:
        parts = {unit: _to_numbers(frame, getattr(time.parts, unit), path)
                 for unit in ("year", "month", "day", "hour", "minute") if getattr(time.parts, unit) is not None}
        whole = pd.DataFrame(parts).fillna(-1)
        impossible = (whole % 1 != 0).any(axis=1)  # to_datetime would roll hour 25 or minute 61 over
        for unit, top in (("hour", 23), ("minute", 59)):
            if unit in whole:
                impossible |= ~whole[unit].between(0, top)
        stamps = pd.to_datetime(whole.astype("int64"), errors="coerce").mask(impossible)
        what = f"a valid date and time from the columns {names}"
    invalid = np.flatnonzero(stamps.isna().to_numpy())
    if len(invalid):
        i = invalid[0]
        shown = ", ".join(f"{name}={frame[name].iloc[i]!r}" for name in names)
        raise TableError(f"{path}: {row_label(frame[ROW], i, path)}: {shown} is not {what}")
    if getattr(stamps.dt, "tz", None) is None:
        try:
            return stamps.dt.tz_localize(time.timezone, ambiguous="raise", nonexistent="raise")
        except (ValueError, TypeError) as err:  # pytz's AmbiguousTimeError / NonExistentTimeError are ValueErrors
            raise TableError(f"{path}: a time in {names} does not exist or is ambiguous in {time.timezone} ({err})") \
                from None
    return stamps.dt.tz_convert(time.timezone)


def read_rows(path: Path, schema: TableSchema) -> pd.DataFrame:
    """One table's rows, checked: the schema's columns (numbers as float, categories and id as text), ``timestamp``
    and ``_row``, sorted by station and time.

    A geometry column (GeoParquet) is kept for :func:`station_locations`. Raises :class:`TableError`
    naming the file, row and column for an absent column, text in a numeric column, an empty id,
    a time that is missing or does not parse, and one station at the same time twice.
    """
    frame = _read_file(path, schema.missing_values)
    absent = [name for name in schema.columns() if name not in frame.columns]
    if absent:
        found = [c for c in frame.columns if c != ROW]
        raise TableError(f"{path}: column(s) {absent} named in the config's table block are not in the file "
                         f"(its columns: {found})")
    rows = frame[[*schema.columns(), ROW, *(["geometry"] if "geometry" in frame else [])]].copy()
    for column in schema.numeric_columns():
        rows[column] = _to_numbers(rows, column, path)
    for column in [schema.id, *schema.categorical]:
        rows[column] = rows[column].astype("string").str.strip().replace("", pd.NA).astype(object)
    no_id = np.flatnonzero(rows[schema.id].isna().to_numpy())
    if len(no_id):
        raise TableError(f"{path}: {row_label(rows[ROW], no_id[0], path)}, column {schema.id!r} is empty "
                         "(every row needs its station id)")
    rows[TIMESTAMP] = _times(rows, schema.time, path)
    rows[FILE] = str(path)
    rows = rows.sort_values([schema.id, TIMESTAMP], kind="stable").reset_index(drop=True)
    repeated = np.flatnonzero(rows.duplicated([schema.id, TIMESTAMP]).to_numpy())
    if len(repeated):
        i = repeated[0]
        raise TableError(f"{path}: {row_label(rows[ROW], i, path)}: station {rows[schema.id].iloc[i]!r} at "
                         f"{rows[TIMESTAMP].iloc[i]} repeats {row_label(rows[ROW], i - 1, path)} "
                         "(one row per station and time)")
    return rows


def check_targets(frame: pd.DataFrame, targets: Sequence[str], files: Sequence[Path]) -> None:
    """A target column with no observed value at all is an error naming it and the files."""
    for target in targets:
        if frame[target].isna().all():
            raise TableError(f"target column {target!r} is missing in every row of {[str(f) for f in files]} "
                             "(nothing to train on or score)")


def time_gaps(frame: pd.DataFrame, id_column: str, step: pd.Timedelta) -> dict[str, dict]:
    """Per station: steps missing between its first and last time, and the first missing one."""
    gaps = {}
    for station, stamps in frame.groupby(id_column, sort=False)[TIMESTAMP]:
        expected = pd.date_range(stamps.iloc[0], stamps.iloc[-1], freq=step)
        missing = expected.difference(pd.DatetimeIndex(stamps))
        gaps[station] = {"missing_steps": len(missing),
                         "first_missing": missing[0].isoformat() if len(missing) else None}
    return gaps


def off_step(frame: pd.DataFrame, id_column: str, step: pd.Timedelta, path: Path) -> None:
    """A time off the regular ``step`` grid (from the station's first time) is an error naming the row."""
    first = frame.groupby(id_column, sort=False)[TIMESTAMP].transform("min")
    off = np.flatnonzero(((frame[TIMESTAMP] - first) % step != pd.Timedelta(0)).to_numpy())
    if len(off):
        i = off[0]
        raise TableError(f"{path}: {row_label(frame[ROW], i, path)}: time {frame[TIMESTAMP].iloc[i]} of station "
                         f"{frame[id_column].iloc[i]!r} is off its {step} step (resample the table, or set table.time.step)")


def calendar_features(stamps: pd.Series, names: Sequence[str]) -> np.ndarray:
    """``(N, len(names))`` int codes of the calendar ``names`` (:data:`TimeFeature`) of local times."""
    codes = {
        "hour": lambda t: t.dt.hour,
        "weekday": lambda t: t.dt.weekday,
        "month": lambda t: t.dt.month - 1,
        "season": lambda t: (t.dt.month % 12) // 3,  # 0 = Dec-Feb, 1 = Mar-May, 2 = Jun-Aug, 3 = Sep-Nov
        "day_of_year": lambda t: t.dt.dayofyear - 1,
    }
    return np.stack([codes[name](stamps).to_numpy("int64") for name in names], axis=1) if names else \
        np.zeros((len(stamps), 0), dtype="int64")


# -- station locations ------------------------------------------------------------------------------


def locations_path(location: LocationColumns | None, base: Path | None = None) -> Path | None:
    """The file ``location.file`` names: a path, or (when no such path exists) a file of that name under ``base``."""
    if location is None or location.file is None:
        return None
    path = Path(os.path.expanduser(location.file))
    if base is not None and not path.is_absolute() and not path.exists() and (base / path).exists():
        return base / path
    return path


def _locations_file(location: LocationColumns, id_column: str, base: Path | None) -> tuple[pd.DataFrame, str]:
    """The locations file's rows (id, ``_x``, ``_y``, static, ``_row``, ``_file``) and the CRS of x/y."""
    path = locations_path(location, base)
    if not path.is_file():
        raise TableError(f"locations file {path} does not exist")
    key = location.id or id_column
    suffix = path.suffix.lower()
    if location.x is None:  # a vector file: its points
        import geopandas as gpd
        from pyogrio.errors import DataSourceError

        try:
            places = gpd.read_parquet(path) if suffix in (".parquet", ".geoparquet") else gpd.read_file(path)
        except (OSError, ValueError, DataSourceError) as err:
            raise TableError(f"locations file {path} cannot be read as a vector file: {err}") from None
        if not (places.geom_type == "Point").all():
            raise TableError(f"{path}: expected Point features (one per station)")
        crs = location.crs or (places.crs.to_string() if places.crs is not None else "EPSG:4326")
        frame = pd.DataFrame(places.drop(columns="geometry"))
        frame["_x"], frame["_y"] = places.geometry.x.to_numpy(), places.geometry.y.to_numpy()
        frame[ROW] = np.arange(1, len(frame) + 1)
    else:
        frame = _read_file(path, ())
        crs = location.crs or "EPSG:4326"
        for axis, column in (("_x", location.x), ("_y", location.y)):
            if column not in frame:
                raise TableError(f"{path}: no column {column!r} (location {axis[1]}); its columns: "
                                 f"{[c for c in frame.columns if c != ROW]}")
            frame[axis] = _to_numbers(frame, column, path)
    absent = [c for c in [key, *location.static] if c not in frame]
    if absent:
        raise TableError(f"{path}: column(s) {absent} named in table.location are not in the file "
                         f"(its columns: {[c for c in frame.columns if c not in (ROW, '_x', '_y')]})")
    for column in location.static:
        frame[column] = _to_numbers(frame, column, path)
    frame[key] = frame[key].astype(str).str.strip()
    twice = frame[key][frame[key].duplicated()].tolist()
    if twice:
        raise TableError(f"{path}: station(s) listed twice: {twice[:10]}")
    frame[FILE] = str(path)
    return frame.rename(columns={key: "id"}), crs


def station_locations(frame: pd.DataFrame, schema: TableSchema, base: Path | None = None) -> pd.DataFrame:
    """One row per station of ``frame`` (index: id): ``x``, ``y`` in their CRS (``attrs["crs"]``),
    ``longitude``, ``latitude`` (EPSG:4326) and the static attributes.

    ``frame`` holds :func:`read_rows` rows; ``base`` is where a relative locations file is looked
    for besides the working folder. A station without a location is an error naming the file and
    the row it first appears in; so is a location outside its CRS's area of use.
    """
    import pyproj

    location = schema.location
    static = [] if location is None else list(location.static)
    if location is None or location.file is None:
        if location is None:
            if "geometry" not in frame:
                raise TableError(f"{frame[FILE].iloc[0]}: the table has no location (give table.location: x/y columns with a "
                                 "crs, or a locations file; or use a GeoParquet table of points)")
            import geopandas as gpd

            points = gpd.GeoSeries(frame["geometry"])
            xs, ys, crs = points.x.to_numpy(), points.y.to_numpy(), points.crs.to_string() if points.crs else "EPSG:4326"
        else:
            xs, ys, crs = frame[location.x].to_numpy(), frame[location.y].to_numpy(), location.crs or "EPSG:4326"
        per_row = pd.DataFrame({"id": frame[schema.id].to_numpy(), "_x": xs, "_y": ys, ROW: frame[ROW].to_numpy(),
                                FILE: frame[FILE].to_numpy(), **{c: frame[c].to_numpy() for c in static}})
        places = per_row.groupby("id", sort=False).first().reset_index()  # first non-missing value per station
        unplaced = np.flatnonzero(places[["_x", "_y"]].isna().any(axis=1).to_numpy())
        if len(unplaced):
            columns = [location.x, location.y] if location else ["geometry"]
            raise TableError(f"{row_where(places, unplaced[0])}: station {places['id'].iloc[unplaced[0]]!r} has no location "
                             f"(column(s) {columns} empty in all its rows)")
    else:
        places, crs = _locations_file(location, schema.id, base)
        unplaced = np.flatnonzero(~frame[schema.id].isin(places["id"]).to_numpy())
        if len(unplaced):
            count = frame[schema.id].iloc[unplaced].nunique()
            raise TableError(f"{row_where(frame, unplaced[0])}, column {schema.id!r}: station {frame[schema.id].iloc[unplaced[0]]!r} "
                             f"is not in the locations file {location.file} ({count} such station(s))")
        places = places[places["id"].isin(frame[schema.id])].reset_index(drop=True)
        bad = np.flatnonzero(places[["_x", "_y"]].isna().any(axis=1).to_numpy())
        if len(bad):
            raise TableError(f"{row_where(places, bad[0])}: station {places['id'].iloc[bad[0]]!r} has no x/y")
    try:
        source_crs = pyproj.CRS(crs)
    except pyproj.exceptions.CRSError as err:
        raise TableError(f"location crs {crs!r} of {places[FILE].iloc[0]} is not a CRS ({err})") from None
    lon, lat = pyproj.Transformer.from_crs(source_crs, "EPSG:4326", always_xy=True).transform(
        places["_x"].to_numpy("float64"), places["_y"].to_numpy("float64"))
    area = source_crs.area_of_use
    west, south, east, north = (area.west, area.south, area.east, area.north) if area else (-180, -90, 180, 90)
    tolerance = 1.0  # degrees: areas of use are drawn generously, a point far outside is a wrong CRS or swapped axes
    outside = ~(np.isfinite(lon) & np.isfinite(lat) & (lat >= south - tolerance) & (lat <= north + tolerance)
                & (((lon >= west - tolerance) & (lon <= east + tolerance)) if west <= east
                   else ((lon >= west - tolerance) | (lon <= east + tolerance))))
    if outside.any():
        i = int(np.flatnonzero(outside)[0])
        row = places.iloc[i]
        raise TableError(f"{row_where(places, i)}: station {row['id']!r} at x={row['_x']}, y={row['_y']} is "
                         f"outside the area of use of {crs} ({area.name.split('.')[0] if area else 'the world'}: lon {west}..{east}, "
                         f"lat {south}..{north}); wrong crs, or x and y swapped?")
    located = pd.DataFrame({"x": places["_x"].to_numpy("float64"), "y": places["_y"].to_numpy("float64"),
                         "longitude": lon, "latitude": lat, **{c: places[c].to_numpy("float64") for c in static}},
                           index=pd.Index(places["id"].astype(str).to_numpy(), name="station"))
    located.attrs["crs"] = crs
    return located


"""A user's own labels for fine-tuning: a vector file of polygons or points with a class column, or a label raster.

:class:`LabelsSettings` is a region config's ``train.labels`` block. :func:`read_user_labels` puts the labels
on the scene's grid as :func:`allspark.region.read.read_labels` does a STAC label item's raster: a window
around them (plus a margin) and int64 class codes on it, 1..N for the config's ``class_names`` in order and
0 for unlabelled. Vector geometries are reprojected to the grid's CRS; a polygon labels the pixels whose
centre it contains (``all_touched=False``), a point the pixel it falls in; where labels overlap, the later
row of the file wins. Labels partly off the imagery are cut to it.

Every problem is an :class:`~allspark.errors.InputError` naming the file and what was expected, raised by
:func:`check_labels` at ingest, before anything is written. geopandas and rasterio are imported only where
a file is read, since the config module imports this one.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from pydantic import Field, model_validator

from allspark.core.config import SettingsBlock
from allspark.errors import InputError, NoDataError

if TYPE_CHECKING:
    import geopandas as gpd

    from allspark.raster.scene import Scene
    from allspark.raster.windows import Window
    from allspark.region.read import PixelGrid

VECTOR_SUFFIXES = (".geojson", ".json", ".parquet", ".geoparquet", ".gpkg", ".shp")
RASTER_SUFFIXES = (".tif", ".tiff")
SHAPEFILE_SIDECARS = (".shx", ".dbf", ".prj", ".cpg")
GEOMETRY_TYPES = ("Polygon", "MultiPolygon", "Point", "MultiPoint")


class LabelsSettings(SettingsBlock):
    """A file of the user's own labels (``train.labels``); a path alone is ``{path: ...}``."""

    path: Path = Field(description="A vector file (.geojson/.json, .parquet/.geoparquet, .gpkg, .shp; polygons or "
                       "points, any CRS) or a label raster (.tif/.tiff: class codes, 0 or nodata unlabelled); a "
                       "relative path is taken from the folder the run starts in.")
    class_column: str | None = Field(None, description="A vector file's column of class names (from class_names) "
                                     "or codes k = class_names[k-1] (0 unlabelled); required for a vector file.")
    layer: str | None = Field(None, description="The GeoPackage layer; needed when the file has several.")

    @model_validator(mode="before")
    @classmethod
    def _path_alone(cls, data: object) -> object:
        return {"path": data} if isinstance(data, str | Path) else data

    @model_validator(mode="after")
    def _fits_the_kind_of_file(self) -> LabelsSettings:
        suffix = self.path.suffix.lower()
        if suffix not in VECTOR_SUFFIXES + RASTER_SUFFIXES:
            raise ValueError(f"labels file {self.path} has an unsupported suffix {suffix or '(none)'!r}; expected a "
                             f"vector file ({', '.join(VECTOR_SUFFIXES)}) or a label raster "
                             f"({', '.join(RASTER_SUFFIXES)})")
        if self.is_raster and self.class_column is not None:
            raise ValueError(f"labels file {self.path} is a label raster, whose pixel values are the class codes: "
                             "drop class_column")
        if not self.is_raster and self.class_column is None:
            raise ValueError(f"labels file {self.path} is a vector file: set class_column to its column of class "
                             "names or codes 1..N")
        if self.layer is not None and suffix != ".gpkg":
            raise ValueError(f"layer is for a GeoPackage (.gpkg), not for {self.path}")
        return self

    @property
    def is_raster(self) -> bool:
        return self.path.suffix.lower() in RASTER_SUFFIXES

    def files(self) -> list[Path]:
        """The files the labels are read from: the file, and a Shapefile's sidecar files (.dbf holds the classes)."""
        if self.path.suffix.lower() != ".shp":
            return [self.path]
        return [self.path, *(self.path.with_suffix(suffix) for suffix in SHAPEFILE_SIDECARS)]


def file_class_names(settings: LabelsSettings) -> list[str] | None:
    """The class names of a config that gives none: the sorted distinct names of a vector file's class column
    of text; None for a column of codes or a raster (the config's default names stand)."""
    if settings.is_raster:
        return None
    values = read_label_table(settings)[settings.class_column].to_numpy()
    if values.dtype.kind in "iuf":
        return None
    names = sorted({str(value) for value in values if not _missing(value)})
    if len(names) < 2:
        raise InputError(f"labels file {settings.path}, column {settings.class_column!r}: class names {names}; "
                         "fine-tuning needs two or more: label another class, or set class_names")
    return names


def check_labels(settings: LabelsSettings, class_names: list[str], grid: PixelGrid) -> None:
    """Check the labels against the class names and the imagery's grid before any work (see :func:`read_user_labels`):
    a readable file of a supported kind, not empty, the class column, polygons or points, a CRS, known classes,
    and at least one labelled pixel on the imagery. Raises :class:`InputError` naming the file."""
    read_user_labels(settings, class_names, grid, margin=0)


def read_user_labels(settings: LabelsSettings, class_names: list[str], grid: Scene | PixelGrid,
                     margin: int) -> tuple[Window, np.ndarray]:
    """The grid window around the labels (plus ``margin`` pixels of context) and the class codes on it.

    Returns the window and its (y, x) int64 codes: 1..N for ``class_names``, 0 unlabelled.
    """
    if settings.is_raster:
        window, labels = _raster_on_grid(settings.path, class_names, grid, margin)
    else:
        window, labels = _vector_on_grid(settings, class_names, grid, margin)
    if not labels.any():
        raise NoDataError(f"labels file {settings.path}: no labelled pixel on the imagery ({grid.width} x "
                          f"{grid.height} px, {grid.crs}); expected polygons holding a pixel's centre, or points")
    return window, labels


def read_label_table(settings: LabelsSettings) -> gpd.GeoDataFrame:
    """A vector file's features, checked: readable, not empty, with the class column, polygons or points, a CRS."""
    import geopandas as gpd
    import pyogrio

    path = _existing(settings.path)
    try:
        if path.suffix.lower() in (".parquet", ".geoparquet"):
            table = gpd.read_parquet(path)
        else:
            table = gpd.read_file(path, layer=_layer(settings, [name for name, _ in pyogrio.list_layers(path)]))
    except InputError:
        raise
    except (OSError, ValueError, RuntimeError) as err:  # pyogrio's errors are RuntimeErrors, pyarrow's ValueErrors
        raise InputError(f"labels file {path} cannot be read as a {path.suffix} vector file: {err}") from None
    if table.empty:
        raise NoDataError(f"labels file {path} holds no features; expected polygons or points with a class column")
    if settings.class_column not in table.columns:
        columns = [column for column in table.columns if column != table.geometry.name]
        raise InputError(f"labels file {path} has no class column {settings.class_column!r}; its columns: {columns}")
    geometry_types = table.geom_type.fillna("no geometry").to_numpy()
    wrong = ~np.isin(geometry_types, GEOMETRY_TYPES)
    if wrong.any():
        raise InputError(f"labels file {path} holds geometries {_few(geometry_types[wrong])} in {wrong.sum()} row(s); "
                         f"expected {', '.join(GEOMETRY_TYPES)}")
    if table.crs is None:
        raise InputError(f"labels file {path} has no CRS; expected one in the file (for a Shapefile, its .prj)")
    return table


def class_codes(values: np.ndarray, class_names: list[str], source: str) -> np.ndarray:
    """Class codes of a class column or a raster's values: names from ``class_names`` (text) or the codes themselves
    (numbers, 0 unlabelled), as int64 codes 1..N (0 unlabelled).

    Unknown names, codes other than 0..N and missing values raise :class:`InputError` naming ``source``.
    """
    count = len(class_names)
    if values.dtype.kind in "iuf":
        unknown = ~np.isin(values, np.arange(count + 1))
        if unknown.any():
            listed = ", ".join(f"{code} {name}" for code, name in enumerate(class_names, 1))
            raise InputError(f"{source} holds class codes {_few(values[unknown])} outside 0..{count}; expected codes "
                             f"of the class_names ({listed}) or 0 for unlabelled")
        return values.astype(np.int64)
    lookup = {name: code for code, name in enumerate(class_names, 1)}
    codes = np.array([lookup.get(value, -1) if isinstance(value, str) else -1 for value in values], dtype=np.int64)
    if (codes < 0).any():
        raise InputError(f"{source} holds class names {_few(values[codes < 0])} that are not in class_names; "
                         f"expected one of {class_names} (or codes 1..{count})")
    return codes


def _vector_on_grid(settings: LabelsSettings, class_names: list[str], grid: Scene | PixelGrid,
                    margin: int) -> tuple[Window, np.ndarray]:
    """Polygons and points burned on the grid window around those on the imagery, later rows over earlier ones."""
    from rasterio.features import rasterize
    from shapely import box

    from allspark.region.read import grid_window, window_transform

    table = read_label_table(settings)
    codes = class_codes(table[settings.class_column].to_numpy(), class_names,
                        f"labels file {settings.path}, column {settings.class_column!r},")
    geometries = table.geometry.to_crs(grid.crs)
    on_imagery = geometries.intersects(box(*_grid_bounds(grid))).to_numpy()
    window = grid_window(tuple(geometries[on_imagery].total_bounds), grid, margin) if on_imagery.any() else None
    if window is None:
        raise InputError(_outside(settings.path, tuple(geometries.total_bounds), grid))
    shape = (window["y"].stop - window["y"].start, window["x"].stop - window["x"].start)
    labels = rasterize(zip(geometries[on_imagery], codes[on_imagery], strict=True), out_shape=shape,
                       transform=window_transform(grid, window), fill=0, all_touched=False, dtype="int32")
    return window, labels.astype(np.int64)


def _raster_on_grid(path: Path, class_names: list[str], grid: Scene | PixelGrid,
                    margin: int) -> tuple[Window, np.ndarray]:
    """A label raster's codes checked over the whole file, then read onto the grid (nearest neighbour)."""
    import rasterio
    from rasterio.errors import RasterioError
    from rasterio.warp import transform_bounds

    from allspark.region.read import read_labels

    try:
        with rasterio.open(_existing(path)) as src:
            values, crs, bounds = src.read(1, masked=True).compressed(), src.crs, tuple(src.bounds)
    except RasterioError as err:
        raise InputError(f"labels file {path} cannot be read as a label raster: {err}") from None
    if crs is None:
        raise InputError(f"labels file {path} has no CRS; expected a georeferenced label raster")
    present = np.unique(values)
    present = present[~np.isnan(present)] if present.dtype.kind == "f" else present  # NaN: unlabelled
    if not present.any():
        raise NoDataError(f"labels file {path} holds no labelled pixel (only 0 or nodata); expected class codes "
                          f"1..{len(class_names)}")
    class_codes(present, class_names, f"labels file {path}")
    on_grid = transform_bounds(crs, grid.crs, *bounds)
    left, bottom, right, top = _grid_bounds(grid)
    if on_grid[0] >= right or on_grid[2] <= left or on_grid[1] >= top or on_grid[3] <= bottom:
        raise InputError(_outside(path, on_grid, grid))
    return read_labels(str(path), grid, margin)


def _existing(path: Path) -> Path:
    if not path.is_file():
        relative = "" if path.is_absolute() else f" (a relative path is taken from {Path.cwd()})"
        raise InputError(f"labels file {path} does not exist{relative}")
    return path


def _layer(settings: LabelsSettings, layers: list[str]) -> str | None:
    """The layer to read: the one named (it must exist), or the only one."""
    if settings.layer is None and len(layers) > 1:
        raise InputError(f"labels file {settings.path} holds the layers {layers}: set train.labels.layer to one")
    if settings.layer is not None and settings.layer not in layers:
        raise InputError(f"labels file {settings.path} has no layer {settings.layer!r}; its layers: {layers}")
    return settings.layer


def _grid_bounds(grid: Scene | PixelGrid) -> tuple[float, float, float, float]:
    from rasterio.transform import Affine, array_bounds

    return array_bounds(grid.height, grid.width, Affine(*grid.transform))


def _outside(path: Path, bounds: tuple[float, ...], grid: Scene | PixelGrid) -> str:
    def shown(values: tuple[float, ...]) -> str:
        return "(" + ", ".join(f"{value:.10g}" for value in values) + ")"

    return (f"labels file {path}: no label lies on the imagery; the labels span {shown(bounds)} and the imagery "
            f"{shown(_grid_bounds(grid))} (left, bottom, right, top in {grid.crs}); expected labels over the "
            "imagery (is the file's CRS right?)")


def _missing(value: object) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def _few(values: np.ndarray, limit: int = 5) -> str:
    """Up to ``limit`` distinct values, for a message."""
    def shown(value: object) -> str:
        if _missing(value):
            return "missing"
        if isinstance(value, float | np.floating) and float(value).is_integer():
            return str(int(value))
        return repr(value) if isinstance(value, str) else str(value)

    distinct = sorted({shown(value) for value in values.tolist()})
    more = f" and {len(distinct) - limit} more" if len(distinct) > limit else ""
    return "[" + ", ".join(distinct[:limit]) + more + "]"

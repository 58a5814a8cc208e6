"""Lazy loading of STAC items into one dask-backed ``(band, y, x)`` array of digital numbers.

Two readers are offered, odc-stac (default) and stackstac. The output grid (CRS, resolution,
snapped bounds) is computed here and handed to both, so they return the same pixels on the same
coordinates. Pixels stay digital numbers (DN) in a storage dtype chosen by :func:`storage_encoding`:
the assets' own integer dtype with their shared nodata value where they have one (no float copy
of the scene is ever made), else float32 with NaN for nodata. Several overlapping items are
reduced to one image by a per-pixel median (or the first valid observation). Physical values
(``DN * scale + offset``, NaN for nodata) are computed block by block with :func:`physical_values`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import pystac
import rasterio
import rioxarray  # noqa: F401  (registers the .rio accessor)
import xarray as xr
from affine import Affine
from rasterio.crs import CRS
from rasterio.enums import Resampling
from rasterio.errors import RasterioError
from rasterio.warp import transform_bounds
from rasterio.windows import Window

from allspark.errors import CatalogError, InputError, NoDataError
from allspark.raster.catalog import BandSpec, MissingBandError

Loader = Literal["odc", "stackstac"]
Composite = Literal["median", "first"]

_SNAP_TOLERANCE = 1e-6  # fraction of a pixel ignored when snapping bounds to the pixel grid


class CorruptAssetError(InputError):
    """An asset that cannot be opened or read as a raster."""

    def __init__(self, href: str, reason: str):
        super().__init__(f"asset {href} cannot be read as a raster: {reason}")
        self.href = href
        self.reason = reason


class AllNoDataError(NoDataError):
    """A loaded stack without a single valid pixel."""


@dataclass(frozen=True)
class Encoding:
    """How the scene's digital numbers are stored: a dtype and the value that means "no data"."""

    dtype: str
    nodata: float  # NaN for float storage

    @property
    def is_integer(self) -> bool:
        return np.dtype(self.dtype).kind in "iu"


def storage_encoding(asset_dtypes: Sequence[str], bands: Sequence[BandSpec]) -> Encoding:
    """The assets' own dtype and nodata when every band shares them (e.g. uint16, 0), else float32 + NaN."""
    dtypes = {np.dtype(d) for d in asset_dtypes}
    nodata = {b.nodata for b in bands}
    if len(dtypes) == 1 and len(nodata) == 1:
        (dtype,), (value,) = dtypes, nodata
        if dtype.kind in "iu" and value is not None and float(value).is_integer() and \
                np.iinfo(dtype).min <= value <= np.iinfo(dtype).max:  # nodata is a float (0.0): no min_scalar_type
            return Encoding(dtype=dtype.name, nodata=float(value))
    return Encoding(dtype="float32", nodata=float("nan"))


@dataclass(frozen=True)
class Grid:
    """The output pixel grid: CRS, square pixel size and bounds snapped to multiples of it."""

    epsg: int
    resolution: float
    bounds: tuple[float, float, float, float]

    @property
    def shape(self) -> tuple[int, int]:
        minx, miny, maxx, maxy = self.bounds
        return round((maxy - miny) / self.resolution), round((maxx - minx) / self.resolution)

    @property
    def transform(self) -> Affine:
        return Affine(self.resolution, 0.0, self.bounds[0], 0.0, -self.resolution, self.bounds[3])


def check_readable(items: Sequence[pystac.Item], bands: Sequence[BandSpec]) -> list[str]:
    """Open every asset to be loaded and read one pixel, so a corrupt file fails now, not inside dask.

    Returns the dtype of every asset read. Raises :class:`CorruptAssetError` naming the href, or
    :class:`MissingBandError` for an item without the asset.
    """
    dtypes = []
    for item in items:
        for band in bands:
            asset = item.assets.get(band.asset)
            if asset is None:
                raise MissingBandError(f"item {item.id} has no asset {band.asset!r} (band {band.name!r})")
            href = asset.get_absolute_href() or asset.href
            try:
                with rasterio.open(href) as src:
                    src.read(1, window=Window(0, 0, 1, 1))
                    dtypes.append(src.dtypes[0])
            except (RasterioError, OSError) as err:
                raise CorruptAssetError(href, str(err)) from err
    return dtypes


def load_stack(
    items: Sequence[pystac.Item],
    bands: Sequence[BandSpec],
    encoding: Encoding,
    *,
    loader: Loader = "odc",
    bbox_4326: tuple[float, float, float, float] | None = None,
    crs: str | int | None = None,
    resolution: float | None = None,
    chunks: int = 1024,
    composite: Composite = "median",
) -> xr.DataArray:
    """Load the bands of ``items`` lazily as a ``(band, y, x)`` DataArray of DNs (nothing is computed).

    Items are ordered by time (then id); overlapping observations are reduced by ``composite``:
    the per-pixel ``"median"`` of valid values (rounded back to an integer ``encoding``), or the
    ``"first"`` (earliest) valid value.

    ``bbox_4326`` clips to an area (lon/lat); ``crs`` / ``resolution`` default to the items' native
    CRS (that of the first item) and finest native pixel size. Coordinates: ``band`` (band names),
    ``wavelength`` along band (micrometres), ``y``/``x`` pixel centres; CRS and transform are written
    with rioxarray, the nodata value of ``encoding`` too, and ``attrs["stac_items"]`` lists the item ids.
    """
    if not items:
        raise CatalogError("load_stack needs at least one STAC item")
    if not bands:
        raise CatalogError("load_stack needs at least one band")
    items = sorted(items, key=lambda item: (item.datetime or item.common_metadata.start_datetime, item.id))
    grid = output_grid(items, bands, bbox_4326=bbox_4326, crs=crs, resolution=resolution)
    assets = list(dict.fromkeys(b.asset for b in bands))
    if loader == "odc":
        raw = _load_odc(items, assets, grid, encoding, chunks)
    elif loader == "stackstac":
        raw = _load_stackstac(items, assets, grid, encoding, chunks)
    else:
        raise CatalogError(f"loader must be 'odc' or 'stackstac', got {loader!r}")
    raw = raw.reset_coords(drop=True).transpose("time", "band", "y", "x").sel(band=[b.asset for b in bands])
    if raw.shape[-2:] != grid.shape:
        raise RuntimeError(f"{loader} returned a {raw.shape[-2:]} grid, expected {grid.shape}")
    stack = _reduce_time(raw.drop_vars("band"), bands, encoding, composite)
    rows, cols = grid.shape
    minx, _, _, maxy = grid.bounds
    stack = stack.assign_coords(
        band=[b.name for b in bands],
        wavelength=("band", [b.center_wavelength for b in bands]),
        y=maxy - grid.resolution * (np.arange(rows) + 0.5),
        x=minx + grid.resolution * (np.arange(cols) + 0.5),
    )
    stack.attrs = {"stac_items": [item.id for item in items]}
    stack = stack.rio.set_spatial_dims(x_dim="x", y_dim="y").rio.write_crs(f"EPSG:{grid.epsg}")
    return stack.rio.write_transform(grid.transform).rio.write_nodata(encoding.nodata, encoded=False)


def physical_values(dn: np.ndarray, bands: Sequence[BandSpec], encoding: Encoding) -> np.ndarray:
    """float32 ``DN * scale + offset`` of a ``(band, ...)`` array, NaN where the DN is nodata."""
    shape = (-1,) + (1,) * (dn.ndim - 1)
    scale = np.asarray([b.scale for b in bands], dtype="float32").reshape(shape)
    offset = np.asarray([b.offset for b in bands], dtype="float32").reshape(shape)
    values = dn.astype("float32") * scale + offset
    missing = np.isnan(dn) if not encoding.is_integer else dn == encoding.nodata
    return np.where(missing, np.float32(np.nan), values)


def no_data_error(height: int, width: int, bands: Sequence[str], items: Sequence[str]) -> AllNoDataError:
    """The error for a scene without a single valid pixel, naming its size, bands and items.

    The count itself comes from the step that reads the pixels anyway (the scene write), so
    checking costs no extra pass over the data.
    """
    return AllNoDataError(
        f"the loaded scene ({height}x{width} px, bands {', '.join(bands)}) has no valid pixel; items: "
        f"{', '.join(items) or 'unknown'}. The AOI may only cover the items' nodata area."
    )


def output_grid(
    items: Sequence[pystac.Item],
    bands: Sequence[BandSpec],
    *,
    bbox_4326: tuple[float, float, float, float] | None = None,
    crs: str | int | None = None,
    resolution: float | None = None,
) -> Grid:
    """The grid both loaders read into: the items' extent (clipped to ``bbox_4326``), snapped outwards."""
    native = _item_epsg(items[0])
    epsg = native if crs is None else CRS.from_user_input(crs).to_epsg()
    if epsg is None:
        raise CatalogError(f"crs {crs!r} has no EPSG code; pass one such as 'EPSG:32617'")
    if resolution is None:
        if CRS.from_epsg(epsg).linear_units != CRS.from_epsg(native).linear_units:
            raise CatalogError(f"pass resolution= in the units of EPSG:{epsg}; the native one is in other units")
        resolution = _native_resolution(items, bands)
    extents = [_item_bounds(item, epsg) for item in items]
    minx, miny = min(e[0] for e in extents), min(e[1] for e in extents)
    maxx, maxy = max(e[2] for e in extents), max(e[3] for e in extents)
    if bbox_4326 is not None:
        bx0, by0, bx1, by1 = transform_bounds("EPSG:4326", f"EPSG:{epsg}", *bbox_4326, densify_pts=21)
        minx, miny, maxx, maxy = max(minx, bx0), max(miny, by0), min(maxx, bx1), min(maxy, by1)
        if minx >= maxx or miny >= maxy:
            raise NoDataError(f"bbox {bbox_4326} does not overlap the items {[item.id for item in items]}")
    bounds = (_snap(minx, resolution, up=False), _snap(miny, resolution, up=False),
              _snap(maxx, resolution, up=True), _snap(maxy, resolution, up=True))
    return Grid(epsg=epsg, resolution=float(resolution), bounds=bounds)


def _snap(value: float, resolution: float, *, up: bool) -> float:
    """``value`` moved outwards to a multiple of ``resolution``, ignoring a tiny fraction of a pixel."""
    steps = value / resolution
    return (math.ceil(steps - _SNAP_TOLERANCE) if up else math.floor(steps + _SNAP_TOLERANCE)) * resolution


def _load_odc(items: Sequence[pystac.Item], assets: list[str], grid: Grid, encoding: Encoding,
              chunks: int) -> xr.DataArray:
    import odc.stac
    from odc.geo.geobox import GeoBox

    geobox = GeoBox(grid.shape, grid.transform, f"EPSG:{grid.epsg}")
    ds = odc.stac.load(
        items, bands=assets, geobox=geobox, dtype=encoding.dtype, nodata=encoding.nodata,
        chunks={"x": chunks, "y": chunks},
        groupby=lambda item, parsed, index: index, resampling="nearest",  # one slice per item, in input order
    )
    raw = ds[assets].to_dataarray("band")
    return raw.rename({old: new for old, new in (("latitude", "y"), ("longitude", "x")) if old in raw.dims})


def _load_stackstac(
    items: Sequence[pystac.Item], assets: list[str], grid: Grid, encoding: Encoding, chunks: int
) -> xr.DataArray:
    import stackstac

    dtype = np.dtype(encoding.dtype)
    return stackstac.stack(
        [_with_proj_epsg(item) for item in items], assets=assets, epsg=grid.epsg, resolution=grid.resolution,
        bounds=grid.bounds, snap_bounds=False, dtype=dtype, fill_value=dtype.type(encoding.nodata), rescale=False,
        xy_coords="center", chunksize=chunks, properties=False, band_coords=False, sortby_date=False,
        resampling=Resampling.nearest,
    )


def _reduce_time(raw: xr.DataArray, bands: Sequence[BandSpec], encoding: Encoding, composite: Composite) -> xr.DataArray:
    """One image of DNs from the time slices: per-pixel median over valid values, or the first valid value.

    Float storage masks each band's own nodata value to NaN here; integer storage already holds its
    one nodata value, and a median (a float) is rounded back to the storage dtype.
    """
    if not encoding.is_integer:
        band_nodata = xr.DataArray([np.nan if b.nodata is None else b.nodata for b in bands], dims="band")
        raw = raw.where(raw != band_nodata)
    if raw.sizes["time"] == 1:
        return raw.isel(time=0, drop=True)
    valid = raw if not encoding.is_integer else raw.where(raw != encoding.nodata)
    if composite == "median":
        reduced = xr.apply_ufunc(
            _median_of_valid, valid.chunk({"time": -1}), input_core_dims=[["time"]], dask="parallelized",
            output_dtypes=["float32"],
        )
    elif composite == "first":
        reduced = valid.isel(time=0, drop=True)
        for t in range(1, valid.sizes["time"]):
            reduced = reduced.fillna(valid.isel(time=t, drop=True))
    else:
        raise CatalogError(f"composite must be 'median' or 'first', got {composite!r}")
    if encoding.is_integer:
        reduced = reduced.round().fillna(encoding.nodata).astype(encoding.dtype)
    return reduced


def _median_of_valid(values: np.ndarray) -> np.ndarray:
    """Median over the last axis ignoring NaN, by one sort (NaN sorts last): several times faster than
    ``np.nanmedian`` over a short time axis. All-NaN gives NaN."""
    ordered = np.sort(values.astype("float32", copy=False), axis=-1)
    count = np.isfinite(ordered).sum(axis=-1, keepdims=True)
    low = np.take_along_axis(ordered, np.maximum(count - 1, 0) // 2, axis=-1)
    high = np.take_along_axis(ordered, count // 2 * (count > 0), axis=-1)
    return np.where(count > 0, (low + high) / 2, np.nan)[..., 0]


def _item_epsg(item: pystac.Item) -> int:
    """EPSG code of an item's native CRS, from ``proj:epsg`` or ``proj:code`` of the item, else of an asset."""
    for fields in (item.properties, *(asset.extra_fields for asset in item.assets.values())):
        if fields.get("proj:epsg"):
            return int(fields["proj:epsg"])
        code = str(fields.get("proj:code") or "")
        if code.upper().startswith("EPSG:"):
            return int(code.split(":")[1])
    raise CatalogError(f"item {item.id} has no proj:code / proj:epsg; pass crs= to load_stack")


def _native_resolution(items: Sequence[pystac.Item], bands: Sequence[BandSpec]) -> float:
    """The finest pixel size among the bands' assets (``proj:transform``, else ``gsd``)."""
    sizes = []
    for item in items:
        for band in bands:
            fields = {**item.properties, **item.assets[band.asset].extra_fields}
            transform = fields.get("proj:transform")
            size = abs(transform[0]) if transform else fields.get("gsd")
            if size:
                sizes.append(float(size))
    if not sizes:
        raise CatalogError(f"items {[i.id for i in items]} give no proj:transform or gsd; pass resolution=")
    return min(sizes)


def _item_bounds(item: pystac.Item, epsg: int) -> tuple[float, float, float, float]:
    """An item's extent in EPSG:``epsg``: exact from ``proj:bbox`` or transform + shape when native,
    else from its lon/lat bbox."""
    props = item.properties
    if _item_epsg(item) == epsg:
        if props.get("proj:bbox"):
            return tuple(props["proj:bbox"][:4])
        if props.get("proj:transform") and props.get("proj:shape"):
            a, _, c, _, e, f = props["proj:transform"][:6]
            rows, cols = props["proj:shape"]
            return c, f + e * rows, c + a * cols, f
    return transform_bounds("EPSG:4326", f"EPSG:{epsg}", *item.bbox, densify_pts=21)


def _with_proj_epsg(item: pystac.Item) -> pystac.Item:
    """A copy of ``item`` with ``proj:epsg`` beside ``proj:code``: stackstac reads only ``proj:epsg``,
    and pystac drops it when reading STAC 1.1 JSON."""
    clone = item.clone()
    for fields in (clone.properties, *(asset.extra_fields for asset in clone.assets.values())):
        code = str(fields.get("proj:code") or "")
        if "proj:epsg" not in fields and code.upper().startswith("EPSG:"):
            fields["proj:epsg"] = int(code.split(":")[1])
    return clone

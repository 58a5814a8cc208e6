"""Catalog configs, STAC item search, band resolution and areas of interest.

A catalog config (``catalogs/<name>.yaml``) says where the imagery lives (a static STAC catalog or
a STAC API), which collection to use, how its bands map to asset keys, centre wavelengths and
scale/offset/nodata, and which asset flags clouds and shadows (``mask``). Items found here are
loaded by :mod:`allspark.raster.load`.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import re
from pathlib import Path
from typing import Annotated, Any, Literal

import numpy as np
import pystac
import yaml
from pystac.serialization import identify_stac_object_type
from pystac.stac_io import HREF, DefaultStacIO
from pydantic import Field, ValidationError, model_validator
from shapely import is_valid_reason
from shapely.geometry import box, mapping, shape
from shapely.geometry.base import BaseGeometry
from shapely.ops import unary_union

from allspark.core.config import StrictModel
from allspark.errors import CatalogError, ConfigError, InputError, NoDataError
from allspark.raster.filters import SearchFilters
from allspark.raster.signing import Signing, signed, signer
from allspark.settings import cache_dir, catalogs_dir

LABEL_SCHEMA_PREFIX = "https://stac-extensions.github.io/label/"


class CatalogConfigError(ConfigError):
    """A catalog config that cannot be read or used; the message names the file."""


class CatalogNotFoundError(CatalogError):
    """A static catalog path that does not exist."""


class NoItemsFound(NoDataError):
    """A search that matched no item; the message says what the catalog does cover."""


class MissingBandError(CatalogError):
    """A requested band that an item does not have; the message lists the bands it has."""


class AOIError(InputError):
    """An area of interest that cannot be read or is not a valid lon/lat geometry."""


class BandSpec(StrictModel):
    """One band: its name in the pipeline, the STAC asset holding it and how to turn DNs into values.

    Loaded values are ``DN * scale + offset``; pixels equal to ``nodata`` become NaN.
    """

    name: str
    asset: str
    center_wavelength: float = Field(gt=0, description="Centre wavelength in micrometres.")
    scale: float = 1.0
    offset: float = 0.0
    nodata: float | None = None


class OffsetRule(StrictModel):
    """Apply the bands' offsets only to items whose ``property`` is >= ``min_value``.

    Sentinel-2 L2A from processing baseline 04.00 (2022-01-25) on stores reflectance with an added
    offset of 1000 DN (-0.1 after scaling); older products have none. Values compare as strings
    (zero-padded, e.g. "04.00"); items without the property count as older (offset 0).
    """

    property: str
    min_value: str


class MaskSpec(StrictModel):
    """A per-item quality layer whose flagged pixels (clouds, cloud shadows...) are dropped before compositing.

    ``asset`` is the item's mask asset. Give exactly one rule: ``classes``, the values to drop of a
    classification layer (Sentinel-2 L2A scene classification, SCL: 3 cloud shadow, 8/9 cloud of
    medium/high probability, 10 thin cirrus, 11 snow), or ``bits``, bit numbers of a bit-flag layer
    where a pixel is dropped when any of them is set (Landsat Collection 2 ``qa_pixel``: 0 fill,
    1 dilated cloud, 2 cirrus, 3 cloud, 4 cloud shadow).
    """

    asset: str
    classes: list[Annotated[int, Field(ge=0)]] | None = Field(None, min_length=1)
    bits: list[Annotated[int, Field(ge=0, le=62)]] | None = Field(None, min_length=1)

    @model_validator(mode="after")
    def _one_rule(self) -> MaskSpec:
        if (self.classes is None) == (self.bits is None):
            raise ValueError("give exactly one of classes (values to drop) or bits (bit numbers to drop when set)")
        return self

    def drops(self, values: np.ndarray) -> np.ndarray:
        """Where the mask layer's ``values`` flag a pixel to drop (a boolean array of their shape)."""
        if self.classes is not None:
            return np.isin(values, self.classes)
        return (values.astype(np.int64) & sum(1 << bit for bit in self.bits)) != 0


class CatalogConfig(StrictModel):
    """Where imagery lives and how its bands are read."""

    kind: Literal["static", "api"] = Field(description="static: a catalog.json on disk; api: a STAC API.")
    url_or_path: str = Field(description="catalog.json path (static) or API root URL (api).")
    collection: str
    description: str = ""
    bands: list[BandSpec] = Field(min_length=1)
    offset_rule: OffsetRule | None = None
    mask: MaskSpec | None = Field(None, description="Cloud/shadow mask applied to each item before compositing.")
    signing: Signing | None = Field(None, description="How asset hrefs are signed before reading "
                                    "(planetary_computer: SAS tokens, see allspark.raster.signing).")

    @model_validator(mode="after")
    def _unique_bands(self) -> CatalogConfig:
        names = [b.name for b in self.bands]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"band names must be unique, repeated: {', '.join(duplicates)}")
        return self


def load_catalog_config(path_or_name: str | Path) -> CatalogConfig:
    """Read a catalog config from a YAML path, or by name (``"demo"`` -> ``catalogs/demo.yaml``).

    ``${ALLSPARK_CACHE}`` in a static path expands to :func:`allspark.settings.cache_dir` (also when
    the variable is unset), other ``$VARS`` and ``~`` expand as usual, and a relative path is
    taken relative to the YAML file. Unknown keys are errors naming the file.
    """
    text = str(path_or_name)
    is_path = isinstance(path_or_name, Path) or text.endswith((".yaml", ".yml")) or os.sep in text
    path = Path(text) if is_path else catalogs_dir() / f"{text}.yaml"
    if not path.is_file():
        known = sorted(p.stem for p in catalogs_dir().glob("*.yaml"))
        raise CatalogConfigError(
            f"catalog config {path} does not exist (named catalogs in {catalogs_dir()}: {', '.join(known) or 'none'})"
        )
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise CatalogConfigError(f"catalog config {path} is not valid YAML: {err}") from None
    if not isinstance(data, dict):
        raise CatalogConfigError(f"catalog config {path} must hold a mapping of keys, got {type(data).__name__}")
    try:
        config = CatalogConfig.model_validate(data)
    except ValidationError as err:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or '<root>'}: {e['msg']}" for e in err.errors()
        )
        raise CatalogConfigError(f"invalid catalog config {path}: {problems}") from None
    if config.kind == "static":
        raw = config.url_or_path.replace("${ALLSPARK_CACHE}", str(cache_dir()))
        expanded = os.path.expanduser(os.path.expandvars(raw))
        config = config.model_copy(update={"url_or_path": str((path.parent / expanded).resolve())})
    return config


def search_items(
    config: CatalogConfig,
    aoi: BaseGeometry | None = None,
    datetime: tuple[str | None, str | None] | None = None,
    *,
    labels: bool = False,
    filters: SearchFilters | None = None,
) -> list[pystac.Item]:
    """Items of the config's collection that intersect ``aoi`` (lon/lat) and the ``datetime`` range.

    ``datetime`` is an inclusive ``(start, end)`` pair of ISO 8601 dates or times; ``None`` or ".."
    leaves an end open. Items with ``start_/end_datetime`` match when their span overlaps the range.
    Imagery items are returned (sorted by time, then id); ``labels=True`` returns the label items
    (STAC label extension) instead. ``filters`` (:class:`~allspark.raster.filters.SearchFilters`)
    keep only the items its query and CQL2 filter hold for, in ``sortby`` order when given, at
    most ``max_items``: a STAC API evaluates them, a static catalog here with the same meaning.
    Raises :class:`NoItemsFound` when nothing matches, naming the filters too.
    """
    start, end = _parse_range(datetime)
    if filters is not None and filters.is_empty:
        filters = None
    if config.kind == "api":
        return _search_api(config, aoi, start, end, labels, filters)
    root = Path(config.url_or_path)
    if not root.exists():
        raise CatalogNotFoundError(
            f"static catalog {root} (collection {config.collection!r}) does not exist; for the demo "
            f"catalog run allspark.demo_data.build_demo_catalog() first"
        )
    items = [
        item.make_asset_hrefs_absolute()
        for item in _static_items(root)
        if item.collection_id == config.collection and _is_label(item) == labels
    ]
    kind = "label" if labels else "imagery"
    if not items:
        raise NoItemsFound(_naming(filters, f"static catalog {root} has no {kind} items in collection "
                                            f"{config.collection!r}"))
    if aoi is not None:
        hits = [item for item in items if item.geometry and shape(item.geometry).intersects(aoi)]
        if not hits:
            extent = unary_union([box(*item.bbox) for item in items]).bounds
            raise NoItemsFound(_naming(filters,
                f"AOI with bbox {_fmt_bbox(aoi.bounds)} does not intersect collection {config.collection!r} "
                f"of {root}, whose {kind} items cover {_fmt_bbox(extent)} (lon/lat)"
            ))
        items = hits
    hits = [item for item in items if _overlaps(_item_span(item), start, end)]
    if not hits:
        spans = [_item_span(item) for item in items]
        raise NoItemsFound(_naming(filters,
            f"no {kind} items of collection {config.collection!r} in {root} between {_fmt_time(start)} and "
            f"{_fmt_time(end)}; the items {'over the AOI ' if aoi is not None else ''}span "
            f"{_fmt_time(min(s for s, _ in spans))} to {_fmt_time(max(e for _, e in spans))}"
        ))
    hits = sorted(hits, key=lambda item: (_item_span(item)[0], item.id))
    if filters is None:
        return signed(hits, config.signing)
    selected = filters.select(hits)
    if not selected:
        where = f" over the AOI with bbox {_fmt_bbox(aoi.bounds)}" if aoi is not None else ""
        raise NoItemsFound(
            f"none of the {len(hits)} {kind} item(s) of collection {config.collection!r} in {root}{where} between "
            f"{_fmt_time(start)} and {_fmt_time(end)} matches the search filters ({filters.describe()}); "
            f"{_filtered_values(hits, filters)}"
        )
    return signed(selected, config.signing)


def _naming(filters: SearchFilters | None, message: str) -> str:
    """A no-items message, with the search filters of the search when it had any."""
    return message if filters is None else f"{message} (search filters: {filters.describe()})"


def _filtered_values(items: list[pystac.Item], filters: SearchFilters, limit: int = 10) -> str:
    """What the items hold of the fields the filters compare, e.g. ``X: eo:cloud_cover=45.0`` (for messages)."""
    fields = filters.properties()[:4]
    if not fields:
        return f"the items: {', '.join(item.id for item in items[:limit])}"

    def value(item: pystac.Item, field: str) -> str:
        if field in ("id", "collection"):
            return f"{field}={item.id if field == 'id' else item.collection_id}"
        return f"{field}={item.properties.get(field.removeprefix('properties.'), 'missing')}"

    shown = "; ".join(f"{item.id}: {', '.join(value(item, f) for f in fields)}" for item in items[:limit])
    more = f"; and {len(items) - limit} more" if len(items) > limit else ""
    return f"the items hold {shown}{more}"


def _static_items(root: Path) -> list[pystac.Item]:
    """Every item of the static catalog at ``root``, each file checked as it is read (see :class:`CheckedStacIO`)."""
    try:
        catalog = pystac.read_file(str(root), stac_io=CheckedStacIO())
        if not isinstance(catalog, pystac.Catalog):
            raise CatalogNotFoundError(f"{root} is a STAC {type(catalog).__name__}, expected a catalog or collection")
        return list(catalog.get_items(recursive=True))
    except pystac.STACError as err:  # pystac wraps the error of a linked file: "HREF ... does not resolve"
        cause = err.__cause__
        while cause is not None and not isinstance(cause, CatalogError):
            cause = cause.__cause__
        if cause is None:
            raise
        raise cause from None


STAC_REQUIRED_KEYS = {
    pystac.STACObjectType.CATALOG: ("id", "description", "links"),
    pystac.STACObjectType.COLLECTION: ("id", "description", "extent", "links"),
    pystac.STACObjectType.ITEM: ("id", "geometry", "properties", "links", "assets"),
}
"""Keys every STAC version requires of each object; pystac reads some objects without them (an item without an id)."""


class CheckedStacIO(DefaultStacIO):
    """pystac's reader of local and remote STAC files, with every file checked as it is read.

    A file that is not JSON, not a STAC object, lacks a required key or is an item without any
    datetime raises :class:`CatalogError` naming the file and what was expected, instead of
    pystac's errors (a JSON decoder's position, a bare ``KeyError``, or "does not resolve to a
    STAC object" with the reason two exceptions down).
    """

    def read_stac_object(self, source: HREF, root: pystac.Catalog | None = None, *args: Any,
                         **kwargs: Any) -> pystac.STACObject:
        href = os.fspath(source)
        try:
            data = self.read_json(source, *args, **kwargs)
        except FileNotFoundError:
            raise CatalogError(f"STAC file {href} does not exist (a link of the catalog points to it)") from None
        except OSError as err:
            raise CatalogError(f"STAC file {href} cannot be read: {err}") from None
        except ValueError as err:  # json's and orjson's decode errors, and UnicodeDecodeError
            raise CatalogError(f"STAC file {href} is not valid JSON ({err}); expected a STAC catalog, "
                               "collection or item") from None
        kind = _check_stac_object(data, href)
        try:
            return self.stac_object_from_dict(data, href=source, root=root, preserve_dict=False)
        except (pystac.STACError, KeyError, TypeError, ValueError, AttributeError) as err:
            raise CatalogError(f"STAC {kind} {href} cannot be read: {err!r}") from None


def _check_stac_object(data: Any, href: str) -> str:
    """The kind of STAC object ``data`` is ("catalog", "collection" or "item"), or a :class:`CatalogError`."""
    kind = identify_stac_object_type(data) if isinstance(data, dict) else None
    if kind is None:
        if not isinstance(data, dict):
            found = f"a JSON {type(data).__name__}"
        elif "stac_version" not in data:
            found = "an object without stac_version"
        else:
            found = f"type {data.get('type')!r}"
        raise CatalogError(f"STAC file {href} is not a STAC object: expected a JSON object with a stac_version and "
                           f"the type Catalog, Collection or Feature (an item), found {found}")
    noun = {pystac.STACObjectType.CATALOG: "catalog", pystac.STACObjectType.COLLECTION: "collection",
            pystac.STACObjectType.ITEM: "item"}[kind]
    missing = [key for key in STAC_REQUIRED_KEYS[kind] if key not in data]
    if missing:
        raise CatalogError(f"STAC {noun} {href} lacks the required key(s) {', '.join(missing)}")
    if kind == pystac.STACObjectType.ITEM:
        properties = data["properties"]
        if not isinstance(properties, dict):
            raise CatalogError(f"STAC item {data['id']!r} ({href}): properties must be an object, got "
                               f"{type(properties).__name__}")
        if not properties.get("datetime") and not (properties.get("start_datetime") and properties.get("end_datetime")):
            raise CatalogError(
                f"STAC item {data['id']!r} ({href}) has no datetime: its datetime is null or absent and it lacks "
                "start_datetime/end_datetime; STAC requires a datetime, or both start_datetime and end_datetime"
            )
    return noun


def api_search_parameters(
    config: CatalogConfig, aoi: BaseGeometry | None, start: dt.datetime | None, end: dt.datetime | None,
    filters: SearchFilters | None = None,
) -> dict[str, Any]:
    """The keyword arguments of ``pystac_client.Client.search`` for this search."""
    return {
        "collections": [config.collection],
        "intersects": mapping(aoi) if aoi is not None else None,
        "datetime": None if start is None and end is None else f"{_fmt_time(start)}/{_fmt_time(end)}",
        **(filters.api_parameters() if filters is not None else {}),
    }


def _search_api(
    config: CatalogConfig, aoi: BaseGeometry | None, start: dt.datetime | None, end: dt.datetime | None,
    labels: bool, filters: SearchFilters | None = None,
) -> list[pystac.Item]:
    """Search a STAC API with pystac-client; the API evaluates the filters, sorts and cuts to ``max_items``."""
    from pystac_client import Client
    from pystac_client.exceptions import APIError

    try:
        client = Client.open(config.url_or_path, modifier=signer(config.signing))  # signs each item found
        search = client.search(**api_search_parameters(config, aoi, start, end, filters))
        items = [item for item in search.items() if _is_label(item) == labels]
    except APIError as err:  # the API's own reason, e.g. a query operator it does not implement
        raise CatalogError(_naming(filters, f"STAC API {config.url_or_path} refused the search of collection "
                                            f"{config.collection!r}") + f": {err}") from None
    if not items:
        raise NoItemsFound(_naming(filters,
            f"STAC API {config.url_or_path} returned no {'label' if labels else 'imagery'} items of collection "
            f"{config.collection!r} for AOI bbox {_fmt_bbox(aoi.bounds) if aoi is not None else 'any'} between "
            f"{_fmt_time(start)} and {_fmt_time(end)}"
        ))
    if filters is not None and filters.sortby:
        return items[: filters.max_items]  # in the API's sortby order
    return sorted(items, key=lambda item: (_item_span(item)[0], item.id))


def _is_label(item: pystac.Item) -> bool:
    return any(uri.startswith(LABEL_SCHEMA_PREFIX) for uri in item.stac_extensions) or "label:type" in item.properties


def _parse_time(text: str | None, *, end: bool) -> dt.datetime | None:
    """An ISO 8601 date or datetime as UTC; a bare date means the whole day."""
    if text is None or text in ("", ".."):
        return None
    try:
        value = dt.datetime.fromisoformat(text)
    except ValueError:
        raise ConfigError(f"datetime {text!r} is not an ISO 8601 date or time (e.g. 2000-01-31)") from None
    if re.fullmatch(r"\d{4}-\d{2}-\d{2}", text) and end:
        value += dt.timedelta(days=1) - dt.timedelta(microseconds=1)
    return value if value.tzinfo else value.replace(tzinfo=dt.UTC)


def _parse_range(datetime: tuple[str | None, str | None] | None) -> tuple[dt.datetime | None, dt.datetime | None]:
    if datetime is None:
        return None, None
    if len(datetime) != 2:
        raise ConfigError(f"datetime range must be (start, end), got {datetime!r}")
    start, end = _parse_time(datetime[0], end=False), _parse_time(datetime[1], end=True)
    if start is not None and end is not None and start > end:
        raise ConfigError(f"datetime range starts after it ends: {datetime!r}")
    return start, end


def _item_span(item: pystac.Item) -> tuple[dt.datetime, dt.datetime]:
    common = item.common_metadata
    start = common.start_datetime or item.datetime
    end = common.end_datetime or item.datetime
    return start, end


def _overlaps(span: tuple[dt.datetime, dt.datetime], start: dt.datetime | None, end: dt.datetime | None) -> bool:
    return (start is None or span[1] >= start) and (end is None or span[0] <= end)


def _fmt_time(value: dt.datetime | None) -> str:
    return ".." if value is None else value.isoformat().replace("+00:00", "Z")


def _fmt_bbox(bounds: tuple[float, ...]) -> str:
    return "(" + ", ".join(f"{v:.5f}" for v in bounds) + ")"


# --- bands -------------------------------------------------------------------------------------------


def resolve_bands(item: pystac.Item, band_names: list[str], config: CatalogConfig) -> list[BandSpec]:
    """Map requested band names to the item's asset keys, centre wavelengths and scale/offset/nodata.

    A name is found as the config's asset key for that band, as an asset key of the item, or as the
    ``name`` / ``common_name`` of a single-band asset's ``eo:bands`` (or STAC 1.1 ``bands``). The
    item's own metadata wins over the config table: ``eo:bands`` for the wavelength, ``raster:bands``
    for scale, offset and nodata. Raises :class:`MissingBandError` naming the item, the band and
    the bands the item has.
    """
    table = {b.name: b for b in config.bands}
    meta = _asset_band_metadata(item)
    offset_applies = config.offset_rule is None or str(
        item.properties.get(config.offset_rule.property, "")
    ) >= config.offset_rule.min_value
    resolved = []
    for name in band_names:
        spec = table.get(name)
        key = _find_asset(item, name, spec, meta)
        band_meta = meta.get(key, {})
        wavelength = band_meta.get("center_wavelength") or (spec.center_wavelength if spec else None)
        if wavelength is None:
            raise MissingBandError(
                f"band {name!r} of item {item.id} (asset {key!r}) has no centre wavelength in the item's "
                f"eo:bands nor in the catalog config's band table"
            )
        scale = band_meta.get("scale", spec.scale if spec else 1.0)
        offset = band_meta.get("offset", (spec.offset if spec and offset_applies else 0.0))
        nodata = band_meta.get("nodata", spec.nodata if spec else None)
        resolved.append(BandSpec(name=name, asset=key, center_wavelength=wavelength, scale=scale,
                                 offset=offset, nodata=nodata))
    return resolved


def _find_asset(item: pystac.Item, name: str, spec: BandSpec | None, meta: dict[str, dict[str, Any]]) -> str:
    """The key of the item's asset holding band ``name`` (see :func:`resolve_bands` for the order)."""
    if spec is not None and spec.asset in item.assets:
        return spec.asset
    if name in item.assets:
        return name
    matches = sorted(key for key, m in meta.items() if name in (m.get("name"), m.get("common_name")))
    if len(matches) == 1:
        return matches[0]
    if matches:
        raise MissingBandError(
            f"band {name!r} is ambiguous in item {item.id}: assets {', '.join(matches)} all carry it; "
            f"request one of those asset keys instead"
        )
    rasters = sorted(
        key for key, asset in item.assets.items()
        if key in meta or "data" in (asset.roles or []) or any(t in (asset.media_type or "") for t in ("tiff", "jp2"))
    )
    available = ", ".join(
        key + (f" ({meta[key]['common_name']})" if meta.get(key, {}).get("common_name") else "") for key in rasters
    )
    raise MissingBandError(f"item {item.id} has no band {name!r}; its bands: {available or 'none'}")


def _asset_band_metadata(item: pystac.Item) -> dict[str, dict[str, Any]]:
    """Per single-band asset: name, common_name, center_wavelength, scale, offset, nodata (where given).

    Reads asset ``eo:bands`` (including old STAC's indexes into the item's ``eo:bands``), STAC 1.1
    ``bands`` (``eo:center_wavelength``, ``eo:common_name``, ``raster:scale``...) and ``raster:bands``.
    Multi-band assets (e.g. a true-colour ``visual``) are left out: they cannot serve as one band.
    """
    item_bands = item.properties.get("eo:bands") or []
    out: dict[str, dict[str, Any]] = {}
    for key, asset in item.assets.items():
        fields = asset.extra_fields
        bands = fields.get("eo:bands") or fields.get("bands") or [{}]
        raster = fields.get("raster:bands") or [{}]
        if len(bands) != 1 or len(raster) != 1:
            continue
        band = item_bands[bands[0]] if isinstance(bands[0], int) and bands[0] < len(item_bands) else bands[0]
        entry = {
            "name": band.get("name"),
            "common_name": band.get("common_name", band.get("eo:common_name")),
            "center_wavelength": band.get("center_wavelength", band.get("eo:center_wavelength")),
            "scale": raster[0].get("scale", band.get("raster:scale")),
            "offset": raster[0].get("offset", band.get("raster:offset")),
            "nodata": raster[0].get("nodata", band.get("nodata", fields.get("nodata"))),
        }
        entry = {k: v for k, v in entry.items() if v is not None}
        if entry:
            out[key] = entry
    return out


# --- areas of interest --------------------------------------------------------------------------------

_BBOX = re.compile(r"\s*" + r"\s*,\s*".join([r"([-+]?[0-9.]+(?:[eE][-+]?\d+)?)"] * 4) + r"\s*")


def load_aoi(path_or_bbox: str | Path) -> BaseGeometry:
    """An area of interest in lon/lat (EPSG:4326) from a GeoJSON file or a ``"minx,miny,maxx,maxy"`` bbox.

    GeoJSON may be a FeatureCollection (its geometries are unioned), a Feature or a bare geometry.
    Raises :class:`AOIError` naming the input and what was expected.
    """
    text = str(path_or_bbox)
    match = _BBOX.fullmatch(text) if not isinstance(path_or_bbox, Path) else None
    if match:
        minx, miny, maxx, maxy = (float(v) for v in match.groups())
        if not (minx < maxx and miny < maxy):
            raise AOIError(f"AOI bbox {text!r} must be minx,miny,maxx,maxy with minx < maxx and miny < maxy")
        geometries, source = [box(minx, miny, maxx, maxy)], f"AOI bbox {text!r}"
    else:
        path = Path(text)
        if not path.is_file():
            raise AOIError(f"AOI {text!r} is neither a GeoJSON file nor a bbox 'minx,miny,maxx,maxy' in lon/lat")
        try:
            data = json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise AOIError(f"AOI file {path} is not valid JSON: {err}") from None
        geometries, source = _geojson_geometries(data, path), f"AOI file {path}"
    for geometry in geometries:
        if geometry.is_empty:
            raise AOIError(f"{source} holds an empty geometry")
        if not geometry.is_valid:
            raise AOIError(
                f"{source} holds an invalid geometry ({is_valid_reason(geometry)}); "
                f"fix it, e.g. with shapely.make_valid"
            )
    aoi = geometries[0] if len(geometries) == 1 else unary_union(geometries)
    minx, miny, maxx, maxy = aoi.bounds
    if minx < -180 or maxx > 180 or miny < -90 or maxy > 90:
        raise AOIError(
            f"{source} has coordinates outside the lon/lat range (bounds {_fmt_bbox(aoi.bounds)}); "
            f"expected EPSG:4326 longitude, latitude"
        )
    return aoi


_GEOMETRY_TYPES = ("Point", "MultiPoint", "LineString", "MultiLineString", "Polygon", "MultiPolygon",
                   "GeometryCollection")


def _geojson_geometries(data: Any, path: Path) -> list[BaseGeometry]:
    """The geometries of a GeoJSON FeatureCollection, Feature or geometry object."""
    kind = data.get("type") if isinstance(data, dict) else None
    if kind == "FeatureCollection":
        raw = [f.get("geometry") for f in data.get("features") or [] if isinstance(f, dict)]
    elif kind == "Feature":
        raw = [data.get("geometry")]
    elif kind in _GEOMETRY_TYPES:
        raw = [data]
    else:
        raise AOIError(f"AOI file {path} has GeoJSON type {kind!r}; expected a FeatureCollection, Feature or geometry")
    raw = [g for g in raw if g]
    if not raw:
        raise AOIError(f"AOI file {path} ({kind}) holds no geometry")
    try:
        return [shape(g) for g in raw]
    except (KeyError, TypeError, ValueError, AttributeError, IndexError) as err:
        raise AOIError(f"AOI file {path} holds malformed GeoJSON geometry: {err!r}") from None

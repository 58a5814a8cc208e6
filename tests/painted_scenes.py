"""Painted Sentinel-2 and Landsat scenes: real STAC item JSON and real pixels, with clouds painted at known places.

No real multi-date Sentinel-2 or Landsat scene exists in ``../shared/data``, so :func:`build_painted_scenes`
makes several dates of one from what is real and says exactly what is not.

**Real.** The item JSON templates in ``stac_samples/``: a Planetary Computer Sentinel-2 L2A item
(``S2B_MSIL2A_20190629T212529_...json``: assets ``B01``..``B12``, ``B8A``, ``SCL``, with ``eo:bands``),
an Earth Search v0 item (``S2A_28QCH_20200714_0_L2A.json``, collection ``sentinel-s2-l2a-cogs``: the
same upper-case keys ``B01``..``B12``, ``B8A``, ``SCL``, no ``eo:bands``; note that Earth Search v1,
which ``catalogs/earth-search-s2.yaml`` reads, has lower-case keys instead) and a USGS Landsat
Collection 2 L2 item (``LC08_L2SR_...json``: ``SR_B1.TIF``..``SR_B7.TIF``, ``QA_PIXEL.TIF``, item-level
``eo:bands``). Their asset keys, asset titles, roles and media types, ``eo:bands``, collection ids,
``stac_extensions`` and property names are kept. The pixels are those of the real Landsat 7 ETM+
scene of ``landsat7_nc_labeled`` (2000, North Carolina, 8-bit DNs): the window :data:`SOURCE_WINDOW`
(the flow tests' 96 x 96 px crop plus 8 px on each side).

**Rewritten.** Item ids, datetimes, geometry and bbox; ``proj:epsg`` and each asset's ``proj:shape`` /
``proj:transform`` / ``proj:bbox`` (where the template has them); hrefs (absolute paths of local COGs);
``eo:cloud_cover`` and the Sentinel-2 ``s2:*_percentage`` class shares (the painted scene
classification's); ``s2:processing_baseline`` = "04.00" in the Planetary Computer items, so their DNs
carry the +1000 offset of baselines >= 04.00. Assets with no local file (previews, metadata, AOT,
WVP, other QA layers) and the templates' links are dropped; short extension ids ("eo") become
schema URIs. The dates (:data:`DATES`) are invented. Other properties (platform, orbit, sun angles,
tile or path/row ids) keep the template's values: they describe the template's scene, not this one.

**Derived pixels.** The Landsat 7 window is reprojected from EPSG:32119 to where it lies in UTM 17N
(EPSG:32617), nearest neighbour, onto a 2,640 m square snapped to 60 m, on each asset's grid: 10, 20
or 60 m as in the real Sentinel-2 item, 30 m for Landsat C2. Each band is taken from the Landsat 7
band nearest in centre wavelength (Sentinel-2 B05/B06 from red, B07..B09 from NIR...). Reflectance
is a linear stand-in, not a calibration: ``reflectance = DN / 255 * 0.6``; stored as
``round(reflectance * 10000) + 1000`` (Planetary Computer, baseline 04.00), ``round(reflectance *
10000)`` (Earth Search v0 items, which carry no baseline: no offset) or ``round((reflectance + 0.2) /
2.75e-05)`` (Landsat C2 L2). uint16 COGs with nodata 0 (SCL: uint8, nodata 0; QA_PIXEL: uint16,
nodata 1 = fill, as in the real products). The scene classification elsewhere is 6 (water) where
NDVI < 0, 4 (vegetation) where NDVI > 0.3, else 5 (not vegetated); QA_PIXEL is 21824 (clear, low
confidences) or 21952 (clear water).

**Painted.** Every date has the SAME clean pixels: only the paint differs. So a per-pixel median or
first-valid composite of any non-empty set of clean observations equals the clean image exactly, which
makes "the map under the clouds equals the cloud-free map" an exact test. :data:`PATCHES` (rectangles
of 60 m cells, not overlapping) are painted into the reflectance and into SCL / QA_PIXEL of some of
the four dates; every pixel keeps at least one clean date, and each patch covers most of the dates
it is painted on, so an unmasked median does change under it. Cloud: reflectance 0.7 in every band
(SCL 9, high probability; QA bits 3 cloud + high cloud confidence); medium cloud: 0.5 (SCL 8; QA bit 1
dilated cloud); thin cirrus: ``0.5 * clean + 0.15`` (SCL 10; QA bit 2 + high cirrus confidence); cloud
shadow: ``0.25 * clean`` (SCL 3; QA bit 4 + high shadow confidence). A fifth date,
:data:`OVERCAST_DATE`, is cloud (0.7, SCL 9) everywhere but the :data:`CLEAR_CORNER`: about 98 %
masked, to be skipped by a masked-fraction limit. Each layout also has a ``<collection>-cloud-free``
collection holding one item of the clean pixels (first date): the cloud-free reference.

The result, :class:`PaintedScenes`, names the catalogs, items and dates, gives each date's painted
mask on :data:`MASK_GRID` and writes catalog configs (:meth:`PaintedScenes.catalog_config`). Building
takes about two seconds and is deterministic. :func:`real_s2_crop_item` turns the real 14-band
Sentinel-2 L2A crop of ``stac_samples`` into a single-band-asset item for band and scale checks.
"""

from __future__ import annotations

import copy
import datetime as dt
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pystac
import rasterio
import yaml
from affine import Affine
from rasterio.enums import Resampling
from rasterio.warp import reproject, transform, transform_bounds, transform_geom
from rasterio.windows import Window
from shapely.geometry import box, mapping

from allspark.settings import catalogs_dir

EPSG = 32617  # WGS 84 / UTM zone 17N, where the Landsat 7 NC scene lies
SOURCE_EPSG = 32119  # NC State Plane, the Landsat 7 files' CRS
SOURCE_WINDOW = Window(col_off=232, row_off=280, width=112, height=112)  # tests.regions.CROP plus 8 px around
SOURCE_FILES = {0.483: "lsat7_2000_10.tif", 0.560: "lsat7_2000_20.tif", 0.662: "lsat7_2000_30.tif",
                0.835: "lsat7_2000_40.tif", 1.648: "lsat7_2000_50.tif", 2.206: "lsat7_2000_70.tif"}
"""The Landsat 7 ETM+ bands by centre wavelength (micrometres)."""
CELL = 60.0  # metres: the coarsest Sentinel-2 grid; patches are whole cells, so they cover whole pixels of every grid
CELLS = 44  # the scene is CELLS x CELLS cells: 2,640 m square, 264 px at 10 m
MASK_GRID_SHAPE = (CELLS, CELLS)
DATES = tuple(dt.datetime(2022, 6, day, 16, 0, tzinfo=dt.UTC) for day in (5, 15, 25)) + (
    dt.datetime(2022, 7, 5, 16, 0, tzinfo=dt.UTC),)
"""The four dates with the same clean pixels (and some patches painted)."""
OVERCAST_DATE = dt.datetime(2022, 6, 20, 16, 0, tzinfo=dt.UTC)
CLEAR_CORNER = (slice(38, 44), slice(38, 44))
"""The only cells of the overcast date without cloud (no patch lies there)."""


@dataclass(frozen=True)
class Patch:
    """A painted rectangle of 60 m cells (rows, cols: half-open) and the indexes in :data:`DATES` it is painted on."""

    kind: str  # a key of PAINTS
    rows: tuple[int, int]
    cols: tuple[int, int]
    dates: tuple[int, ...]

    def mask(self) -> np.ndarray:
        """The patch as a boolean array of :data:`MASK_GRID_SHAPE` cells."""
        cells = np.zeros(MASK_GRID_SHAPE, bool)
        cells[slice(*self.rows), slice(*self.cols)] = True
        return cells


PATCHES = (
    Patch("cloud", rows=(4, 14), cols=(4, 16), dates=(0, 1)),
    Patch("medium_cloud", rows=(24, 34), cols=(6, 14), dates=(1, 2)),
    Patch("cirrus", rows=(6, 16), cols=(24, 38), dates=(2, 3)),
    Patch("shadow", rows=(26, 36), cols=(24, 36), dates=(0, 1, 3)),
)


@dataclass(frozen=True)
class Paint:
    """How one kind of patch changes the reflectance, and the mask values that flag it."""

    gain: float  # painted reflectance = gain * clean + bias
    bias: float
    scl: int  # Sentinel-2 scene classification
    qa_pixel: int  # Landsat C2 QA_PIXEL: the flag bit(s) and confidence bits


# QA_PIXEL bits: 0 fill, 1 dilated cloud, 2 cirrus, 3 cloud, 4 cloud shadow, 6 clear, 7 water; confidence
# pairs (01 low, 11 high) at 8-9 cloud, 10-11 cloud shadow, 12-13 snow, 14-15 cirrus.
_LOW_CONFIDENCES = 1 << 8 | 1 << 10 | 1 << 12 | 1 << 14
QA_CLEAR = 1 << 6 | _LOW_CONFIDENCES  # 21824
QA_WATER = QA_CLEAR | 1 << 7  # 21952
QA_FILL = 1
PAINTS = {
    "cloud": Paint(0.0, 0.7, scl=9, qa_pixel=1 << 3 | 3 << 8 | 1 << 10 | 1 << 12 | 1 << 14),  # 22280
    "medium_cloud": Paint(0.0, 0.5, scl=8, qa_pixel=1 << 1 | _LOW_CONFIDENCES),
    "cirrus": Paint(0.5, 0.15, scl=10, qa_pixel=1 << 2 | 1 << 8 | 1 << 10 | 1 << 12 | 3 << 14),
    "shadow": Paint(0.25, 0.0, scl=3, qa_pixel=1 << 4 | 1 << 8 | 3 << 10 | 1 << 12 | 1 << 14),
}
SCL_PERCENTAGES = {0: "s2:nodata_pixel_percentage", 1: "s2:saturated_defective_pixel_percentage",
                   2: "s2:dark_features_percentage", 3: "s2:cloud_shadow_percentage", 4: "s2:vegetation_percentage",
                   5: "s2:not_vegetated_percentage", 6: "s2:water_percentage", 7: "s2:unclassified_percentage",
                   8: "s2:medium_proba_clouds_percentage", 9: "s2:high_proba_clouds_percentage",
                   10: "s2:thin_cirrus_percentage", 11: "s2:snow_ice_percentage"}
"""The Planetary Computer properties giving the share (%) of each scene classification class."""


@dataclass(frozen=True)
class Layout:
    """One catalog layout: its real item template, the catalog config it mirrors and how its pixels are stored."""

    template: str  # file in stac_samples
    catalog_yaml: str  # in catalogs/
    sensor: str  # "sentinel-2" or "landsat"
    mask_key: str
    offset: float  # DN = round((reflectance - offset) / scale)
    scale: float
    baseline: str | None = None  # s2:processing_baseline written into the items


LAYOUTS = {
    "planetary-computer": Layout("S2B_MSIL2A_20190629T212529_R043_T06VVN_20201006T080531.json",
                                 "planetary-computer-s2.yaml", "sentinel-2", "SCL", -0.1, 1e-4, baseline="04.00"),
    "earth-search": Layout("S2A_28QCH_20200714_0_L2A.json", "earth-search-s2.yaml", "sentinel-2", "SCL", 0.0, 1e-4),
    "landsat": Layout("LC08_L2SR_081119_20200101_20200823_02_T2.json", "landsat-c2-l2.yaml", "landsat",
                      "QA_PIXEL.TIF", -0.2, 2.75e-05),
}
LANDSAT_RESOLUTION = 30.0  # the template is a thumbnail-sized test fixture (1,164 m pixels); C2 L2 is 30 m
EXTENSION_URIS = {name: f"https://stac-extensions.github.io/{name}/v1.0.0/schema.json"
                  for name in ("eo", "view", "projection")}


@dataclass(frozen=True)
class PaintedScenes:
    """What :func:`build_painted_scenes` wrote.

    ``catalogs``: the catalog.json per layout (keys of :data:`LAYOUTS`); ``collections``: each layout's
    collection id (its cloud-free twin is ``<id>-cloud-free``); ``band_keys``: band name -> asset key
    per layout; ``items``: item ids per layout in the order of :data:`DATES`; ``overcast``: the
    nearly all-cloud item per layout; ``cloud_free``: the cloud-free item per layout; ``masks``: per
    index of :data:`DATES`, the painted (masked) cells as a boolean ``MASK_GRID_SHAPE`` array on the
    60 m grid ``mask_transform`` in ``mask_crs``; ``overcast_mask``: the same for the overcast date.
    """

    root: Path
    catalogs: dict[str, Path]
    collections: dict[str, str]
    band_keys: dict[str, dict[str, str]]
    items: dict[str, tuple[str, ...]]
    overcast: dict[str, str]
    cloud_free: dict[str, str]
    masks: tuple[np.ndarray, ...]
    overcast_mask: np.ndarray
    mask_transform: Affine
    mask_crs: str = f"EPSG:{EPSG}"

    def mask_on(self, mask: np.ndarray, transform_: Affine, shape: tuple[int, int]) -> np.ndarray:
        """A cell mask (e.g. ``masks[i]`` or ``Patch.mask()``) on another grid of ``mask_crs``: a pixel takes the cell
        under its centre, False outside the cells."""
        return _cells_on(mask, self.mask_transform, transform_, shape)

    def catalog_config(self, layout: str, dest: Path, *, cloud_free: bool = False) -> Path:
        """Write a catalog config YAML for one layout's static catalog (or its cloud-free collection) to ``dest``.

        A copy of ``catalogs/<layout's yaml>`` (band table, scale/offset, offset rule and mask block)
        with ``kind: static``, this catalog's path, the template's collection id and the asset keys of
        the template's layout (the Earth Search v0 and USGS Landsat keys differ from those the
        shipped configs name).
        """
        spec = LAYOUTS[layout]
        config = yaml.safe_load((catalogs_dir() / spec.catalog_yaml).read_text())
        keys = self.band_keys[layout]
        collection = self.collections[layout] + ("-cloud-free" if cloud_free else "")
        config.update(kind="static", url_or_path=str(self.catalogs[layout]), collection=collection,
                      bands=[band | {"asset": keys.get(band["name"], band["asset"])} for band in config["bands"]])
        config["mask"] = config["mask"] | {"asset": spec.mask_key}
        dest.write_text(yaml.safe_dump(config, sort_keys=False))
        return dest


def build_painted_scenes(root: Path, *, landsat: Path, stac_samples: Path) -> PaintedScenes:
    """Write the COGs and one static STAC catalog per layout under ``root``, from the Landsat 7 files in ``landsat``
    (``landsat7_nc_labeled``) and the item templates in ``stac_samples``; see the module docstring for what is
    real and what is painted."""
    x0, y0 = _scene_origin(landsat)
    reflectance = _source_reflectance(landsat)
    templates = {name: json.loads((stac_samples / layout.template).read_text()) for name, layout in LAYOUTS.items()}
    band_keys = {name: _band_keys(layout, templates[name]) for name, layout in LAYOUTS.items()}
    wavelengths = _s2_wavelengths(templates["planetary-computer"])
    masks = tuple(_painted_cells(index) for index in range(len(DATES)))
    overcast_mask = np.ones(MASK_GRID_SHAPE, bool)
    overcast_mask[CLEAR_CORNER] = False
    catalogs, collections, items, overcast, cloud_free = {}, {}, {}, {}, {}
    for name, layout in LAYOUTS.items():
        template = templates[name]
        scene = _Scene(layout, template, wavelengths, reflectance, (x0, y0))
        collection_id = template.get("collection") or template["properties"]["collection"]
        folder = root / name / collection_id
        dated = []
        for index, date in enumerate(DATES):
            item_id = f"painted-{name}-{date:%Y%m%d}"
            dated.append(scene.item(folder / item_id, item_id, date, [(p.kind, p.mask()) for p in PATCHES
                                                                      if index in p.dates]))
        item_id = f"painted-{name}-{OVERCAST_DATE:%Y%m%d}-overcast"
        dated.append(scene.item(folder / item_id, item_id, OVERCAST_DATE, [("cloud", overcast_mask)]))
        item_id = f"cloud-free-{name}-{DATES[0]:%Y%m%d}"
        clean = scene.item(root / name / f"{collection_id}-cloud-free" / item_id, item_id, DATES[0], [])
        catalogs[name] = _write_catalog(root / name, name, collection_id, layout, dated, clean)
        collections[name] = collection_id
        items[name] = tuple(item.id for item in dated[:len(DATES)])
        overcast[name], cloud_free[name] = dated[-1].id, clean.id
    return PaintedScenes(root=root, catalogs=catalogs, collections=collections, band_keys=band_keys, items=items,
                         overcast=overcast, cloud_free=cloud_free, masks=masks, overcast_mask=overcast_mask,
                         mask_transform=Affine(CELL, 0, x0, 0, -CELL, y0))


def _scene_origin(source: Path) -> tuple[float, float]:
    """Top-left corner (UTM 17N) of the scene: the source window's centre, moved to whole 60 m cells."""
    with rasterio.open(source / SOURCE_FILES[0.483]) as src:
        cx, cy = src.window_transform(SOURCE_WINDOW) * (SOURCE_WINDOW.width / 2, SOURCE_WINDOW.height / 2)
    (x,), (y,) = transform(f"EPSG:{SOURCE_EPSG}", f"EPSG:{EPSG}", [cx], [cy])
    half = CELLS * CELL / 2
    return round((x - half) / CELL) * CELL, round((y + half) / CELL) * CELL


def _source_reflectance(source: Path) -> dict[float, tuple[np.ndarray, Affine]]:
    """The Landsat 7 window per centre wavelength: reflectance stand-in DN / 255 * 0.6 and its transform."""
    bands = {}
    for wavelength, name in SOURCE_FILES.items():
        with rasterio.open(source / name) as src:
            dn = src.read(1, window=SOURCE_WINDOW, masked=True).astype("float32")
            bands[wavelength] = (dn.filled(np.nan) / 255 * 0.6, src.window_transform(SOURCE_WINDOW))
    return bands


def _painted_cells(date_index: int) -> np.ndarray:
    return np.logical_or.reduce([patch.mask() for patch in PATCHES if date_index in patch.dates])


def _cells_on(cells: np.ndarray, cells_transform: Affine, transform_: Affine, shape: tuple[int, int]) -> np.ndarray:
    """A boolean cell array on another grid of the same CRS: each pixel takes the cell under its centre (False
    outside the cells)."""
    rows, cols = np.indices(shape)
    xs, ys = transform_ * (cols + 0.5, rows + 0.5)
    cell_cols, cell_rows = (np.floor(v).astype(int) for v in ~cells_transform * (xs, ys))
    inside = (cell_rows >= 0) & (cell_rows < cells.shape[0]) & (cell_cols >= 0) & (cell_cols < cells.shape[1])
    out = np.zeros(shape, bool)
    out[inside] = cells[cell_rows[inside], cell_cols[inside]]
    return out


def _band_keys(layout: Layout, template: dict) -> dict[str, str]:
    """Band name -> asset key in the layout's items: both Sentinel-2 layouts use the Planetary Computer's keys
    (B01..B12, B8A: the table of its catalog config), Landsat's come from the template's eo:bands common names."""
    if layout.sensor == "sentinel-2":
        config = yaml.safe_load((catalogs_dir() / LAYOUTS["planetary-computer"].catalog_yaml).read_text())
        return {band["name"]: band["asset"] for band in config["bands"]}
    return {common: key for key, (common, _) in _landsat_bands(template).items()}


def _landsat_bands(template: dict) -> dict[str, tuple[str, float]]:
    """Asset key -> (common name, centre wavelength) of the Landsat template's reflectance assets (eo:bands indexes)."""
    bands = template["properties"]["eo:bands"]
    out = {}
    for key, asset in template["assets"].items():
        index = (asset.get("eo:bands") or [None])[0]
        if isinstance(index, int):
            out[key] = (bands[index]["common_name"], bands[index]["center_wavelength"])
    return out


def _s2_wavelengths(template: dict) -> dict[str, float]:
    """Asset key -> centre wavelength of the Sentinel-2 bands, from the Planetary Computer item's eo:bands."""
    return {key: asset["eo:bands"][0]["center_wavelength"] for key, asset in template["assets"].items()
            if len(asset.get("eo:bands") or []) == 1}


class _Scene:
    """Writes the COGs and item JSON of one layout, date by date."""

    def __init__(self, layout: Layout, template: dict, s2_wavelengths: dict[str, float], reflectance: dict,
                 origin: tuple[float, float]):
        self.layout, self.template = layout, template
        self.x0, self.y0 = origin
        if layout.sensor == "sentinel-2":
            self.bands = {key: (wavelength, abs(template["assets"][key]["proj:transform"][0]))
                          for key, wavelength in s2_wavelengths.items() if key in template["assets"]}
            self.mask_resolution = abs(template["assets"][layout.mask_key]["proj:transform"][0])
        else:
            self.bands = {key: (wavelength, LANDSAT_RESOLUTION)
                          for key, (_, wavelength) in _landsat_bands(template).items()}
            self.mask_resolution = LANDSAT_RESOLUTION
        self.clean = {}  # clean reflectance per asset key, on the asset's grid
        for key, (wavelength, resolution) in self.bands.items():
            nearest = min(reflectance, key=lambda source_wavelength: abs(source_wavelength - wavelength))
            self.clean[key] = _on_grid(*reflectance[nearest], self._transform(resolution), self._shape(resolution))
        red, nir = (self._at(reflectance, wl) for wl in (0.662, 0.835))
        ndvi = (nir - red) / (nir + red)
        self.scl = np.where(ndvi < 0, 6, np.where(ndvi > 0.3, 4, 5)).astype("uint8")
        self.qa = np.where(ndvi < 0, QA_WATER, QA_CLEAR).astype("uint16")

    def _transform(self, resolution: float) -> Affine:
        return Affine(resolution, 0, self.x0, 0, -resolution, self.y0)

    def _shape(self, resolution: float) -> tuple[int, int]:
        side = round(CELLS * CELL / resolution)
        return side, side

    def _pixels(self, cells: np.ndarray, resolution: float) -> np.ndarray:
        """A cell mask on the asset grid at ``resolution``."""
        return _cells_on(cells, self._transform(CELL), self._transform(resolution), self._shape(resolution))

    def _at(self, reflectance: dict, wavelength: float) -> np.ndarray:
        """A source band on the mask grid."""
        resolution = self.mask_resolution
        return _on_grid(*reflectance[wavelength], self._transform(resolution), self._shape(resolution))

    def item(self, folder: Path, item_id: str, date: dt.datetime, paint: list[tuple[str, np.ndarray]]) -> pystac.Item:
        """Write one date's COGs into ``folder`` with ``paint`` (kind of :data:`PAINTS`, cells) applied; its item."""
        folder.mkdir(parents=True, exist_ok=True)
        layers = {}
        for key, (_, resolution) in self.bands.items():
            values = self.clean[key].copy()
            for kind, cells in paint:
                pixels = self._pixels(cells, resolution)
                values[pixels] = PAINTS[kind].gain * values[pixels] + PAINTS[kind].bias
            layers[key] = np.round((values - self.layout.offset) / self.layout.scale).astype("uint16")
        scl, qa = self.scl.copy(), self.qa.copy()
        for kind, cells in paint:
            pixels = self._pixels(cells, self.mask_resolution)
            scl[pixels], qa[pixels] = PAINTS[kind].scl, PAINTS[kind].qa_pixel
        layers[self.layout.mask_key] = scl if self.layout.sensor == "sentinel-2" else qa
        hrefs = {}
        for key, data in layers.items():
            is_mask = key == self.layout.mask_key
            resolution = self.mask_resolution if is_mask else self.bands[key][1]
            href = folder / f"{key.removesuffix('.TIF')}.tif"
            nodata = QA_FILL if is_mask and self.layout.sensor == "landsat" else 0
            _write_cog(href, data, self._transform(resolution), nodata)
            hrefs[key] = (href, resolution)
        masked = np.logical_or.reduce([cells for _, cells in paint] or [np.zeros(MASK_GRID_SHAPE, bool)])
        return self._item_json(item_id, date, hrefs, scl, float(masked.mean()))

    def _item_json(self, item_id: str, date: dt.datetime, hrefs: dict[str, tuple[Path, float]], scl: np.ndarray,
                   masked: float) -> pystac.Item:
        data = copy.deepcopy(self.template)
        side = CELLS * CELL
        bounds = (self.x0, self.y0 - side, self.x0 + side, self.y0)
        data["id"] = item_id
        data["geometry"] = transform_geom(f"EPSG:{EPSG}", "EPSG:4326", mapping(box(*bounds)))
        data["bbox"] = list(transform_bounds(f"EPSG:{EPSG}", "EPSG:4326", *bounds, densify_pts=21))
        data["links"] = []
        data["stac_extensions"] = [EXTENSION_URIS.get(uri, uri) for uri in data.get("stac_extensions", [])]
        properties = data["properties"]
        properties.update({"datetime": date.isoformat().replace("+00:00", "Z"), "proj:epsg": EPSG,
                           "eo:cloud_cover": round(100 * masked, 4)})
        if "landsat:cloud_cover_land" in properties:
            properties["landsat:cloud_cover_land"] = properties["eo:cloud_cover"]
        if self.layout.baseline is not None:
            properties["s2:processing_baseline"] = self.layout.baseline
        for value, key in SCL_PERCENTAGES.items():
            if key in properties:
                properties[key] = round(100 * float((scl == value).mean()), 4)
        assets = {}
        for key, (href, resolution) in hrefs.items():
            asset = data["assets"][key]
            asset["href"] = str(href)
            shape = self._shape(resolution)
            grid = {"proj:shape": list(shape), "proj:transform": list(self._transform(resolution))[:6],
                    "proj:bbox": list(bounds)}
            asset.update({name: value for name, value in grid.items() if name in asset or name == "proj:transform"})
            if "gsd" in asset:
                asset["gsd"] = resolution
            assets[key] = asset
        data["assets"] = assets
        return pystac.Item.from_dict(data, preserve_dict=False, migrate=False)


def _on_grid(values: np.ndarray, src_transform: Affine, dst_transform: Affine, shape: tuple[int, int]) -> np.ndarray:
    """``values`` (EPSG:32119) reprojected onto a UTM 17N grid, nearest neighbour; every pixel must have data."""
    out = np.full(shape, np.nan, "float32")
    reproject(values, out, src_transform=src_transform, src_crs=f"EPSG:{SOURCE_EPSG}", dst_transform=dst_transform,
              dst_crs=f"EPSG:{EPSG}", resampling=Resampling.nearest, src_nodata=np.nan, dst_nodata=np.nan)
    if np.isnan(out).any():
        raise ValueError("the source window does not cover the scene: every pixel must have data")
    return out


def _write_cog(path: Path, data: np.ndarray, transform_: Affine, nodata: float) -> None:
    """A single-band COG in UTM 17N; small, so without overviews (GDAL's COG driver would add one or two)."""
    with rasterio.open(path, "w", driver="COG", width=data.shape[1], height=data.shape[0], count=1, dtype=data.dtype,
                       nodata=nodata, crs=f"EPSG:{EPSG}", transform=transform_, compress="LZW", blocksize=256,
                       overviews="NONE") as dst:
        dst.write(data, 1)


def _write_catalog(folder: Path, name: str, collection_id: str, layout: Layout, items: list[pystac.Item],
                   clean: pystac.Item) -> Path:
    """catalog.json -> the painted collection and its cloud-free twin -> items; hrefs absolute."""
    catalog = pystac.Catalog(f"painted-{name}", f"Painted {layout.sensor} test scenes in the {name} layout "
                             "(tests/painted_scenes.py: real item JSON and Landsat 7 pixels, painted clouds)")
    for collection_name, members in ((collection_id, items), (f"{collection_id}-cloud-free", [clean])):
        collection = pystac.Collection(
            collection_name, f"{layout.sensor} items in the {name} layout: real item JSON, Landsat 7 NC pixels "
            + ("without paint" if members == [clean] else "with painted clouds and shadows"),
            extent=pystac.Extent.from_items(members), license="CC-BY-SA-3.0")
        for item in members:
            collection.add_item(item)
        catalog.add_child(collection)
    catalog.normalize_hrefs(str(folder))
    catalog.save(pystac.CatalogType.ABSOLUTE_PUBLISHED)
    return folder / "catalog.json"


def real_s2_crop_item(source: Path, dest: Path, processing_baseline: str) -> pystac.Item:
    """The real 14-band Sentinel-2 L2A crop ``source`` as an item of single-band uint16 COGs in ``dest``.

    The crop (``S2A_MSIL2A_20220722T105631_N0400_...tif``, 14 x 22 px at 10 m, EPSG:32631, cloudy,
    partly NaN) holds DN * 0.0001 as float32, its bands named by description (coastal, blue, ...,
    rededge071..078, nir, nir08, nir09, swir16, swir22, aot, wvp). Each reflectance band is written as
    ``DN = round(value * 10000)`` (the 10 m bands come out as whole numbers; the provider resampled
    the 20 and 60 m ones to 10 m, which are rounded), 0 (nodata) where NaN, under the Planetary
    Computer key of the band (B01..B12, B8A). The item is the Planetary Computer template with the
    crop's real grid, footprint and acquisition time, and ``s2:processing_baseline`` as given (the
    product's own is 04.00). AOT and WVP are left out.
    """
    template = json.loads((source.parent / LAYOUTS["planetary-computer"].template).read_text())
    keys = _band_keys(LAYOUTS["planetary-computer"], template)
    names = {"rededge071": "rededge1", "rededge075": "rededge2", "rededge078": "rededge3"}
    with rasterio.open(source) as src:
        values, descriptions, grid, crs, bounds = src.read(), src.descriptions, src.transform, src.crs, src.bounds
    dest.mkdir(parents=True, exist_ok=True)
    assets = {}
    for band, description in zip(values, descriptions, strict=True):
        key = keys.get(names.get(description, description))
        if key is None:
            continue
        dn = np.where(np.isnan(band), 0, np.round(band * 10000)).astype("uint16")
        href = dest / f"{key}.tif"
        with rasterio.open(href, "w", driver="COG", width=dn.shape[1], height=dn.shape[0], count=1, dtype="uint16",
                           nodata=0, crs=crs, transform=grid, compress="DEFLATE") as dst:
            dst.write(dn, 1)
        assets[key] = template["assets"][key] | {
            "href": str(href), "gsd": 10, "proj:shape": list(dn.shape), "proj:transform": list(grid)[:6],
            "proj:bbox": list(bounds)}
    data = template | {
        "id": f"S2A_MSIL2A_20220722T105631_T31TCN_crop_baseline_{processing_baseline}",
        "geometry": transform_geom(crs, "EPSG:4326", mapping(box(*bounds))),
        "bbox": list(transform_bounds(crs, "EPSG:4326", *bounds, densify_pts=21)),
        "assets": assets, "links": [],
        "properties": template["properties"] | {"datetime": "2022-07-22T10:56:31Z", "proj:epsg": crs.to_epsg(),
                                                "s2:processing_baseline": processing_baseline},
    }
    return pystac.Item.from_dict(data, migrate=False)


S2_BANDS = ["blue", "green", "red", "nir", "swir16", "swir22"]
"""The six Sentinel-2 bands the region tests map, by common name."""
RESOLUTION = 30.0
"""The tests' output grid (metres): 88 x 88 px of the 2,640 m scene, quick to map."""


def quiet(_: str) -> None:
    """A step log that prints nothing."""


def untrained_checkpoint(cloud_free_yaml: Path, folder: Path) -> Path:
    """A seeded, untrained region bundle for :data:`S2_BANDS` at :data:`RESOLUTION`, its normaliser fitted on the
    cloud-free scene: a fixed function of the scene (the painted catalogs hold no labels), so equal scenes give
    equal maps."""
    from allspark.core.bundle import save_bundle
    from allspark.model import AllSpark, seed_everything
    from allspark.raster.scene import open_scene, read_values
    from allspark.region import steps
    from allspark.region.inputs import Normalizer
    from tests.regions import quick_config

    config = quick_config(cloud_free_yaml, folder / "outputs", bands=S2_BANDS, resolution=RESOLUTION)
    scene, dn = open_scene(steps.ingest(config, quiet).store)
    values = read_values(scene, dn, {"y": slice(None), "x": slice(None)})
    seed_everything(0)
    model = AllSpark(config.model.allspark_config(config.class_names, config.language))
    normalizer = Normalizer.fit(S2_BANDS, values.reshape(len(S2_BANDS), -1))
    return save_bundle(folder / "model", model, normalizer, config, contract=config.contract(scene.bands))

"""Catalog configs, item search, band resolution and AOIs (real demo catalog and real STAC item JSON)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pystac
import pytest
from shapely.geometry import box

from allspark.demo_data import build_demo_catalog
from allspark.raster.catalog import (
    AOIError,
    BandSpec,
    CatalogConfig,
    CatalogConfigError,
    CatalogNotFoundError,
    MissingBandError,
    NoItemsFound,
    load_aoi,
    load_catalog_config,
    resolve_bands,
    search_items,
)

SHARED = Path(os.environ.get("ALLSPARK_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))
SAMPLES = SHARED / "stac_samples"
S2B = "S2B_MSIL2A_20190629T212529_R043_T06VVN_20201006T080531.json"  # Planetary Computer item, B01.. keys
S2A = "S2A_28QCH_20200714_0_L2A.json"  # Earth Search v0 item, B01.. keys, no eo:bands on assets
L8 = "LC08_L2SR_081119_20200101_20200823_02_T2.json"  # item-level eo:bands, assets index into them
DEMO_AOI = "-78.70,35.70,-78.65,35.75"


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> CatalogConfig:
    source = SHARED / "landsat7_nc_labeled"
    if not source.is_dir():
        pytest.skip("needs ../shared/data/landsat7_nc_labeled (real Landsat 7 files)")
    catalog_json = build_demo_catalog(tmp_path_factory.mktemp("cat") / "landsat7-nc", source_dir=source)
    return load_catalog_config("demo").model_copy(update={"url_or_path": str(catalog_json)})


def _sample(name: str) -> pystac.Item:
    if not (SAMPLES / name).is_file():
        pytest.skip(f"needs ../shared/data/stac_samples/{name}")
    return pystac.Item.from_file(str(SAMPLES / name))


# --- configs ---------------------------------------------------------------------------------------


def test_demo_config_expands_the_cache_dir(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("ALLSPARK_CACHE", str(tmp_path))
    config = load_catalog_config("demo")
    assert config.kind == "static" and config.collection == "landsat7-nc-2000"
    assert config.url_or_path == str(tmp_path / "catalogs" / "landsat7-nc" / "catalog.json")
    table = [(b.name, b.asset, b.center_wavelength) for b in config.bands]
    assert table[0] == ("B1", "B1", 0.483) and table[-1] == ("B7", "B7", 2.206) and len(table) == 6


@pytest.mark.parametrize(("name", "blue_asset"), [("earth-search-s2", "blue"), ("planetary-computer-s2", "B02")])
def test_sentinel2_configs(name: str, blue_asset: str) -> None:
    config = load_catalog_config(name)
    assert config.kind == "api" and config.collection == "sentinel-2-l2a"
    assert config.url_or_path.startswith("https://")
    blue = {b.name: b for b in config.bands}["blue"]
    assert (blue.asset, blue.scale, blue.offset, blue.nodata) == (blue_asset, 0.0001, -0.1, 0)
    assert config.offset_rule is not None and config.offset_rule.min_value == "04.00"
    assert len(config.bands) == 12


def test_unknown_key_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "typo.yaml"
    path.write_text("kind: static\nurl_or_path: cat.json\ncollection: c\ncolection: x\n"
                    "bands: [{name: b, asset: b, center_wavelength: 0.5}]\n")
    with pytest.raises(CatalogConfigError, match=r"typo\.yaml.*colection"):
        load_catalog_config(path)
    path.write_text("kind: static\nurl_or_path: cat.json\ncollection: c\n"
                    "bands: [{name: b, asset: b, center_wavelength: 0.5, scael: 2}]\n")
    with pytest.raises(CatalogConfigError, match=r"bands\.0\.scael"):
        load_catalog_config(path)


def test_relative_static_path_and_catalogs_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "mine.yaml").write_text("kind: static\nurl_or_path: data/catalog.json\ncollection: c\n"
                                        "bands: [{name: b, asset: b, center_wavelength: 0.5}]\n")
    monkeypatch.setenv("ALLSPARK_CATALOGS", str(tmp_path))
    assert load_catalog_config("mine").url_or_path == str(tmp_path / "data" / "catalog.json")
    with pytest.raises(CatalogConfigError, match=r"named catalogs in .*: mine"):
        load_catalog_config("nope")


# --- search ----------------------------------------------------------------------------------------


def test_search_static_catalog(demo: CatalogConfig) -> None:
    items = search_items(demo, load_aoi(DEMO_AOI), ("2000-03-01", "2000-03-31"))
    assert [i.id for i in items] == ["LE07_NC_2000"]
    assert all(Path(a.href).is_absolute() for a in items[0].assets.values())
    assert [i.id for i in search_items(demo)] == ["LE07_NC_2000"]  # label item left out
    assert [i.id for i in search_items(demo, labels=True)] == ["landsat96-labels"]


def test_search_aoi_outside_names_bbox_and_extent(demo: CatalogConfig) -> None:
    with pytest.raises(NoItemsFound) as err:
        search_items(demo, box(10, 50, 11, 51))
    message = str(err.value)
    assert "(10.00000, 50.00000, 11.00000, 51.00000)" in message
    assert "(-78.76871, 35.69193, -78.61418, 35.80612)" in message


def test_search_date_range_without_items_names_span(demo: CatalogConfig) -> None:
    with pytest.raises(NoItemsFound) as err:
        search_items(demo, load_aoi(DEMO_AOI), ("2001-01-01", "2001-06-30"))
    message = str(err.value)
    assert "2001-01-01T00:00:00Z" in message and "2001-06-30T23:59:59.999999Z" in message
    assert "2000-01-01T00:00:00Z to 2000-12-31T23:59:59Z" in message
    with pytest.raises(ValueError, match="starts after it ends"):
        search_items(demo, None, ("2001-01-01", "2000-01-01"))


def test_missing_static_catalog(tmp_path: Path) -> None:
    config = CatalogConfig(kind="static", url_or_path=str(tmp_path / "none.json"), collection="c",
                           bands=[BandSpec(name="b", asset="b", center_wavelength=0.5)])
    with pytest.raises(CatalogNotFoundError, match=r"none\.json.*build_demo_catalog"):
        search_items(config)


# --- bands -----------------------------------------------------------------------------------------


def test_resolve_bands_demo_by_key_and_common_name(demo: CatalogConfig) -> None:
    item = search_items(demo)[0]
    bands = resolve_bands(item, ["B4", "red", "swir22"], demo)
    assert [(b.name, b.asset, b.center_wavelength, b.nodata) for b in bands] == [
        ("B4", "B4", 0.835, -99999), ("red", "B3", 0.662, -99999), ("swir22", "B7", 2.206, -32768)]


def test_resolve_bands_pc_item_uses_its_eo_bands() -> None:
    item = _sample(S2B)
    pc = load_catalog_config("planetary-computer-s2")
    bands = resolve_bands(item, ["blue", "nir", "nir08", "swir22"], pc)
    assert [(b.asset, b.center_wavelength) for b in bands] == [
        ("B02", 0.49), ("B08", 0.842), ("B8A", 0.865), ("B12", 2.19)]
    assert {(b.scale, b.offset, b.nodata) for b in bands} == {(0.0001, 0.0, 0)}  # baseline 02.12: no offset
    # The Earth Search table's keys ("blue") are not in this item: found through eo:bands common names.
    es = resolve_bands(item, ["red"], load_catalog_config("earth-search-s2"))
    assert (es[0].asset, es[0].center_wavelength) == ("B04", 0.665)
    with pytest.raises(MissingBandError, match=r"'rededge' is ambiguous .* B05, B06, B07, B8A"):
        resolve_bands(item, ["rededge"], pc)


def test_resolve_bands_old_item_falls_back_to_config_table() -> None:
    item = _sample(S2A)
    bands = resolve_bands(item, ["red", "swir16"], load_catalog_config("planetary-computer-s2"))
    assert [(b.asset, b.center_wavelength) for b in bands] == [("B04", 0.665), ("B11", 1.61)]
    with pytest.raises(MissingBandError) as err:
        resolve_bands(item, ["red"], load_catalog_config("earth-search-s2"))
    message = str(err.value)
    assert "S2A_28QCH_20200714_0_L2A" in message and "'red'" in message and "B04" in message


def test_resolve_bands_item_level_eo_bands_and_offset_rule(demo: CatalogConfig) -> None:
    item = _sample(L8)
    bands = resolve_bands(item, ["blue", "swir16"], demo)
    assert [(b.asset, b.center_wavelength) for b in bands] == [("SR_B2.TIF", 0.48), ("SR_B6.TIF", 1.6)]
    with pytest.raises(MissingBandError, match=r"no band 'nir'; its bands: .*SR_B5\.TIF \(nir08\)"):
        resolve_bands(item, ["nir"], demo)

    s2 = _sample(S2B)
    s2.properties["s2:processing_baseline"] = "05.09"
    assert resolve_bands(s2, ["blue"], load_catalog_config("planetary-computer-s2"))[0].offset == -0.1
    s2.assets["B02"].extra_fields["raster:bands"] = [{"scale": 0.001, "offset": 0.5, "nodata": 7}]
    spec = resolve_bands(s2, ["blue"], load_catalog_config("planetary-computer-s2"))[0]
    assert (spec.scale, spec.offset, spec.nodata) == (0.001, 0.5, 7)  # the item's raster:bands win


# --- AOIs ------------------------------------------------------------------------------------------


def _write(path: Path, data: object) -> Path:
    path.write_text(json.dumps(data) if not isinstance(data, str) else data)
    return path


def test_load_aoi_bbox_and_geojson_kinds(tmp_path: Path) -> None:
    assert load_aoi(DEMO_AOI).bounds == (-78.70, 35.70, -78.65, 35.75)
    square = box(0, 0, 1, 1).__geo_interface__
    feature = {"type": "Feature", "properties": {}, "geometry": square}
    other = {"type": "Feature", "properties": {}, "geometry": box(2, 2, 3, 3).__geo_interface__}
    assert load_aoi(_write(tmp_path / "g.json", square)).equals(box(0, 0, 1, 1))
    assert load_aoi(_write(tmp_path / "f.geojson", feature)).equals(box(0, 0, 1, 1))
    fc = load_aoi(str(_write(tmp_path / "fc.geojson", {"type": "FeatureCollection", "features": [feature, other]})))
    assert fc.bounds == (0, 0, 3, 3) and fc.geom_type == "MultiPolygon"


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("{not json", "not valid JSON"),
        ({"type": "Topology"}, "GeoJSON type 'Topology'"),
        ({"type": "FeatureCollection", "features": []}, "holds no geometry"),
        ({"type": "Polygon", "coordinates": "nope"}, "malformed GeoJSON"),
        ({"type": "Polygon", "coordinates": [[[0, 0], [1, 1], [1, 0], [0, 1], [0, 0]]]},
         "invalid geometry .*Self-intersection"),
        (box(630000, 215000, 640000, 228000).__geo_interface__, "outside the lon/lat range"),
    ],
)
def test_load_aoi_rejects_bad_files(tmp_path: Path, content: object, message: str) -> None:
    path = _write(tmp_path / "aoi.geojson", content)
    with pytest.raises(AOIError, match=message) as err:
        load_aoi(path)
    assert "aoi.geojson" in str(err.value)


@pytest.mark.parametrize("text", ["1,2,3", "3,0,1,1", "missing.geojson"])
def test_load_aoi_rejects_bad_bbox_or_missing_file(text: str) -> None:
    with pytest.raises(AOIError, match="minx,miny,maxx,maxy"):
        load_aoi(text)

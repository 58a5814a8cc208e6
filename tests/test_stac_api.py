"""The region pipeline against a real STAC API: stac-fastapi-pgstac over PostgreSQL with PostGIS, started here.

The API (flows/stac_api.py, the stack Planetary Computer runs) serves the dated copies of the cropped
Landsat 7 demo item of tests/regions.py: real pixels and real item JSON, with made-up dates,
``eo:cloud_cover`` and ``platform``. Everything goes through pystac-client and the API's own
search: bbox, datetime, the query and filter extensions, sortby and paging.
"""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import numpy as np
import pytest
import yaml
from shapely.geometry import box, mapping

from allspark.errors import CatalogError, InputError
from allspark.raster.catalog import CatalogConfig, NoItemsFound, load_catalog_config, search_items
from allspark.raster.filters import SearchFilters
from allspark.region import backfill, steps
from allspark.region.config import LANDSAT7_NC_CLASSES
from flows.stac_api import local_stac_api, read_sources
from tests.conftest import shared_data
from tests.painted_scenes import RESOLUTION, S2_BANDS, build_painted_scenes, quiet
from tests.regions import DATED_ITEMS, dated_catalog, quick_checkpoint, quick_config, small_catalog
from tests.stac_schemas import validate_catalog

IN_TIME_ORDER = list(DATED_ITEMS)


@pytest.fixture(scope="module")
def small(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The cropped demo catalog (its image and label item)."""
    return small_catalog(shared_data("landsat7_nc_labeled"), tmp_path_factory.mktemp("small"))


@pytest.fixture(scope="module")
def dated_static(small: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The static collection's catalog config (five dated copies of the cropped demo item)."""
    return dated_catalog(small, tmp_path_factory.mktemp("dated") / "dated")


@pytest.fixture(scope="module")
def dated_api(dated_static: Path, tmp_path_factory: pytest.TempPathFactory):
    """The same collection served by the STAC API; yields the API's catalog config YAML."""
    static = yaml.safe_load(dated_static.read_text())
    with local_stac_api([Path(static["url_or_path"])]) as url:
        path = tmp_path_factory.mktemp("api") / "dated-api.yaml"
        path.write_text(yaml.safe_dump({**static, "kind": "api", "url_or_path": url}))
        yield path


def ids(config: CatalogConfig, **search) -> list[str]:
    return [item.id for item in search_items(config, filters=SearchFilters.model_validate(search))]


SEARCHES = [
    {},
    {"query": {"eo:cloud_cover": {"lt": 20}}},
    {"query": {"eo:cloud_cover": {"gt": 5, "lt": 30}}},
    {"query": {"platform": {"neq": "landsat-7"}}},
    {"filter": "eo:cloud_cover < 30 AND platform = 'landsat-7'"},
    {"filter": {"op": "<", "args": [{"property": "eo:cloud_cover"}, 30]}},
    {"filter": "id IN ('LT05_E', 'LE07_B')"},
    {"filter": "eo:cloud_cover BETWEEN 10 AND 25"},
    {"filter": "datetime >= TIMESTAMP('2000-07-01T00:00:00Z')"},
    {"filter": "eo:cloud_cover < 10 OR platform = 'landsat-7'"},
    {"filter": "NOT (eo:cloud_cover < 30)"},
    {"query": {"eo:cloud_cover": {"lt": 30}}, "filter": "platform = 'landsat-7'"},
    {"sortby": "+eo:cloud_cover", "filter": "eo:cloud_cover >= 0"},
    {"sortby": [{"field": "properties.eo:cloud_cover", "direction": "desc"}], "filter": "eo:cloud_cover >= 0"},
    {"sortby": ["-properties.datetime"]},
    {"filter": "eo:cloud_cover < 30", "sortby": ["-properties.datetime"], "max_items": 2},
]


@pytest.mark.parametrize("search", SEARCHES, ids=[str(s) or "none" for s in SEARCHES])
def test_the_api_finds_what_the_static_catalog_finds(dated_api: Path, dated_static: Path, search: dict) -> None:
    """The static catalog's evaluation (cql2, tests/test_search_filters.py) agrees with pgstac's, in order."""
    found = ids(load_catalog_config(dated_api), **search)
    assert found == ids(load_catalog_config(dated_static), **search)
    assert found, "every search here matches something"


def test_the_api_answers_bbox_and_dates_and_an_empty_search_names_the_filters(dated_api: Path) -> None:
    api = load_catalog_config(dated_api)
    items = search_items(api, box(-78.69, 35.71, -78.67, 35.73), ("2000-05-01", "2000-09-30"))
    assert [item.id for item in items] == ["LE07_B", "LE07_C", "LE07_D"]
    hrefs = [item.assets["B1"].get_absolute_href() for item in items]
    assert all(href.startswith("file:///") and Path(href[7:]).is_file() for href in hrefs), hrefs
    with pytest.raises(NoItemsFound, match=r"STAC API http://127\.0\.0\.1:\d+ returned no imagery items.*"
                                           r"search filters: filter 'eo:cloud_cover < 1'"):
        ids(api, filter="eo:cloud_cover < 1")
    with pytest.raises(NoItemsFound, match=r"AOI bbox \(10\.0"):
        search_items(api, box(10, 10, 11, 11))


def test_a_search_the_api_refuses_is_an_error_naming_the_api_and_the_filters(dated_api: Path) -> None:
    """stac-fastapi-pgstac implements only the comparison operators of the query extension, not ``in`` or
    ``startsWith``: its refusal reaches the user as such, with the API's reason (a CQL2 filter does the same)."""
    api = load_catalog_config(dated_api)
    with pytest.raises(CatalogError, match=r"STAC API http://127\.0\.0\.1:\d+ refused the search of collection "
                                           r"'landsat7-nc-2000' \(search filters: query .*in.*\): .*Input should be"):
        ids(api, query={"platform": {"in": ["landsat-5"]}})
    assert ids(api, filter="platform IN ('landsat-5')") == ["LT05_E"]


def test_sources_must_name_their_collection(tmp_path: Path) -> None:
    item = tmp_path / "item.json"
    item.write_text('{"type": "Feature", "stac_version": "1.1.0", "id": "x", "geometry": null, "properties": '
                    '{"datetime": "2000-01-01T00:00:00Z"}, "links": [], "assets": {}}')
    with pytest.raises(InputError, match=r"item 'x' of .*item\.json names no collection"):
        read_sources([item])
    with pytest.raises(InputError, match=r"missing\.json does not exist; expected a catalog\.json"):
        read_sources([tmp_path / "missing.json"])


# -- a backfill over the API --------------------------------------------------------------------


@pytest.fixture(scope="module")
def checkpoint(small: Path, tmp_path_factory: pytest.TempPathFactory) -> str:
    return str(quick_checkpoint(small, tmp_path_factory.mktemp("unused"), "api-train"))


@pytest.mark.usefixtures("prefect_server")
def test_a_backfill_over_the_api_publishes_the_filtered_windows_and_skips_them_on_a_rerun(
    dated_api: Path, checkpoint: str, tmp_path: Path
) -> None:
    """Two-month windows from March to August 2000 with ``eo:cloud_cover < 30``: March-April (LE07_A) and
    July-August (LE07_C) are published; May-June holds only LE07_B (45 %), so the filter leaves it empty."""
    from flows.backfill import run_backfill

    aoi = tmp_path / "crop.geojson"
    aoi.write_text(json.dumps({"type": "Feature", "properties": {},
                               "geometry": mapping(box(-78.69, 35.71, -78.67, 35.73))}))
    base = quick_config(dated_api, tmp_path / "out", checkpoint=checkpoint, train=None,
                        search={"filter": "eo:cloud_cover < 30"})
    parameters = {"aois": [str(aoi)], "start": dt.date(2000, 3, 1), "end": dt.date(2000, 8, 31), "step": "P2M",
                  "config": base, "concurrency": 1}
    first = run_backfill(**parameters)
    assert [w["status"] for w in first["windows"]] == ["published", "empty", "published"], first["table"]
    assert "eo:cloud_cover < 30" in first["windows"][1]["detail"]
    job = backfill.plan_backfill(base, [str(aoi)], dt.date(2000, 3, 1), dt.date(2000, 4, 30), "P2M")[0]
    published = steps.published_catalog(job.config)
    assert published is not None
    stamp = published.stat().st_mtime_ns
    again = run_backfill(**parameters)
    assert [w["status"] for w in again["windows"]] == ["skipped", "empty", "skipped"]
    assert published.stat().st_mtime_ns == stamp, "a published window was written again"


# -- the region flow end to end against the API: painted Sentinel-2, masks, the user's own labels ----


@pytest.fixture(scope="module")
def painted(tmp_path_factory: pytest.TempPathFactory):
    """The painted scenes of tests/painted_scenes.py (real item JSON and real Landsat 7 pixels, painted clouds)."""
    return build_painted_scenes(tmp_path_factory.mktemp("painted"), landsat=shared_data("landsat7_nc_labeled"),
                                stac_samples=shared_data("stac_samples"))


@pytest.fixture(scope="module")
def painted_api(painted, tmp_path_factory: pytest.TempPathFactory):
    """The Planetary Computer layout's painted collection and its cloud-free twin, served by the STAC API; yields the
    API's catalog config (Planetary Computer's band table and SCL mask) and the cloud-free static one."""
    folder = tmp_path_factory.mktemp("painted-configs")
    static = painted.catalog_config("planetary-computer", folder / "static.yaml")
    cloud_free = painted.catalog_config("planetary-computer", folder / "cloud-free.yaml", cloud_free=True)
    with local_stac_api([painted.catalogs["planetary-computer"]]) as url:
        api = folder / "api.yaml"
        api.write_text(yaml.safe_dump({**yaml.safe_load(static.read_text()), "kind": "api", "url_or_path": url}))
        yield api, cloud_free


@pytest.mark.usefixtures("prefect_server")
def test_the_region_flow_against_the_api_with_a_cloud_filter_masks_and_polygons_in_a_projected_crs(
    painted, painted_api, tmp_path: Path
) -> None:
    """A Sentinel-2 run as a user would type it against a STAC API: ``eo:cloud_cover < 50`` keeps the four painted
    dates and drops the overcast one at the search, the SCL mask drops the painted clouds and shadows of each date
    before the median, and the model is fine-tuned from the real land-cover polygons (GeoJSON in NC State Plane,
    EPSG:3358, class names in a ``label`` column). The composite equals the cloud-free scene in every value, the
    published COGs and STAC catalog validate, and the metrics say what was masked."""
    import geopandas as gpd
    from rio_cogeo.cogeo import cog_validate

    from allspark.raster.scene import open_scene
    from flows.region import region_flow, task_runner

    api, cloud_free = painted_api
    polygons = tmp_path / "landcover.geojson"
    gpd.read_file(shared_data("landsat7_nc_labeled", "landsat96_polygons.shp")).to_file(polygons, driver="GeoJSON")
    config = quick_config(api, tmp_path / "outputs", name="painted-s2", bands=S2_BANDS, resolution=RESOLUTION,
                          search={"filter": "eo:cloud_cover < 50"}, datetime=("2022-06-01", "2022-07-31"),
                          train={"epochs": 1, "batch_size": 32, "max_train_pixels": 96, "learning_rate": 3e-3,
                                 "labels": {"path": str(polygons), "class_column": "label"}})
    assert config.class_names == sorted(LANDSAT7_NC_CLASSES)  # from the file's label column
    state = region_flow.with_options(task_runner=task_runner(config))(config, return_state=True)
    outputs = state.result()

    metrics = json.loads(Path(outputs.paths["metrics"]).read_text())
    dates = painted.items["planetary-computer"]
    assert sorted(metrics["ingest"]["masked_fraction"]) == sorted(dates)  # the overcast date never came back
    assert all(0 < fraction < 0.5 for fraction in metrics["ingest"]["masked_fraction"].values())
    assert metrics["ingest"]["items_skipped_masked"] == 0
    assert metrics["fine_tuning"]["labels"]["file"] == str(polygons)
    for key in ("classmap", "probabilities"):
        assert cog_validate(outputs.paths[key], quiet=True)[0], key
    assert len(validate_catalog(outputs.catalog)) == 2

    work = steps.ingest(config, quiet)  # the run's own scene store, found again by its key
    reference = steps.ingest(config.model_copy(update={"catalog": str(cloud_free), "name": "cloud-free",
                                                       "output_dir": tmp_path / "reference"}), quiet)
    np.testing.assert_array_equal(open_scene(work.store)[1][:], open_scene(reference.store)[1][:])

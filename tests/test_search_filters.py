"""Search filters (STAC ``query``, CQL2 ``filter``, ``sortby``, ``max_items``) on a local static catalog.

The catalog is real data with made-up metadata: five items over the cropped Landsat 7 demo scene
(tests/regions.py), all pointing at the same real COGs, each with its own date and a made-up
``eo:cloud_cover`` and ``platform`` (one item has no ``eo:cloud_cover`` at all). The cql2 package
evaluates the filters on them; a STAC API is not involved (pystac-client only builds its request).
"""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import pytest
import yaml
from shapely.geometry import box

from allspark.errors import ConfigError
from allspark.raster.catalog import (
    CatalogConfig,
    NoItemsFound,
    api_search_parameters,
    load_catalog_config,
    search_items,
)
from allspark.raster.filters import SearchFilters
from allspark.region.config import RegionConfig, load_region_config
from allspark.region.read import plan
from tests.conftest import shared_data
from tests.regions import DATED_ITEMS, dated_catalog, quick_config, small_catalog

IN_TIME_ORDER = list(DATED_ITEMS)


@pytest.fixture(scope="module")
def dated_yaml(tmp_path_factory: pytest.TempPathFactory) -> Path:
    work = tmp_path_factory.mktemp("dated")
    return dated_catalog(small_catalog(shared_data("landsat7_nc_labeled"), work / "small"), work / "dated")


@pytest.fixture(scope="module")
def dated(dated_yaml: Path) -> CatalogConfig:
    return load_catalog_config(dated_yaml)


def ids(config: CatalogConfig, **search) -> list[str]:
    return [item.id for item in search_items(config, filters=SearchFilters.model_validate(search))]


# --- query (the STAC API query extension) ----------------------------------------------------------


def test_query_operators(dated: CatalogConfig) -> None:
    assert ids(dated) == IN_TIME_ORDER  # no filters: every item, in time order
    assert ids(dated, query={"eo:cloud_cover": {"lt": 20}}) == ["LE07_A", "LT05_E"]
    assert ids(dated, query={"eo:cloud_cover": {"lte": 20}}) == ["LE07_A", "LE07_C", "LT05_E"]
    assert ids(dated, query={"eo:cloud_cover": {"gte": 20}}) == ["LE07_B", "LE07_C"]
    assert ids(dated, query={"eo:cloud_cover": {"gt": 5, "lt": 30}}) == ["LE07_C", "LT05_E"]  # both hold
    assert ids(dated, query={"eo:cloud_cover": {"eq": 45}}) == ["LE07_B"]
    assert ids(dated, query={"platform": {"in": ["landsat-5", "landsat-8"]}}) == ["LT05_E"]
    assert ids(dated, query={"platform": {"neq": "landsat-7"}}) == ["LT05_E"]
    assert ids(dated, query={"platform": {"startsWith": "landsat-"}}) == IN_TIME_ORDER
    assert ids(dated, query={"platform": {"endsWith": "-5"}, "eo:cloud_cover": {"lt": 30}}) == ["LT05_E"]
    assert ids(dated, query={"platform": {"contains": "sat-7"}}) == ["LE07_A", "LE07_B", "LE07_C", "LE07_D"]


def test_query_like_operators_take_the_value_literally(dated: CatalogConfig) -> None:
    with pytest.raises(NoItemsFound):  # "%" and "_" are no wildcards in startsWith/contains
        ids(dated, query={"platform": {"startsWith": "landsat_"}})
    with pytest.raises(NoItemsFound):
        ids(dated, query={"platform": {"contains": "%"}})


# --- CQL2 ------------------------------------------------------------------------------------------


def test_cql2_text_and_json(dated: CatalogConfig) -> None:
    text = "eo:cloud_cover < 30 AND platform = 'landsat-7'"
    assert ids(dated, filter=text) == ["LE07_A", "LE07_C"]
    as_json = {"op": "and", "args": [{"op": "<", "args": [{"property": "eo:cloud_cover"}, 30]},
                                     {"op": "=", "args": [{"property": "platform"}, "landsat-7"]}]}
    assert ids(dated, filter=as_json) == ["LE07_A", "LE07_C"]
    assert ids(dated, filter=json.dumps(as_json), filter_lang="cql2-json") == ["LE07_A", "LE07_C"]
    assert ids(dated, filter="id IN ('LT05_E', 'LE07_B')") == ["LE07_B", "LT05_E"]
    assert ids(dated, filter="collection = 'landsat7-nc-2000' AND eo:cloud_cover BETWEEN 10 AND 25") == [
        "LE07_C", "LT05_E"]
    assert ids(dated, filter="properties.eo:cloud_cover >= 45") == ["LE07_B"]
    assert ids(dated, filter="datetime >= TIMESTAMP('2000-07-01T00:00:00Z')") == ["LE07_C", "LE07_D", "LT05_E"]
    # query and filter together: both must hold
    assert ids(dated, query={"eo:cloud_cover": {"lt": 30}}, filter="platform = 'landsat-7'") == ["LE07_A", "LE07_C"]


def test_a_missing_property_does_not_match(dated: CatalogConfig) -> None:
    """LE07_D has no eo:cloud_cover: no comparison with it holds, not even a negated one (as a STAC API)."""
    assert "LE07_D" not in ids(dated, filter="eo:cloud_cover < 100")
    assert ids(dated, filter="NOT (eo:cloud_cover < 30)") == ["LE07_B"]
    assert ids(dated, query={"eo:cloud_cover": {"neq": 5}}) == ["LE07_B", "LE07_C", "LT05_E"]
    assert ids(dated, filter="eo:cloud_cover < 10 OR platform = 'landsat-7'") == [  # OR decides without it
        "LE07_A", "LE07_B", "LE07_C", "LE07_D"]
    assert ids(dated, filter="eo:cloud_cover IS NULL") == ["LE07_D"]
    with pytest.raises(NoItemsFound):
        ids(dated, filter="view:sun_elevation > 10")  # no item has it


# --- sortby and max_items -------------------------------------------------------------------------


def test_sortby_and_max_items(dated: CatalogConfig) -> None:
    by_cloud = ["LE07_A", "LT05_E", "LE07_C", "LE07_B", "LE07_D"]  # the item without it last
    assert ids(dated, sortby=["properties.eo:cloud_cover"]) == by_cloud
    assert ids(dated, sortby="+eo:cloud_cover") == by_cloud
    assert ids(dated, sortby=[{"field": "properties.eo:cloud_cover", "direction": "desc"}]) == [
        "LE07_B", "LE07_C", "LT05_E", "LE07_A", "LE07_D"]
    assert ids(dated, sortby=["-properties.datetime"]) == IN_TIME_ORDER[::-1]
    assert ids(dated, sortby=["-platform", "id"]) == IN_TIME_ORDER[:4] + ["LT05_E"]  # ties broken by the 2nd key
    assert ids(dated, sortby=["properties.eo:cloud_cover"], max_items=2) == ["LE07_A", "LT05_E"]  # cut after sorting
    assert ids(dated, filter="eo:cloud_cover < 30", sortby=["-properties.datetime"], max_items=2) == [
        "LT05_E", "LE07_C"]
    assert ids(dated, max_items=2) == ["LE07_D", "LT05_E"]  # without sortby: the newest, in time order
    assert ids(dated, max_items=99) == IN_TIME_ORDER


# --- errors ----------------------------------------------------------------------------------------


def test_empty_result_names_the_filters(dated: CatalogConfig) -> None:
    filters = SearchFilters(filter="eo:cloud_cover < 1", sortby=["-properties.datetime"], max_items=3)
    with pytest.raises(NoItemsFound) as err:
        search_items(dated, box(-180, -90, 180, 90), ("2000-01-01", "2000-06-30"), filters=filters)
    message = str(err.value)
    assert "'eo:cloud_cover < 1'" in message and "sortby -properties.datetime" in message and "max_items 3" in message
    assert "none of the 2 imagery item(s)" in message and "2000-06-30T23:59:59.999999Z" in message
    assert "(-180.00000, -90.00000, 180.00000, 90.00000)" in message
    assert "LE07_A: eo:cloud_cover=5.0" in message and "LE07_B: eo:cloud_cover=45.0" in message
    # emptied before the filters (dates without items): the message names the filters still
    with pytest.raises(NoItemsFound, match=r"2001-01-01.*search filters: filter 'eo:cloud_cover < 1'"):
        search_items(dated, None, ("2001-01-01", "2001-12-31"), filters=filters)


@pytest.mark.parametrize(
    ("search", "expected"),
    [
        ({"filter": "eo:cloud_cover <"}, r"search\.filter: .*CQL2-text filter 'eo:cloud_cover <' does not parse"),
        ({"filter": "cloud_cover = = 3"}, r"search\.filter: .*does not parse"),
        ({"filter": {"op": "<", "arg": []}}, r"search\.filter: .*CQL2-JSON filter .* does not parse"),
        ({"filter": "eo:cloud_cover < 3", "filter_lang": "cql2-json"}, r"filter_lang is cql2-json but .* cql2-text"),
        ({"query": {"eo:cloud_cover": {"less": 3}}}, r"search\.query\.eo:cloud_cover"),
        ({"query": {"platform": {"in": "landsat-7"}}}, r"search\.query: .*platform\.in must be a non-empty list"),
        ({"sortby": [{"field": "id", "direction": "up"}]}, r"search\.sortby\.0\.direction"),
        ({"max_items": 0}, r"search\.max_items"),
        ({"filters": "eo:cloud_cover < 3"}, r"search\.filters: Extra inputs are not permitted"),
    ],
)
def test_bad_search_settings_are_config_errors_naming_the_key(tmp_path: Path, search: dict, expected: str) -> None:
    path = tmp_path / "region.yaml"
    path.write_text(yaml.safe_dump({"search": search}))
    with pytest.raises(ConfigError, match=expected) as err:
        load_region_config(path)
    assert str(path) in str(err.value)


# --- the region run -------------------------------------------------------------------------------


def test_region_plan_picks_only_the_matching_dates(dated_yaml: Path, tmp_path: Path) -> None:
    search = {"filter": "eo:cloud_cover < 30", "sortby": ["properties.eo:cloud_cover"], "max_items": 2}
    config = quick_config(dated_yaml, tmp_path, datetime=("2000-01-01", "2000-12-31"), search=search)
    region_plan = plan(config)
    assert [item["id"] for item in region_plan.items] == ["LE07_A", "LT05_E"]  # the two least cloudy
    assert [band.name for band in region_plan.bands] == config.bands
    # the filters are part of the fingerprint and of the published config; an empty block is no filter at all
    plain = quick_config(dated_yaml, tmp_path)
    assert config.fingerprint() != quick_config(dated_yaml, tmp_path, datetime=config.datetime).fingerprint()
    assert quick_config(dated_yaml, tmp_path, search={}).fingerprint() == plain.fingerprint()
    published = yaml.safe_load(config.to_yaml())["search"]
    assert published["filter"] == "eo:cloud_cover < 30" and published["max_items"] == 2
    assert published["sortby"] == [{"field": "properties.eo:cloud_cover", "direction": "asc"}]
    assert RegionConfig.model_validate(yaml.safe_load(config.to_yaml())).fingerprint() == config.fingerprint()
    # no item left: the run's error names the filter, sortby and max_items
    empty = quick_config(dated_yaml, tmp_path, search=search | {"filter": "eo:cloud_cover < 1"})
    with pytest.raises(NoItemsFound, match=r"'eo:cloud_cover < 1'.*sortby \+properties\.eo:cloud_cover.*max_items 2"):
        plan(empty)


# --- the STAC API request (pystac-client builds it; nothing is sent) -------------------------------


def test_api_request_carries_the_filters() -> None:
    from pystac_client import ItemSearch

    config = load_catalog_config("earth-search-s2")
    filters = SearchFilters(query={"s2:nodata_pixel_percentage": {"lt": 10}}, filter="eo:cloud_cover < 30",
                            sortby="-properties.datetime", max_items=5)
    start, end = dt.datetime(2023, 6, 1, tzinfo=dt.UTC), dt.datetime(2023, 6, 30, tzinfo=dt.UTC)
    parameters = api_search_parameters(config, box(-79, 35, -78, 36), start, end, filters)
    post = ItemSearch(f"{config.url_or_path}/search", **parameters)
    body = post.get_parameters()
    assert body["filter"] == {"op": "and", "args": [  # the query joins the filter: pgstac refuses the two apart
        {"op": "<", "args": [{"property": "s2:nodata_pixel_percentage"}, 10]},
        {"op": "<", "args": [{"property": "eo:cloud_cover"}, 30.0]}]}
    assert body["filter-lang"] == "cql2-json" and "query" not in body
    query_only = ItemSearch(f"{config.url_or_path}/search", **api_search_parameters(
        config, None, None, None, SearchFilters(query={"eo:cloud_cover": {"lt": 30}}))).get_parameters()
    assert query_only["query"] == {"eo:cloud_cover": {"lt": 30}} and "filter" not in query_only
    assert body["sortby"] == [{"field": "properties.datetime", "direction": "desc"}]
    assert tuple(body["collections"]) == ("sentinel-2-l2a",) and post._max_items == 5
    get = ItemSearch(f"{config.url_or_path}/search", method="GET", **parameters).get_parameters()
    assert get["filter"] == "s2:nodata_pixel_percentage < 10 AND eo:cloud_cover < 30"
    assert get["filter-lang"] == "cql2-text"


def test_backfill_windows_and_deployments_carry_the_filters(tmp_path: Path) -> None:
    """Each window of a backfill searches with its base config's filters (and so fingerprints them)."""
    from allspark.region import backfill
    from flows.deployments import region_deployments

    search = {"query": {"eo:cloud_cover": {"lt": 30}}, "sortby": "-properties.datetime", "max_items": 1}
    base = RegionConfig(output_dir=tmp_path, search=search)
    jobs = backfill.plan_backfill(base, ["south-labelled"], dt.date(2000, 1, 1), dt.date(2000, 2, 15), "monthly")
    assert [job.config.search for job in jobs] == [base.search] * 2
    plain = backfill.plan_backfill(RegionConfig(output_dir=tmp_path), ["south-labelled"], dt.date(2000, 1, 1),
                                   dt.date(2000, 1, 31), "monthly")
    assert plain[0].config.fingerprint() != jobs[0].config.fingerprint()
    config_file = tmp_path / "region.yaml"
    config_file.write_text(yaml.safe_dump({"search": search}))
    deployment = region_deployments(config_file)[0]
    assert RegionConfig.model_validate(deployment.parameters["config"]).search == base.search

"""Signed assets: a Planetary Computer catalog whose blob storage refuses every read without a valid SAS token.

:mod:`tests.blob_server` plays Planetary Computer on 127.0.0.1: its SAS token service (``PC_SDK_SAS_URL``;
each token is issued with 62 s to live, so the ``planetary-computer`` SDK fetches a new one after 2 s,
and the server honours it for ``HONOURED_S`` s only) and its blob storage, reached through GDAL's HTTP
proxy, answering 403 to any read without a valid token. The items are the painted Sentinel-2 scenes of
:mod:`tests.painted_scenes` (real Planetary Computer item JSON, real Landsat 7 pixels, painted clouds)
with their hrefs moved to ``http://pctest.blob.core.windows.net/sentinel2-l2/...``, served by the real
STAC API of :mod:`flows.stac_api` (stac-fastapi-pgstac, the stack Planetary Computer runs). The catalog
config is ``catalogs/planetary-computer-s2.yaml`` as shipped (``signing: planetary_computer``, the SCL
cloud mask) pointed at that API.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import planetary_computer
import pystac
import pytest
import yaml

from allspark.core.steps import run_pipeline
from allspark.errors import ConfigError
from allspark.raster.catalog import load_catalog_config, resolve_bands, search_items
from allspark.raster.load import CorruptAssetError, check_readable
from allspark.raster.scene import open_scene
from allspark.raster.signing import signed, unsigned
from allspark.region import steps
from allspark.region.read import PLAN_FILE, RegionPlan, load_plan
from allspark.settings import work_root
from flows.stac_api import StacContent, local_stac_api, read_sources
from tests.blob_server import ACCOUNT, BLOB_ROOT, CONTAINER, HONOURED_S, BlobRequest, BlobServer
from tests.conftest import shared_data
from tests.painted_scenes import RESOLUTION, S2_BANDS, build_painted_scenes, quiet, untrained_checkpoint
from tests.regions import quick_config

LAYOUT = "planetary-computer"
READ = (200, 206)



def listing(folder: Path) -> list[Path]:
    return sorted(p.relative_to(folder) for p in folder.rglob("*")) if folder.exists() else []


@pytest.fixture(scope="module")
def painted(tmp_path_factory):
    return build_painted_scenes(tmp_path_factory.mktemp("painted"), landsat=shared_data("landsat7_nc_labeled"),
                                stac_samples=shared_data("stac_samples"))


@pytest.fixture(scope="module")
def server(painted):
    """The token service and blob storage over the painted files; GDAL and the SDK pointed at it (the environment is
    set before any reader starts, and restored after)."""
    with BlobServer(painted.root / LAYOUT) as blobs, pytest.MonkeyPatch.context() as env:
        env.setenv("GDAL_HTTP_PROXY", blobs.address)
        env.setenv("GDAL_DISABLE_READDIR_ON_OPEN", "EMPTY_DIR")  # no folder listing: only the files themselves
        env.setenv("PC_SDK_SAS_URL", blobs.sas_url)
        planetary_computer.settings.Settings.get.cache_clear()  # the SDK reads its settings once
        yield blobs
    planetary_computer.settings.Settings.get.cache_clear()


@pytest.fixture(autouse=True)
def no_cached_token():
    planetary_computer.sas.TOKEN_CACHE.clear()


def on_blob_storage(item: dict, root: Path) -> dict:
    """An item dict (``file://`` hrefs under ``root``) with each href at the same path on the blob container."""
    for asset in item["assets"].values():
        asset["href"] = f"{BLOB_ROOT}/{Path(urlsplit(asset['href']).path).relative_to(root).as_posix()}"
    return item


@pytest.fixture(scope="module")
def catalog_yaml(painted, server, tmp_path_factory):
    """The shipped Planetary Computer config, pointed at a STAC API serving the painted items on blob storage."""
    content = read_sources([painted.catalogs[LAYOUT]])
    items = [on_blob_storage(item, painted.root / LAYOUT) for item in content.items]
    folder = tmp_path_factory.mktemp("signed-catalog")
    config = yaml.safe_load(painted.catalog_config(LAYOUT, folder / "static.yaml").read_text())
    assert config["signing"] == "planetary_computer"  # as catalogs/planetary-computer-s2.yaml ships it
    with local_stac_api(StacContent(content.collections, items)) as url:
        path = folder / "api.yaml"
        path.write_text(yaml.safe_dump(config | {"kind": "api", "url_or_path": url}))
        yield path


@pytest.fixture(scope="module")
def checkpoint(painted, tmp_path_factory):
    """A seeded, untrained bundle for the six bands, its normaliser fitted on the local cloud-free scene."""
    folder = tmp_path_factory.mktemp("checkpoint")
    return untrained_checkpoint(painted.catalog_config(LAYOUT, folder / "cloud-free.yaml", cloud_free=True), folder)


@pytest.fixture(scope="module")
def signed_run(catalog_yaml, checkpoint, server, tmp_path_factory):
    """A whole run at 30 m over the signed API: its config, what it published and the blob requests it made."""
    config = quick_config(catalog_yaml, tmp_path_factory.mktemp("runs") / "signed", name="signed-pc", bands=S2_BANDS,
                          resolution=RESOLUTION, checkpoint=checkpoint, train=None)
    done = len(server.blob_requests())
    published = run_pipeline(steps, config, quiet)
    return config, published, server.blob_requests()[done:]


def asset_paths(items: list[pystac.Item], keys: list[str]) -> set[str]:
    """The blob paths of the items' assets ``keys``."""
    return {item.assets[key].href.removeprefix(f"{BLOB_ROOT}/") for item in items for key in keys}


def plan_assets(plan: RegionPlan) -> set[str]:
    """The blob paths of every band and mask asset of a plan's items."""
    return asset_paths(plan.pystac_items(), [*(band.asset for band in plan.bands), plan.mask.asset])


def read_paths(requests: list[BlobRequest]) -> set[str]:
    """Paths whose bytes were read (a 206 range answer)."""
    return {request.path for request in requests if request.status == 206}


def test_a_run_reads_every_asset_over_http_with_a_valid_token_and_stores_none(painted, server, signed_run):
    """Every band and mask file was read over HTTP, and every request carried a token the service issued and still
    honoured. plan.json (which keys the work folder) and every published JSON and YAML file hold the bare hrefs."""
    config, published, requests = signed_run
    (work,) = work_root().glob(f"{config.name}-*")
    plan = load_plan(work)
    items = plan.pystac_items()
    assert [item.id for item in items] == list(painted.items[LAYOUT])  # the overcast date skipped by its mask
    # every read went over HTTP with a token the service issued and still honoured: none was refused
    assert requests and all(request.status in READ for request in requests), {r.status for r in requests}
    assert {request.sig for request in requests} <= set(server.issued)
    overcast_mask = f"sentinel-2-l2a/{painted.overcast[LAYOUT]}/SCL.tif"  # read by the check that skipped it
    assert read_paths(requests) == plan_assets(plan) | {overcast_mask}
    # no token is kept: the plan, and so the work folder's key, holds the bare hrefs, and nothing published names one
    hrefs = [asset.href for item in items for asset in item.assets.values()]
    assert all(href.startswith(f"{BLOB_ROOT}/") and "?" not in href for href in hrefs)
    texts = {PLAN_FILE: (work / PLAN_FILE).read_text()} | {
        str(path.relative_to(config.publish_dir)): path.read_text()
        for path in config.publish_dir.rglob("*") if path.suffix in (".json", ".yaml")}
    assert "catalog.json" in texts and "metrics.json" in texts
    for name, text in texts.items():
        assert "sig=" not in text and not any(sig in text for sig in server.issued), f"{name} holds a SAS token"
    (landcover,) = pystac.Catalog.from_file(str(published.catalog)).get_items(recursive=True)
    assert [link.title for link in landcover.get_links("derived_from")] == [item.id for item in items]
    assert json.loads(published.paths["metrics"].read_text())["ingest"]["items"] == 4


def test_after_the_token_expires_the_next_ingest_signs_again(painted, server, signed_run):
    """A rerun of the same config resumes the same work folder (the plan that keys it holds no token), reading with
    a token the SDK then caches. Once that token is past its honoured time, the SDK fetches a new one (less than 60 s
    left) and every read of the next ingest, the search's checks and the whole scene load, goes out with it."""
    config, _, _ = signed_run
    (work,) = work_root().glob(f"{config.name}-*")
    assert steps.ingest(config, quiet).work_dir == work
    (cached,) = planetary_computer.sas.TOKEN_CACHE.values()
    old_tokens = set(server.issued)
    time.sleep(HONOURED_S + 0.5)  # every token issued so far, the cached one too, is refused from now on
    done = len(server.blob_requests())
    later = config.model_copy(update={"name": "later-signed-pc"})  # another work folder: the scene is loaded again
    ingested = steps.ingest(later, quiet)
    requests = server.blob_requests()[done:]
    new_tokens = set(server.issued) - old_tokens
    assert new_tokens and planetary_computer.sas.TOKEN_CACHE[f"{server.sas_url}/{ACCOUNT}/{CONTAINER}"] != cached
    assert requests and all(request.status in READ and request.sig in new_tokens for request in requests)
    assert read_paths(requests) >= plan_assets(load_plan(ingested.work_dir))
    assert open_scene(ingested.store)[0].items == list(painted.items[LAYOUT])


def test_without_signing_every_read_is_refused_and_the_run_stops_naming_403(server, catalog_yaml, checkpoint,
                                                                             tmp_path):
    unsigned_yaml = tmp_path / "unsigned.yaml"
    unsigned_yaml.write_text(yaml.safe_dump(
        {key: value for key, value in yaml.safe_load(catalog_yaml.read_text()).items() if key != "signing"}))
    config = quick_config(unsigned_yaml, tmp_path / "outputs", name="unsigned-pc", bands=S2_BANDS,
                          resolution=RESOLUTION, checkpoint=checkpoint, train=None)
    before, done = listing(work_root()), len(server.blob_requests())
    with pytest.raises(CorruptAssetError, match=rf"^asset {BLOB_ROOT}/\S+\.tif cannot be read as a raster: .*"
                                                r"HTTP response code: 403"):
        run_pipeline(steps, config, quiet)
    requests = server.blob_requests()[done:]
    assert requests and all(request.status == 403 and request.sig is None for request in requests)
    assert listing(work_root()) == before and not config.output_dir.exists()


def test_a_signing_catalog_without_the_package_is_a_config_error(catalog_yaml, checkpoint, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "planetary_computer", None)  # what `import` finds when it is not installed
    config = quick_config(catalog_yaml, tmp_path / "outputs", name="no-sdk-pc", bands=S2_BANDS,
                          resolution=RESOLUTION, checkpoint=checkpoint, train=None)
    before = listing(work_root())
    with pytest.raises(ConfigError, match=r"signing: planetary_computer .*planetary-computer package, which is not "
                                          r"installed; install it with pip install "
                                          r"'allspark-pipeline\[planetary-computer\]'"):
        run_pipeline(steps, config, quiet)
    assert listing(work_root()) == before and not config.output_dir.exists()


def sigs(items: list[pystac.Item]) -> set[str]:
    """The token signatures on the items' asset hrefs (KeyError for an href without one)."""
    return {parse_qs(urlsplit(asset.href).query)["sig"][0] for item in items for asset in item.assets.values()}


def test_a_search_hands_out_signed_items_from_the_api_and_from_a_static_catalog(painted, server, catalog_yaml,
                                                                                 tmp_path):
    """The API's items come signed (the SDK as pystac-client's modifier), and so do the same items in a static
    catalog with ``signing``; unsigned copies are the catalog's hrefs again, and signed copies of those read."""
    api = load_catalog_config(catalog_yaml)
    collection = pystac.Collection.from_file(str(painted.catalogs[LAYOUT].parent / "sentinel-2-l2a" /
                                                  "collection.json"))
    static = pystac.Collection(collection.id, collection.description, collection.extent)
    for item in collection.get_items():
        data = on_blob_storage(item.make_asset_hrefs_absolute().to_dict(transform_hrefs=False) | {"links": []},
                               painted.root / LAYOUT)
        static.add_item(pystac.Item.from_dict(data))
    static.normalize_hrefs(str(tmp_path / "static"))
    static.save(pystac.CatalogType.SELF_CONTAINED)
    config = api.model_copy(update={"kind": "static", "url_or_path": str(tmp_path / "static" / "collection.json")})
    from_api, found = search_items(api), search_items(config)
    assert [item.id for item in from_api] == [item.id for item in found]
    assert sigs(from_api) | sigs(found) <= set(server.issued)
    bare = unsigned(found)
    assert [item.assets["B02"].href for item in bare] == [
        f"{BLOB_ROOT}/sentinel-2-l2a/{item.id}/B02.tif" for item in found]
    again = signed(bare, config.signing)
    assert all(copy.assets["B02"].href.startswith(f"{item.assets['B02'].href}?st=") for copy, item in zip(again, bare))
    specs = resolve_bands(found[0], S2_BANDS, config)
    done = len(server.blob_requests())
    assert check_readable(again, specs) == ["uint16"] * len(specs) * len(bare)
    requests = server.blob_requests()[done:]
    assert requests and all(request.status in READ and request.sig in server.issued for request in requests)

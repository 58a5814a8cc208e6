"""The region flow on a Dask cluster without a shared disk: work stores, model and outputs on object storage.

A scheduler and two workers run as processes of their own (:mod:`tests.dask_cluster`), each
worker in an empty folder with its own ``ALLSPARK_CACHE``; the work folder (scene and prediction
Zarr stores, plan, fine-tuned model) and the published outputs live on a real S3-compatible
server (moto in server mode on 127.0.0.1), so nothing but the bucket reaches the workers. The
work bucket keeps every version of every object, which shows each block's done flag written once.
STAC items whose imagery is on the bucket (``s3://`` hrefs) are read through GDAL's ``/vsis3/``.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time

from pathlib import Path

import geopandas as gpd
import numpy as np
import pystac
import pytest
import rasterio
import yaml
from rio_cogeo.cogeo import cog_validate

from allspark.core.location import upload
from allspark.core.steps import run_pipeline
from allspark.core.storage import LOCK_OBJECT
from allspark.raster.scene import open_scene
from allspark.region import steps
from allspark.settings import cache_dir, work_root
from tests import object_store
from tests.conftest import shared_data
from tests.dask_cluster import process_cluster
from tests.object_store import assert_every_link_resolves, key, versions
from tests.regions import catalog_yaml, quick_config, small_catalog

WORK, MAPS = "allspark-work", "allspark-maps"
BLOCK = 24  # px: 16 blocks over the 96 x 96 px crop, so both workers get some
KILL_TIMEOUT = 300  # seconds to wait for the moment to kill a process


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    with object_store.s3_server(tmp_path_factory.mktemp("moto") / "moto.log") as server:
        server.create_bucket(WORK)
        server.client().put_bucket_versioning(Bucket=WORK, VersioningConfiguration={"Status": "Enabled"})
        server.create_bucket(MAPS)
        yield server


@pytest.fixture(scope="module")
def catalog(tmp_path_factory):
    return small_catalog(shared_data("landsat7_nc_labeled"), tmp_path_factory.mktemp("cluster-catalog"))


@pytest.fixture(scope="module")
def cluster(s3, tmp_path_factory):
    with process_cluster(tmp_path_factory.mktemp("cluster")) as running:
        yield running


def bucket_config(catalog, cluster, name, **changes):
    """A quick region config with its work folder and outputs on the buckets, run on the process cluster."""
    return quick_config(catalog, f"s3://{MAPS}/maps", name=name, work_root=f"s3://{WORK}/work",
                        dask_address=cluster.address, chips={"size": 8, "overlap": 4, "block": BLOCK}, **changes)


@pytest.fixture(scope="module")
def cluster_run(s3, catalog, cluster, prefect_server):
    """Fine-tune and map on the cluster, everything on the buckets."""
    from flows.region import run_region

    config = bucket_config(catalog, cluster, "cluster-region")
    return config, run_region(config)


@pytest.fixture(scope="module")
def bucket_model(s3, cluster_run) -> str:
    """The URL of the model the cluster run fine-tuned, in its work folder on the bucket."""
    (model,) = s3.filesystem().glob(f"{WORK}/work/cluster-region-*/model*/bundle.json")
    return f"s3://{model.rsplit('/', 1)[0]}"


def work_folder(s3, name: str) -> str:
    (plan,) = s3.filesystem().glob(f"{WORK}/work/{name}-*/plan.json")
    return plan.rsplit("/", 1)[0]


def flag_versions(s3, name: str) -> dict[str, int]:
    """How many times each block's done flag (its chip table) was stored in the run's work folder."""
    prefix = f"{work_folder(s3, name).split('/', 1)[1]}/"
    counts: dict[str, int] = {}
    for page in s3.client().get_paginator("list_object_versions").paginate(Bucket=WORK, Prefix=prefix):
        for version in page.get("Versions", []):
            if "/blocks/" in version["Key"]:
                counts[version["Key"].rsplit("/", 1)[-1]] = counts.get(version["Key"].rsplit("/", 1)[-1], 0) + 1
    return counts


def read_cog(s3, url: str) -> np.ndarray:
    path = f"/vsis3/{key(url)}"
    assert cog_validate(path, quiet=True)[0], f"{url} is not a valid COG"
    with rasterio.open(path) as src:
        return src.read()


def wait_for(condition, what: str) -> None:
    deadline = time.monotonic() + KILL_TIMEOUT
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def test_the_region_flow_on_a_cluster_without_a_shared_disk_equals_a_local_run(s3, cluster, cluster_run, catalog,
                                                                                tmp_path):
    config, published = cluster_run
    local = run_pipeline(steps, quick_config(catalog, tmp_path, name="local-twin",
                                             chips={"size": 8, "overlap": 4, "block": BLOCK}))
    for name in ("classmap", "probabilities"):
        bucket_pixels = read_cog(s3, published.paths[name])
        with rasterio.open(local.paths[name]) as src:
            np.testing.assert_allclose(bucket_pixels, src.read(), rtol=0, atol=1e-6, err_msg=name)
    with s3.filesystem().open(key(published.paths["chips"])) as file:
        assert len(gpd.read_parquet(file)) == len(gpd.read_parquet(local.paths["chips"]))
    assert_every_link_resolves(published.catalog)
    assert published.metrics["holdout_accuracy"] == local.metrics["holdout_accuracy"]

    work = work_folder(s3, "cluster-region")
    stored = s3.filesystem().find(work)
    for store in ("scene.zarr", "predictions-"):
        assert any(path.endswith("/_SUCCESS") and f"/{store}" in path for path in stored), f"no complete {store}"
    assert len(flag_versions(s3, "cluster-region")) == published.metrics["inference"]["blocks"] == 16
    assert not list(work_root().glob("cluster-region-*")), "the run wrote its work folder on the flow's disk"
    for index in range(2):  # each worker read the model from the bucket into its own cache, and wrote no work
        cache = cluster.worker_folder(index) / "cache"
        assert list((cache / "bundles").glob("*/model.safetensors")), f"worker {index} never loaded the model"
        assert not (cache / "work").exists()


def test_a_worker_killed_during_inference_costs_no_block_twice(s3, cluster, bucket_model, catalog, prefect_server):
    from flows.region import run_region

    cluster.replace_dead_workers()
    config = bucket_config(catalog, cluster, "killed-worker", checkpoint=bucket_model, train=None)
    victim, done_at_kill = cluster.workers[1], []

    def kill_once_a_block_is_done():
        def done_blocks():
            return s3.filesystem().glob(f"{WORK}/work/killed-worker-*/predictions-*/blocks/*.parquet")

        wait_for(done_blocks, "the first block")
        victim.send_signal(signal.SIGKILL)
        done_at_kill.append(len(done_blocks()))

    killer = threading.Thread(target=kill_once_a_block_is_done, daemon=True)
    killer.start()
    published = run_region(config)
    killer.join(timeout=KILL_TIMEOUT)
    assert victim.poll() is not None and done_at_kill[0] < 16, "the worker was not killed during inference"
    done_before_kill = published.metrics["inference"]["blocks_done_before"]
    assert done_before_kill == 0 and published.metrics["inference"]["blocks_predicted"] == 16
    flags = flag_versions(s3, "killed-worker")
    assert len(flags) == 16 and set(flags.values()) == {1}, f"blocks predicted more than once: {flags}"
    assert_every_link_resolves(published.catalog)
    cluster_classmap = read_cog(s3, f"s3://{MAPS}/maps/cluster-region/runs/"
                                    f"{versions(s3, f's3://{MAPS}/maps/cluster-region')[-1]}/classmap.tif")
    np.testing.assert_array_equal(read_cog(s3, published.paths["classmap"]), cluster_classmap)


FLOW_SCRIPT = """
import sys
from allspark.region.config import RegionConfig
from flows.region import run_region
run_region(RegionConfig.model_validate_json(sys.stdin.read()))
"""


def test_a_flow_killed_while_publishing_shows_nothing_and_the_rerun_predicts_nothing_again(
        s3, cluster, bucket_model, catalog, prefect_server, tmp_path):
    from prefect.settings import PREFECT_API_URL

    from flows.region import run_region

    cluster.replace_dead_workers()
    config = bucket_config(catalog, cluster, "killed-publish", checkpoint=bucket_model, train=None)
    location = config.publish_location
    fs = s3.filesystem()
    environment = {**os.environ, "PREFECT_API_URL": PREFECT_API_URL.value()}
    with open(tmp_path / "flow.log", "wb") as log:
        flow = subprocess.Popen([sys.executable, "-c", FLOW_SCRIPT], stdin=subprocess.PIPE, stdout=log,
                                stderr=subprocess.STDOUT, env=environment)
    flow.stdin.write(config.model_dump_json().encode())
    flow.stdin.close()
    wait_for(lambda: flow.poll() is not None or fs.glob(f"{key(location)}/runs/*/*"), "the upload to start")
    flow.kill()
    flow.wait()
    assert flow.returncode == -signal.SIGKILL, f"the flow ended before it was killed: {(tmp_path / 'flow.log').read_text()[-3000:]}"
    assert not fs.exists(key(f"{location}/catalog.json")), "a reader can see the killed run's outputs"
    (partial,) = versions(s3, location)

    published = run_region(config)
    assert published.metrics["inference"]["blocks_predicted"] == 0
    assert published.metrics["inference"]["blocks_done_before"] == 16
    flags = flag_versions(s3, "killed-publish")
    assert len(flags) == 16 and set(flags.values()) == {1}, f"blocks predicted more than once: {flags}"
    assert partial not in versions(s3, location), "the killed run's partial set was left on the bucket"
    assert not list((cache_dir() / "staging").glob(f".staging-{flow.pid}-*")), "its local staging folder was left"
    assert not [path for path in fs.find(WORK) + fs.find(MAPS) if path.endswith(LOCK_OBJECT)], "a lock was left"
    item = assert_every_link_resolves(published.catalog)
    assert json.loads(fs.cat_file(key(published.paths["metrics"])))["inference"]["blocks_predicted"] == 0
    assert item.properties["allspark:config"]["name"] == "killed-publish"


def imagery_on_the_bucket(catalog_yaml_file, folder, s3) -> Path:
    """A copy of a small catalog whose image assets are uploaded to the bucket and linked as ``s3://`` hrefs."""
    catalog_json = yaml.safe_load(catalog_yaml_file.read_text())["url_or_path"]
    stac = pystac.Catalog.from_file(catalog_json)
    stac.make_all_asset_hrefs_absolute()
    for item in stac.get_items(recursive=True):
        for name, asset in item.assets.items():
            if asset.media_type and "geotiff" in asset.media_type and "label" not in (asset.roles or []):
                url = f"s3://{WORK}/imagery/{item.id}/{Path(asset.href).name}"
                upload(Path(asset.href), url)
                asset.href = url
    stac.normalize_hrefs(str(folder / "catalog"))
    stac.save(catalog_type=pystac.CatalogType.SELF_CONTAINED)
    return catalog_yaml(folder / "catalog" / "catalog.json", folder / "catalog.yaml")


def test_imagery_is_read_from_s3_hrefs_in_the_stac_items(s3, catalog, tmp_path):
    remote = imagery_on_the_bucket(catalog, tmp_path, s3)
    hrefs = [d["assets"]["B1"]["href"] for d in steps.checked_plan(quick_config(remote, tmp_path)).items]
    assert hrefs and all(href.startswith("s3://") for href in hrefs)
    scenes = [steps.ingest(quick_config(source, tmp_path, name=name))
              for source, name in ((remote, "imagery-on-s3"), (catalog, "imagery-on-disk"))]
    (_, on_s3), (_, on_disk) = (open_scene(ingested.store) for ingested in scenes)
    np.testing.assert_array_equal(on_s3[:], on_disk[:])

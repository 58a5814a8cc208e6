"""Published outputs on object storage, against a real S3-compatible server (moto in server mode on 127.0.0.1).

The region flow, a sensors flow and a backfill publish to ``s3://`` URLs; everything is read back
from the bucket with clients of the test's own (GDAL's ``/vsis3/``, s3fs) and compared with a local
run. A publish switches its set in by writing the entry catalog last, so a rerun or a publish
killed mid-upload never shows a mix; bad storage is refused before any work. Every region run
applies one quickly fine-tuned checkpoint; the work folders stay on local disk.
"""

from __future__ import annotations

import datetime as dt
import importlib.util
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import geopandas as gpd
import numpy as np
import pytest
import rasterio
import yaml
from rio_cogeo.cogeo import cog_validate

from allspark.core import location as location_module
from allspark.core.location import check_storage, parse_location, read_catalog
from allspark.core.steps import run_pipeline
from allspark.core.storage import LOCK_OBJECT, folder_lock
from allspark.errors import StorageError
from allspark.region import backfill, steps
from allspark.settings import cache_dir, work_root
from tests import object_store
from tests.object_store import assert_every_link_resolves, entry_version, key, versions
from tests.conftest import shared_data
from tests.file_flows import sensors_config
from tests.regions import crop_aoi, quick_checkpoint, quick_config, small_catalog
from tests.stac_schemas import validate_catalog

BUCKET = "allspark-maps"
D = dt.date


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    with object_store.s3_server(tmp_path_factory.mktemp("moto") / "moto.log") as server:
        server.create_bucket(BUCKET)
        yield server


@pytest.fixture(scope="module")
def catalog(tmp_path_factory):
    return small_catalog(shared_data("landsat7_nc_labeled"), tmp_path_factory.mktemp("s3-catalog"))


@pytest.fixture(scope="module")
def checkpoint(catalog, tmp_path_factory) -> str:
    return str(quick_checkpoint(catalog, tmp_path_factory.mktemp("unused"), "s3-train"))


def region_config(catalog, checkpoint, output_dir, **changes):
    return quick_config(catalog, output_dir, checkpoint=checkpoint, train=None, **changes)


@pytest.fixture(scope="module")
def bucket_run(s3, catalog, checkpoint, threads_cluster, prefect_server):
    """The region flow on a Dask cluster, publishing to s3://allspark-maps/maps."""
    from flows.region import run_region

    config = region_config(catalog, checkpoint, f"s3://{BUCKET}/maps", dask_address=threads_cluster)
    return config, run_region(config)


@pytest.fixture(scope="module")
def local_run(catalog, checkpoint, tmp_path_factory):
    """The same model over the same area into a local folder (another name: its own work folder)."""
    config = region_config(catalog, checkpoint, tmp_path_factory.mktemp("local"), name="local-region")
    return config, run_pipeline(steps, config)


# -- the region flow ------------------------------------------------------------------------------


def test_region_outputs_on_the_bucket_equal_a_local_run(s3, bucket_run, local_run, tmp_path):
    config, published = bucket_run
    location = f"s3://{BUCKET}/maps/test-region"
    assert config.publish_location == location and published.catalog == f"{location}/catalog.json"
    version = entry_version(s3, location)
    assert published.paths["classmap"] == f"{location}/runs/{version}/classmap.tif"
    fs = s3.filesystem()
    assert sorted(p.rsplit("/", 1)[-1] for p in fs.ls(key(location))) == ["catalog.json", "runs"]
    assert not [p for p in fs.find(BUCKET) if "/." in p], "a probe or temporary object was left behind"
    assert not list((cache_dir() / "staging").glob(".staging-*")), "the local staging folder was left behind"

    item = assert_every_link_resolves(published.catalog)
    assert item.properties["allspark:config"]["output_dir"] == f"s3://{BUCKET}/maps"
    for name in ("classmap", "probabilities"):
        assert cog_validate(f"/vsis3/{key(item.assets[name].get_absolute_href())}", quiet=True)[0], name
    fs.get(key(location), str(tmp_path / "copy"), recursive=True)
    assert len(validate_catalog(tmp_path / "copy" / "catalog.json")) == 2  # the entry catalog and the item

    _, local = local_run
    for name in ("classmap", "probabilities"):
        with (rasterio.open(f"/vsis3/{key(published.paths[name])}") as remote,
              rasterio.open(local.paths[name]) as wanted):
            assert str(remote.profile) == str(wanted.profile)  # nodata may be NaN, which equals nothing
            np.testing.assert_allclose(remote.read(), wanted.read(), atol=1e-6)
    chips = gpd.read_parquet(key(published.paths["chips"]), filesystem=fs)
    wanted = gpd.read_parquet(local.paths["chips"])
    assert len(chips) == 23 * 23 == len(wanted)
    columns = ["chip_row", "chip_col", "predicted_class", "class_value", "source_item_ids"]
    assert chips[columns].equals(wanted[columns]) and chips.geometry.geom_equals(wanted.geometry).all()
    np.testing.assert_allclose(chips["score"], wanted["score"], atol=1e-6)
    assert json.loads(fs.cat_file(key(published.paths["metrics"])))["class_area_m2"] == \
        json.loads(Path(local.paths["metrics"]).read_text())["class_area_m2"]


def test_a_rerun_switches_the_entry_catalog_and_keeps_the_previous_set_only(s3, bucket_run):
    config, _ = bucket_run
    location = config.publish_location
    first = entry_version(s3, location)
    second = run_pipeline(steps, config)
    assert entry_version(s3, location) > first and second.catalog == f"{location}/catalog.json"
    assert versions(s3, location) == [first, entry_version(s3, location)]
    run_pipeline(steps, config)
    assert versions(s3, location) == [second.paths["classmap"].split("/")[-2], entry_version(s3, location)]
    assert_every_link_resolves(f"{location}/catalog.json")


def test_a_publish_killed_mid_upload_leaves_the_previous_set(s3, bucket_run, monkeypatch):
    config, _ = bucket_run
    location = config.publish_location
    fs = s3.filesystem()
    entry = fs.cat_file(key(f"{location}/catalog.json"))
    shown, before = entry_version(s3, location), versions(s3, location)
    upload, uploaded = location_module.upload, []

    def dies_at_the_fourth_object(source, url):
        if len(uploaded) == 3:
            raise ConnectionError("the flow process died while uploading")
        upload(source, url)
        uploaded.append(url)

    monkeypatch.setattr(location_module, "upload", dies_at_the_fourth_object)
    with pytest.raises(ConnectionError, match="died while uploading"):
        run_pipeline(steps, config)
    (partial,) = set(versions(s3, location)) - set(before)
    assert len(fs.find(key(f"{location}/runs/{partial}"))) == 3, "the partial upload is not what was sent"
    assert fs.cat_file(key(f"{location}/catalog.json")) == entry, "the entry catalog changed"
    item = assert_every_link_resolves(f"{location}/catalog.json")
    assert cog_validate(f"/vsis3/{key(item.assets['classmap'].get_absolute_href())}", quiet=True)[0]

    monkeypatch.undo()
    run_pipeline(steps, config)  # the next publish sweeps the partial set
    assert versions(s3, location) == [shown, entry_version(s3, location)] and partial not in versions(s3, location)


# -- a file-driven flow and a backfill ------------------------------------------------------------


def test_sensors_flow_publishes_to_the_bucket(s3, prefect_server):
    from flows.files import run_file_flow

    config = sensors_config(f"s3://{BUCKET}/tables")
    published = run_file_flow(config)
    assert published.catalog == f"s3://{BUCKET}/tables/test-sensors/catalog.json"
    item = assert_every_link_resolves(published.catalog)
    table = gpd.read_parquet(key(published.paths["predictions"]), filesystem=s3.filesystem())
    assert len(table) == 2 * 240 == item.assets["predictions"].extra_fields["table:row_count"]
    assert table.groupby("station").size().to_dict() == {"Aotizhongxin": 240, "Dingling": 240}
    assert table["PM2.5_predicted"].notna().all()


@pytest.fixture(scope="module")
def aoi(catalog, tmp_path_factory) -> Path:
    return crop_aoi(catalog, tmp_path_factory.mktemp("aoi") / "crop.geojson")


def test_a_backfill_rerun_skips_the_windows_already_on_the_bucket(s3, catalog, checkpoint, aoi, threads_cluster,
                                                                  prefect_server):
    from flows.backfill import run_backfill

    base = region_config(catalog, checkpoint, f"s3://{BUCKET}/backfills", dask_address=threads_cluster)
    parameters = {"aois": [str(aoi)], "start": D(2000, 11, 1), "end": D(2000, 12, 31), "config": base,
                  "name": "nc"}
    first = run_backfill(**parameters)
    assert [w["status"] for w in first["windows"]] == ["published", "published"]
    root = f"s3://{BUCKET}/backfills/nc"
    assert first["root"] == root and first["catalog"] == f"{root}/catalog.json"
    children = [link.href for link in read_catalog(first["catalog"]).links if link.rel == "child"]
    assert children == ["./crop-2000-11-01_2000-11-30/catalog.json", "./crop-2000-12-01_2000-12-31/catalog.json"]
    assert len(list(read_catalog(first["catalog"]).get_items(recursive=True))) == 2
    report = json.loads(s3.filesystem().cat_file(key(first["report"]["json"])))
    assert report["counts"]["published"] == 2

    fs = s3.filesystem()
    catalogs = [w["detail"] for w in first["windows"]]
    stamps = [fs.info(key(c))["LastModified"] for c in catalogs]
    objects = sorted(fs.find(key(root)))
    again = run_backfill(**parameters)
    assert [w["status"] for w in again["windows"]] == ["skipped", "skipped"]
    assert [w["detail"] for w in again["windows"]] == catalogs
    assert [fs.info(key(c))["LastModified"] for c in catalogs] == stamps, "a published window was written again"
    assert sorted(fs.find(key(root))) == objects

    # Published means: the entry catalog's item carries this config and every asset it links is on the bucket.
    job = backfill.plan_backfill(base, [str(aoi)], D(2000, 11, 1), D(2000, 11, 30), "monthly", name="nc")[0]
    assert steps.published_catalog(job.config) == catalogs[0]
    assert steps.published_catalog(job.config.model_copy(update={"inference_batch": 7})) is None
    (item,) = read_catalog(catalogs[0]).get_items()
    fs.rm_file(key(item.assets["probabilities"].get_absolute_href()))
    assert steps.published_catalog(job.config) is None


# -- bad storage ----------------------------------------------------------------------------------


def test_a_backfill_to_an_unknown_bucket_stops_before_any_window(s3, catalog, checkpoint, aoi, prefect_server):
    from flows.backfill import run_backfill

    base = region_config(catalog, checkpoint, "s3://no-such-bucket/backfills")
    with pytest.raises(StorageError, match="cannot write s3://no-such-bucket/backfills/nc: the bucket 'no-such-bucket'"):
        run_backfill(aois=[str(aoi)], start=D(2000, 11, 1), end=D(2000, 11, 30), config=base, name="nc")


def unknown_bucket(s3, monkeypatch, tmp_path) -> tuple[str, str]:
    return "s3://no-such-bucket/maps", "the bucket 'no-such-bucket' does not exist; create it"


def missing_credentials(s3, monkeypatch, tmp_path) -> tuple[str, str]:
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.delenv(name)
    for name, value in object_store.empty_aws_profiles(tmp_path).items():
        monkeypatch.setenv(name, value)
    return f"s3://{BUCKET}/no-credentials", "no s3:// credentials found .*AWS_ACCESS_KEY_ID"


def read_only_bucket(s3, monkeypatch, tmp_path) -> tuple[str, str]:
    return s3.create_read_only_bucket("read-only-maps") + "/maps", "the storage refused .* read-only"


@pytest.mark.parametrize("storage", [unknown_bucket, missing_credentials, read_only_bucket])
def test_bad_storage_is_refused_before_any_work(s3, catalog, checkpoint, storage, monkeypatch, tmp_path):
    output_dir, reason = storage(s3, monkeypatch, tmp_path)
    config = region_config(catalog, checkpoint, output_dir, name="refused")
    with pytest.raises(StorageError, match=f"cannot write {config.publish_location}: {reason}"):
        steps.ingest(config)
    assert not list(work_root().glob("refused-*")), "work was done despite the error"
    monkeypatch.undo()
    assert not [p for p in s3.filesystem().find(BUCKET) if "refused" in p or "no-credentials" in p]


def test_unsupported_urls_and_missing_packages_are_named(catalog, tmp_path):
    with pytest.raises(StorageError, match=r"cannot use ftp://x/y: the scheme ftp:// is not supported .*s3://"):
        quick_config(catalog, "ftp://x/y")
    with pytest.raises(StorageError, match="names no bucket"):
        parse_location("s3:///maps")
    assert parse_location(f"file://{tmp_path}/maps") == tmp_path / "maps"
    assert parse_location("s3://bucket/maps/") == "s3://bucket/maps"
    if importlib.util.find_spec("gcsfs") is None:
        with pytest.raises(StorageError, match="gs:// URLs need the package gcsfs: pip install gcsfs"):
            check_storage("gs://bucket/maps")


def test_the_command_refuses_an_unknown_bucket_in_one_line(s3, tmp_path, capsys):
    from flows.cli import main

    config = tmp_path / "sensors.yaml"
    config.write_text(yaml.safe_dump(sensors_config(tmp_path).model_dump(mode="json", exclude={"output_dir"})))
    assert main(["run", "sensors", "--config", str(config), "--output-dir", "s3://no-such-bucket/maps"]) == 2
    assert capsys.readouterr().err.strip() == (
        "allspark: error: cannot write s3://no-such-bucket/maps/test-sensors: the bucket 'no-such-bucket' does not "
        "exist; create it or correct the URL")


# -- a lock across machines -----------------------------------------------------------------------

HOLD_LOCK = """
import sys, time
from allspark.core.storage import folder_lock
with folder_lock(sys.argv[1], on_wait=lambda message: print("WAITED", flush=True)):
    print("IN", time.time(), flush=True)
    time.sleep(3)
    print("OUT", time.time(), flush=True)
"""


def test_two_machines_writing_one_bucket_folder_take_turns(s3, tmp_path):
    """Two processes with caches of their own (so no shared lock file, as on two machines) lock one folder on the bucket."""
    folder = f"s3://{BUCKET}/contended"
    runs = [subprocess.Popen([sys.executable, "-c", HOLD_LOCK, folder], stdout=subprocess.PIPE, text=True,
                             env={**os.environ, "ALLSPARK_CACHE": str(tmp_path / f"machine-{i}")})
            for i in range(2)]
    outputs = [run.communicate(timeout=120)[0] for run in runs]
    assert [run.returncode for run in runs] == [0, 0], outputs
    spans = sorted([float(line.split()[1]) for line in out.splitlines() if line.split()[0] in ("IN", "OUT")]
                   for out in outputs)
    assert spans[0][1] <= spans[1][0], f"both held the lock at once: {spans}"
    assert sum("WAITED" in out for out in outputs) == 1
    assert not s3.filesystem().exists(key(f"{folder}/{LOCK_OBJECT}")), "the lock object was left"


def test_a_lock_whose_holder_died_is_taken_over_after_its_lease(s3):
    folder = f"s3://{BUCKET}/abandoned"
    lock = key(f"{folder}/{LOCK_OBJECT}")
    s3.filesystem().pipe_file(lock, json.dumps({"owner": "gone:1:x", "expires": time.time() - 1}).encode())
    waited = []
    with folder_lock(folder, on_wait=waited.append):
        assert json.loads(s3.filesystem().cat_file(lock))["owner"] != "gone:1:x"
    assert not waited and not s3.filesystem().exists(lock)

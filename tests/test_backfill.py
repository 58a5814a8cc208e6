"""Backfills: windows and jobs, skipping through the output STAC catalog, resume, the concurrency bound,
the summary, and two backfills of the same window at once, on the small real catalog.

The catalog's one Landsat item spans the year 2000, so monthly windows in 2000 have imagery and
windows in 2001 are empty. Every window applies one quickly fine-tuned checkpoint.
"""

from __future__ import annotations

import datetime as dt
import json
import shutil
import threading
from collections import Counter
from pathlib import Path

import geopandas as gpd
import pystac
import pytest
from rio_cogeo.cogeo import cog_validate

from allspark.errors import ConfigError
from allspark.raster.catalog import AOIError
from allspark.region import backfill, steps
from allspark.region.config import RegionConfig
from allspark.settings import aois_dir
from tests.conftest import shared_data
from tests.regions import crop_aoi, quick_checkpoint, quick_config, small_catalog
from tests.stac_schemas import validate_catalog

D = dt.date


# -- windows and jobs ----------------------------------------------------------------------------


def labels(windows: list[backfill.Window]) -> list[str]:
    return [w.label for w in windows]


def test_windows_cover_the_range_with_the_step():
    assert labels(backfill.date_windows(D(2000, 1, 31), D(2000, 5, 3), "monthly")) == [
        "2000-01-31_2000-02-28", "2000-02-29_2000-03-30", "2000-03-31_2000-04-29", "2000-04-30_2000-05-03"]
    assert labels(backfill.date_windows(D(2000, 1, 1), D(2000, 1, 20), "weekly")) == [
        "2000-01-01_2000-01-07", "2000-01-08_2000-01-14", "2000-01-15_2000-01-20"]
    assert backfill.date_windows(D(2000, 1, 1), D(2000, 3, 1), "P14D")[1].label == "2000-01-15_2000-01-28"
    assert labels(backfill.date_windows(D(2000, 1, 1), D(2001, 12, 31), "yearly")) == [
        "2000-01-01_2000-12-31", "2001-01-01_2001-12-31"]
    assert labels(backfill.date_windows(D(2000, 1, 1), D(2000, 1, 1), "P1Y6M")) == ["2000-01-01_2000-01-01"]
    assert backfill.parse_step("quarterly") == backfill.Step(months=3, days=0) == backfill.parse_step("p3m")
    assert backfill.parse_step("P1Y2M1W3D") == backfill.Step(months=14, days=10)
    for bad in ("fortnightly", "P", "PT1H", "P0D"):
        with pytest.raises(ValueError, match=f"step '{bad}'"):
            backfill.parse_step(bad)
    with pytest.raises(ValueError, match="ends .2000-01-01. before it starts .2000-02-01."):
        backfill.date_windows(D(2000, 2, 1), D(2000, 1, 1), "monthly")


def test_jobs_have_deterministic_names_and_full_configs(tmp_path):
    base = RegionConfig(output_dir=tmp_path)
    jobs = backfill.plan_backfill(base, ["south-labelled"], D(2000, 1, 1), D(2000, 2, 15), "monthly", name="nc")
    assert [job.config.name for job in jobs] == ["south-labelled-2000-01-01_2000-01-31",
                                                 "south-labelled-2000-02-01_2000-02-15"]
    assert jobs[1].config.datetime == ("2000-02-01", "2000-02-15")
    assert jobs[1].config.publish_dir == tmp_path / "nc" / "south-labelled-2000-02-01_2000-02-15"
    assert Path(jobs[0].config.aoi) == (aois_dir() / "south-labelled.geojson").resolve()
    assert jobs[0].config.model_dump(exclude={"name", "aoi", "datetime", "output_dir"}) == base.model_dump(
        exclude={"name", "aoi", "datetime", "output_dir"})
    again = backfill.plan_backfill(base, ["south-labelled"], D(2000, 1, 1), D(2000, 2, 15), "monthly", name="nc")
    assert [j.config.fingerprint() for j in again] == [j.config.fingerprint() for j in jobs]
    with pytest.raises(AOIError, match="'atlantis' is neither a GeoJSON file nor a named AOI .*south-labelled"):
        backfill.plan_backfill(base, ["atlantis"], D(2000, 1, 1), D(2000, 2, 1), "monthly")
    with pytest.raises(ConfigError, match="must be letters"):
        backfill.plan_backfill(base, ["south-labelled"], D(2000, 1, 1), D(2000, 2, 1), "monthly", name="a/b")


# -- on the small real catalog -------------------------------------------------------------------


@pytest.fixture(scope="module")
def catalog(tmp_path_factory):
    return small_catalog(shared_data("landsat7_nc_labeled"), tmp_path_factory.mktemp("backfill-catalog"))


@pytest.fixture(scope="module")
def aoi(catalog, tmp_path_factory) -> Path:
    return crop_aoi(catalog, tmp_path_factory.mktemp("aoi") / "crop.geojson")


@pytest.fixture(scope="module")
def checkpoint(catalog, tmp_path_factory) -> str:
    return str(quick_checkpoint(catalog, tmp_path_factory.mktemp("unused"), "backfill-train"))


def base_config(catalog, checkpoint, output_dir: Path, **changes) -> RegionConfig:
    return quick_config(catalog, output_dir, checkpoint=checkpoint, train=None, **changes)


@pytest.fixture(scope="module")
def first_backfill(catalog, aoi, checkpoint, tmp_path_factory, prefect_server):
    """Oct 2000 - Jan 2001, monthly, 2 at a time, on the Dask cluster the backfill starts itself."""
    from flows.backfill import run_backfill

    base = base_config(catalog, checkpoint, tmp_path_factory.mktemp("outputs"))
    parameters = {"aois": [str(aoi)], "start": D(2000, 10, 1), "end": D(2001, 1, 31), "step": "monthly",
                  "config": base, "concurrency": 2}
    return parameters, run_backfill(**parameters)


def test_summary_says_what_ran_and_what_was_empty(first_backfill):
    _, summary = first_backfill
    assert [(w["start"], w["status"]) for w in summary["windows"]] == [
        ("2000-10-01", "published"), ("2000-11-01", "published"), ("2000-12-01", "published"),
        ("2001-01-01", "empty")]
    assert summary["counts"] == {"published": 3, "skipped": 0, "empty": 1, "failed": 0}
    assert "no imagery items" in summary["windows"][3]["detail"] and "2001-01-01" in summary["windows"][3]["detail"]
    assert summary["windows"][0]["detail"].endswith("crop-2000-10-01_2000-10-31/catalog.json")
    assert "| crop | 2000-12-01 to 2000-12-31 | published |" in summary["table"]
    assert summary["table"].endswith("4 window(s): 3 published, 0 skipped, 1 empty, 0 failed")
    report = json.loads(Path(summary["report"]["json"]).read_text())
    assert report["counts"] == summary["counts"] and len(report["windows"]) == 4
    assert report["settings"]["step"] == "monthly" and report["settings"]["concurrency"] == 2
    assert summary["table"] in Path(summary["report"]["markdown"]).read_text()


def test_each_window_is_published_and_one_root_catalog_links_them(first_backfill):
    _, summary = first_backfill
    root = Path(summary["root"])
    items = list(pystac.Catalog.from_file(summary["catalog"]).get_items(recursive=True))
    assert sorted(item.id for item in items) == [f"crop-2000-{m}-01_2000-{m}-{d}-landcover"
                                                 for m, d in (("10", "31"), ("11", "30"), ("12", "31"))]
    for item in items:
        for key, asset in item.assets.items():
            assert Path(asset.get_absolute_href()).exists(), f"{item.id}: asset {key} link does not resolve"
        assert len(gpd.read_parquet(item.assets["chips"].get_absolute_href())) == 23 * 23
    assert cog_validate(items[0].assets["classmap"].get_absolute_href(), quiet=True)[0]
    stored = [item.properties["allspark:config"] for item in items]
    assert {c["datetime"][0] for c in stored} == {"2000-10-01", "2000-11-01", "2000-12-01"}
    addresses = {c["dask_address"] for c in stored}
    assert len(addresses) == 1 and None not in addresses, f"windows did not share one Dask cluster: {addresses}"
    assert not (root / "crop-2001-01-01_2001-01-31").exists(), "an empty window left a folder"
    assert not [p for p in root.rglob(".*")], "temporary files left behind"
    assert len(validate_catalog(summary["catalog"])) == 1 + 3 * 2  # the root, each window's catalog and item


def test_no_more_windows_run_at_once_than_the_concurrency(first_backfill):
    _, summary = first_backfill
    spans = [(dt.datetime.fromisoformat(w["started"]), dt.datetime.fromisoformat(w["finished"]))
             for w in summary["windows"]]
    overlapping = max(sum(start <= moment < end for start, end in spans) for moment, _ in spans)
    assert overlapping == 2, spans  # 2 at a time: never 3, and the first two did run together


def test_a_rerun_skips_what_the_catalogs_say_is_published(first_backfill):
    from flows.backfill import run_backfill

    parameters, first = first_backfill
    catalogs = [Path(w["detail"]) for w in first["windows"] if w["status"] == "published"]
    stamps = [p.stat().st_mtime_ns for p in catalogs]
    again = run_backfill(**parameters)
    assert [w["status"] for w in again["windows"]] == ["skipped", "skipped", "skipped", "empty"]
    assert [p.stat().st_mtime_ns for p in catalogs] == stamps, "a published window was written again"

    # Published means: the catalog's item carries this config and every asset it links exists.
    job = backfill.plan_backfill(parameters["config"], parameters["aois"], D(2000, 10, 1), D(2000, 10, 31),
                                 "monthly")[0]
    assert steps.published_catalog(job.config) == catalogs[0]
    assert steps.published_catalog(job.config.model_copy(update={"inference_batch": 7})) is None
    assert steps.published_catalog(job.config.model_copy(update={"dask_address": "tcp://elsewhere:8786"}))


def test_published_needs_every_asset(first_backfill, tmp_path):
    parameters, _ = first_backfill
    job = backfill.plan_backfill(parameters["config"], parameters["aois"], D(2000, 11, 1), D(2000, 11, 30),
                                 "monthly")[0]
    copy = tmp_path / job.config.name
    shutil.copytree(job.config.publish_dir, copy)
    moved = job.config.model_copy(update={"output_dir": tmp_path})
    assert steps.published_catalog(moved) == copy / "catalog.json"
    (copy / "probabilities.tif").unlink()
    assert steps.published_catalog(moved) is None


@pytest.mark.usefixtures("prefect_server")
def test_a_backfill_stopped_by_a_failure_resumes_with_the_missing_window_only(
    catalog, aoi, checkpoint, threads_cluster, tmp_path
):
    from flows.backfill import run_backfill

    base = base_config(catalog, checkpoint, tmp_path, dask_address=threads_cluster)
    parameters = {"aois": [str(aoi)], "start": D(2000, 11, 1), "end": D(2000, 12, 31), "config": base,
                  "name": "resume", "concurrency": 2, "retries": 1}
    blocker = tmp_path / "resume" / "crop-2000-12-01_2000-12-31"
    blocker.parent.mkdir()
    blocker.write_text("not a folder")  # December cannot be written: it fails, twice (one retry)

    first = run_backfill(**parameters)
    assert [w["status"] for w in first["windows"]] == ["published", "failed"]
    failure = first["windows"][1]["detail"]
    assert failure.startswith("StorageError") and str(blocker) in failure and "not a folder" in failure
    assert "| crop | 2000-12-01 to 2000-12-31 | failed |" in first["table"]
    report = json.loads(Path(first["report"]["json"]).read_text())
    assert report["counts"]["failed"] == 1 and report["windows"][1]["detail"] == failure
    assert _window_run_counts() == {"crop-2000-11-01_2000-11-30": 1, "crop-2000-12-01_2000-12-31": 2}

    november = Path(first["windows"][0]["detail"])
    stamp = november.stat().st_mtime_ns
    blocker.unlink()
    second = run_backfill(**parameters)
    assert [w["status"] for w in second["windows"]] == ["skipped", "published"]
    assert november.stat().st_mtime_ns == stamp
    assert len(list(pystac.Catalog.from_file(second["catalog"]).get_items(recursive=True))) == 2


def _window_run_counts() -> dict[str, int]:
    """Region runs per window in the latest backfill flow run: 1 + the retries of its window task."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        FlowFilter,
        FlowFilterName,
        FlowRunFilter,
        FlowRunFilterId,
        FlowRunFilterParentTaskRunId,
    )
    from prefect.client.schemas.sorting import FlowRunSort

    with get_client(sync_client=True) as client:
        (backfill_run,) = client.read_flow_runs(flow_filter=FlowFilter(name=FlowFilterName(any_=["backfill"])),
                                                sort=FlowRunSort.START_TIME_DESC, limit=1)
        windows = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[backfill_run.id])))
        region_runs = client.read_flow_runs(flow_run_filter=FlowRunFilter(
            parent_task_run_id=FlowRunFilterParentTaskRunId(any_=[window.id for window in windows])))
    return dict(Counter(run.name for run in region_runs))


@pytest.mark.usefixtures("prefect_server")
def test_two_backfills_of_the_same_window_at_once_publish_it_once(catalog, aoi, checkpoint, threads_cluster,
                                                                   tmp_path):
    from flows.backfill import run_backfill

    base = base_config(catalog, checkpoint, tmp_path, dask_address=threads_cluster)
    parameters = {"aois": [str(aoi)], "start": D(2000, 12, 1), "end": D(2000, 12, 31), "config": base,
                  "name": "twice"}
    start, summaries = threading.Barrier(2), []

    def run():
        start.wait()
        summaries.append(run_backfill(**parameters))

    threads = [threading.Thread(target=run) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    results = sorted((s["windows"][0] for s in summaries), key=lambda w: w["status"])
    assert [w["status"] for w in results] == ["published", "skipped"], results
    published, skipped = results
    assert skipped["detail"] == published["detail"]
    out = Path(published["detail"]).parent
    (item,) = pystac.Catalog.from_file(published["detail"]).get_items()
    assert item.id == "crop-2000-12-01_2000-12-31-landcover"
    for key, asset in item.assets.items():
        assert Path(asset.get_absolute_href()).exists(), f"asset {key} link does not resolve"
    assert cog_validate(str(out / "classmap.tif"), quiet=True)[0]
    assert len(gpd.read_parquet(out / "chips.parquet")) == 23 * 23
    assert sorted(p.name for p in out.iterdir()) == sorted(["catalog.json", "chips.parquet", "classmap.tif", "config.yaml",
                                                            "current", item.id, "metrics.json", "model",
                                                            "probabilities.tif", "quicklook.png", "runs"])
    assert len(list((out / "runs").iterdir())) == 1, "published twice"

"""The deployments on a real Prefect server on 127.0.0.1, started as `make serve` starts it (flows/serve.py):
registration, a manual and a scheduled run, and the crashes a worker must survive (a worker killed in
the middle of inference, a flow run killed while publishing).

The test deployments map an AOI of the small real catalog (tests/regions.py) with the entry flow of
the region deployments; the manual run searches it through a real STAC API (stac-fastapi-pgstac,
flows/stac_api.py). Runs that should not crash use one Dask cluster of this process (the
deployments' ``dask_address``), whose worker keeps the model loaded from run to run; the run killed
during inference starts its own cluster, as the deployments do by default, and dies with it.
"""

from __future__ import annotations

import os
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import yaml
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import (
    DeploymentFilter,
    DeploymentFilterName,
    FlowRunFilter,
    FlowRunFilterId,
    FlowRunFilterParentFlowRunId,
    TaskRunFilter,
    TaskRunFilterName,
)
from prefect.deployments import run_deployment
from prefect.schedules import Interval

from allspark.core.config import load_config
from allspark.pipelines import get_kind
from allspark.raster.scene import open_scene
from allspark.region.config import RegionConfig
from allspark.settings import deployments_dir
from flows.deployments import (
    AOI_DIR,
    REGION_ENTRYPOINT,
    WEEKLY,
    Deployment,
    aoi_name,
    register,
)
from flows.serve import WORK_POOL, free_port
from flows.stac_api import local_stac_api
from tests.conftest import shared_data
from tests.regions import quick_config, small_catalog
from tests.serving import (
    Served,
    aoi_file,
    assert_complete_if_visible,
    assert_published,
    kill_tree,
    wait_until,
)

CHIPS = {"size": 8, "overlap": 4, "block": 16}  # 16-pixel blocks: a few dozen inference tasks over the AOI


@pytest.fixture(scope="module")
def catalog_dir(tmp_path_factory) -> Path:
    work = tmp_path_factory.mktemp("small-catalog")
    small_catalog(shared_data("landsat7_nc_labeled"), work)
    return work


@pytest.fixture(scope="module")
def outputs(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("outputs")


@pytest.fixture(scope="module")
def served(tmp_path_factory, private_cache):
    """`make serve` with its schedules paused: server, work pool, the project's deployments, a worker."""
    home = tmp_path_factory.mktemp("prefect-serve")
    env = {key: value for key, value in os.environ.items() if key != "PREFECT_API_URL"} | {
        "PREFECT_HOME": str(home),
        "PREFECT_UI_ENABLED": "false",  # no dashboard to serve
        "PREFECT_WORKER_QUERY_SECONDS": "1",  # pick up new runs within a second (default 10)
        "PREFECT_SERVER_SERVICES_SCHEDULER_LOOP_SECONDS": "5",  # the real scheduler service, looping faster
    }
    served = Served(home, free_port(), env)
    try:
        served.command("start", "--port", str(served.port), "--paused")
        yield served
    finally:
        print(served.command("stop"))  # the worker (and any flow run of it) first, then the server


@pytest.fixture(scope="module")
def dask_address():
    from distributed import LocalCluster

    with LocalCluster(n_workers=1, threads_per_worker=1, host="127.0.0.1", dashboard_address=None) as cluster:
        yield cluster.scheduler_address


def deploy(served: Served, catalog_dir: Path, outputs: Path, name: str, schedule=WEEKLY, paused=True,
           **changes) -> str:
    """Register a region-aoi deployment of the small catalog (or ``catalog=`` another config of it) mapping an AOI
    into ``outputs/name``."""
    config = quick_config(changes.pop("catalog", catalog_dir / "catalog.yaml"), outputs, chips=CHIPS, **changes)
    aoi = aoi_file(catalog_dir, name, outputs / f"{name}.geojson")
    deployment = Deployment(REGION_ENTRYPOINT, name, schedule,
                            {"config": config.model_dump(mode="json"), "aoi": str(aoi), "name": name}, "test")
    with served.api():
        (full_name,) = register([deployment], paused=paused)
    return full_name


def run(served: Served, name: str, wait: bool = True):
    """Trigger a run of the deployment (`prefect deployment run NAME`); wait for its end if ``wait``."""
    with served.api():
        return run_deployment(name, timeout=600 if wait else 0, poll_interval=1)


def predict_task_runs(served: Served, flow_run_id) -> int:
    """Inference tasks completed under a flow run (by its region subflow)."""
    with served.api(), get_client(sync_client=True) as client:
        subflows = client.read_flow_runs(flow_run_filter=FlowRunFilter(
            parent_flow_run_id=FlowRunFilterParentFlowRunId(any_=[flow_run_id])))
        runs = client.read_task_runs(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id, *(r.id for r in subflows)])),
            task_run_filter=TaskRunFilter(name=TaskRunFilterName(like_="predict")),
        )
    return sum(r.state is not None and r.state.is_completed() for r in runs)


@pytest.fixture(scope="module", autouse=True)
def scheduled(catalog_dir, outputs, served, dask_address):
    """A deployment whose hourly schedule first fires 20 s after registration (registered when this
    module starts, so that its run goes on while the manual run does); its name and that time."""
    first = datetime.now(UTC).replace(microsecond=0) + timedelta(seconds=20)
    name = deploy(served, catalog_dir, outputs, "scheduled", schedule=Interval(3600, anchor_date=first),
                  paused=False, dask_address=dask_address)
    return name, first


def test_serve_registers_the_deployments_and_starts_once(served):
    expected = {f"region-aoi/{aoi_name(path)}": (WEEKLY.cron, f"deployments/aois/{path.name}")
                for path in sorted(AOI_DIR.glob("*.geojson"))}
    assert len(expected) >= 2
    with served.api(), get_client(sync_client=True) as client:
        for name, (cron, aoi) in expected.items():
            deployment = client.read_deployment_by_name(name)
            assert deployment.work_pool_name == WORK_POOL and deployment.paused
            assert deployment.schedules[0].schedule.cron == cron
            assert deployment.parameters["aoi"] == aoi and deployment.parameters["name"] == name.split("/")[1]
            config = RegionConfig.model_validate(deployment.parameters["config"])
            assert config.aoi is None and config.train is not None  # fine-tuned once on the whole catalog
        for kind, cron in (("sensors", "0 * * * *"), ("trajectories", "0 3 * * *")):
            spec = get_kind(kind)
            config = load_config(spec.config_class(), deployments_dir() / spec.example)
            deployment = client.read_deployment_by_name(f"files/{config.name}")  # the one file flow, per kind
            assert deployment.schedules[0].schedule.cron == cron and deployment.work_pool_name == WORK_POOL
            assert deployment.parameters["kind"] == kind
            assert spec.config_class().model_validate(deployment.parameters["config"]) == config
        assert any(w.status.value == "ONLINE" for w in client.read_workers_for_work_pool(WORK_POOL))
    running = {role: served.state(role)["pid"] for role in ("server", "worker")}
    served.start_again()
    assert {role: served.state(role)["pid"] for role in ("server", "worker")} == running, "started twice"
    assert all(served.process(role).is_running() for role in running)


@pytest.fixture(scope="module")
def catalog_api(catalog_dir: Path, tmp_path_factory) -> Path:
    """The small catalog (its image and label item) served by a real STAC API (flows/stac_api.py): the catalog
    config of a deployment that searches it as users search Planetary Computer."""
    static = yaml.safe_load((catalog_dir / "catalog.yaml").read_text())
    with local_stac_api([Path(static["url_or_path"])]) as url:
        path = tmp_path_factory.mktemp("api") / "catalog-api.yaml"
        path.write_text(yaml.safe_dump({**static, "kind": "api", "url_or_path": url}))
        yield path


def test_manual_run_of_a_region_deployment_against_a_stac_api(served, catalog_dir, catalog_api, outputs,
                                                              dask_address):
    name = deploy(served, catalog_dir, outputs, "manual", dask_address=dask_address, catalog=str(catalog_api))
    flow_run = run(served, name)
    assert flow_run.state.is_completed(), f"{flow_run.state}\n{served.log()}"
    metrics = assert_published(outputs / "manual")
    assert metrics["fine_tuning"]["label_item"] == "landsat96-labels"  # found through the API and its source link
    # The model was fine-tuned on the whole (cropped) catalog; the AOI's map is scored on the held-out
    # pixels inside the AOI only.
    assert 0 < metrics["map_holdout"]["n"] < metrics["fine_tuning"]["holdout"]["n"]


def test_a_scheduled_run_fires_and_completes(served, scheduled, outputs):
    name, first = scheduled

    def scheduled_runs():
        with served.api(), get_client(sync_client=True) as client:
            return client.read_flow_runs(deployment_filter=DeploymentFilter(
                name=DeploymentFilterName(any_=[name.split("/")[1]])))

    # The scheduler creates the next few runs (the others an hour apart); the first is due now.
    flow_run = min(wait_until(scheduled_runs, 120, "the scheduler to create the run", poll=1),
                   key=lambda r: r.expected_start_time)
    assert flow_run.auto_scheduled, "the run was not created by the server's scheduler"
    assert flow_run.expected_start_time == first
    finished = served.wait_for_state(flow_run.id, {"Completed"}, timeout=400)
    assert finished.start_time >= first - timedelta(seconds=1)
    assert_published(outputs / "scheduled")


def test_worker_killed_during_inference_then_a_rerun_resumes_and_completes(served, catalog_dir, outputs):
    # No dask_address: the run starts its own Dask cluster, one worker, which dies with it.
    name = deploy(served, catalog_dir, outputs, "killed-inference", n_workers=1)
    first = run(served, name, wait=False)
    work = Path(os.environ["ALLSPARK_CACHE"]) / "work"

    def blocks_done():
        stores = list(work.glob("killed-inference-*/predictions-*.zarr"))
        return stores[0] if stores and list((stores[0] / "blocks").glob("*.parquet")) else None

    store = wait_until(blocks_done, 400, "the first inference task to finish")
    kill_tree(served.process("worker"))  # the worker, its flow run and the run's Dask processes
    n_blocks = len(open_scene(store.parent / "scene.zarr")[0].blocks())
    done = len(list((store / "blocks").glob("*.parquet")))
    assert n_blocks >= 16, n_blocks
    assert 0 < done < n_blocks, f"inference was not under way at the kill: {done} of {n_blocks} done"
    assert served.flow_run(first.id).state.name == "Running"  # nobody was left to report the crash

    server_pid = served.state("server")["pid"]
    served.start_again()  # `make serve` again: the same server, a new worker
    assert served.state("server")["pid"] == server_pid
    rerun = run(served, name)
    assert rerun.state.is_completed(), f"{rerun.state}\n{served.log()}"
    metrics = assert_published(outputs / "killed-inference")
    assert len(list((store / "blocks").glob("*.parquet"))) == n_blocks
    # The rerun predicted only the blocks the killed run had not finished.
    missing = n_blocks - done
    assert metrics["inference"]["blocks_predicted"] == missing and metrics["inference"]["blocks_done_before"] == done
    wait_until(lambda: predict_task_runs(served, rerun.id) >= missing, 30, "the rerun's task runs", poll=1)
    assert predict_task_runs(served, rerun.id) == missing


def test_flow_run_killed_while_publishing_leaves_no_partial_output(served, catalog_dir, outputs, dask_address):
    name = deploy(served, catalog_dir, outputs, "killed-publish", dask_address=dask_address)
    region_dir = outputs / "killed-publish"
    first = run(served, name, wait=False)
    wait_until(lambda: any((region_dir / "runs").glob(".*.partial/classmap.tif"))
               or (region_dir / "catalog.json").exists(), 400, "publishing to start", poll=0.02)
    kill_tree(served.process("worker"), include_root=False)  # the flow run's processes, not the worker
    assert not (region_dir / "catalog.json").exists(), "publishing had finished before the kill"
    assert assert_complete_if_visible(region_dir) == [], "a killed publish showed files"
    served.wait_for_state(first.id, {"Crashed"}, timeout=60)  # reported by the surviving worker

    rerun = run(served, name)
    assert rerun.state.is_completed(), f"{rerun.state}\n{served.log()}"
    assert_published(region_dir)

"""Surviving failure: a full or read-only disk stops every flow before work; a Dask worker dying mid-inference.

The storage checks need a genuinely read-only and a genuinely full file system: the tests mount a
small tmpfs for each (the suite runs as root here) and skip with the reason where mounting is not
allowed. A free-space estimate above what the disk has is tested without a mount.
"""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from pathlib import Path

import geopandas as gpd
import numpy as np
import pytest
import rasterio
from distributed.diagnostics.plugin import SchedulerPlugin

from allspark.core.bundle import bundle_digest
from allspark.core.storage import check_writable
from allspark.errors import StorageError
from allspark.raster.scene import open_scene, pending_blocks
from allspark.region import steps
from allspark.settings import work_root
from tests import file_flows
from tests.conftest import shared_data, task_states
from tests.regions import quick_checkpoint, quick_config, small_catalog


def _mount_tmpfs(folder: Path, options: str) -> str | None:
    """Mount a 1 MiB tmpfs on ``folder``; None on success, else why it could not be mounted."""
    folder.mkdir(parents=True, exist_ok=True)
    try:
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size=1m,{options}", "tmpfs", str(folder)],
                              check=False, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as err:
        return str(err)
    return None if done.returncode == 0 else (done.stderr.strip() or f"mount exited with {done.returncode}")


@pytest.fixture(scope="module")
def read_only_dir(tmp_path_factory):
    """A folder on a read-only file system (a tmpfs mounted read-only)."""
    folder = tmp_path_factory.mktemp("read-only")
    why = _mount_tmpfs(folder, "ro")
    if why is not None:
        pytest.skip(f"cannot mount a read-only tmpfs (needs root or CAP_SYS_ADMIN): {why}")
    yield folder
    subprocess.run(["umount", str(folder)], check=True)


@pytest.fixture(scope="module")
def full_dir(tmp_path_factory):
    """A folder on a file system with no space left (a 1 MiB tmpfs, filled)."""
    folder = tmp_path_factory.mktemp("full")
    why = _mount_tmpfs(folder, "rw")
    if why is not None:
        pytest.skip(f"cannot mount a tmpfs to fill (needs root or CAP_SYS_ADMIN): {why}")
    with open(folder / "filler", "wb") as filler, pytest.raises(OSError, match="No space left"):
        while True:
            filler.write(b"\0" * 65536)
            filler.flush()
            os.fsync(filler.fileno())
    yield folder
    subprocess.run(["umount", str(folder)], check=True)


@pytest.fixture(scope="module")
def catalog(tmp_path_factory):
    return small_catalog(shared_data("landsat7_nc_labeled"), tmp_path_factory.mktemp("failures-catalog"))


# -- storage checks, the library ---------------------------------------------------------------------


def test_check_writable_names_the_folder_and_creates_nothing(read_only_dir, full_dir, tmp_path):
    target = read_only_dir / "outputs" / "region"
    with pytest.raises(StorageError, match=r"Read-only file system \[EROFS\]") as error:
        check_writable(target)
    assert str(target) in str(error.value) and f"nearest existing parent {read_only_dir}" in str(error.value)
    with pytest.raises(StorageError, match=r"No space left on device \[ENOSPC\]") as error:
        check_writable(full_dir / "outputs")
    assert str(full_dir / "outputs") in str(error.value)
    fresh = tmp_path / "a" / "b"
    check_writable(fresh, min_free_bytes=1)
    assert not (tmp_path / "a").exists() and not list(tmp_path.iterdir()), "the check created something"


def test_an_estimate_above_the_free_space_is_refused(tmp_path):
    with pytest.raises(StorageError, match="not enough free space") as error:
        check_writable(tmp_path / "outputs", min_free_bytes=1 << 60)
    assert str(tmp_path / "outputs") in str(error.value)


# -- storage checks, each flow -----------------------------------------------------------------------


def _region_flow(catalog, output_dir, dask_address, **changes):
    from flows.region import run_region

    config = quick_config(catalog, output_dir, dask_address=dask_address, **changes)
    return config, lambda: run_region(config)


def _file_flow(kind: str, output_dir: Path, inputs: Path, name: str):
    from flows.files import run_file_flow

    if kind == "trajectories":
        config = file_flows.trajectories_config(file_flows.eth_slice(inputs), output_dir)
    elif kind == "sensors":
        config = file_flows.sensors_config(output_dir)
    else:
        config = file_flows.traffic_config(file_flows.traffic_slice(inputs), output_dir)
    config = config.model_copy(update={"name": name})  # no other test's work folder can share it
    return config, lambda: run_file_flow(config)


def _work_folders(config) -> list[Path]:
    """Work folders of runs named like ``config`` (a region's is keyed by its inputs too, found by ingest)."""
    return sorted(work_root().glob(f"{config.name}-*"))


FLOWS = ["region", "trajectories", "sensors", "traffic"]


@pytest.mark.usefixtures("prefect_server")
@pytest.mark.parametrize("flow", FLOWS)
@pytest.mark.parametrize("disk", ["read-only", "full"])
def test_every_flow_stops_before_work_on_a_read_only_or_full_output_disk(
    flow, disk, request, catalog, threads_cluster, tmp_path
):
    mount = request.getfixturevalue("read_only_dir" if disk == "read-only" else "full_dir")
    output_dir = mount / f"{flow}-outputs"
    if flow == "region":
        config, run = _region_flow(catalog, output_dir, threads_cluster, name=f"region-{disk}")
    else:
        config, run = _file_flow(flow, output_dir, tmp_path, name=f"{flow}-{disk}")
    with pytest.raises(StorageError) as error:
        run()
    message = str(error.value)
    assert str(config.publish_dir) in message, message
    assert ("Read-only file system" if disk == "read-only" else "No space left on device") in message
    assert not _work_folders(config), "work started before the check"


@pytest.mark.usefixtures("prefect_server")
def test_region_flow_checks_its_size_estimate_and_its_work_folder(catalog, threads_cluster, read_only_dir, tmp_path,
                                                                  monkeypatch):
    from flows.region import region_flow, task_runner

    # 1 cm pixels over the 2.7 km crop: ~10^10 pixels, far more than any disk here holds
    config = quick_config(catalog, tmp_path / "outputs", name="huge", resolution=0.01, dask_address=threads_cluster)
    state = region_flow.with_options(task_runner=task_runner(config))(config, return_state=True)
    error = state.result(raise_on_failure=False)
    assert isinstance(error, StorageError) and "not enough free space" in str(error) and "TiB" in str(error), error
    assert str(config.publish_dir) in str(error)
    assert task_states(state) == {"ingest": ["Failed"]}, "a step after the ingest check ran"
    assert not _work_folders(config) and not config.publish_dir.exists(), "the check wrote something"

    monkeypatch.setenv("ALLSPARK_CACHE", str(read_only_dir / "cache"))
    config, run = _region_flow(catalog, tmp_path / "outputs", threads_cluster, name="cache-read-only")
    with pytest.raises(StorageError, match="Read-only file system") as error:
        run()
    assert str(read_only_dir / "cache") in str(error.value)
    assert not (tmp_path / "outputs").exists()


# -- a Dask worker dies during inference ---------------------------------------------------------------


@pytest.fixture(scope="module")
def checkpoint(catalog, tmp_path_factory):
    """A quickly fine-tuned model bundle, so both runs apply the same model."""
    return quick_checkpoint(catalog, tmp_path_factory.mktemp("unused"), "failures-train")


def _is_predict(key) -> bool:
    """A Dask key of a block's inference task (Dask names a key after the submitted function, ``call_task``)."""
    from flows.region import call_task

    return str(key).startswith(call_task.fn.__name__)


def _blocks_done(store: Path) -> int:
    """Blocks of the probability store marked done (their chip table written)."""
    return len(list((store / "blocks").glob("*.parquet"))) if store.exists() else 0


def _kill_a_busy_worker(client, store: Path, stop: threading.Event) -> dict:
    """Once the probability store has a finished block, SIGKILL a worker process that is predicting a block."""
    while not stop.is_set():
        if _blocks_done(store):
            busy = {address: [key for key in keys if _is_predict(key)]
                    for address, keys in client.processing().items()}
            address = next((a for a, keys in busy.items() if keys), None)
            if address is not None:
                pid = client.run(os.getpid, workers=[address])[address]
                done = _blocks_done(store)
                os.kill(pid, signal.SIGKILL)
                return {"pid": pid, "address": address, "keys": busy[address], "blocks_done": done}
        time.sleep(0.05)
    return {}


class PredictTransitions(SchedulerPlugin):
    """Records the scheduler's state transitions of the predict tasks: (key, start, finish)."""

    def __init__(self):
        self.log = []

    def transition(self, key, start, finish, *args, **kwargs):
        if _is_predict(key):
            self.log.append((key, start, finish))


def _clean_run(config):
    """The same steps as the flow, uninterrupted and in this process: the reference result.

    With one torch thread, as on a Dask worker (the nanny sets OMP_NUM_THREADS=1), so that float
    sums run in the same order and the probabilities can be compared exactly.
    """
    import torch

    ingested = steps.ingest(config)
    trained = steps.train(config, ingested)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        predicted = steps.predict(config, ingested, trained)
    finally:
        torch.set_num_threads(threads)
    return steps.publish(config, ingested, trained, predicted)


def _chips(path: Path) -> gpd.GeoDataFrame:
    return gpd.read_parquet(path).sort_values(["chip_row", "chip_col"], ignore_index=True)


@pytest.mark.usefixtures("prefect_server")
def test_a_dask_worker_killed_during_inference_is_retried_and_the_result_equals_a_clean_run(
    catalog, checkpoint, tmp_path
):
    from distributed import Client, LocalCluster

    from flows.region import region_flow, task_runner

    # 16-pixel blocks: 36 inference tasks over the 96 x 96 crop, long enough to be hit
    common = {"chips": {"size": 8, "overlap": 4, "block": 16}, "inference_batch": 8, "checkpoint": str(checkpoint),
              "train": None}
    clean = _clean_run(quick_config(catalog, tmp_path / "clean", name="clean", **common))

    with (
        LocalCluster(n_workers=2, threads_per_worker=1, host="127.0.0.1", dashboard_address=None) as cluster,
        Client(cluster) as client,
    ):
        transitions = PredictTransitions()
        cluster.scheduler.add_plugin(transitions)
        hit = quick_config(catalog, tmp_path / "hit", name="hit", dask_address=cluster.scheduler_address, **common)
        ingested = steps.ingest(hit)  # the scene store (the flow finds it complete), to know the store's path
        store = ingested.work_dir / f"predictions-{bundle_digest(checkpoint)}.zarr"
        stop, killed = threading.Event(), {}
        killer = threading.Thread(target=lambda: killed.update(_kill_a_busy_worker(client, store, stop)))
        killer.start()
        try:
            state = region_flow.with_options(task_runner=task_runner(hit))(hit, return_state=True)
        finally:
            stop.set()
            killer.join()
        outputs = state.result()
        assert killed, "no worker was killed: inference ended before a block was seen done"
        assert killed["pid"] not in client.run(os.getpid).values()  # the nanny started a new worker process

    scene, _ = open_scene(ingested.store)
    n_blocks = len(scene.blocks())
    assert n_blocks == 36
    assert 0 < killed["blocks_done"] < n_blocks, killed
    # The scheduler ran the dead worker's predict tasks again, elsewhere, to completion ...
    rerun = [key for key in killed["keys"] if sum(k == key and to == "processing" for k, _, to in transitions.log) > 1]
    assert rerun, (killed, [t for t in transitions.log if t[0] in killed["keys"]])
    # ... and Prefect saw every block once, completed
    predict = task_states(state)["predict-block"]
    assert len(predict) == n_blocks and set(predict) == {"Completed"}, predict
    assert pending_blocks(store, scene) == [] and _blocks_done(store) == n_blocks

    with rasterio.open(clean.paths["classmap"]) as a, rasterio.open(outputs.paths["classmap"]) as b:
        clean_map, hit_map = a.read(1), b.read(1)
    np.testing.assert_array_equal(hit_map, clean_map)
    assert len(np.unique(clean_map)) > 1, "a one-class map would make the comparison trivial"
    with rasterio.open(clean.paths["probabilities"]) as a, rasterio.open(outputs.paths["probabilities"]) as b:
        np.testing.assert_array_equal(a.read(), b.read())
    clean_chips, hit_chips = _chips(clean.paths["chips"]), _chips(outputs.paths["chips"])
    assert len(hit_chips) == len(clean_chips) == 23 * 23
    for column in ("chip_row", "chip_col", "predicted_class", "score"):
        np.testing.assert_array_equal(hit_chips[column], clean_chips[column])
    assert hit_chips.geometry.equals(clean_chips.geometry)


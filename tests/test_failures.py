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
import zarr
from distributed.diagnostics.plugin import SchedulerPlugin

from allspark import region
from allspark.inference import checkpoint_digest
from allspark.paths import StorageError, check_writable
from tests import file_flows
from tests.conftest import shared_data, task_states
from tests.regions import quick_config, small_catalog


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


@pytest.fixture(scope="module")
def threads_cluster():
    """An in-process Dask cluster: the region flow's storage errors come before any inference."""
    from distributed import LocalCluster

    with LocalCluster(n_workers=1, threads_per_worker=1, processes=False, dashboard_address=None) as cluster:
        yield cluster.scheduler_address


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


def _file_flow(kind: str, output_dir: Path, inputs: Path):
    if kind == "trajectories":
        from flows.files import run_file_flow

        config = file_flows.trajectories_config(file_flows.eth_slice(inputs), output_dir)
        return config, lambda: run_file_flow(config)
    if kind == "sensors":
        from flows.files import run_file_flow

        config = file_flows.sensors_config(output_dir)
        return config, lambda: run_file_flow(config)
    from flows.files import run_file_flow

    config = file_flows.traffic_config(file_flows.traffic_slice(inputs), output_dir)
    return config, lambda: run_file_flow(config)


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
        out = config.region_dir
    else:
        config, run = _file_flow(flow, output_dir, tmp_path)
        out = config.output_dir / config.name
    with pytest.raises(StorageError) as error:
        run()
    message = str(error.value)
    assert str(out) in message, message
    assert ("Read-only file system" if disk == "read-only" else "No space left on device") in message
    assert not config.work_dir().exists(), "work started before the check"


@pytest.mark.usefixtures("prefect_server")
def test_region_flow_checks_its_size_estimate_and_its_work_folder(catalog, threads_cluster, read_only_dir, tmp_path,
                                                                  monkeypatch):
    from flows.region import region_flow, task_runner

    # 1 cm pixels over the 2.7 km crop: ~10^10 pixels, far more than any disk here holds
    config = quick_config(catalog, tmp_path / "outputs", name="huge", resolution=0.01, dask_address=threads_cluster)
    state = region_flow.with_options(task_runner=task_runner(config))(config, return_state=True)
    error = state.result(raise_on_failure=False)
    assert isinstance(error, StorageError) and "not enough free space" in str(error) and "TiB" in str(error), error
    assert str(config.region_dir) in str(error)
    assert set(task_states(state)) == {"plan"}, "a step after planning ran"

    monkeypatch.setenv("ALLSPARK_CACHE", str(read_only_dir / "cache"))
    config, run = _region_flow(catalog, tmp_path / "outputs", threads_cluster, name="cache-read-only")
    with pytest.raises(StorageError, match="Read-only file system") as error:
        run()
    assert str(config.work_dir()) in str(error.value)
    assert not (tmp_path / "outputs").exists()


# -- a Dask worker dies during inference ---------------------------------------------------------------


@pytest.fixture(scope="module")
def checkpoint(catalog, tmp_path_factory):
    """A quickly fine-tuned checkpoint, so both runs apply the same model."""
    config = quick_config(catalog, tmp_path_factory.mktemp("unused"), name="failures-train")
    return region.train_region(config, region.plan_region(config))["checkpoint"]


def _kill_a_busy_worker(client, store: Path, stop: threading.Event) -> dict:
    """Once the prediction store has a finished chunk, SIGKILL a worker process that is predicting a chunk."""
    while not stop.is_set():
        if store.exists() and zarr.open_group(store, mode="r")["done"][:].any():
            busy = {address: [key for key in keys if str(key).startswith("predict")]
                    for address, keys in client.processing().items()}
            address = next((a for a, keys in busy.items() if keys), None)
            if address is not None:
                pid = client.run(os.getpid, workers=[address])[address]
                done = int(zarr.open_group(store, mode="r")["done"][:].sum())
                os.kill(pid, signal.SIGKILL)
                return {"pid": pid, "address": address, "keys": busy[address], "chunks_done": done}
        time.sleep(0.05)
    return {}


class PredictTransitions(SchedulerPlugin):
    """Records the scheduler's state transitions of the predict tasks: (key, start, finish)."""

    def __init__(self):
        self.log = []

    def transition(self, key, start, finish, *args, **kwargs):
        if str(key).startswith("predict"):
            self.log.append((key, start, finish))


def _clean_run(config, checkpoint: str) -> dict:
    """The same steps as the flow, uninterrupted and in this process: the reference result.

    With one torch thread, as on a Dask worker (the nanny sets OMP_NUM_THREADS=1), so that float
    sums run in the same order and the probabilities can be compared exactly.
    """
    import torch

    plan = region.plan_region(config)
    tiled = region.tile_region(config, plan)
    store = region.prediction_store(config, tiled["store"], checkpoint)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for start, stop in region.pending_ranges(tiled["store"], store)[0]:
            region.predict_chip_range(tiled["store"], store, checkpoint, start, stop, config.inference_batch)
    finally:
        torch.set_num_threads(threads)
    return region.publish_region(config, plan, tiled["store"], store, checkpoint, tiled)


@pytest.mark.usefixtures("prefect_server")
def test_a_dask_worker_killed_during_inference_is_retried_and_the_result_equals_a_clean_run(
    catalog, checkpoint, tmp_path
):
    from distributed import Client, LocalCluster

    from flows.region import region_flow, task_runner

    common = {"chips": {"size": 8, "overlap": 4, "batch": 8}, "checkpoint": checkpoint, "train": None}
    clean = _clean_run(quick_config(catalog, tmp_path / "clean", name="clean", **common), checkpoint)

    with (
        LocalCluster(n_workers=2, threads_per_worker=1, host="127.0.0.1", dashboard_address=None) as cluster,
        Client(cluster) as client,
    ):
        transitions = PredictTransitions()
        cluster.scheduler.add_plugin(transitions)
        # 67 chunks of 8 chips: inference lasts long enough to be hit
        hit = quick_config(catalog, tmp_path / "hit", name="hit", dask_address=cluster.scheduler_address, **common)
        store = hit.work_dir() / f"predictions-{checkpoint_digest(Path(checkpoint))}.zarr"
        stop, killed = threading.Event(), {}
        killer = threading.Thread(target=lambda: killed.update(_kill_a_busy_worker(client, store, stop)))
        killer.start()
        try:
            state = region_flow.with_options(task_runner=task_runner(hit))(hit, return_state=True)
        finally:
            stop.set()
            killer.join()
        outputs = state.result()
        assert killed, "no worker was killed: inference ended before a chunk was seen done"
        assert killed["pid"] not in client.run(os.getpid).values()  # the nanny started a new worker process

    n_chunks = zarr.open_group(store, mode="r")["done"].shape[0]
    assert 0 < killed["chunks_done"] < n_chunks, killed
    # The scheduler ran the dead worker's predict tasks again, elsewhere, to completion ...
    rerun = [key for key in killed["keys"] if sum(k == key and to == "processing" for k, _, to in transitions.log) > 1]
    assert rerun, (killed, [t for t in transitions.log if t[0] in killed["keys"]])
    # ... and Prefect saw every chunk once, completed
    predict = task_states(state)["predict"]
    assert len(predict) == n_chunks and set(predict) == {"Completed"}, predict
    assert zarr.open_group(store, mode="r")["done"][:].all()

    with rasterio.open(clean["classmap"]) as a, rasterio.open(outputs["classmap"]) as b:
        clean_map, hit_map = a.read(1), b.read(1)
    np.testing.assert_array_equal(hit_map, clean_map)
    assert len(np.unique(clean_map)) > 1, "a one-class map would make the comparison trivial"
    with rasterio.open(clean["probabilities"]) as a, rasterio.open(outputs["probabilities"]) as b:
        np.testing.assert_array_equal(a.read(), b.read())
    clean_chips, hit_chips = gpd.read_parquet(clean["chips"]), gpd.read_parquet(outputs["chips"])
    assert len(hit_chips) == len(clean_chips) == 23 * 23
    for column in ("chip_id", "predicted_class", "score"):
        np.testing.assert_array_equal(hit_chips[column], clean_chips[column])
    assert hit_chips.geometry.equals(clean_chips.geometry)

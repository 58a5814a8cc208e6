"""A Dask cluster of real processes for tests: a scheduler and workers that share no folder with the test.

Each worker runs in an empty working folder of its own, with its own ``ALLSPARK_CACHE`` and Dask
local directory, so a flow whose tasks depended on the flow's local disk (a work folder, a
checkpoint path) would fail there. Every process dies with the test process (even on SIGKILL) and
is stopped at the end; a worker a test killed is started again by :meth:`ProcessCluster.replace_dead_workers`.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from distributed import Client

from flows.serve import HOST, dies_with_this_process, free_port, stop_process

START_TIMEOUT = 90  # seconds: each worker imports distributed on 2 shared cores


@dataclass
class ProcessCluster:
    """A running scheduler and its workers (one thread each)."""

    address: str
    root: Path
    environment: Mapping[str, str]
    workers: list[subprocess.Popen] = field(default_factory=list)

    def worker_folder(self, index: int) -> Path:
        """Worker ``index``'s working folder; its ``ALLSPARK_CACHE`` is ``cache/`` in it."""
        return self.root / f"worker-{index}"

    def start_worker(self, index: int) -> subprocess.Popen:
        folder = self.worker_folder(index)
        folder.mkdir(parents=True, exist_ok=True)
        environment = {**self.environment, "ALLSPARK_CACHE": str(folder / "cache")}
        command = [sys.executable, "-m", "dask", "worker", self.address, "--name", f"worker-{index}",
                   "--nthreads", "1", "--no-nanny", "--no-dashboard", "--host", HOST,
                   "--local-directory", str(folder / "dask")]
        with open(folder / "worker.log", "ab") as log:
            return subprocess.Popen(command, cwd=folder, env=environment, stdout=log, stderr=subprocess.STDOUT,
                                    preexec_fn=dies_with_this_process())

    def wait_for_workers(self) -> None:
        with Client(self.address, timeout=START_TIMEOUT) as client:
            client.wait_for_workers(len(self.workers), timeout=START_TIMEOUT)

    def replace_dead_workers(self) -> None:
        """Start again each worker that has exited (one a test killed), and wait until all are connected."""
        for index, process in enumerate(self.workers):
            if process.poll() is not None:
                self.workers[index] = self.start_worker(index)
        self.wait_for_workers()


@contextlib.contextmanager
def process_cluster(root: Path, workers: int = 2, environment: Mapping[str, str] | None = None) -> Iterator[ProcessCluster]:
    """Start a scheduler on 127.0.0.1 and ``workers`` workers under ``root``; stop them all at the end.

    ``environment`` (default: this process's) is what the workers see, with ``ALLSPARK_CACHE``
    replaced by each worker's own.
    """
    port = free_port()
    root.mkdir(parents=True, exist_ok=True)
    cluster = ProcessCluster(address=f"tcp://{HOST}:{port}", root=root,
                             environment=dict(os.environ if environment is None else environment))
    with open(root / "scheduler.log", "wb") as log:
        scheduler = subprocess.Popen(
            [sys.executable, "-m", "dask", "scheduler", "--host", HOST, "--port", str(port), "--no-dashboard"],
            cwd=root, stdout=log, stderr=subprocess.STDOUT, preexec_fn=dies_with_this_process())
    try:
        cluster.workers = [cluster.start_worker(index) for index in range(workers)]
        cluster.wait_for_workers()
        yield cluster
    finally:
        for process in cluster.workers:
            stop_process(process, timeout=10)
        stop_process(scheduler, timeout=10)

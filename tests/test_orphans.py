"""No process of a killed run outlives it: its temporary Prefect server and its Dask workers die with it.

A region run is started through the CLI as a user starts it (no ``PREFECT_API_URL``) and killed with
SIGKILL once its Prefect server answers and its Dask workers listen; seconds later every process it
had started must be gone and the server's port closed.
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys

import psutil
import pytest
import yaml

from flows.serve import api_url, server_healthy, wait_gone
from tests.conftest import PROJECT, shared_data
from tests.regions import quick_config, small_catalog
from tests.serving import wait_until

WORKERS = 2


@pytest.fixture(scope="module")
def region_config(tmp_path_factory):
    work = tmp_path_factory.mktemp("orphans")
    catalog = small_catalog(shared_data("landsat7_nc_labeled"), work)
    config = quick_config(catalog, work / "outputs", n_workers=WORKERS).model_dump(mode="json")
    path = work / "region.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def listening_ports(process: psutil.Process) -> set[int]:
    try:
        return {c.laddr.port for c in process.net_connections("tcp") if c.status == psutil.CONN_LISTEN}
    except psutil.NoSuchProcess:
        return set()


def command_line(process: psutil.Process) -> str:
    try:
        return " ".join(process.cmdline())
    except psutil.NoSuchProcess:
        return ""


def listens(port: int) -> bool:
    with socket.socket() as probe:
        return probe.connect_ex(("127.0.0.1", port)) == 0


def test_a_killed_region_run_leaves_no_process(region_config, tmp_path):
    log_path = tmp_path / "run.log"  # a file, not a pipe: a surviving process could hold a pipe open
    env = {key: value for key, value in os.environ.items() if key != "PREFECT_API_URL"}
    with open(log_path, "wb") as log:
        run = subprocess.Popen([sys.executable, "-m", "flows.cli", "run", "region", "--config", str(region_config)],
                               cwd=PROJECT, env=env, stdout=log, stderr=subprocess.STDOUT)
    cli = psutil.Process(run.pid)

    def server_port_once_workers_listen() -> int | None:
        assert run.poll() is None, f"the run ended (exit {run.returncode}) first:\n{log_path.read_text()[-3000:]}"
        family = cli.children(recursive=True)
        servers = [port for p in family if "uvicorn" in command_line(p) for port in listening_ports(p)
                   if server_healthy(api_url(port))]
        workers = [p for p in family if "multiprocessing.spawn" in command_line(p) and listening_ports(p)]
        return servers[0] if servers and len(workers) == WORKERS else None

    family: list[psutil.Process] = []
    try:
        server_port = wait_until(server_port_once_workers_listen, timeout=240, poll=0.5,
                                 what="the run's Prefect server and Dask workers")
        family = cli.children(recursive=True)
        run.kill()
        run.wait()
        survivors = wait_gone(family, timeout=5)
        assert not survivors, "still running after the run was killed:\n" + "\n".join(
            f"{p.pid} {command_line(p)[:150]}" for p in survivors)
        assert not listens(server_port), f"the Prefect server's port {server_port} still listens"
    finally:  # a failed test leaves nothing behind either
        with contextlib.suppress(psutil.NoSuchProcess):
            family += cli.children(recursive=True)
        for process in [cli, *family]:
            with contextlib.suppress(psutil.NoSuchProcess):
                process.kill()

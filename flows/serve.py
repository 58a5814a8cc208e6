"""``make serve`` / ``make serve-stop``: a Prefect server on 127.0.0.1, a process work pool, the deployments, a worker.

    python -m flows.serve start [--port 4200] [--pool allspark-process] [--dask-address tcp://HOST:8786] [--paused]
    python -m flows.serve stop

The server and the worker run in the background, each in its own session, with a state file (pid,
start time, URL) and a log under ``$PREFECT_HOME/serve/``. ``start`` reuses whatever of them still
runs, so starting twice starts nothing twice, and registers the deployments again (picking up
edited configs and new AOI files). ``stop`` stops the worker first (a worker whose server is gone
ignores SIGTERM): SIGINT, then SIGKILL for whatever is left, flow runs included; stopping when
nothing runs is fine. With ``PREFECT_API_URL`` set, no local server is started: the deployments go
to that server and the worker serves it.

:func:`run_server` is the temporary server of one ``allspark run`` or ``allspark backfill``: it dies
with the run, even when the run is killed.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import functools
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import psutil

import flows  # noqa: F401  (sets the Prefect defaults before Prefect is imported)
from allspark.errors import AllSparkError

HOST = "127.0.0.1"
WORK_POOL = "allspark-process"
DEFAULT_PORT = 4200
START_TIMEOUT = 180  # seconds; a first start on 2 cores creates the database
PREFECT = [sys.executable, "-m", "prefect"]


START_TIME_SLACK = 2.0  # seconds: the same process, seen again later (see Background.running)
ALREADY_GONE = contextlib.suppress(ProcessLookupError, psutil.NoSuchProcess)  # stopping what is already gone is fine


class ServeError(RuntimeError):
    """The server or the worker could not be started; the message says why and where the log is."""


def serve_dir() -> Path:
    return Path(os.environ["PREFECT_HOME"]) / "serve"


@dataclass(frozen=True)
class Background:
    """A background process started by this module, known by its state file (pid, start time, URL)."""

    role: str  # "server" or "worker"

    @property
    def state_file(self) -> Path:
        return serve_dir() / f"{self.role}.json"

    @property
    def log_file(self) -> Path:
        return serve_dir() / f"{self.role}.log"

    def running(self) -> dict | None:
        """The recorded state, if that very process still runs (not another one that got its pid)."""
        try:
            state = json.loads(self.state_file.read_text())
            process = psutil.Process(state["pid"])
            # Linux derives start times from the boot time, which clock adjustments of a VM shift by a second
            # or so: a reused pid starts later than that
            same = abs(process.create_time() - state["create_time"]) < START_TIME_SLACK
        except (FileNotFoundError, json.JSONDecodeError, KeyError, psutil.NoSuchProcess):
            return None
        return state if same and _alive(process) else None

    def start(self, command: list[str], env: dict[str, str], **state: str) -> dict:
        serve_dir().mkdir(parents=True, exist_ok=True)
        with open(self.log_file, "ab") as log:
            process = subprocess.Popen(command, env=env, stdin=subprocess.DEVNULL, stdout=log,
                                       stderr=subprocess.STDOUT, start_new_session=True)
        state = {"pid": process.pid, "create_time": psutil.Process(process.pid).create_time(), **state}
        self.state_file.write_text(json.dumps(state, indent=2))
        return state

    def stop(self, grace: float) -> str | None:
        """SIGINT to its process group; ``grace`` seconds later SIGKILL to whatever is left of it and of its
        descendants (flow runs have sessions of their own). Says how it ended; None if it was not running."""
        state = self.running()
        self.state_file.unlink(missing_ok=True)
        if state is None:
            return None
        leader = psutil.Process(state["pid"])
        family = [leader, *leader.children(recursive=True)]
        started = time.monotonic()
        with ALREADY_GONE:
            os.killpg(state["pid"], signal.SIGINT)
        alive = wait_gone(family, grace)
        if not alive:
            return f"stopped in {time.monotonic() - started:.0f} s"
        for process in alive:
            with ALREADY_GONE:
                process.kill()
        with ALREADY_GONE:
            os.killpg(state["pid"], signal.SIGKILL)
        wait_gone(alive, 10)
        return f"killed: {len(alive)} of its processes still ran {grace:.0f} s after SIGINT"

    def wait_ready(self, ready: Callable[[], bool], what: str) -> None:
        """Wait until ``ready()``; fail with the end of the log if the process stops or takes too long."""
        _wait(ready, what, alive=lambda: self.running() is not None,
              log=lambda: f"the end of {self.log_file}:\n{self.log_tail()}")

    def log_tail(self, lines: int = 20) -> str:
        if not self.log_file.exists():
            return ""
        return "\n".join(self.log_file.read_text(errors="replace").splitlines()[-lines:])


def _alive(process: psutil.Process) -> bool:
    """Still running: not gone, and not a zombie (an exited child its parent has not reaped yet)."""
    try:
        return process.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def wait_gone(processes: list[psutil.Process], timeout: float) -> list[psutil.Process]:
    """Wait up to ``timeout`` seconds for the processes to end; return those still alive."""
    deadline = time.monotonic() + timeout
    while (alive := [p for p in processes if _alive(p)]) and time.monotonic() < deadline:
        time.sleep(0.2)
    return alive


def api_url(port: int) -> str:
    return f"http://{HOST}:{port}/api"


def _port_in_use(port: int) -> bool:
    with socket.socket() as probe:
        return probe.connect_ex((HOST, port)) == 0


def server_healthy(url: str) -> bool:
    """Whether the Prefect server at ``url`` answers its health check."""
    try:
        with urllib.request.urlopen(f"{url}/health", timeout=2) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError):
        return False


def _wait(ready: Callable[[], bool], what: str, alive: Callable[[], bool], log: Callable[[], str],
          timeout: float = START_TIMEOUT) -> None:
    """Poll ``ready()`` until it is true; fail with ``log()`` if the process stops or time runs out."""
    deadline = time.monotonic() + timeout
    while not ready():
        if not alive():
            raise ServeError(f"the {what} stopped while starting; {log()}")
        if time.monotonic() > deadline:
            raise ServeError(f"the {what} was not ready after {timeout:.0f} s; {log()}")
        time.sleep(0.5)


def ensure_server(port: int) -> str:
    """The API URL of the local server, started unless one started here still runs."""
    server = Background("server")
    state = server.running()
    if state is not None:
        if state["url"] != api_url(port):
            print(f"A server started earlier runs at {state['url']}; `make serve-stop` first to change the port.")
        server.wait_ready(lambda: server_healthy(state["url"]), "Prefect server")
        return state["url"]
    url = api_url(port)
    if _port_in_use(port):
        raise ServeError(f"{HOST}:{port} is taken by another process; choose a free port with --port "
                         f"or ALLSPARK_PREFECT_PORT")
    env = {key: value for key, value in os.environ.items() if key != "PREFECT_API_URL"}
    server.start([*PREFECT, "server", "start", "--host", HOST, "--port", str(port)], env, url=url)
    server.wait_ready(lambda: server_healthy(url), "Prefect server")
    return url


PR_SET_PDEATHSIG = 1  # prctl option, <linux/prctl.h>


def _die_with_parent(prctl: Callable[[int, int], int], parent: int) -> None:
    """Between fork and exec: have Linux SIGKILL this child when ``parent`` dies; exit if it already has.

    Linux sends the signal when the thread that started the child ends: start it from the main thread."""
    prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent:
        os._exit(1)


def dies_with_this_process() -> Callable[[], None]:
    """A ``preexec_fn`` for :class:`subprocess.Popen`: Linux SIGKILLs the child when this process dies.

    Start the child from the main thread (see :func:`_die_with_parent`)."""
    prctl = ctypes.CDLL(None, use_errno=True).prctl  # looked up before the fork: the child only calls it
    return functools.partial(_die_with_parent, prctl, os.getpid())


def stop_process(process: subprocess.Popen, sig: int = signal.SIGTERM, timeout: float = 30) -> None:
    """Send ``sig`` to a child and wait for it; SIGKILL it if it is still there after ``timeout`` seconds."""
    process.send_signal(sig)
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket() as probe:
        probe.bind((HOST, 0))
        return probe.getsockname()[1]


@contextlib.contextmanager
def run_server() -> Iterator[None]:
    """A temporary Prefect server for one run of the ``allspark`` command, which dies with the run.

    Without ``PREFECT_API_URL``, Prefect starts a temporary server of its own and stops it only when the
    run exits normally: a killed run (SIGKILL, the OOM killer) leaves it running and listening, about
    225 MB each, and every Dask worker of a region run starts one more. This one is started as Prefect
    starts its own (``SubprocessASGIServer``), but with Linux's parent-death signal, so it dies with the
    run however the run ends; every Prefect call of the run, the Dask workers' included, goes to it.
    With ``PREFECT_API_URL`` set, or off Linux, Prefect's own behaviour stays.
    """
    import prefect
    from prefect.events.worker import EventsWorker
    from prefect.logging.handlers import APILogWorker
    from prefect.settings import (
        PREFECT_API_URL,
        PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS,
        get_current_settings,
        temporary_settings,
    )

    if PREFECT_API_URL.value() or sys.platform != "linux":
        yield
        return
    port = free_port()
    url = api_url(port)
    env = {**os.environ, "PREFECT_UI_ENABLED": "0", "PREFECT__SERVER_EPHEMERAL": "1", "PREFECT__SERVER_FINAL": "1",
           **get_current_settings().to_environment_variables(exclude_unset=True)}
    command = [sys.executable, "-m", "uvicorn", "--app-dir", str(prefect.__module_path__.parent), "--factory",
               "prefect.server.api.server:create_app", "--host", HOST, "--port", str(port), "--log-level", "error",
               "--lifespan", "on"]
    server = subprocess.Popen(command, env=env, preexec_fn=dies_with_this_process())
    try:
        _wait(lambda: server_healthy(url), "temporary Prefect server", alive=lambda: server.poll() is None,
              log=lambda: "its output is above", timeout=PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS.value())
        with temporary_settings(updates={PREFECT_API_URL: url}):
            yield
    finally:
        APILogWorker.drain_all()  # the run's last logs and events go out before the server stops
        EventsWorker.drain_all()
        stop_process(server, timeout=5)


def ensure_work_pool(name: str) -> None:
    """Create the process work pool on the current server unless it exists."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.exceptions import ObjectNotFound
    from prefect.workers.process import ProcessWorker

    with get_client(sync_client=True) as client:
        try:
            client.read_work_pool(name)
        except ObjectNotFound:
            client.create_work_pool(WorkPoolCreate(
                name=name, type=ProcessWorker.type, base_job_template=ProcessWorker.get_default_base_job_template(),
                description="AllSpark flow runs as processes in the project folder",
            ))


def ensure_worker(pool: str, url: str) -> None:
    """A worker polling ``pool`` on ``url``, started unless one started here does; waits for its first heartbeat."""
    from prefect.client.orchestration import get_client

    worker = Background("worker")
    state = worker.running()
    if state is not None and state["url"] == url and state["pool"] == pool:
        return
    if state is not None:
        worker.stop(grace=30)
    started = time.time()
    worker.start([*PREFECT, "worker", "start", "--pool", pool], os.environ | {"PREFECT_API_URL": url},
                 url=url, pool=pool)

    def online() -> bool:
        with get_client(sync_client=True) as client:
            return any(w.last_heartbeat_time and w.last_heartbeat_time.timestamp() >= started - 1
                       for w in client.read_workers_for_work_pool(pool))

    worker.wait_ready(online, "worker")


def start(port: int, pool: str, dask_address: str | None, paused: bool) -> None:
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from flows.deployments import all_deployments, register

    shared = os.environ.get("PREFECT_API_URL")
    if shared and not server_healthy(shared):
        raise ServeError(f"the Prefect server at PREFECT_API_URL={shared} does not answer")
    url = shared or ensure_server(port)
    with temporary_settings(updates={PREFECT_API_URL: url}):
        ensure_work_pool(pool)
        deployments = all_deployments(dask_address)
        names = register(deployments, pool, paused=paused)
        ensure_worker(pool, url)
    where = f"{url} (PREFECT_API_URL)" if shared else f"{url.removesuffix('/api')} (UI), API {url}"
    print(f"\nPrefect server  {where}\nWork pool       {pool}, worker log {Background('worker').log_file}")
    cluster = f"the Dask cluster at {dask_address}" if dask_address else "a local Dask cluster per run"
    print(f"Region runs     inference on {cluster}")
    print("Deployments" + ("     (schedules paused)" if paused else ""))
    for name, deployment in zip(names, deployments):
        print(f"  {name:<40}{deployment.schedule.cron} {deployment.schedule.timezone}")
    print(f"\nRun one now, from this folder:\n  export PREFECT_API_URL={url}\n"
          f"  {Path(PREFECT[0]).parent / 'prefect'} deployment run '{names[0]}' --watch\n"
          f"Outputs go to outputs/<deployment name>/. Stop the worker and the server: make serve-stop")


def stop() -> None:
    """The worker first (a worker whose server is gone ignores SIGTERM), then the server."""
    ended = {role: Background(role).stop(grace) for role, grace in (("worker", 30), ("server", 20))}
    for role, how in ended.items():
        print(f"{role}: {how or 'not running'}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m flows.serve", description=__doc__.split("\n")[0])
    actions = parser.add_subparsers(dest="action", required=True)
    start_parser = actions.add_parser("start", help="start (or reuse) the server and the worker; register the deployments")
    start_parser.add_argument("--port", type=int, default=int(os.environ.get("ALLSPARK_PREFECT_PORT", DEFAULT_PORT)),
                              help="port of the local server (default: $ALLSPARK_PREFECT_PORT or 4200)")
    start_parser.add_argument("--pool", default=WORK_POOL, help=f"process work pool (default: {WORK_POOL})")
    start_parser.add_argument("--dask-address", default=os.environ.get("ALLSPARK_DASK_ADDRESS"),
                              help="Dask scheduler for the region runs' inference (default: $ALLSPARK_DASK_ADDRESS, "
                                   "else a local cluster per run)")
    start_parser.add_argument("--paused", action="store_true", help="register the deployments with paused schedules")
    actions.add_parser("stop", help="stop the worker, then the server")
    args = parser.parse_args(argv)
    try:
        if args.action == "start":
            start(args.port, args.pool, args.dask_address, args.paused)
        else:
            stop()
    except (ServeError, AllSparkError, FileNotFoundError) as err:
        print(f"serve: error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())

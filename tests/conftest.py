"""Session-wide fixtures: one Prefect test server, a private cache, the shared real data."""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from pathlib import Path

import pytest

# Prefect's home (results, local storage) private to this test session, before Prefect is imported.
os.environ["PREFECT_HOME"] = tempfile.mkdtemp(prefix="allspark-prefect-")
atexit.register(shutil.rmtree, os.environ["PREFECT_HOME"], ignore_errors=True)
import flows  # noqa: E402,F401  (Prefect defaults before Prefect is imported)

PROJECT = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("ALLSPARK_SHARED_DATA", PROJECT.parent / "shared" / "data"))


def shared_data(*parts: str) -> Path:
    """A path under ../shared/data, or skip the test with the reason when it is absent."""
    path = SHARED_DATA.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"needs the real data in {path} (../shared/data beside the project; not in a plain clone)")
    return path


@pytest.fixture(scope="session", autouse=True)
def private_cache(tmp_path_factory) -> Path:
    """Work stores and catalogs go to a fresh folder; model weights are shared with `make`'s cache."""
    user_cache = Path(os.environ.get("ALLSPARK_CACHE", PROJECT / ".cache" / "allspark"))
    cache = tmp_path_factory.mktemp("allspark-cache")
    (user_cache / "models").mkdir(parents=True, exist_ok=True)
    (cache / "models").symlink_to(user_cache / "models", target_is_directory=True)
    os.environ["ALLSPARK_CACHE"] = str(cache)
    return cache


@pytest.fixture(scope="session")
def prefect_server():
    """One temporary Prefect server for the whole session (slow to start on 2 cores)."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


TEST_LLM_LAYERS = 2  # the first decoder layers of the real SmolLM2 are enough to test the model


@pytest.fixture(scope="session")
def language_model():
    """SmolLM2 (fetched and de-quantised on a fresh machine), truncated, loaded once per session."""
    from allspark.model import load_language_model

    return load_language_model("smollm2", num_layers=TEST_LLM_LAYERS)


def task_states(flow_state) -> dict[str, list[str]]:
    """Task-run state names of a flow run, by task name."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_state.state_details.flow_run_id]))
        )
    states: dict[str, list[str]] = {}
    for run in runs:
        states.setdefault(run.name.rsplit("-", 1)[0], []).append(run.state.name)
    return states


@pytest.fixture(scope="module")
def threads_cluster():
    """An in-process Dask cluster (two single-thread workers) for region flows that do not exercise a cluster of their
    own; yields its scheduler address."""
    from distributed import LocalCluster

    with LocalCluster(n_workers=2, threads_per_worker=1, processes=False, dashboard_address=None) as cluster:
        yield cluster.scheduler_address

"""The notebooks in notebooks/ run top to bottom on outputs made in this test run, and are committed clean.

Small real runs of the region, trajectory, sensor and traffic flows (the helpers of those flows'
own tests) publish outputs under a temporary folder. Each notebook runs in a fresh ``python3``
kernel (this environment's ipykernel) started in notebooks/, as Jupyter starts it, pointed at those
outputs by the environment variables it documents; the first cell error fails the test with the
cell's traceback.
"""

from __future__ import annotations

from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

from tests import file_flows
from tests.conftest import PROJECT, shared_data
from tests.regions import quick_config, small_catalog

NOTEBOOKS = PROJECT / "notebooks"
REGION, TABLES, TOUR = "01_region_outputs.ipynb", "02_trajectories_sensors_traffic.ipynb", "03_model_tour.ipynb"


def execute(name: str, environment: dict[str, str], monkeypatch, tmp_path: Path) -> None:
    """Run every cell of ``notebooks/<name>`` in order in a new kernel; raise on the first cell error."""
    for key, value in environment.items():
        monkeypatch.setenv(key, value)  # the kernel inherits this process's environment
    monkeypatch.setenv("JUPYTER_RUNTIME_DIR", str(tmp_path))  # kernel connection files
    notebook = nbformat.read(NOTEBOOKS / name, as_version=4)
    client = NotebookClient(notebook, kernel_name="python3", timeout=300,
                            resources={"metadata": {"path": str(NOTEBOOKS)}})
    client.execute()


@pytest.fixture(scope="module")
def region_catalog(tmp_path_factory, prefect_server) -> str:
    """The catalog of a small real region run: 96 x 96 pixels, 1 LM layer, one Dask worker."""
    from flows.region import run_region

    work = tmp_path_factory.mktemp("notebook-region")
    catalog = small_catalog(shared_data("landsat7_nc_labeled"), work)
    return str(run_region(quick_config(catalog, work / "outputs", n_workers=1)).catalog)


@pytest.fixture(scope="module")
def table_catalogs(tmp_path_factory, prefect_server) -> dict[str, str]:
    """Catalogs of small real trajectory, sensor and traffic runs, by the variable naming each."""
    from flows.files import run_file_flow

    work = tmp_path_factory.mktemp("notebook-tables")
    outputs = work / "outputs"
    (work / "traffic").mkdir()
    return {
        "ALLSPARK_TRAJECTORIES_CATALOG": str(run_file_flow(
            file_flows.trajectories_config(file_flows.eth_slice(work / "eth"), outputs)).catalog),
        "ALLSPARK_SENSORS_CATALOG": str(run_file_flow(file_flows.sensors_config(outputs)).catalog),
        "ALLSPARK_TRAFFIC_CATALOG": str(run_file_flow(
            file_flows.traffic_config(file_flows.traffic_slice(work / "traffic"), outputs)).catalog),
    }


def test_every_notebook_is_tested_and_committed_without_outputs():
    paths = sorted(NOTEBOOKS.glob("*.ipynb"))
    assert [path.name for path in paths] == [REGION, TABLES, TOUR], "a new notebook needs its test here"
    for path in paths:
        notebook = nbformat.read(path, as_version=4)
        nbformat.validate(notebook)
        dirty = [index for index, cell in enumerate(notebook.cells)
                 if cell.cell_type == "code" and (cell.outputs or cell.execution_count is not None)]
        assert not dirty, (f"{path.name}: code cells {dirty} hold outputs or execution counts; "
                           "clear all outputs before committing (Jupyter: Edit > Clear Outputs of All Cells)")


def test_region_outputs_notebook(region_catalog, monkeypatch, tmp_path):
    execute(REGION, {"ALLSPARK_REGION_CATALOG": region_catalog}, monkeypatch, tmp_path)


def test_trajectories_sensors_traffic_notebook(table_catalogs, monkeypatch, tmp_path):
    execute(TABLES, table_catalogs, monkeypatch, tmp_path)


def test_model_tour_notebook(monkeypatch, tmp_path):
    execute(TOUR, {"ALLSPARK_TOUR_LLM_LAYERS": "1"}, monkeypatch, tmp_path)

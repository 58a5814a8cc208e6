"""`make serve` under test: flows.serve run as a command with a private PREFECT_HOME and a free port,
plus what the deployment tests check and do: published outputs, flow-run states, killing processes."""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import geopandas as gpd
import psutil
import pystac
import pytest
import rasterio
import safetensors
import yaml
from rasterio.warp import transform_bounds
from rasterio.windows import Window
from rio_cogeo.cogeo import cog_validate
from shapely.geometry import box, mapping

from allspark.raster.windows import starts

PROJECT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Served:
    """The server and worker that ``python -m flows.serve start`` runs for one test module."""

    home: Path  # PREFECT_HOME of the server, the worker and its flow runs
    port: int
    env: dict[str, str]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/api"

    def command(self, action: str, *args: str, timeout: float = 400) -> str:
        """Run ``python -m flows.serve ACTION ARGS`` (what `make serve` / `make serve-stop` run); its output."""
        done = subprocess.run([sys.executable, "-m", "flows.serve", action, *args], env=self.env, cwd=PROJECT,
                              capture_output=True, text=True, timeout=timeout, check=False)
        assert done.returncode == 0, f"flows.serve {action} failed:\n{done.stdout}\n{done.stderr}"
        return done.stdout

    def start_again(self) -> None:
        """`make serve` once more, run in this process (whose imports are done): reuse what runs, start what does not."""
        from flows import serve

        with pytest.MonkeyPatch.context() as patch:  # the environment is restored afterwards
            patch.delenv("PREFECT_API_URL", raising=False)
            for key, value in self.env.items():
                patch.setenv(key, value)
            serve.start(self.port, serve.WORK_POOL, dask_address=None, paused=True)

    def state(self, role: str) -> dict:
        return json.loads((self.home / "serve" / f"{role}.json").read_text())

    def process(self, role: str) -> psutil.Process:
        return psutil.Process(self.state(role)["pid"])

    def log(self, role: str = "worker", lines: int = 60) -> str:
        text = (self.home / "serve" / f"{role}.log").read_text(errors="replace")
        return "\n".join(text.splitlines()[-lines:])

    @contextlib.contextmanager
    def api(self) -> Iterator[None]:
        """Prefect calls of the test process go to this server (the session's test harness is another one)."""
        from prefect.settings import PREFECT_API_URL, temporary_settings

        with temporary_settings(updates={PREFECT_API_URL: self.url}):
            yield

    def flow_run(self, flow_run_id):
        from prefect.client.orchestration import get_client

        with self.api(), get_client(sync_client=True) as client:
            return client.read_flow_run(flow_run_id)

    def wait_for_state(self, flow_run_id, names: set[str], timeout: float) -> object:
        """Poll the flow run until its state is one of ``names``; fail with the worker's log otherwise."""
        deadline = time.monotonic() + timeout
        while (run := self.flow_run(flow_run_id)).state.name not in names:
            assert run.state.type.value not in {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"}, (
                f"flow run ended {run.state.name}, expected {names}: {run.state.message}\n{self.log()}")
            assert time.monotonic() < deadline, f"flow run still {run.state.name} after {timeout} s\n{self.log()}"
            time.sleep(0.5)
        return run


def wait_until(condition: Callable[[], object], timeout: float, what: str, poll: float = 0.05):
    """Poll ``condition`` until it returns something true; return that."""
    deadline = time.monotonic() + timeout
    while not (value := condition()):
        assert time.monotonic() < deadline, f"timed out after {timeout} s waiting for {what}"
        time.sleep(poll)
    return value


def kill_tree(root: psutil.Process, include_root: bool = True) -> None:
    """SIGKILL a process and all its descendants at once, as a crash of their machine would."""
    family = root.children(recursive=True) + ([root] if include_root else [])
    for process in family:
        with contextlib.suppress(psutil.NoSuchProcess):
            process.kill()
    psutil.wait_procs(family, timeout=10)


def aoi_file(catalog_dir: Path, name: str, dest: Path) -> Path:
    """A GeoJSON AOI named ``name`` over pixels 16-80 of the small catalog's 96 x 96 crop (part of its labels)."""
    with rasterio.open(next((catalog_dir / "source").glob("lsat7*.tif"))) as src:
        bounds = rasterio.windows.bounds(Window(16, 16, 64, 64), src.transform)
        lonlat = transform_bounds(src.crs, "EPSG:4326", *bounds)
    feature = {"type": "Feature", "properties": {"name": name}, "geometry": mapping(box(*lonlat))}
    dest.write_text(json.dumps({"type": "FeatureCollection", "features": [feature]}))
    return dest


def _resolves(href: str) -> bool:
    """Whether a local file or an http(s) URL (a STAC API's item) is there."""
    if not href.startswith(("http://", "https://")):
        return Path(href.removeprefix("file://")).exists()
    try:
        with urllib.request.urlopen(href, timeout=10) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError):
        return False


def assert_published(region_dir: Path) -> dict:
    """The outputs are complete and valid: STAC links resolve, the COGs validate, one GeoParquet row per
    chip with data (the chips of the scene's layout over a pixel the class map has), no temporary left.
    Returns metrics.json."""
    catalog = pystac.Catalog.from_file(str(region_dir / "catalog.json"))
    (item,) = catalog.get_items(recursive=True)
    for key, asset in item.assets.items():
        assert Path(asset.get_absolute_href()).exists(), f"asset {key} ({asset.href}) does not resolve"
    for link in item.get_links("derived_from"):  # a local item's file, or a STAC API's item URL
        assert _resolves(link.get_absolute_href()), f"derived_from link {link.href} does not resolve"
    for key in ("classmap", "probabilities"):
        valid, errors, _ = cog_validate(item.assets[key].get_absolute_href(), quiet=True)
        assert valid, f"{key} is not a valid COG: {errors}"
    metrics = json.loads(Path(item.assets["metrics"].get_absolute_href()).read_text())
    chips = gpd.read_parquet(item.assets["chips"].get_absolute_href())
    with_data = chips_with_data(Path(item.assets["classmap"].get_absolute_href()),
                                yaml.safe_load((region_dir / "config.yaml").read_text())["chips"])
    assert len(chips) == len(with_data) > 0, f"{len(chips)} GeoParquet rows for {len(with_data)} chips with data"
    assert set(zip(chips["chip_row"], chips["chip_col"])) == with_data, "GeoParquet rows are not the chips with data"
    assert not [p.name for p in region_dir.iterdir() if p.name.startswith(".")], "temporaries left behind"
    return metrics


def chips_with_data(classmap: Path, chips: dict) -> set[tuple[int, int]]:
    """Origins (row, col) of the chips of the scene-wide layout with at least one mapped pixel."""
    with rasterio.open(classmap) as src:
        mapped = src.read(1) != src.nodata
    size, overlap = chips["size"], chips["overlap"]
    return {(r, c) for r in starts(mapped.shape[0], size, overlap) for c in starts(mapped.shape[1], size, overlap)
            if mapped[r:r + size, c:c + size].any()}


def assert_complete_if_visible(region_dir: Path) -> list[str]:
    """Whatever a killed run left under an output name is a complete file; returns those names."""
    checks = {
        ".tif": lambda p: cog_validate(str(p), quiet=True)[0],
        ".parquet": lambda p: len(gpd.read_parquet(p)) > 0,
        ".json": lambda p: json.loads(p.read_text()) is not None,
        ".yaml": lambda p: p.read_text().strip() != "",
        ".png": lambda p: p.read_bytes().startswith(b"\x89PNG") and p.read_bytes().endswith(b"IEND\xaeB`\x82"),
        ".safetensors": lambda p: len(safetensors.safe_open(str(p), "np").keys()) > 0,
    }
    visible = [p for p in region_dir.rglob("*") if p.is_file() and not any(
        part.startswith(".") for part in p.relative_to(region_dir).parts)]
    for path in visible:
        check = checks.get(path.suffix)
        assert check is None or check(path), f"{path} is visible under its output name but incomplete"
    return sorted(str(p.relative_to(region_dir)) for p in visible)

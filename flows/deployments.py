"""The scheduled deployments, declared in one place; ``make serve`` (flows/serve.py) registers them.

- ``region-aoi/<aoi>``, weekly: one per ``deployments/aois/*.geojson`` (named by its ``name``
  property). Each maps its AOI with the settings of ``deployments/region-demo.yaml`` and the model
  that config fine-tunes once on its catalog's labels (see flows/region_aoi.py).
- ``files/<name>``: the file flow with ``deployments/sensors-prsa.yaml`` (hourly) and
  ``deployments/trajectories-eth.yaml`` (daily).

The example configs and AOIs are package data (:mod:`allspark.settings`).

All go to one process work pool. Their parameters are the validated run configs, so the Prefect UI
shows every setting and a run can override them; editing a config file takes effect at the next
``make serve``. Relative paths in them are relative to the project folder, where every run starts.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from prefect import Flow
from prefect.schedules import Cron, Schedule

from allspark.core.config import load_config
from allspark.errors import ConfigError
from allspark.pipelines import get_kind
from allspark.raster.catalog import load_aoi
from allspark.region.config import load_region_config
from allspark.settings import aois_dir, deployments_dir
from flows.serve import WORK_POOL

PROJECT = Path(__file__).resolve().parents[1]  # where the flows' code is read from at run time
AOI_DIR = aois_dir()
REGION_CONFIG = deployments_dir() / "region-demo.yaml"
REGION_ENTRYPOINT = "flows/region_aoi.py:region_aoi_flow"
FILE_ENTRYPOINT = "flows/files.py:file_flow"
WEEKLY = Cron("0 6 * * 1", timezone="UTC")  # Mondays 06:00
HOURLY = Cron("0 * * * *", timezone="UTC")
DAILY = Cron("0 3 * * *", timezone="UTC")
FILE_FLOW_SCHEDULES = {"sensors": HOURLY, "trajectories": DAILY}  # kind -> schedule; the config is its example


@dataclass(frozen=True)
class Deployment:
    """One deployment: a flow of this project, its schedule and its parameters."""

    entrypoint: str  # "flows/<file>.py:<flow function>", relative to the project
    name: str
    schedule: Schedule
    parameters: dict
    description: str
    tags: list[str] = field(default_factory=list)


def aoi_name(path: Path) -> str:
    """The ``name`` property of an AOI GeoJSON's (first) feature; it names the deployment and outputs."""
    data = json.loads(path.read_text())
    feature = data["features"][0] if data.get("type") == "FeatureCollection" and data.get("features") else data
    name = (feature.get("properties") or {}).get("name")
    if not name:
        raise ConfigError(f"AOI file {path} has no 'name' property in its feature: it names the deployment "
                          f"and the output folder")
    return name


def _project_relative(path: Path) -> str:
    path = path.resolve()
    return str(path.relative_to(PROJECT)) if path.is_relative_to(PROJECT) else str(path)


def region_deployments(
    config_file: Path = REGION_CONFIG, aoi_dir: Path = AOI_DIR, dask_address: str | None = None
) -> list[Deployment]:
    """One weekly ``region-aoi`` deployment per AOI file; each AOI and its name are checked now, not at run time."""
    config = load_region_config(config_file, dask_address=dask_address)
    aois = sorted(aoi_dir.glob("*.geojson"))
    if not aois:
        raise ConfigError(f"no AOI in {aoi_dir}: expected *.geojson files, each with a 'name' property")
    deployments = []
    for path in aois:
        load_aoi(path)
        name = aoi_name(path)
        config.model_validate(config.model_dump() | {"name": name})  # a valid output folder name
        deployments.append(Deployment(
            REGION_ENTRYPOINT, name, WEEKLY,
            {"config": _given(config), "aoi": _project_relative(path), "name": name},
            f"Weekly land-cover map of AOI {path.name} with the settings of {config_file.name}",
            tags=["region"],
        ))
    return deployments


def file_flow_deployments() -> list[Deployment]:
    """The sensor (hourly) and trajectory (daily) deployments, each with its flow's example config."""
    deployments = []
    for kind_name, schedule in FILE_FLOW_SCHEDULES.items():
        kind = get_kind(kind_name)
        config = load_config(kind.config_class(), deployments_dir() / kind.example)
        deployments.append(Deployment(
            FILE_ENTRYPOINT, config.name, schedule, {"kind": kind_name, "config": _given(config)},
            f"{kind.help} ({kind.example})", tags=[kind_name],
        ))
    return deployments


def all_deployments(dask_address: str | None = None) -> list[Deployment]:
    """Every deployment of the project; ``dask_address`` sends the region runs' inference to that cluster."""
    return region_deployments(dask_address=dask_address) + file_flow_deployments()


def register(deployments: list[Deployment], work_pool: str = WORK_POOL, paused: bool = False) -> list[str]:
    """Create or update the deployments on the current Prefect server; return their 'flow/deployment' names.

    The flow code is read from this project folder at run time (no image, nothing pushed), so the
    worker must see the same folder.
    """
    names = []
    for deployment in deployments:
        flow = Flow.from_source(str(PROJECT), entrypoint=deployment.entrypoint)
        flow.to_deployment(
            name=deployment.name,
            work_pool_name=work_pool,
            schedules=[deployment.schedule],
            parameters=deployment.parameters,
            description=deployment.description,
            tags=deployment.tags,
            paused=paused,
        ).apply()
        names.append(f"{flow.name}/{deployment.name}")
    return names


def _given(config) -> dict:
    """The settings a config file gives (as JSON): what it leaves at the defaults stays unset when the
    deployment runs, so a checkpoint's model sizes may fill it (see ``allspark.core.bundle.apply_checkpoint``)."""
    return config.model_dump(mode="json", exclude_unset=True)

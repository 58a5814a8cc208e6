"""The registry of pipelines: every kind of data, its config class and its steps, in one explicit table.

As TorchGeo's ``models/api.py`` does for weights: a newcomer finds every kind here, and the CLI,
the flows and the deployments look kinds up here instead of importing them by hand.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from types import ModuleType

from allspark.core.config import RunConfig
from allspark.errors import ConfigError


@dataclass(frozen=True)
class Kind:
    """One kind of data: a package ``allspark/<name>/`` with ``config.py``, ``read.py`` and ``steps.py``."""

    name: str
    help: str
    config_class_name: str
    example: str  # the example config shipped in deployments/ (file name)

    def config_class(self) -> type[RunConfig]:
        return getattr(importlib.import_module(f"allspark.{self.name}.config"), self.config_class_name)

    def steps(self) -> ModuleType:
        """The kind's ``steps`` module: ``ingest``, ``train``, ``predict``, ``publish`` (imports torch)."""
        return importlib.import_module(f"allspark.{self.name}.steps")


KINDS: dict[str, Kind] = {
    kind.name: kind
    for kind in (
        Kind("region", "STAC imagery -> land-cover class map and probabilities, COG", "RegionConfig",
             "region-demo.yaml"),
        Kind("trajectories", "pedestrian trajectories (ETH/UCY or a table) -> K futures per agent, GeoParquet",
             "TrajectoriesConfig", "trajectories-eth.yaml"),
        Kind("sensors", "station tables of any layout (example: PRSA air quality) -> targets per station and time, "
             "or forecasts, GeoParquet",
             "SensorsConfig", "sensors-prsa.yaml"),
        Kind("traffic", "sensor network speeds (wide CSV or long table) -> speed per sensor and horizon, GeoParquet",
             "TrafficConfig", "traffic-losloop.yaml"),
    )
}

FILE_KINDS = tuple(name for name in KINDS if name != "region")
"""Kinds that read files rather than a STAC catalog; they share one generic flow."""


def get_kind(name: str) -> Kind:
    try:
        return KINDS[name]
    except KeyError:
        raise ConfigError(f"unknown kind of data {name!r}; known: {', '.join(KINDS)}") from None

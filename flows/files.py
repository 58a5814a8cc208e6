"""One flow for every kind of data read from files (trajectories, sensors, traffic).

The four steps of the kind's pipeline run as tasks (:func:`flows.common.run_steps`), one after
another in the flow's process: these kinds fit on one machine. The flow run is named after the kind.
"""

from __future__ import annotations

from typing import Any

from prefect import flow

from allspark.core.config import RunConfig
from allspark.core.steps import Published
from allspark.pipelines import get_kind
from flows.common import run_steps


@flow(name="files", log_prints=True)
def file_flow(kind: str, config: Any) -> Published:
    """Ingest, train (or use the config's checkpoint), predict and publish one run of ``kind``.

    ``config`` is the kind's run config, or its fields (a deployment's parameters): typed
    ``Any`` for Prefect, since each kind has its own config class, and validated here by that class.
    """
    if not isinstance(config, RunConfig):
        config = get_kind(kind).config_class().model_validate(config)
    return run_steps(kind, config)


def run_file_flow(config: RunConfig) -> Published:
    """Run the file flow for ``config`` (its kind comes from the config class)."""
    return file_flow.with_options(name=config.kind, flow_run_name=f"{config.kind}-{config.name}")(config.kind, config)

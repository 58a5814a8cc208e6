"""One flow for every kind of data read from files (trajectories, sensors, traffic).

The four steps of the kind's pipeline run as tasks (:func:`flows.common.run_steps`), one after
another in the flow's process: these kinds fit on one machine. The flow run is named after the kind.
"""

from __future__ import annotations

from prefect import flow

from allspark.core.config import RunConfig
from allspark.core.steps import Published
from flows.common import run_steps


@flow(name="files", log_prints=True)
def file_flow(kind: str, config: RunConfig) -> Published:
    """Ingest, train (or use the config's checkpoint), predict and publish one run of ``kind``."""
    return run_steps(kind, config)


def run_file_flow(config: RunConfig) -> Published:
    """Run the file flow for ``config`` (its kind comes from the config class)."""
    return file_flow.with_options(name=config.kind, flow_run_name=f"{config.kind}-{config.name}")(config.kind, config)

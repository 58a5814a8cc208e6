"""Thin Prefect flows over the ``allspark`` library.

Importing this package sets quiet, offline defaults for Prefect before Prefect itself is
imported: no server needed (a temporary local one under a project-local ``PREFECT_HOME``), a
start-up limit long enough for a 2-core machine, no telemetry. Values already in the
environment win, so a user pointing at a shared Prefect server keeps ``PREFECT_API_URL``.
"""

import os
from pathlib import Path

_DEFAULTS = {
    "PREFECT_HOME": str(Path.cwd() / ".prefect"),
    "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "120",
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "PREFECT_TELEMETRY_ENABLE_RESOURCE_METRICS": "false",
    "PREFECT_LOGGING_SERVER_LEVEL": "WARNING",
    "DASK_LOGGING__DISTRIBUTED": "error",
    "DASK_DISTRIBUTED__WORKER__DAEMON": "false",
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
}
for _key, _value in _DEFAULTS.items():
    os.environ.setdefault(_key, _value)

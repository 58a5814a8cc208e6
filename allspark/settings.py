"""Where things are: the cache, the work folders, and the catalogs, AOIs and example configs shipped with the package.

The shipped files are package data read through :mod:`importlib.resources`, so they are found
the same way from a source checkout, an editable install and a wheel. In the repository they live
at the top (``catalogs/``, ``deployments/``) where users look for them; the package links them in
(``allspark/resources``).
"""

from __future__ import annotations

import os
from importlib import resources
from importlib.resources.abc import Traversable
from pathlib import Path


def cache_dir() -> Path:
    """Root of AllSpark's on-disk cache (models, work folders, locks).

    ``$ALLSPARK_CACHE`` wins; otherwise ``~/.cache/allspark``. The directory is not created here.
    """
    return Path(os.environ.get("ALLSPARK_CACHE", Path.home() / ".cache" / "allspark"))


def work_root() -> Path:
    """Parent of every run's work folder (intermediate, resumable stores)."""
    return cache_dir() / "work"


def _resources() -> Traversable:
    return resources.files("allspark") / "resources"


def catalogs_dir() -> Path:
    """Named catalog configs and station files; ``$ALLSPARK_CATALOGS`` points elsewhere."""
    env = os.environ.get("ALLSPARK_CATALOGS")
    return Path(env) if env else Path(str(_resources() / "catalogs"))


def deployments_dir() -> Path:
    """The example run configs (one YAML per deployment)."""
    return Path(str(_resources() / "deployments"))


def aois_dir() -> Path:
    """Named areas of interest (GeoJSON) that deployments and backfills refer to."""
    return deployments_dir() / "aois"

"""Filesystem locations shared by the pipeline."""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    """Root of AllSpark's on-disk cache (models, intermediate files).

    ``$ALLSPARK_CACHE`` wins; otherwise ``~/.cache/allspark``. The directory is not created here.
    """
    return Path(os.environ.get("ALLSPARK_CACHE", Path.home() / ".cache" / "allspark"))

"""Filesystem locations shared by the pipeline."""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path


def cache_dir() -> Path:
    """Root of AllSpark's on-disk cache (models, intermediate files).

    ``$ALLSPARK_CACHE`` wins; otherwise ``~/.cache/allspark``. The directory is not created here.
    """
    return Path(os.environ.get("ALLSPARK_CACHE", Path.home() / ".cache" / "allspark"))


def file_stamps(paths: Iterable[Path]) -> list[tuple[str, int, int]]:
    """Path, size and modification time of each file: given to a cached step, a changed file invalidates it."""
    return [(str(path.resolve()), path.stat().st_size, path.stat().st_mtime_ns) for path in paths]

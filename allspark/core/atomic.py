"""Atomic writes: an output appears under its final name only when complete.

Files and folders (checkpoints, Zarr stores) are written under a hidden temporary name beside
their destination and moved into place with one ``os.replace``/rename, so a reader or a crash
never sees a half-written output, and a rerun finds either the complete output or none.
Hidden leftovers of a killed run are swept by :func:`remove_stale_temporaries`.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def atomic_file(final: Path) -> Iterator[Path]:
    """Yield a temporary path beside ``final``; move it into place only if the block succeeds.

    The path lies in a hidden folder (name starting with '.'), so that what a writer puts beside
    its destination (rio-cogeo's intermediate file) is hidden too.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{final.name}.", dir=final.parent) as staging:
        tmp = Path(staging) / final.name
        yield tmp
        os.chmod(tmp, 0o644)  # published outputs are for everyone
        os.replace(tmp, final)


@contextlib.contextmanager
def atomic_dir(final: Path) -> Iterator[Path]:
    """Yield an empty temporary folder beside ``final``; it replaces ``final`` only if the block succeeds.

    For checkpoints and Zarr stores: the folder exists under its final name only once complete.
    """
    final = Path(final)
    tmp = final.with_name(f".{final.name}.partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    shutil.rmtree(final, ignore_errors=True)
    tmp.rename(final)


def write_text(text: str, path: Path) -> None:
    with atomic_file(path) as tmp:
        tmp.write_text(text)


def write_json(payload: object, path: Path) -> None:
    write_text(json.dumps(payload, indent=2, default=str) + "\n", path)


def remove_stale_temporaries(folder: Path) -> None:
    """Delete the hidden temporary files and folders an interrupted run left in ``folder``."""
    if not folder.exists():
        return
    for leftover in folder.glob(".*"):
        if leftover.is_dir():
            shutil.rmtree(leftover, ignore_errors=True)
        else:
            leftover.unlink(missing_ok=True)

"""Atomic writes: an output appears under its final name only when complete.

Files and folders (checkpoints, Zarr stores) are written under a hidden temporary name beside
their destination and moved into place with one ``os.replace``/rename, so a reader or a crash
never sees a half-written output, and a rerun finds either the complete output or none.
A run's published outputs are switched in as one set (:func:`switched_folder`).
Hidden leftovers of a killed run are swept by :func:`remove_stale_temporaries`.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path

from allspark.errors import StorageError

RUNS = "runs"
"""The folder of each published set (``runs/<UTC time>``) inside an output folder."""
CURRENT = "current"
"""The symlink to the published set that readers see."""


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


@contextlib.contextmanager
def switched_folder(final: Path) -> Iterator[Path]:
    """Yield an empty folder for a complete set of outputs; if the block succeeds, ``final`` shows that set.

    The set is written to ``final/runs/.<time>.partial``, renamed to ``final/runs/<time>`` and switched
    in by replacing the symlink ``final/current`` (one atomic rename). Each entry of the set is
    reached at ``final/<entry>``, a symlink to ``current/<entry>``, so a reader of those paths (the
    STAC catalog, QGIS, a notebook) sees the previous complete set or the new one, never a mix, and
    a run killed at any moment leaves the previous set in place. The new set and the one it
    replaces are kept (a reader may still be reading that one); older ones are deleted.
    """
    final = Path(final)
    if final.exists() and not final.is_dir():
        raise StorageError(f"cannot publish to {final}: it exists and is not a folder")
    runs = final / RUNS
    runs.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(runs)
    remove_stale_temporaries(final)
    version = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S%fZ")
    previous = Path(os.readlink(final / CURRENT)).name if (final / CURRENT).is_symlink() else None
    with atomic_dir(runs / version) as staging:
        yield staging
    _replace_with_link(final / CURRENT, f"{RUNS}/{version}")
    for entry in sorted((runs / version).iterdir(), key=lambda p: p.name == "catalog.json"):  # catalog last
        _replace_with_link(final / entry.name, f"{CURRENT}/{entry.name}")
    for link in final.iterdir():  # names the new set no longer has
        if link.is_symlink() and os.readlink(link).startswith(f"{CURRENT}/") and not link.exists():
            link.unlink()
    for old in runs.iterdir():
        if old.name not in (version, previous) and not old.name.startswith("."):
            shutil.rmtree(old)


def _replace_with_link(path: Path, target: str) -> None:
    """Make ``path`` a symlink to ``target`` (relative), replacing what is there in one rename.

    A real folder there (an output folder published before sets were switched) is removed first.
    """
    if path.is_symlink() and os.readlink(path) == target:
        return
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    temporary = path.with_name(f".{path.name}.link")
    temporary.unlink(missing_ok=True)
    os.symlink(target, temporary)
    os.replace(temporary, path)

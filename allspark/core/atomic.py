"""Atomic writes: an output appears under its final name only when complete.

Files and folders (checkpoints, Zarr stores) are written under a hidden temporary name beside
their destination and moved into place with one ``os.replace``/rename, so a reader or a crash
never sees a half-written output, and a rerun finds either the complete output or none. Object
storage has no rename: an object is stored whole by one request, and a folder of objects (a Zarr
store, a bundle) is complete once its :data:`SUCCESS` marker is stored, written last
(:func:`is_complete` is the one check for both).
A run's published outputs are switched in as one set (:func:`published_set`): in a local folder
by a symlink (:func:`switched_folder`), on object storage by its entry catalog (:func:`uploaded_set`).
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
from urllib.parse import urlsplit

from allspark.core.location import (Location, exists, is_remote, join, list_folder, put_bytes, put_text, read_text,
                                    remove, upload_folder)
from allspark.errors import StorageError
from allspark.settings import cache_dir

RUNS = "runs"
"""The folder of each published set (``runs/<UTC time>``) inside an output folder."""
CURRENT = "current"
"""The symlink to the published set that readers see."""
CATALOG = "catalog.json"
"""The STAC catalog of a published set; in an output folder on object storage, the entry point of the current set."""
SUCCESS = "_SUCCESS"
"""The empty object that marks a folder on object storage complete (Hadoop's and Spark's name for it)."""


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
def atomic_dir(final: Location) -> Iterator[Location]:
    """Yield an empty folder for ``final`` (a path or URL); it is complete under its final name only if the block succeeds.

    For checkpoints and Zarr stores. A local folder is written beside ``final`` and renamed into
    place. On object storage, where nothing renames, the block writes under ``final`` itself (after
    removing what a killed run left there) and the :data:`SUCCESS` marker is stored last; readers
    ask :func:`is_complete`.
    """
    if is_remote(final):
        remove(final)
        yield final
        put_bytes(b"", join(final, SUCCESS))
        return
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


@contextlib.contextmanager
def staged_dir(final: Location) -> Iterator[Path]:
    """Yield an empty local folder for files that only a local path can write (a model bundle); it becomes
    ``final`` whole if the block succeeds: renamed into place, or uploaded with its :data:`SUCCESS` marker last."""
    if not is_remote(final):
        with atomic_dir(final) as tmp:
            yield tmp
        return
    with staging_folder() as staging, atomic_dir(final):
        yield Path(staging)
        upload_folder(Path(staging), final)


def staging_folder() -> tempfile.TemporaryDirectory:
    """A local temporary folder in the cache for what is built here and then uploaded (deleted afterwards).

    Its name carries this process's id: the folders of processes that no longer run (killed while
    uploading) are deleted first, those of other running processes are left alone.
    """
    root = cache_dir() / "staging"
    root.mkdir(parents=True, exist_ok=True)
    for leftover in root.glob(".staging-*"):
        owner = leftover.name.split("-")[1]
        if owner.isdigit() and not process_running(int(owner)):
            shutil.rmtree(leftover, ignore_errors=True)
    return tempfile.TemporaryDirectory(prefix=f".staging-{os.getpid()}-", dir=root)


def process_running(pid: int) -> bool:
    """Whether a process with this id runs on this machine (leftovers of processes that do not are stale)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def is_complete(folder: Location) -> bool:
    """Whether the folder written by :func:`atomic_dir` or :func:`staged_dir` is there and complete."""
    return exists(join(folder, SUCCESS)) if is_remote(folder) else Path(folder).exists()


def write_bytes(data: bytes, path: Location) -> None:
    """Write a local file through a temporary beside it, or an object in one request (atomic per object)."""
    if is_remote(path):
        put_bytes(data, path)
        return
    with atomic_file(path) as tmp:
        tmp.write_bytes(data)


def write_text(text: str, path: Location) -> None:
    write_bytes(text.encode(), path)


def write_json(payload: object, path: Location) -> None:
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
    version = _new_version()
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
            if old.is_dir() and not old.is_symlink():
                shutil.rmtree(old)
            else:
                old.unlink()  # a file there: left by a publish before catalogs were written in the set


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


def _new_version() -> str:
    """The name of a new published set: the UTC time to the microsecond, so later sets sort after earlier ones."""
    return datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S%fZ")


def published_set(location: Location) -> contextlib.AbstractContextManager[Path]:
    """Yield an empty local folder for a complete set of outputs (with its STAC catalog, ``catalog.json``);
    if the block succeeds, ``location`` shows that set.

    A local folder is switched by :func:`switched_folder`, an object-storage URL by :func:`uploaded_set`.
    """
    return uploaded_set(location) if is_remote(location) else switched_folder(location)


@contextlib.contextmanager
def uploaded_set(url: str) -> Iterator[Path]:
    """Yield an empty local folder for a complete set of outputs; if the block succeeds, ``url`` shows that set.

    Object storage has no rename and no links, so the set is built in a local temporary folder
    (:func:`staging_folder`), uploaded under ``url/runs/<time>/``, and then switched in by writing
    ``url/catalog.json`` last, in one request: the set's STAC catalog with its links pointing into
    ``runs/<time>/``. A reader who opens that entry catalog sees the previous complete set or the
    new one, never a mix, and a run killed while uploading leaves the previous entry catalog and its
    set in place. As :func:`switched_folder` does, the new set and the one it replaces are kept and
    older ones (a killed run's partial upload among them) are deleted.
    """
    version = _new_version()
    with staging_folder() as staging:
        folder = Path(staging) / version
        folder.mkdir()
        yield folder
        previous = _entry_version(url)
        upload_folder(folder, join(url, RUNS, version))
        put_text(_entry_catalog(folder / CATALOG, version), join(url, CATALOG))
    for old in list_folder(join(url, RUNS)):
        if old not in (version, previous):
            remove(join(url, RUNS, old))


def current_set(location: Location) -> Location:
    """Where the files of the set ``location`` shows are: the folder itself (its entries link to the
    current set), or ``runs/<time>`` on object storage, as its entry catalog names it."""
    if not is_remote(location):
        return location
    version = _entry_version(location)
    if version is None:
        raise StorageError(f"nothing is published at {location}: it has no {CATALOG}")
    return join(location, RUNS, version)


def _entry_catalog(catalog: Path, version: str) -> str:
    """The set's STAC catalog as the entry point one level up: its relative links lead into ``runs/<version>/``."""
    data = json.loads(catalog.read_text())
    for link in data["links"]:
        href = link["href"]
        if link["rel"] not in ("root", "self") and not urlsplit(href).scheme and not href.startswith("/"):
            link["href"] = f"./{RUNS}/{version}/{href.removeprefix('./')}"
    return json.dumps(data, indent=2) + "\n"


def _entry_version(url: str) -> str | None:
    """The set the entry catalog at ``url`` leads to, or None when there is none."""
    try:
        links = json.loads(read_text(join(url, CATALOG)))["links"]
    except FileNotFoundError:
        return None
    prefix = f"./{RUNS}/"
    return next((link["href"][len(prefix):].split("/")[0] for link in links if link["href"].startswith(prefix)),
                None)

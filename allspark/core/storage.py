"""The work folder of a run, keyed by its config and by what its input files hold; storage checks and run locks.

One way to cache: each step writes its store atomically into the run's work folder and skips the
work when the complete store is already there. The folder's name is the config's fingerprint
plus a digest of every input file's content, so a changed input (even replaced in place under the
same name) gets a fresh folder, and a deleted or half-written store is simply rebuilt.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import secrets
import shutil
import socket
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from urllib.parse import urlsplit

from filelock import FileLock, Timeout

from allspark.core.atomic import process_running
from allspark.core.bundle import CHECKPOINT_FORMAT
from allspark.core.location import Location, basename, check_storage, filesystem, is_remote, join
from allspark.errors import StorageError
from allspark.settings import cache_dir, work_root

# Room every run needs beyond its estimate: the checkpoint and its published copy, metadata, logs.
RESERVE_BYTES = 128 * 2**20
# Files up to this size are hashed in full; larger ones (imagery) by size, modification time and
# their first and last 256 KiB, which a replaced or rewritten file changes (a GeoTIFF's header,
# first, lists the offset and byte count of every tile).
FULL_HASH_BYTES = 4 * 2**20
EDGE_BYTES = 2**18


def content_digest(paths: Iterable[Path]) -> str:
    """A short digest of what the files hold (see :data:`FULL_HASH_BYTES`), in the given order."""
    digest = hashlib.sha256()
    for path in paths:
        path = Path(path)
        stat = path.stat()
        digest.update(f"{path.name}\0{stat.st_size}\0".encode())
        with open(path, "rb") as file:
            if stat.st_size <= FULL_HASH_BYTES:
                digest.update(file.read())
            else:
                digest.update(str(stat.st_mtime_ns).encode())
                digest.update(file.read(EDGE_BYTES))
                file.seek(-EDGE_BYTES, os.SEEK_END)
                digest.update(file.read(EDGE_BYTES))
    return digest.hexdigest()[:16]


def work_dir(name: str, fingerprint: str, inputs: Iterable[Path] = (), root: Location | None = None) -> Location:
    """The work folder of a run named ``name`` with config ``fingerprint`` over the files ``inputs``, under ``root``
    (a folder or URL; the cache's work folder by default). The checkpoint format is part of the key: a folder
    holding a model of an older format is not resumed."""
    inputs = list(inputs)
    content = content_digest(inputs) if inputs else ""
    key = hashlib.sha256(f"{CHECKPOINT_FORMAT}:{fingerprint}:{content}".encode()).hexdigest()[:16]
    return join(work_root() if root is None else root, f"{name}-{key}")


def total_size(paths: Iterable[Path]) -> int:
    """Bytes in the given files."""
    return sum(path.stat().st_size for path in paths)


def check_writable(*directories: Location, min_free_bytes: int = 0) -> None:
    """Before a run: each directory can be written, and its file system has room for the run.

    A directory that does not exist yet is probed through its nearest existing parent, and nothing
    is created: a probe file is written there and removed, which catches a read-only file system
    (EROFS), missing permission (EACCES) and a full disk (ENOSPC). Then the free space must hold
    ``min_free_bytes`` (the run's estimate) plus :data:`RESERVE_BYTES`. An object-storage URL is
    checked by :func:`~allspark.core.location.check_storage` instead (a bucket has no free space to
    check). Raises :class:`StorageError` naming the directory or URL.
    """
    needed = min_free_bytes + RESERVE_BYTES
    for directory in directories:
        if is_remote(directory):
            check_storage(directory)
            continue
        directory = Path(directory).absolute()
        existing = next(p for p in (directory, *directory.parents) if p.exists())
        if not existing.is_dir():
            raise StorageError(f"cannot write {directory}: {existing} exists and is not a folder")
        probe = existing / f".allspark-probe-{os.getpid()}-{secrets.token_hex(4)}"
        try:  # os-level calls: a full disk fails the write, and the probe is still removed (no stray file object)
            handle = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            try:
                os.write(handle, b"\0" * 4096)
                os.fsync(handle)
            finally:
                try:
                    os.close(handle)
                finally:
                    probe.unlink(missing_ok=True)
        except OSError as err:
            where = "" if existing == directory else f" (its nearest existing parent {existing})"
            code = errno.errorcode.get(err.errno, "")
            raise StorageError(f"cannot write {directory}{where}: {err.strerror or err} [{code}]") from None
        free = shutil.disk_usage(existing).free
        if free < needed:
            raise StorageError(
                f"not enough free space for {directory}: {_size(free)} free on its file system, the run needs about "
                f"{_size(needed)} ({_size(min_free_bytes)} estimated + {_size(RESERVE_BYTES)} reserve)"
            )


def _size(n: float) -> str:
    units = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"]
    i = 0
    while n >= 1024 and i < len(units) - 1:
        n, i = n / 1024, i + 1
    return f"{n:.1f} {units[i]}"


@contextlib.contextmanager
def folder_lock(folder: Location, on_wait: Callable[[str], None] | None = None) -> Iterator[None]:
    """Hold an inter-process (and inter-thread) lock on writing ``folder`` for the duration of the block.

    The lock file lives in ``<cache>/locks``, named after the folder's absolute path or URL: outside
    the folder, so that sweeping the folder of temporaries cannot remove it and a run that fails
    early leaves nothing in it. ``on_wait`` is told once when another run holds the lock and this
    one waits for it. A lock file is never deleted (that would let two runs hold "the" lock).
    An ``s3://`` folder is also locked across machines by a lock object (:func:`object_lock`).
    """
    folder = folder if is_remote(folder) else Path(folder).absolute()
    with _machine_lock(folder, on_wait):
        if is_remote(folder) and urlsplit(folder).scheme == "s3":
            check_storage(folder)  # a clear error for a bad bucket or credentials, before the lock object is written
            with object_lock(join(folder, LOCK_OBJECT), on_wait):
                yield
        else:
            yield


@contextlib.contextmanager
def _machine_lock(folder: Location, on_wait: Callable[[str], None] | None) -> Iterator[None]:
    """The lock file of ``folder`` in ``<cache>/locks``: held by one process (and thread) of this machine at a time."""
    path = cache_dir() / "locks" / f"{basename(folder)}-{hashlib.sha256(str(folder).encode()).hexdigest()[:16]}.lock"
    lock = FileLock(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            lock.acquire(timeout=0)
        except Timeout:
            if on_wait is not None:
                on_wait(f"another run is writing {folder}; waiting for it to finish (lock {path})")
            lock.acquire()
    except OSError as err:
        code = errno.errorcode.get(err.errno, "")
        raise StorageError(f"cannot lock {folder} for writing: cannot create {path}: {err.strerror or err} "
                           f"[{code}]") from None
    try:
        yield
    finally:
        lock.release()


LOCK_OBJECT = ".allspark-lock"
"""The lock object of a folder on object storage, inside it (deleted when the lock is released)."""
LEASE_SECONDS = 120
"""How long a lock object holds without renewal: a run killed while holding one blocks others this long at most."""
RENEW_SECONDS = 30
POLL_SECONDS = 1.0


@contextlib.contextmanager
def object_lock(url: str, on_wait: Callable[[str], None] | None = None) -> Iterator[None]:
    """Hold the lock object ``url`` on S3 for the duration of the block, across machines.

    Taken by a conditional write (``If-None-Match: *``: only when no lock object exists), so of two
    runs on two machines exactly one gets it; the other waits and polls. The holder renews its
    lease every :data:`RENEW_SECONDS` in a thread; a lock whose lease expired (its holder died), or
    whose holder was a process of this machine that is gone, is taken over by a write conditional
    on its ETag (``If-Match``), which again only one waiter wins.
    The lock object is deleted on release. Clocks of the machines are assumed to agree within the lease.
    """
    fs = filesystem(url)
    owner = f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"
    etag = _acquire(fs, url, owner, on_wait)
    stop = threading.Event()
    renewer = threading.Thread(target=_renew, args=(fs, url, owner, etag, stop), daemon=True,
                               name=f"renew {url}")
    renewer.start()
    try:
        yield
    finally:
        stop.set()
        renewer.join()
        with contextlib.suppress(FileNotFoundError, ValueError):
            if json.loads(fs.cat_file(url))["owner"] == owner:
                fs.rm_file(url)


def _lease(owner: str) -> bytes:
    return json.dumps({"owner": owner, "expires": time.time() + LEASE_SECONDS}).encode()


def _acquire(fs, url: str, owner: str, on_wait: Callable[[str], None] | None) -> str:
    """Write the lock object when there is none, or over an expired one; wait while another holds it. Return its ETag."""
    told = False
    while True:
        try:
            return fs.pipe_file(url, _lease(owner), mode="create")["ETag"]
        except FileExistsError:
            pass
        try:
            etag = fs.info(url)["ETag"]
            held = json.loads(fs.cat_file(url))
        except FileNotFoundError:
            continue  # released meanwhile
        if held["expires"] < time.time() or _died_on_this_machine(held["owner"]):
            try:
                return fs.pipe_file(url, _lease(owner), IfMatch=etag)["ETag"]
            except (FileExistsError, FileNotFoundError):
                continue  # another waiter took it over first
        if not told and on_wait is not None:
            on_wait(f"{held['owner']} holds the lock {url}; waiting for it to be released")
            told = True
        time.sleep(POLL_SECONDS)


def _died_on_this_machine(owner: str) -> bool:
    """Whether the lock's owner (``host:pid:token``) was a process of this machine that no longer runs."""
    host, pid, _ = owner.rsplit(":", 2)
    return host == socket.gethostname() and pid.isdigit() and not process_running(int(pid))


def _renew(fs, url: str, owner: str, etag: str, stop: threading.Event) -> None:
    """Extend the lease every :data:`RENEW_SECONDS` until ``stop``; stop early if the lock was taken over."""
    while not stop.wait(RENEW_SECONDS):
        try:
            etag = fs.pipe_file(url, _lease(owner), IfMatch=etag)["ETag"]
        except (FileExistsError, FileNotFoundError, OSError):
            return

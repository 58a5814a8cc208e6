"""Where outputs, work stores and checkpoints live: a local folder or an object-storage URL (``s3://``, ``gs://``,
``az://``), through fsspec.

A location is a :class:`~pathlib.Path` (a local path, or a ``file://`` URL made one) or the URL of a
remote folder as a string; :func:`parse_location` makes one from what a user gives and refuses
anything else. Remote locations go through fsspec rather than obstore: fsspec is one API for
s3/gs/az/file that zarr (``FsspecStore``), pystac (a :class:`StacIO`), geopandas and pandas all
accept as is (the Zarr work stores on a bucket go through :func:`zarr_store`); obstore would need
an adapter for each of them.

Credentials and endpoints come only from the environment and the tools' own profiles
(``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY``, ``AWS_PROFILE``, ``AWS_ENDPOINT_URL``,
``GOOGLE_APPLICATION_CREDENTIALS``, ``AZURE_STORAGE_ACCOUNT_NAME``...), never from a run config,
which is published with the outputs. :func:`check_storage` tries them before a run does any work.
"""

from __future__ import annotations

import functools
import os
import secrets
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import unquote, urlsplit

import pystac
from fsspec import AbstractFileSystem
from pydantic import PlainValidator
from pystac.stac_io import DefaultStacIO

from allspark.errors import StorageError

REMOTE_SCHEMES = {"s3": "s3fs", "gs": "gcsfs", "az": "adlfs", "abfs": "adlfs"}
"""URL schemes of object storage, with the fsspec package that reads and writes each."""
CREDENTIALS = {
    "s3": "set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or AWS_PROFILE (and AWS_ENDPOINT_URL for a server "
          "other than AWS)",
    "gs": "set GOOGLE_APPLICATION_CREDENTIALS or run `gcloud auth application-default login`",
    "az": "set AZURE_STORAGE_ACCOUNT_NAME with AZURE_STORAGE_ACCOUNT_KEY, or AZURE_STORAGE_CONNECTION_STRING",
}
CREDENTIALS["abfs"] = CREDENTIALS["az"]
_ENVIRONMENT_PREFIXES = ("AWS_", "GOOGLE_", "GCLOUD_", "AZURE_")
"""Environment variables that configure the filesystems: a change of any of them gives a new filesystem."""

Location = Path | str
"""A local folder or file (a Path), or the URL of a remote one (a string)."""


def parse_location(value: str | Path) -> Location:
    """A local path (``file://`` URLs included) as a Path, an object-storage URL as a string without a trailing slash.

    Raises :class:`StorageError` naming the URL and the supported schemes for any other URL.
    """
    if not isinstance(value, str | Path):
        raise ValueError(f"expected a path or a URL, got {value!r}")
    if isinstance(value, Path) or "://" not in value:
        return Path(value)
    parts = urlsplit(value)
    scheme = parts.scheme.lower()
    if scheme == "file":
        if parts.netloc not in ("", "localhost"):
            raise StorageError(f"cannot use {value}: a file:// URL names a folder on this machine (file:///path)")
        return Path(unquote(parts.path))
    if scheme not in REMOTE_SCHEMES:
        supported = ", ".join(f"{s}://" for s in ("file", *REMOTE_SCHEMES))
        raise StorageError(f"cannot use {value}: the scheme {scheme}:// is not supported (use a local path or one "
                           f"of {supported})")
    if not parts.netloc:
        raise StorageError(f"cannot use {value}: it names no bucket or container ({scheme}://BUCKET/PREFIX)")
    return f"{scheme}://{parts.netloc}{parts.path}".rstrip("/")


LocationField = Annotated[Location, PlainValidator(parse_location)]
"""A config field holding a location: a path stays a Path, an object-storage URL a string."""


def is_remote(location: Location) -> bool:
    return isinstance(location, str)


def basename(location: Location) -> str:
    """The last part of a path or URL (a folder's or file's name)."""
    return str(location).rstrip("/").rsplit("/", 1)[-1]


def join(location: Location, *parts: str) -> Location:
    """``location`` with ``parts`` appended (``/`` between them for a URL)."""
    if is_remote(location):
        return "/".join([location, *parts])
    return Path(location).joinpath(*parts)


def filesystem(url: str) -> AbstractFileSystem:
    """The fsspec filesystem of ``url``'s scheme, configured by the environment as it is now.

    Reused while the environment variables that configure it stay the same (in this process),
    and without a listings cache, so objects written by other processes are seen at once. A
    missing filesystem package is a :class:`StorageError` saying what to install.
    """
    environment = tuple(sorted((k, v) for k, v in os.environ.items() if k.startswith(_ENVIRONMENT_PREFIXES)))
    return _filesystem(urlsplit(url).scheme, environment, os.getpid())


@functools.lru_cache(maxsize=8)
def _filesystem(scheme: str, environment: tuple, pid: int) -> AbstractFileSystem:
    import fsspec

    try:
        return fsspec.filesystem(scheme, skip_instance_cache=True, use_listings_cache=False)
    except ImportError:
        package = REMOTE_SCHEMES[scheme]
        raise StorageError(f"{scheme}:// URLs need the package {package}: pip install {package}") from None


def check_storage(url: str) -> None:
    """Before a run: ``url`` can be written, probed by storing and deleting a tiny hidden object there.

    Raises :class:`StorageError` naming the URL and what to do, for missing credentials, an
    unknown bucket, or storage that refuses the write or the delete (a read-only bucket).
    """
    fs = filesystem(url)
    scheme, bucket = urlsplit(url).scheme, urlsplit(url).netloc
    probe = f"{url}/.allspark-probe-{os.getpid()}-{secrets.token_hex(4)}"
    try:
        fs.pipe_file(probe, b"")
        fs.rm_file(probe)
    except FileNotFoundError:
        raise StorageError(f"cannot write {url}: the bucket {bucket!r} does not exist; create it or correct the "
                           f"URL") from None
    except PermissionError as err:
        raise StorageError(f"cannot write {url}: the storage refused to store (or delete) a test object there "
                           f"({err}), so it is read-only for these credentials; use a writable bucket or "
                           f"credentials allowed to write and delete objects") from None
    except Exception as err:  # each filesystem has its own errors; credentials are named in theirs
        if "credential" not in f"{type(err).__name__} {err}".lower():
            raise StorageError(f"cannot write {url}: {type(err).__name__}: {err}") from None
        raise StorageError(f"cannot write {url}: no {scheme}:// credentials found ({err}); "
                           f"{CREDENTIALS[scheme]}") from None


def exists(location: Location) -> bool:
    if is_remote(location):
        return filesystem(location).exists(location)
    return Path(location).exists()


def read_bytes(location: Location) -> bytes:
    if is_remote(location):
        return filesystem(location).cat_file(location)
    return Path(location).read_bytes()


def read_text(location: Location) -> str:
    return read_bytes(location).decode()


def put_bytes(data: bytes, url: str) -> None:
    """Store ``data`` at ``url`` in one request: readers see the old object or the new one, never a part."""
    filesystem(url).pipe_file(url, data)


def put_text(text: str, url: str) -> None:
    put_bytes(text.encode(), url)


def upload(source: Path, url: str) -> None:
    """Copy the local file ``source`` to ``url``."""
    filesystem(url).put_file(str(source), url)


def upload_folder(source: Path, url: str) -> None:
    """Copy every file under the local folder ``source`` to the same relative keys under ``url``."""
    for file in sorted(path for path in Path(source).rglob("*") if path.is_file()):
        upload(file, join(url, file.relative_to(source).as_posix()))


def download_folder(url: str, destination: Path) -> None:
    """Copy every object under ``url`` to the same relative paths under the local folder ``destination``."""
    fs = filesystem(url)
    root = fs._strip_protocol(url).rstrip("/")
    for key in fs.find(url):
        target = Path(destination) / key[len(root) + 1:]
        target.parent.mkdir(parents=True, exist_ok=True)
        fs.get_file(key, str(target))


def listing(url: str) -> dict[str, dict]:
    """Every object under ``url``: its key relative to ``url``, with its size and ETag (what says it changed)."""
    fs = filesystem(url)
    root = fs._strip_protocol(url).rstrip("/")
    return {key[len(root) + 1:]: {"size": info.get("size"), "etag": info.get("ETag") or info.get("etag")}
            for key, info in sorted(fs.find(url, detail=True).items())}


def list_folder(location: Location) -> list[str]:
    """The names of the entries directly under ``location`` (none if there is nothing there)."""
    if not is_remote(location):
        return sorted(path.name for path in Path(location).iterdir()) if Path(location).is_dir() else []
    fs = filesystem(location)
    try:
        return sorted(entry.rstrip("/").rsplit("/", 1)[-1] for entry in fs.ls(location, detail=False))
    except FileNotFoundError:
        return []


def remove(url: str) -> None:
    """Delete ``url`` and everything under it (nothing when it is not there)."""
    fs = filesystem(url)
    if fs.exists(url):
        fs.rm(url, recursive=True)


def glob(location: Location, pattern: str) -> list[Location]:
    """The locations under ``location`` matching ``pattern`` (``*/catalog.json``), sorted."""
    if not is_remote(location):
        return sorted(Path(location).glob(pattern))
    fs = filesystem(location)
    return sorted(fs.unstrip_protocol(path) for path in fs.glob(f"{location}/{pattern}"))


def zarr_store(location: Location, read_only: bool = False) -> Any:
    """What :func:`zarr.open_group` opens ``location`` through: the local path, or an fsspec store on the bucket
    (asynchronous, without a listings cache, credentials from the environment)."""
    if not is_remote(location):
        return str(location)
    from zarr.storage import FsspecStore

    return FsspecStore.from_url(location, read_only=read_only, storage_options={"use_listings_cache": False})


class StorageStacIO(DefaultStacIO):
    """pystac's reader and writer, with object-storage hrefs going through fsspec (credentials from the environment)."""

    def read_text(self, source: Any, *args: Any, **kwargs: Any) -> str:
        href = str(os.fspath(source))
        if urlsplit(href).scheme in REMOTE_SCHEMES:
            return read_text(href)
        return super().read_text(source, *args, **kwargs)

    def write_text(self, dest: Any, txt: str, *args: Any, **kwargs: Any) -> None:
        href = str(os.fspath(dest))
        if urlsplit(href).scheme in REMOTE_SCHEMES:
            put_text(txt, href)
            return
        super().write_text(dest, txt, *args, **kwargs)


def read_catalog(location: Location) -> pystac.Catalog:
    """The STAC catalog (or collection) at ``location``; the items and catalogs it links are read the same way."""
    return pystac.Catalog.from_file(str(location), stac_io=StorageStacIO())

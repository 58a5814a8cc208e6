"""``make stac-api``: a STAC API on 127.0.0.1 serving your own items, the stack Planetary Computer runs.

    python -m flows.stac_api [--port 8082] SOURCE...

Each SOURCE is a static STAC catalog or collection (``catalog.json``, ``collection.json``; every
collection and item under it is served) or a file of items (one item or a FeatureCollection in
JSON, or one item per line in ``.ndjson``, each naming its ``collection``). The API is
stac-fastapi-pgstac over a throwaway PostgreSQL cluster with PostGIS and pgstac: the cluster is
initialised in a temporary folder, listens on 127.0.0.1 only, gets ``pypgstac`` migrations and the
items, and is deleted when the API stops (Ctrl-C). Asset hrefs of local files become absolute
``file://`` URLs first: a relative or bare path would resolve against the API's own URL. Point a catalog config at it::

    kind: api
    url_or_path: http://127.0.0.1:8082
    collection: <the collection id>

:func:`local_stac_api` is the same as a context manager; the tests start theirs with it.
PostgreSQL's binaries are looked up under ``/usr/lib/postgresql/*/bin`` (or ``ALLSPARK_PG_BIN``);
PostGIS is the Debian package ``postgresql-15-postgis-3``, which ``make stac-api`` and ``make
test`` install when it is missing. Run as root, the database runs as the ``postgres`` user.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import pwd
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pystac

from allspark.errors import AllSparkError, InputError
from flows.serve import HOST, dies_with_this_process, free_port, stop_process

DEFAULT_PORT = 8082
API_SETTINGS = {"STAC_FASTAPI_TITLE": "AllSpark local STAC API", "STAC_FASTAPI_LANDING_ID": "allspark-local",
                "STAC_FASTAPI_DESCRIPTION": "stac-fastapi-pgstac serving local items (make stac-api)",
                "STAC_FASTAPI_VERSION": "1.0.0"}
DATABASE = "stac"
START_TIMEOUT = 60.0  # seconds for PostgreSQL or the API to answer; both take a few seconds here


class StacApiError(AllSparkError):
    """PostgreSQL, PostGIS or the API could not be started; the message says why and what to install."""


@dataclass(frozen=True)
class StacContent:
    """The collections and items to serve, as STAC dicts with absolute asset hrefs."""

    collections: list[dict[str, Any]]
    items: list[dict[str, Any]]


def read_sources(sources: Sequence[Path]) -> StacContent:
    """The collections and items of static catalogs, collections and item files (see the module docstring)."""
    collections: dict[str, dict[str, Any]] = {}
    items: list[dict[str, Any]] = []
    for source in sources:
        if not source.is_file():
            raise InputError(f"STAC source {source} does not exist; expected a catalog.json, collection.json, "
                             f"item JSON or items .ndjson")
        if source.suffix == ".ndjson":
            items += [_item_dict(pystac.Item.from_dict(json.loads(line)), source)
                      for line in source.read_text().splitlines() if line.strip()]
            continue
        data = json.loads(source.read_text())
        if data.get("type") == "FeatureCollection":
            items += [_item_dict(pystac.Item.from_dict(feature), source) for feature in data.get("features", [])]
        elif data.get("type") == "Feature":
            items.append(_item_dict(pystac.Item.from_file(str(source)), source))
        elif data.get("type") in ("Catalog", "Collection"):
            root = pystac.read_file(str(source))
            for collection in [root, *root.get_all_collections()]:
                if isinstance(collection, pystac.Collection):
                    collections[collection.id] = _without_links(collection.to_dict(transform_hrefs=False))
            items += [_item_dict(item, source) for item in root.get_items(recursive=True)]
        else:
            raise InputError(f"STAC source {source} has type {data.get('type')!r}; expected a Catalog, Collection, "
                             f"Feature (an item) or FeatureCollection")
    for item in items:
        if item["collection"] not in collections:
            collections[item["collection"]] = _collection_of(item["collection"], [i for i in items
                                                                                  if i["collection"] == item["collection"]])
    return StacContent(list(collections.values()), items)


def _item_dict(item: pystac.Item, source: Path) -> dict[str, Any]:
    """An item as pgstac stores it: absolute asset hrefs, a collection id, no links to local files."""
    if not item.collection_id:
        raise InputError(f"STAC item {item.id!r} of {source} names no collection; pgstac files every item under one")
    for asset in item.assets.values():
        href = asset.get_absolute_href()
        if href is None:
            raise InputError(f"asset href {asset.href!r} of item {item.id!r} in {source} is relative and the item has "
                             f"no location to resolve it against")
        asset.href = _as_url(href)
    data = item.to_dict(transform_hrefs=False)
    data["collection"] = item.collection_id
    data["links"] = [{**link.to_dict(), "href": _as_url(link.get_absolute_href())} for link in item.links
                     if link.rel not in STRUCTURAL_LINKS]  # e.g. a label item's source links
    return data


def _as_url(href: str) -> str:
    """A local file's absolute path as a ``file://`` URL: a bare path would resolve against the API's own URL."""
    return href if "://" in href else Path(href).as_uri()


STRUCTURAL_LINKS = {"self", "root", "parent", "child", "item", "collection"}
"""Links of the static files that the API replaces with its own."""


def _without_links(data: dict[str, Any]) -> dict[str, Any]:
    return {**data, "links": []}


def _collection_of(collection_id: str, items: Iterable[dict[str, Any]]) -> dict[str, Any]:
    """A minimal collection for items whose file names one that no source holds: their joint extent."""
    items = list(items)
    boxes = [item["bbox"] for item in items]
    times = sorted(item["properties"].get("datetime") or item["properties"]["start_datetime"] for item in items)
    bbox = [min(b[0] for b in boxes), min(b[1] for b in boxes), max(b[2] for b in boxes), max(b[3] for b in boxes)]
    return {"type": "Collection", "stac_version": "1.1.0", "id": collection_id, "license": "other", "links": [],
            "description": f"Items of collection {collection_id} served by make stac-api",
            "extent": {"spatial": {"bbox": [bbox]}, "temporal": {"interval": [[times[0], times[-1]]]}}}


# -- PostgreSQL with PostGIS --------------------------------------------------------------------


def postgres_bin() -> Path:
    """The folder of PostgreSQL's server binaries (``initdb``, ``postgres``), newest version first."""
    if os.environ.get("ALLSPARK_PG_BIN"):
        return Path(os.environ["ALLSPARK_PG_BIN"])
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"), key=lambda p: int(p.parts[-3]), reverse=True)
    if not found:
        raise StacApiError("PostgreSQL's server binaries are not installed (no /usr/lib/postgresql/*/bin/initdb); "
                           "install PostgreSQL and PostGIS (Debian: postgresql-15-postgis-3) or set ALLSPARK_PG_BIN")
    return found[0].parent


def check_postgis(bin_dir: Path) -> None:
    """PostGIS must be installed for this PostgreSQL version: pgstac's geometry columns need it."""
    version = bin_dir.parent.name
    if not (Path("/usr/share/postgresql") / version / "extension" / "postgis.control").is_file():
        raise StacApiError(f"PostGIS is not installed for PostgreSQL {version}: as root, `apt-get update && "
                           f"apt-get install -y postgresql-{version}-postgis-3` (make stac-api does this)")


@dataclass(frozen=True)
class Database:
    """A database of a local PostgreSQL server, reached over TCP as the ``postgres`` user without a password."""

    port: int
    name: str = DATABASE

    @property
    def dsn(self) -> str:
        return f"postgresql://postgres@{HOST}:{self.port}/{self.name}"

    def environment(self) -> dict[str, str]:
        """The ``PG*`` variables that libpq clients (stac-fastapi-pgstac's settings) read."""
        return {"PGHOST": HOST, "PGPORT": str(self.port), "PGUSER": "postgres", "PGPASSWORD": "",
                "PGDATABASE": self.name}


@contextlib.contextmanager
def postgres_cluster() -> Iterator[Database]:
    """A throwaway PostgreSQL cluster on 127.0.0.1 with one empty database.

    The cluster lives in a fresh temporary folder, deleted afterwards. The server process dies with
    this process (Linux's parent-death signal), so a killed test run leaves no database running.
    """
    bin_dir = postgres_bin()
    check_postgis(bin_dir)
    user = pwd.getpwnam("postgres") if os.geteuid() == 0 else None  # PostgreSQL refuses to run as root
    run_as = {"user": user.pw_uid, "group": user.pw_gid} if user else {}
    folder = Path(tempfile.mkdtemp(prefix="allspark-stac-db-"))  # not under pytest's folders: those are root's only
    try:
        if user:
            os.chown(folder, user.pw_uid, user.pw_gid)
        initdb = subprocess.run([str(bin_dir / "initdb"), "-D", str(folder / "data"), "-U", "postgres",
                                 "--auth=trust", "-E", "UTF8"], capture_output=True, **run_as)
        if initdb.returncode != 0:
            raise StacApiError(f"initdb failed: {initdb.stderr.decode(errors='replace')[-2000:]}")
        database = Database(port=free_port())
        log_path = folder / "postgres.log"
        with log_path.open("w") as log:
            server = subprocess.Popen(
                [str(bin_dir / "postgres"), "-D", str(folder / "data"), "-p", str(database.port),
                 "-c", f"listen_addresses={HOST}", "-c", f"unix_socket_directories={folder}", "-c", "fsync=off"],
                stdout=log, stderr=subprocess.STDOUT, preexec_fn=dies_with_this_process(), **run_as)
            try:
                _wait(lambda: _create_database(database), "PostgreSQL", server, log_path)
                yield database
            finally:
                stop_process(server, signal.SIGINT)  # PostgreSQL's "fast" shutdown
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _create_database(database: Database) -> bool:
    """Create the database once the server accepts connections; False while it does not yet."""
    import psycopg

    try:
        with psycopg.connect(Database(database.port, "postgres").dsn, autocommit=True) as conn:
            conn.execute(f"CREATE DATABASE {database.name}")
        return True
    except psycopg.OperationalError:
        return False


def _wait(ready: Callable[[], bool], what: str, process: subprocess.Popen, log: Path) -> None:
    """Poll ``ready()`` until true; fail with the end of ``log`` when the process stops or time runs out."""
    deadline = time.monotonic() + START_TIMEOUT
    while not ready():
        if process.poll() is not None or time.monotonic() > deadline:
            tail = log.read_text(errors="replace")[-2000:] if log.is_file() else ""
            state = "stopped" if process.poll() is not None else f"was not ready after {START_TIMEOUT:.0f} s"
            raise StacApiError(f"{what} {state} while starting; its log ({log}) ends with:\n{tail}")
        time.sleep(0.2)


def load_pgstac(database: Database, content: StacContent) -> None:
    """Install pgstac's schema (``pypgstac migrate``) and load the collections, then the items."""
    from pypgstac.db import PgstacDB
    from pypgstac.load import Loader, Methods
    from pypgstac.migrate import Migrate

    with PgstacDB(dsn=database.dsn) as db:
        Migrate(db).run_migration()
        loader = Loader(db)
        loader.load_collections(iter(content.collections), Methods.upsert)
        loader.load_items(iter(content.items), Methods.upsert)
        db.connect().execute("SELECT upsert_queryables(%s::jsonb, NULL, NULL, false)",
                             [json.dumps(queryables(content.items))])
        db.connect().commit()


def queryables(items: Iterable[dict[str, Any]]) -> dict[str, Any]:
    """A queryables schema typing every numeric item property as a number.

    pgstac compares and sorts a property it has no queryable for as text ("5" after "45"), so
    ``sortby: eo:cloud_cover`` would misorder; Planetary Computer registers its collections' queryables
    the same way.
    """
    numeric = sorted({key for item in items for key, value in item["properties"].items()
                      if isinstance(value, int | float) and not isinstance(value, bool)})
    return {"$schema": "https://json-schema.org/draft/2019-09/schema", "type": "object",
            "properties": {key: {"type": "number"} for key in numeric}}


# -- the API ------------------------------------------------------------------------------------


def api_ready(url: str) -> bool:
    """Whether the STAC API at ``url`` answers its landing page."""
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError):
        return False


@contextlib.contextmanager
def local_stac_api(sources: Sequence[Path] | StacContent, port: int | None = None,
                   log_file: Path | None = None) -> Iterator[str]:
    """Serve ``sources`` (paths, see :func:`read_sources`, or read content) from a throwaway database; yields the
    API's root URL. The API's output goes to ``log_file`` (default: a temporary file, shown when it fails)."""
    content = sources if isinstance(sources, StacContent) else read_sources(sources)
    port = port or free_port()
    url = f"http://{HOST}:{port}"
    with postgres_cluster() as database, contextlib.ExitStack() as stack:
        load_pgstac(database, content)
        if log_file is None:
            log_file = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="allspark-stac-api-"))) / "api.log"
        log = stack.enter_context(log_file.open("w"))
        api = subprocess.Popen(
            [sys.executable, "-m", "uvicorn", "stac_fastapi.pgstac.app:create_app", "--factory", "--host", HOST,
             "--port", str(port), "--log-level", "warning"],
            env={**os.environ, **API_SETTINGS, **database.environment()}, stdout=log, stderr=subprocess.STDOUT,
            preexec_fn=dies_with_this_process())
        try:
            _wait(lambda: api_ready(url), "the STAC API (stac-fastapi-pgstac)", api, log_file)
            yield url
        finally:
            stop_process(api, timeout=10)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m flows.stac_api", description=__doc__.split("\n\n")[0])
    parser.add_argument("sources", nargs="+", type=Path, help="static catalogs, collections or item files")
    parser.add_argument("--port", type=int, default=int(os.environ.get("ALLSPARK_STAC_API_PORT", DEFAULT_PORT)))
    args = parser.parse_args(argv)
    try:
        content = read_sources(args.sources)
        with local_stac_api(content, port=args.port) as url:
            ids = sorted({item["collection"] for item in content.items})
            print(f"STAC API at {url}: {len(content.items)} items in collection(s) {', '.join(ids)}. Ctrl-C stops it.",
                  flush=True)
            with contextlib.suppress(KeyboardInterrupt):
                signal.pause()
    except AllSparkError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

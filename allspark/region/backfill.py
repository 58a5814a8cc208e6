"""Backfills: the region pipeline over areas of interest and a date range, one run per window.

The library half, without Prefect: the windows of a date range, the (AOI, window) jobs with their
region configs and deterministic output folders (``<output_dir>/<backfill>/<aoi>-<start>_<end>``),
whether a job is already published (read from its output STAC catalog by
:func:`allspark.region.steps.published_catalog`, not from a side file), a root STAC catalog over the
windows' catalogs, and the summary report. ``flows/backfill.py`` fans the jobs out.
"""

from __future__ import annotations

import calendar
import datetime as dt
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Literal, NamedTuple

import pystac
from pydantic import BaseModel, ConfigDict

from allspark.core.atomic import write_json, write_text
from allspark.core.location import Location, basename, glob, join
from allspark.core.storage import folder_lock
from allspark.errors import ConfigError
from allspark.raster.catalog import AOIError, NoItemsFound, load_aoi
from allspark.raster.load import AllNoDataError
from allspark.region.config import RegionConfig
from allspark.settings import aois_dir

NAMED_STEPS = {"daily": "P1D", "weekly": "P1W", "monthly": "P1M", "quarterly": "P3M", "yearly": "P1Y"}
_DURATION = re.compile(r"P(?:(\d+)Y)?(?:(\d+)M)?(?:(\d+)W)?(?:(\d+)D)?")
_SAFE_NAME = re.compile(r"^[A-Za-z0-9_.-]+$")

# A window without imagery is "empty", not a failure: no STAC item over the AOI in the window, or
# items without a single valid pixel there.
EMPTY_ERRORS = (NoItemsFound, AllNoDataError)

Status = Literal["published", "skipped", "empty", "failed"]
STATUSES: tuple[Status, ...] = ("published", "skipped", "empty", "failed")
REPORT_NAME = "backfill-report"


class Step(NamedTuple):
    """A window length in whole months and days (months first, clamped to a month's last day)."""

    months: int
    days: int


def parse_step(text: str) -> Step:
    """``daily``, ``weekly``, ``monthly``, ``quarterly``, ``yearly`` or an ISO 8601 duration of whole
    years, months, weeks and days (``P14D``, ``P2W``, ``P1M``, ``P1Y6M``)."""
    duration = NAMED_STEPS.get(text.lower(), text.upper())
    match = _DURATION.fullmatch(duration)
    if match is None or duration == "P":
        raise ConfigError(
            f"step {text!r} is neither one of {', '.join(NAMED_STEPS)} nor an ISO 8601 duration of years, months, "
            f"weeks and days such as P14D or P1M"
        )
    years, months, weeks, days = (int(value or 0) for value in match.groups())
    step = Step(months=12 * years + months, days=7 * weeks + days)
    if step == (0, 0):
        raise ConfigError(f"step {text!r} is zero")
    return step


def _shift(day: dt.date, months: int, days: int) -> dt.date:
    """``day`` plus whole months (the day clamped to the month's length), then days."""
    index = day.month - 1 + months
    year, month = day.year + index // 12, index % 12 + 1
    return dt.date(year, month, min(day.day, calendar.monthrange(year, month)[1])) + dt.timedelta(days=days)


class Window(BaseModel):
    """A date window, both ends inclusive."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    start: dt.date
    end: dt.date

    @property
    def label(self) -> str:
        return f"{self.start.isoformat()}_{self.end.isoformat()}"


def date_windows(start: dt.date, end: dt.date, step: str) -> list[Window]:
    """Consecutive windows from ``start`` to ``end`` (inclusive), each ``step`` long; the last one ends at ``end``.

    The n-th window starts at ``start`` plus n steps (counted from ``start``, so monthly windows from
    the 31st keep to month ends), and ends the day before the next one starts.
    """
    if end < start:
        raise ConfigError(f"backfill range ends ({end}) before it starts ({start})")
    months, days = parse_step(step)
    windows: list[Window] = []
    while (first := _shift(start, len(windows) * months, len(windows) * days)) <= end:
        after = _shift(start, (len(windows) + 1) * months, (len(windows) + 1) * days)
        windows.append(Window(start=first, end=min(after - dt.timedelta(days=1), end)))
    return windows


class AOI(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    name: str
    path: Path


def resolve_aoi(reference: str | Path) -> AOI:
    """A GeoJSON file, or the name of one in :func:`aois_dir`; read and checked now (errors name it).

    Its name (the file's stem, other characters than letters, digits, ``_.-`` made ``-``) starts
    the output folder of each of its windows.
    """
    path = Path(reference)
    if not path.is_file():
        path = aois_dir() / f"{reference}.geojson"
        if not path.is_file():
            known = sorted(p.stem for p in aois_dir().glob("*.geojson"))
            raise AOIError(
                f"AOI {str(reference)!r} is neither a GeoJSON file nor a named AOI in {aois_dir()} "
                f"(known: {', '.join(known) or 'none'})"
            )
    load_aoi(path)
    return AOI(name=re.sub(r"[^A-Za-z0-9_.-]+", "-", path.stem).strip("-") or "aoi", path=path.resolve())


class WindowResult(BaseModel):
    """What happened to one (AOI, window) job; ``detail`` is the catalog, or why it is empty or failed."""

    model_config = ConfigDict(extra="forbid")
    aoi: str
    start: dt.date
    end: dt.date
    name: str
    status: Status
    detail: str = ""
    started: dt.datetime | None = None
    finished: dt.datetime | None = None

    @property
    def seconds(self) -> float | None:
        return (self.finished - self.started).total_seconds() if self.started and self.finished else None


class WindowJob(BaseModel):
    """One region run of a backfill: an AOI over a window, with its full region config."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    aoi: str
    window: Window
    config: RegionConfig

    def on_cluster(self, dask_address: str) -> WindowJob:
        """The job sending its inference to this Dask scheduler (a runtime field: outputs are unchanged)."""
        return self.model_copy(update={"config": self.config.model_copy(update={"dask_address": dask_address})})

    def result(self, status: Status, detail: str = "", started: dt.datetime | None = None) -> WindowResult:
        finished = dt.datetime.now(dt.UTC) if started is not None else None
        return WindowResult(aoi=self.aoi, start=self.window.start, end=self.window.end, name=self.config.name,
                            status=status, detail=detail, started=started, finished=finished)


def backfill_root(base: RegionConfig, name: str) -> Location:
    """Where a backfill's windows, root catalog and report go: ``base.output_dir / name`` (a folder or a URL)."""
    if not _SAFE_NAME.fullmatch(name):
        raise ConfigError(f"backfill name {name!r} must be letters, digits and _.- only (it names a folder)")
    return join(base.output_dir, name)


def plan_backfill(base: RegionConfig, aois: Sequence[str | Path], start: dt.date, end: dt.date, step: str,
                  name: str = "backfill") -> list[WindowJob]:
    """One job per AOI and window (AOIs in the order given, windows in time order).

    Each job's config is ``base`` with the AOI, the window's dates, the name
    ``<aoi>-<start>_<end>`` and the output folder :func:`backfill_root`: deterministic, so a rerun
    finds what an earlier run published.
    """
    if not aois:
        raise ConfigError("a backfill needs at least one AOI (a GeoJSON file or a name in deployments/aois/)")
    root = backfill_root(base, name)
    resolved = [resolve_aoi(aoi) for aoi in aois]
    names = [aoi.name for aoi in resolved]
    if len(set(names)) != len(names):
        raise ConfigError(f"AOI names must be unique (they name the output folders): {names}")
    windows = date_windows(start, end, step)
    settings = base.model_dump(exclude_unset=True)  # what base leaves at its defaults a checkpoint may set
    return [
        WindowJob(aoi=aoi.name, window=window, config=RegionConfig.model_validate(settings | {
            "name": f"{aoi.name}-{window.label}",
            "aoi": str(aoi.path),
            "datetime": (window.start.isoformat(), window.end.isoformat()),
            "output_dir": root,
        }))
        for aoi in resolved
        for window in windows
    ]


def summary_table(results: Sequence[WindowResult]) -> str:
    """A Markdown table of the results, then a line of counts per status."""
    def cell(text: str, limit: int = 300) -> str:
        text = " ".join(text.split()).replace("|", "\\|")
        return text if len(text) <= limit else text[: limit - 3] + "..."

    lines = ["| AOI | window | status | seconds | detail |", "|---|---|---|---:|---|"]
    for r in results:
        seconds = f"{r.seconds:.1f}" if r.seconds is not None else ""
        lines.append(f"| {r.aoi} | {r.start} to {r.end} | {r.status} | {seconds} | {cell(r.detail)} |")
    counts = count_statuses(results)
    lines += ["", f"{len(results)} window(s): " + ", ".join(f"{counts[s]} {s}" for s in STATUSES)]
    return "\n".join(lines)


def count_statuses(results: Sequence[WindowResult]) -> dict[str, int]:
    return {status: sum(r.status == status for r in results) for status in STATUSES}


def write_report(root: Location, results: Sequence[WindowResult], settings: dict) -> dict[str, str]:
    """``backfill-report.json`` (settings, counts, every window) and ``.md`` (the table) in ``root``, atomically."""
    paths = {"json": join(root, f"{REPORT_NAME}.json"), "markdown": join(root, f"{REPORT_NAME}.md")}
    with folder_lock(root):
        write_json({
            "settings": settings,
            "counts": count_statuses(results),
            "windows": [r.model_dump(mode="json") | {"seconds": r.seconds} for r in results],
        }, paths["json"])
        write_text(f"# Backfill {basename(root)}\n\n{summary_table(results)}\n", paths["markdown"])
    return {key: str(path) for key, path in paths.items()}


def write_root_catalog(root: Location) -> Location:
    """``root/catalog.json``: one STAC catalog with every published window's catalog under ``root`` as a child.

    Rebuilt from the folder (or bucket prefix) each time (a rerun or another backfill into the same
    root adds its windows), under the root's lock, and written atomically.
    """
    path = join(root, "catalog.json")
    with folder_lock(root):
        catalog = pystac.Catalog(
            id=f"allspark-backfill-{basename(root)}",
            description=f"AllSpark backfill {basename(root)}: one child catalog per published AOI and window",
        )
        for child in sorted(basename(str(p).removesuffix("/catalog.json")) for p in glob(root, "*/catalog.json")):
            catalog.add_link(pystac.Link(pystac.RelType.CHILD, f"./{child}/catalog.json",
                                         media_type=pystac.MediaType.JSON, title=child))
        catalog.set_self_href(str(path))
        catalog.catalog_type = pystac.CatalogType.SELF_CONTAINED
        write_json(catalog.to_dict(include_self_link=False, transform_hrefs=True), path)
    return path

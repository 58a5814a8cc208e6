"""Render bench/RESULTS.md: every benchmark's table, settings and notes, headlines first.

Reads ``bench/results/<name>.json`` (what was measured, with date, machine, versions, settings,
notes and optional headline lines) and ``<name>.md`` (its table). Results of benchmarks that did
not run this time stay in the file with their own date, so the table is never silently partial.

    python -m bench.report     # re-render from the stored results
"""

from __future__ import annotations

import json
from pathlib import Path

from bench.common import RESULTS

OUTPUT = RESULTS.parent / "RESULTS.md"
NOT_SECTIONS = ("suite", "headlines")
"""Files in results/ that are not a benchmark's section: the suite's run list, the ablation's headline records."""
ORDER = ["ingest", "inference", "memory", "scaling", "overhead", "landcover", "mapcost", "chipgrid", "storage",
         "modalities", "eth", "prsa", "losloop", "ablation", "ablation_headline", "ablation_long"]


def _load(name: str) -> tuple[dict, str] | None:
    json_path, table_path = RESULTS / f"{name}.json", RESULTS / f"{name}.md"
    if not json_path.exists():
        return None
    table = table_path.read_text().strip() if table_path.exists() else "(no table)"
    return json.loads(json_path.read_text()), table


def _settings_line(settings: dict) -> str:
    return "; ".join(f"{key} = {value}" for key, value in settings.items())


def _section(name: str, result: dict, table: str) -> list[str]:
    lines = [f"## {result.get('title', name)}", ""]
    command = result.get("command", f"python -m bench.{name}")
    lines.append(f"`{command}` · {result.get('date', '?')} · {result.get('machine', '?')}")
    if result.get("settings"):
        lines += ["", f"Settings: {_settings_line(result['settings'])}."]
    lines += ["", table]  # the table file ends with the notes (bench.common.write_results)
    return [*lines, ""]


def render(runs: list[dict] | None = None, total_seconds: float | None = None) -> Path:
    """Write bench/RESULTS.md (and results/suite.json for the run just made); return its path."""
    names = ORDER + sorted(p.stem for p in RESULTS.glob("*.json") if p.stem not in (*ORDER, *NOT_SECTIONS))
    loaded = {name: found for name in names if (found := _load(name)) is not None}
    suite_path = RESULTS / "suite.json"
    if runs is not None:
        suite_path.write_text(json.dumps({"runs": runs, "seconds": round(total_seconds or 0, 1)}, indent=2) + "\n")
    suite = json.loads(suite_path.read_text()) if suite_path.exists() else None

    newest = max(loaded.values(), key=lambda found: found[0].get("date", ""), default=({}, ""))[0]
    lines = [
        "# Benchmark results",
        "",
        "Written by `make bench` (everything) or `make bench-quick` (the quick subset). Each section names "
        "the command that produced it; the module's docstring says what it measures and why. Benchmarks "
        "report: they never fail the build.",
        "",
        f"Machine: {newest.get('machine', '?')}. Versions: "
        + ", ".join(f"{k} {v}" for k, v in newest.get("versions", {}).items()) + ".",
        "",
    ]
    if suite:
        lines += ["Last suite run (each benchmark in its own process):", "",
                  "| benchmark | setting | seconds | exit status |", "|---|---|---:|---:|"]
        lines += [f"| {r['benchmark']} | {'quick' if r['quick'] else 'full'} | {r['seconds']:.0f} | "
                  f"{r['exit_status']}{'' if r['exit_status'] == 0 else ' (failed: see its output)'} |"
                  for r in suite["runs"]]
        lines += ["", f"Suite wall time: {suite['seconds'] / 60:.1f} min.", ""]
    # A benchmark without headline lines is represented by its first note.
    headlines = [h for name, (result, _) in loaded.items()
                 for h in result.get("headline") or [f"{name}: {note}" for note in result.get("notes", [])[:1]]]
    if headlines:
        lines += ["## Headlines", "", *(f"- {h}" for h in headlines), ""]
    for name, (result, table) in loaded.items():
        lines += _section(name, result, table)
    OUTPUT.write_text("\n".join(lines).rstrip() + "\n")
    return OUTPUT


if __name__ == "__main__":
    print(render())

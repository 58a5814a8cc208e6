"""What every benchmark shares: timing, a description of the machine, and writing results."""

from __future__ import annotations

import json
import os
import platform
import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path

import torch

RESULTS = Path(__file__).resolve().parent / "results"


def best_rate(step: Callable[[], object], items: int, repeats: int) -> float:
    """Best-of-``repeats`` items per second of ``step`` (after one warm-up call)."""
    step()
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        step()
        best = min(best, time.perf_counter() - started)
    return items / best


def environment() -> dict:
    """Date, machine and versions, stored with every result."""
    import transformers

    device = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
    return {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, {torch.get_num_threads()} torch threads, {device}",
        "versions": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "transformers": transformers.__version__,
        },
    }


def write_results(name: str, result: dict, table: list[str]) -> None:
    """Write ``results/<name>.json`` and ``results/<name>.md`` (the table, then ``result["notes"]``), and print it."""
    if result.get("notes"):
        table = [*table, "", *(f"- {note}" for note in result["notes"])]
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{name}.json").write_text(json.dumps(result, indent=2) + "\n")
    (RESULTS / f"{name}.md").write_text("\n".join(table) + "\n")
    print("\n".join(table))

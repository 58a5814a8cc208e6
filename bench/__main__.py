"""Run the benchmark suite and render bench/RESULTS.md.

    python -m bench            # everything (make bench)
    python -m bench --quick    # the subset that fits about 10 minutes on a 2-core CPU (make bench-quick)
    python -m bench --only ingest memory

Each benchmark runs in its own process (a fresh memory baseline, no state shared between them) as
``python -m bench.<name>`` with ``--quick`` in the quick suite. A benchmark that fails is
reported in the table with its exit status; the suite goes on and never fails the build.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time

from bench.common import RESULTS
from bench.report import render

# In the order they run; the quick suite is the first part of the full one.
QUICK = ["ingest", "inference", "memory", "scaling", "overhead", "landcover"]
FULL = [*QUICK, "mapcost", "storage", "modalities", "eth", "prsa", "losloop", "ablation"]


def run_suite(names: list[str], quick: bool) -> list[dict]:
    """Run each benchmark in a subprocess; return what ran, how long it took and how it ended."""
    runs = []
    for name in names:
        command = [sys.executable, "-m", f"bench.{name}", *(["--quick"] if quick else [])]
        print(f"\n=== {' '.join(command[1:])}", flush=True)
        started = time.perf_counter()
        status = subprocess.call(command)
        runs.append({"benchmark": name, "quick": quick, "seconds": round(time.perf_counter() - started, 1),
                     "exit_status": status})
    return runs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help=f"only {', '.join(QUICK)}, in their quick settings")
    parser.add_argument("--only", nargs="+", choices=FULL, help="run these benchmarks only")
    args = parser.parse_args()
    names = args.only or (QUICK if args.quick else FULL)
    started = time.perf_counter()
    runs = run_suite(names, args.quick)
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = render(runs, total_seconds=time.perf_counter() - started)
    print(f"\nwrote {path} ({time.perf_counter() - started:.0f} s in all)")


if __name__ == "__main__":
    main()

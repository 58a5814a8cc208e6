"""Does the language model help, and does the prompt matter? The ablation the paper did not run.

On each accuracy benchmark (land cover, ETH, PRSA on its random and its chronological split,
Los-loop), four variants of AllSpark with the same data, the same budget and the same seeds:

- (a) **no LM**: encoder + bridge + head; the bridge's queries go straight to the head
  (``language: {enabled: false}``; no adapters either, there is nothing to adapt);
- (b) **frozen LM, no adapters** (``language: {adapter_every: 0}``);
- (c) **LM + adapters**: AllSpark as it ships (an adapter after every 2nd LM layer);
- (d) **irrelevant prompt**: (c) with the modality's prompts replaced by one that has nothing to
  do with the task (:data:`IRRELEVANT_PROMPT`). An empty prompt is not run: the configs require
  a non-empty prompt, and the LM then reads the modality tokens with no text at all, which is
  close to (b)/(c) without the prompt cache and not a clean variant of its own.

Every run trains a fresh model from its seed (initial weights, data order, prompt draws); seeds
0, 1, 2; mean and standard deviation (and min-max in the JSON) per variant and metric, with the
training time. Only data is shared between runs (the read raster, the ingested windows, the
split), never a model or a checkpoint. The held-out data is fixed across seeds; ETH's training
subsample follows the seed (the trajectories flow draws it from the run seed), the others' does not.

By default the budgets are smaller than the headline benchmarks' (each :class:`Benchmark`'s
``budget``), so that the whole ablation (5 benchmarks x 4 variants x 3 seeds) stays short: about 30
minutes on a quiet 2-core CPU before PRSA's chronological split joined (not yet timed with it).
``--headline`` runs each benchmark at its headline budget instead (the standalone benchmark's
defaults, ``Benchmark.headline``) and writes ablation_headline.json;
with ``--variants c_lm_adapters`` it gives the three seeds of AllSpark as it ships at that budget
where the whole ablation would take hours (ETH: 12 runs of 13 minutes). ``--long`` runs the
benchmarks that have a longer CPU budget, where the headline's stops short of converging
(``Benchmark.long``: 15 to 30 minutes of training a run without the LM on the 2-core machines this
project has measured on, which differ by up to 2x; about twice that with the LM) and writes
ablation_long.json::

    python -m bench.ablation               # everything; results written after each benchmark
    python -m bench.ablation --quick       # land cover only, 4 variants x 1 seed (~2 minutes)
    python -m bench.ablation --only eth prsa --seeds 0 1
    python -m bench.ablation --headline --only losloop landcover
    python -m bench.ablation --headline --only eth prsa --variants c_lm_adapters
    python -m bench.ablation --headline --only prsa --variants b_frozen_lm d_irrelevant_prompt
    python -m bench.ablation --long --variants a_no_lm

Benchmarks whose data (../shared/data) is missing are skipped and named in the notes. With
``--only``, the other benchmarks' results of the previous run at the same budget (same seeds and
setting) are kept; with ``--variants``, so are the other variants of a benchmark rerun at the same
budget. ``bench/results/headlines.json`` holds one record per benchmark and metric for scripts:
AllSpark as it ships (c) over the seeds, the best simple baseline, the paper's figure and the budget
(:func:`headlines`), at the headline budget where that has run, else at the ablation's, and a record
per variant that ran at a longer budget.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from bench import eth, landcover, losloop, prsa
from bench.common import RESULTS, environment, write_results

IRRELEVANT_PROMPT = "Describe a recipe for pancakes."
VARIANTS = {
    "a_no_lm": ("(a) no LM", {"enabled": False}),
    "b_frozen_lm": ("(b) frozen LM, no adapters", {"adapter_every": 0}),
    "c_lm_adapters": ("(c) LM + adapters", {}),
    "d_irrelevant_prompt": ("(d) irrelevant prompt", {"prompt": IRRELEVANT_PROMPT}),
}
SEEDS = (0, 1, 2)
COMPARED = frozenset({"a_no_lm", "c_lm_adapters"})
"""The variants whose difference answers "does the LM help?", and whose training times are compared."""
OUTPUTS = {"ablation": "ablation", "headline": "ablation_headline", "long": "ablation_long"}
"""Each budget level's results file (``bench/results/<name>.json``); the quick budget writes the ablation's."""
BUDGET_WORDS = {"ablation": "smaller than the headline benchmarks'", "headline": "the headline benchmarks'",
                "long": "longer than the headline benchmarks', where those stop short of converging"}


def silent(line: str) -> None:
    """Per-epoch training logs are not wanted here: one progress line per run instead."""


@dataclass(frozen=True)
class Metric:
    key: str
    label: str
    lower_is_better: bool
    digits: int = 3


@dataclass(frozen=True)
class Benchmark:
    """How to prepare one benchmark's data once, train and score one variant, and score its baseline."""

    name: str
    title: str
    split: str  # how the data is split for scoring, as bench/results/headlines.json names it
    budget: dict  # the ablation's own budget, smaller than the headline's
    headline: dict  # the standalone benchmark's default (``--headline``), in the same keys
    metrics: tuple[Metric, ...]
    paper: dict[str, str]  # metric key -> the paper's AllSpark figure, or why there is none
    data: Callable[[], bool]  # is the data here?
    prepare: Callable[[dict], object]
    run: Callable[[object, dict, int, dict], dict]  # (prepared, budget, seed, model overrides) -> metrics
    baseline: Callable[[object, dict], dict]  # (prepared, budget) -> {metric key: (name, value)}
    quick_budget: dict | None = None
    long: dict | None = None  # a longer CPU budget (``--long``), where the headline's is short of converging
    module: str = ""  # the standalone benchmark, where it is not ``bench.<name>``

    @property
    def headline_budget(self) -> str:
        """The headline budget in words, e.g. ``bench.eth: train_windows 0, epochs 3, ...`` (0 or None: every one)."""
        settings = ", ".join(f"{key} {value}" for key, value in self.headline.items())
        return f"bench.{self.module or self.name}: {settings}"


# -- land cover -------------------------------------------------------------------------------------


def landcover_run(data: landcover.LandCover, budget: dict, seed: int, model: dict) -> dict:
    result = landcover.run_allspark(data, seed, model)
    return {key: result[key] for key in ("overall_accuracy", "kappa", "macro_f1", "train_seconds")}


def landcover_baseline(data: landcover.LandCover, budget: dict) -> dict:
    """The random forest with the best overall accuracy (pixel bands or a neighbourhood)."""
    forests = landcover.run_baselines(data)
    name = max(forests, key=lambda forest: forests[forest]["overall_accuracy"])
    short = name.replace("random forest, ", "RF ")
    return {key: (short, forests[name][key]) for key in ("overall_accuracy", "kappa", "macro_f1")}


LANDCOVER_PAPER = {"overall_accuracy": "none (closest: Pavia U per-pixel HSI, OA 0.892; not comparable)",
                   "kappa": "none (closest: Pavia U per-pixel HSI, kappa 0.853; not comparable)",
                   "macro_f1": "none"}

# -- ETH ----------------------------------------------------------------------------------------------


def eth_prepare(budget: dict) -> dict:
    config = eth.eth_config(eth.DATA, 0, name="ablation-eth-data", **budget)
    return {"ingested": eth.steps.ingest(config), "future_steps": config.future_steps}


def eth_run(prepared: dict, budget: dict, seed: int, model: dict) -> dict:
    config = eth.eth_config(eth.DATA, seed, name="ablation-eth", language=model, **budget)
    result = eth.run_allspark(config, prepared["ingested"], log=silent)
    kept = {"best_epoch": result["training"]["best_epoch"]} if config.validation_files else {}
    return {**{key: result[key] for key in ("min_ade", "min_fde", "ade", "fde", "expected_ade", "expected_fde",
                                            "train_seconds")}, **kept}


def eth_baseline(prepared: dict, budget: dict) -> dict:
    walking = eth.constant_velocity_baseline(prepared["ingested"], prepared["future_steps"])
    return {f"{which}{key}": ("constant velocity", walking[key])
            for key in ("ade", "fde") for which in ("", "min_", "expected_")}


# -- PRSA ---------------------------------------------------------------------------------------------


def prsa_prepare(rule: str) -> Callable[[dict], dict]:
    """What prepares the PRSA rows (read once, as the sensors pipeline reads them) and the same-hour ``rule`` 40/60
    split (seed 0; a chronological split has no seed, and only the training seed varies)."""

    def prepare(budget: dict) -> dict:
        data = prsa.load_prsa(prsa.DATA)
        return {"data": data, "split": prsa.same_hour_split(data, rule, prsa.Budget(**budget), seed=0)}

    return prepare


def prsa_run(prepared: dict, budget: dict, seed: int, model: dict) -> dict:
    result = prsa.run_allspark(prepared["data"], prepared["split"], seed, language=model, log=silent)
    return {**{key: result["test"][key] for key in ("rmse", "mae", "r2")}, "train_seconds": result["train_seconds"]}


def prsa_baseline(prepared: dict, budget: dict) -> dict:
    trees = prsa.run_baselines(prepared["data"], prepared["split"], prsa.Budget(**budget).gbt_iterations, 0)
    same_rows = trees.get("GBT, same training rows", trees["GBT, every training row"])["test"]
    return {key: ("GBT, same rows", same_rows[key]) for key in ("rmse", "mae", "r2")}


def prsa_benchmark(rule: str, unit: str, paper: dict[str, str]) -> Benchmark:
    """PRSA's same-hour estimation on the ``rule`` 40/60 split of the ``unit``; its headline is ``bench.prsa``'s."""
    return Benchmark(
        name="prsa" if rule == "random" else f"prsa_{rule}",
        module="prsa",
        title=f"PRSA Beijing PM2.5, {rule} 40/60 (µg/m³)",
        split=f"same-hour, {rule} 40/60 {unit}",
        budget={"train_rows": 4000, "test_rows": 2000, "epochs": 1, "random_split_epochs": None, "llm_layers": 2,
                "lr": 1e-3},
        headline=asdict(prsa.DEFAULT),
        long=asdict(prsa.LONG) if rule == "random" else None,
        metrics=(Metric("rmse", "RMSE", True, 2), Metric("mae", "MAE", True, 2), Metric("r2", "R2", False)),
        paper=paper,
        data=lambda: any(prsa.DATA.glob(prsa.PATTERN)),
        prepare=prsa_prepare(rule),
        run=prsa_run,
        baseline=prsa_baseline,
    )


# -- Los-loop -------------------------------------------------------------------------------------------


def losloop_prepare(budget: dict) -> dict:
    config = losloop.losloop_config(0, name="ablation-losloop-data", **budget)
    return {"ingested": losloop.steps.ingest(config)}


def losloop_run(prepared: dict, budget: dict, seed: int, model: dict) -> dict:
    """One run; it also keeps the two baselines' scores in ``prepared`` (every run computes the same ones)."""
    config = losloop.losloop_config(seed, name="ablation-losloop", language=model, **budget)
    result = losloop.run_allspark(config, prepared["ingested"], log=silent)
    prepared["baselines"] = {name: scores["60 min"] for name, scores in result["metrics"].items() if name != "allspark"}
    hour = result["metrics"]["allspark"]["60 min"]
    return {"mae": hour["mae"], "rmse": hour["rmse"], "mape": hour["mape"],
            "train_seconds": result["trained"]["training_seconds"]}


def losloop_baseline(prepared: dict, budget: dict) -> dict:
    """The better of last value and historical average per metric (both are data only, seed-free)."""
    baselines = prepared["baselines"]
    return {key: min(((name.replace("_", " "), scores[key]) for name, scores in baselines.items()),
                     key=lambda pair: pair[1]) for key in ("mae", "rmse", "mape")}


BENCHMARKS = {
    "landcover": Benchmark(
        name="landcover",
        title="Land cover (Landsat 7 NC, whole polygons held out)",
        split="whole label polygons held out",
        budget={"llm_layers": 4, "epochs": 3, "max_train_pixels": 600, "chip_size": 16},
        headline=landcover.DEFAULT,
        quick_budget={"llm_layers": 2, "epochs": 2, "max_train_pixels": 300, "chip_size": 16},
        metrics=(Metric("overall_accuracy", "OA", False), Metric("kappa", "kappa", False),
                 Metric("macro_f1", "macro F1", False)),
        paper=LANDCOVER_PAPER,
        data=lambda: True,  # the demo catalog: `make assets` / `allspark catalog build-demo`
        prepare=lambda budget: landcover.prepare(**budget),
        run=landcover_run,
        baseline=landcover_baseline,
    ),
    "eth": Benchmark(
        name="eth",
        title="ETH leave-one-scene-out, 8 -> 12 (metres)",
        split="ETH scene held out (leave-one-scene-out), 8 -> 12 steps",
        budget={"train_windows": 3000, "epochs": 1, "llm_layers": 4, "learning_rate": 1e-3, "warmup_epochs": 0.2},
        headline=eth.DEFAULT_SETTING,
        long=eth.LONG_SETTING,
        metrics=(Metric("min_ade", "ADE best-of-20", True), Metric("min_fde", "FDE best-of-20", True),
                 Metric("ade", "ADE most likely", True), Metric("fde", "FDE most likely", True),
                 Metric("expected_ade", "ADE expected", True), Metric("expected_fde", "FDE expected", True)),
        paper={"min_ade": "0.43", "min_fde": "0.69",
               **dict.fromkeys(("ade", "fde", "expected_ade", "expected_fde"), "not reported")},
        data=lambda: (eth.DATA / "train").is_dir(),
        prepare=eth_prepare,
        run=eth_run,
        baseline=eth_baseline,
    ),
    "prsa": prsa_benchmark("random", "rows", {"rmse": "29.03", "mae": "18.04", "r2": "0.87"}),
    "prsa_chronological": prsa_benchmark("chronological", "hours: the first 40 % train",
                                         dict.fromkeys(("rmse", "mae", "r2"), "not reported")),
    "losloop": Benchmark(
        name="losloop",
        title="Los-loop week, 60 min ahead (mph)",
        split="chronological 70/10/20, 60 min ahead",
        budget={"llm_layers": 2, "epochs": 2, "learning_rate": 1e-3, "warmup_epochs": 0.5, "window_stride": 4},
        headline=losloop.DEFAULT,
        metrics=(Metric("mae", "MAE 60 min", True, 2), Metric("rmse", "RMSE 60 min", True, 2),
                 Metric("mape", "MAPE 60 min %", True, 1)),
        paper={key: f"none (METR-LA, not comparable: {value})"
               for key, value in (("mae", "3.81"), ("rmse", "7.52"), ("mape", "11.24 %"))},
        data=lambda: (losloop.DATA / "tgcn_los" / "los_speed.csv").is_file(),
        prepare=losloop_prepare,
        run=losloop_run,
        baseline=losloop_baseline,
    ),
}
QUICK_BENCHMARKS = ["landcover"]
LONG_BENCHMARKS = [name for name, benchmark in BENCHMARKS.items() if benchmark.long]


def spread(values: list[float]) -> dict:
    array = np.asarray(values, dtype="float64")
    return {"mean": float(array.mean()), "std": float(array.std(ddof=1)) if len(array) > 1 else 0.0,
            "min": float(array.min()), "max": float(array.max()), "n": len(array)}


def summarise(runs: list[dict], benchmark: Benchmark) -> dict:
    """Mean, std and min-max per variant of every metric and of the training time.

    A variant kept from a results file older than one of the metrics has no figure for it.
    """
    keys = [m.key for m in benchmark.metrics] + ["train_seconds"]
    by_variant = {variant: [r["metrics"] for r in runs if r["variant"] == variant] for variant in VARIANTS}
    summary = {key: {variant: spread([metrics[key] for metrics in ran])
                     for variant, ran in by_variant.items() if ran and all(key in metrics for metrics in ran)}
               for key in keys}
    return {key: stats for key, stats in summary.items() if stats}


def measured(benchmark: Benchmark, summary: dict) -> list[Metric]:
    """The metrics of ``benchmark`` that ``summary`` has (a results file written before a metric existed lacks it)."""
    return [metric for metric in benchmark.metrics if metric.key in summary]


def compare(summary: dict, metric: Metric, better: str, worse: str) -> tuple[float, bool]:
    """Signed improvement of ``better`` over ``worse`` (positive = better) and whether it exceeds the seed spread
    (|difference| > the sum of the two standard deviations, a rough rule for three seeds)."""
    a, b = summary[metric.key][better], summary[metric.key][worse]
    gain = (b["mean"] - a["mean"]) if metric.lower_is_better else (a["mean"] - b["mean"])
    return gain, abs(gain) > a["std"] + b["std"]


def reading(benchmark: Benchmark, summary: dict, timed_together: bool = True) -> list[str]:
    """One plain sentence: does the LM help (c vs a), do the adapters (c vs b), does the prompt (c vs d)?

    Differences are signed so that positive means (c), AllSpark as it ships, is better. Training times are compared
    only when (a) and (c) were ``timed_together``, not one of them kept from an earlier run (perhaps on another
    machine).
    """
    metric = benchmark.metrics[0]
    if not COMPARED <= set(summary[metric.key]):
        return []
    parts = []
    for other, question in (("a_no_lm", "the LM (c vs a)"), ("b_frozen_lm", "the adapters (c vs b)"),
                            ("d_irrelevant_prompt", "the task prompt (c vs d)")):
        if other not in summary[metric.key]:
            continue
        gain, clear = compare(summary, metric, "c_lm_adapters", other)
        verdict = ("helps" if gain > 0 else "hurts") if clear else "no clear difference (within the seed spread)"
        parts.append(f"{question}: {metric.label} {gain:+.{metric.digits}f}, {verdict}")
    cost = summary["train_seconds"]
    slower = cost["c_lm_adapters"]["mean"] / max(cost["a_no_lm"]["mean"], 1e-9)
    timing = (f"Training with the LM took {slower:.1f}x as long as without." if timed_together else
              "(a) and (c) ran apart, so their training times are not compared.")
    return [f"{benchmark.title}: " + "; ".join(parts) + ". " + timing]


def figures(benchmark: Benchmark, summary: dict, baseline: dict) -> str:
    """The first metric of every variant that ran, with the baseline and the paper: the line of a benchmark that has
    no :func:`reading` (a budget where (a) or (c) did not run)."""
    metric = benchmark.metrics[0]
    ran = "; ".join(f"{VARIANTS[variant][0]} {cell(stats, metric.digits)}"
                    for variant, stats in summary[metric.key].items())
    base_name, base_value = baseline[metric.key]
    return (f"{benchmark.title}, {metric.label}: {ran} (baseline {base_name} {base_value:.{metric.digits}f}; "
            f"paper's AllSpark {benchmark.paper[metric.key]}).")


def cell(stats: dict, digits: int) -> str:
    return f"{stats['mean']:.{digits}f} ± {stats['std']:.{digits}f}"


def table_lines(done: dict, seeds: list[int], level: str) -> list[str]:
    names = [label for label, _ in VARIANTS.values()]
    lines = [
        (f"Mean ± standard deviation over seeds {', '.join(map(str, seeds))} (min-max in the JSON); "
         f"↑ higher is better, ↓ lower is better. Budgets are {BUDGET_WORDS[level]} (settings below); "
         "- = variant not run."),
        "",
        "| benchmark | metric | " + " | ".join(names) + " | baseline, same data | paper's AllSpark |",
        "|---|---|" + "---:|" * len(names) + "---|---|",
    ]
    for name, entry in done.items():
        benchmark, summary, baseline = BENCHMARKS[name], entry["summary"], entry["baseline"]
        for i, metric in enumerate(measured(benchmark, summary)):
            arrow = "↓" if metric.lower_is_better else "↑"
            cells = [cell(summary[metric.key][v], metric.digits) if v in summary[metric.key] else "-" for v in VARIANTS]
            base_name, base_value = baseline[metric.key]
            lines.append(f"| {benchmark.title if i == 0 else ''} | {metric.label} {arrow} | " + " | ".join(cells)
                         + f" | {base_name}: {base_value:.{metric.digits}f} | {benchmark.paper[metric.key]} |")
        seconds = [cell(summary["train_seconds"][v], 0) if v in summary["train_seconds"] else "-" for v in VARIANTS]
        lines.append("| | training s | " + " | ".join(seconds) + " | | |")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true",
                        help=f"{', '.join(QUICK_BENCHMARKS)} only, its quick budget, seed 0")
    parser.add_argument("--only", nargs="+", choices=list(BENCHMARKS))
    parser.add_argument("--seeds", nargs="+", type=int)
    parser.add_argument("--headline", action="store_true",
                        help="each benchmark at its headline budget (the standalone benchmark's defaults)")
    parser.add_argument("--long", action="store_true",
                        help="the benchmarks with a longer CPU budget, at it (" + ", ".join(LONG_BENCHMARKS) + ")")
    parser.add_argument("--variants", nargs="+", choices=list(VARIANTS),
                        help="run these variants only (the others' previous runs at the same budget are kept)")
    args = parser.parse_args()
    if args.quick + args.headline + args.long > 1:
        parser.error("--quick, --headline and --long are different budgets: choose one")
    level = "headline" if args.headline else "long" if args.long else "ablation"
    names = args.only or (QUICK_BENCHMARKS if args.quick else LONG_BENCHMARKS if args.long else list(BENCHMARKS))
    if args.long and (short := [name for name in names if name not in LONG_BENCHMARKS]):
        parser.error(f"no longer budget for {', '.join(short)}: --long runs {', '.join(LONG_BENCHMARKS)}")
    seeds = args.seeds or ([0] if args.quick else list(SEEDS))
    variants = {key: VARIANTS[key] for key in VARIANTS if key in (args.variants or VARIANTS)}
    skipped = [name for name in names if not BENCHMARKS[name].data()]
    names = [name for name in names if name not in skipped]
    budgets = {name: budget_of(BENCHMARKS[name], args.quick, level) for name in names}
    output = OUTPUTS[level]
    total, count, started = len(names) * len(variants) * len(seeds), 0, time.perf_counter()
    done, runs, kept_budgets, ran_apart = kept_results(RESULTS / f"{output}.json", names, seeds, args.quick, budgets,
                                                       variants)
    written_names, written_budgets = [*kept_budgets, *names], {**kept_budgets, **budgets}
    earlier = {name: {run["variant"] for run in runs if run["benchmark"] == name} for name in names}  # kept, not rerun
    kept = [*kept_budgets, *(f"{name}'s " + " and ".join(VARIANTS[key][0] for key in VARIANTS if key in earlier[name])
                             for name in names if earlier[name])]
    # (a) and (c) ran apart: one of them is kept and the other reruns, or both are kept and had run apart before
    timed_apart = {name for name in names if len(COMPARED & earlier[name]) == 1
                   or (COMPARED <= earlier[name] and name in ran_apart)}
    for name in names:
        benchmark, budget = BENCHMARKS[name], budgets[name]
        prepared = benchmark.prepare(budget)
        bench_runs = [run for run in runs if run["benchmark"] == name]  # the variants not rerun, kept
        runs = [run for run in runs if run["benchmark"] != name]
        for seed in seeds:
            for variant, (label, overrides) in variants.items():
                count += 1
                run_started = time.perf_counter()
                metrics = benchmark.run(prepared, budget, seed, overrides)
                bench_runs.append({"benchmark": name, "variant": variant, "seed": seed, "metrics": metrics,
                                   "wall_seconds": round(time.perf_counter() - run_started, 1)})
                shown = ", ".join(f"{m.key} {metrics[m.key]:.{m.digits}f}" for m in benchmark.metrics)
                print(f"[{count}/{total}, {time.perf_counter() - started:.0f} s] {name} {label} seed {seed}: {shown}, "
                      f"training {metrics['train_seconds']:.0f} s", flush=True)
        runs += bench_runs
        done[name] = {"summary": summarise(bench_runs, benchmark), "baseline": benchmark.baseline(prepared, budget),
                      "timed_apart": name in timed_apart}
        write(output, done, runs, written_names, seeds, written_budgets, skipped, args.quick, level,
              time.perf_counter() - started, kept=kept)


def budget_of(benchmark: Benchmark, quick: bool, level: str) -> dict:
    """The budget a run uses: the headline's, the long one, the quick one (where the benchmark has one) or the
    ablation's."""
    if level in ("headline", "long"):
        return dict(getattr(benchmark, level))
    return dict(benchmark.quick_budget if quick and benchmark.quick_budget else benchmark.budget)


def kept_results(path: Path, names: list[str], seeds: list[int], quick: bool, budgets: dict,
                 variants: dict) -> tuple[dict, list[dict], dict, set[str]]:
    """What this run keeps of the previous results at ``path``, when those ran the same seeds and setting.

    The benchmarks it does not redo: their summaries and baselines, whether their (a) and (c) ran apart, runs and
    budgets (so ``--only losloop`` updates Los-loop, keeps the rest). And the runs of the variants it does not redo
    on a benchmark it reruns at the same budget (so ``--variants b_frozen_lm`` adds (b) beside the (a) and (c) that
    ran before). Last, the benchmarks whose (a) and (c) had run apart."""
    if not path.is_file():
        return {}, [], {}, set()
    previous = json.loads(path.read_text())
    settings = previous.get("settings", {})
    if settings.get("seeds") != seeds or settings.get("quick") != quick:
        return {}, [], {}, set()
    others = [name for name in previous.get("summary", {}) if name not in names and name in BENCHMARKS]
    same_budget = [name for name in names if settings["budgets"].get(name) == budgets[name]]
    ran_apart = set(settings.get("timed_apart", ()))
    done = {name: {"summary": previous["summary"][name], "baseline": previous["baselines"][name],
                   "timed_apart": name in ran_apart} for name in others}
    runs = [run for run in previous.get("runs", []) if run["benchmark"] in others
            or (run["benchmark"] in same_budget and run["variant"] not in variants)]
    return done, runs, {name: settings["budgets"][name] for name in others}, ran_apart


def headlines() -> list[dict]:
    """One record per benchmark and metric, for scripts: AllSpark as it ships (variant c) over the seeds, the best
    simple baseline of the same data, the paper's figure (null where it has none) and the budget.

    A benchmark's records of (c) come from ablation_headline.json where (c) ran there, else from ablation.json
    (``budget`` says which: "headline" or "ablation"); every variant that ran at a longer budget
    (ablation_long.json) adds its own records (``budget`` "long", ``variant`` which).
    """
    records, taken = [], set()
    for level in ("long", "headline", "ablation"):
        path = RESULTS / f"{OUTPUTS[level]}.json"
        result = json.loads(path.read_text()) if path.is_file() else {"summary": {}}
        for name, summary in result["summary"].items():
            benchmark = BENCHMARKS.get(name)
            ran = summary[benchmark.metrics[0].key] if benchmark else {}
            variants = list(ran) if level == "long" else ["c_lm_adapters"] if "c_lm_adapters" in ran else []
            if name in taken or not variants:
                continue
            if level != "long":
                taken.add(name)
            records += [headline_record(benchmark, result, level, variant, metric)
                        for variant in variants for metric in measured(benchmark, summary)
                        if variant in summary[metric.key]]
    return records


def headline_record(benchmark: Benchmark, result: dict, level: str, variant: str, metric: Metric) -> dict:
    """One :func:`headlines` record: ``variant``'s ``metric`` over the seeds of ``result`` (a results file)."""
    name = benchmark.name
    seeds = {r["seed"]: r["metrics"][metric.key] for r in result["runs"]
             if r["benchmark"] == name and r["variant"] == variant}
    stats = result["summary"][name][metric.key][variant]
    baseline, value = result["baselines"][name][metric.key]
    try:
        paper = float(benchmark.paper[metric.key])
    except ValueError:
        paper = None
    return {"benchmark": name, "split": benchmark.split, "metric": metric.key,
            "lower_is_better": metric.lower_is_better, "variant": variant,
            "allspark": {"mean": stats["mean"], "std": stats["std"], "seeds": seeds},
            "baselines": {baseline: value}, "paper": paper, "settings": result["settings"]["budgets"][name],
            "budget": level}


def write(output: str, done: dict, runs: list[dict], names: list[str], seeds: list[int], budgets: dict,
          skipped: list[str], quick: bool, level: str, seconds: float, kept: list[str] = ()) -> None:
    """Write ``output``.json and .md with every benchmark finished so far (the file says which are missing), then
    headlines.json. Each entry of ``done`` has its ``summary``, ``baseline`` and ``timed_apart`` (its (a) and (c)
    ran in different runs, so their training times are not compared; the settings keep that for the next run)."""
    done = {name: done[name] for name in BENCHMARKS if name in done}  # one order, however they were run
    pending = [name for name in names if name not in done]
    readings = [line for name, entry in done.items()
                for line in reading(BENCHMARKS[name], entry["summary"], not entry["timed_apart"])
                or [figures(BENCHMARKS[name], entry["summary"], entry["baseline"])]]
    headline_budgets = "; ".join(BENCHMARKS[name].headline_budget for name in names)
    notes = [
        *readings,
        ("Differences are signed so that positive means (c), AllSpark as it ships, is better. Rule used for "
         "'clear': the difference of the means exceeds the sum of the two standard deviations "
         f"({len(seeds)} seed(s)); with so few seeds, anything within it is noise until shown otherwise."),
        (f"(d) replaces every prompt with {IRRELEVANT_PROMPT!r}; (c) draws one of the paper's prompts per training "
         "step and reads the first at evaluation."),
        ("Adapters in (c) and (d): one after every 2nd LM layer, so " + ", ".join(
            f"{name} {budgets[name]['llm_layers'] // 2}" for name in names) + "; they start as the identity, "
         "so (b) and (c) differ only by what the adapters learn."),
        (f"Budgets here are {BUDGET_WORDS[level]} ({'' if level == 'headline' else 'the headline budgets: '}"
         f"{headline_budgets}), and far smaller than the paper's (all of Vicuna-7B, tens of epochs): the LM here is "
         "the first 2-4 of SmolLM2-135M's 30 layers."),
    ]
    if skipped:
        notes.append(f"Skipped, data not found: {', '.join(skipped)} (../shared/data).")
    if kept:
        notes.append(f"Kept from the previous results file at this budget (not rerun this time): {'; '.join(kept)}. "
                     "Their training times are those of the earlier runs that made them (the settings' seconds count "
                     "this run only): compare training times between variants that ran together.")
    if pending:
        notes.append(f"Not finished yet (partial file, written after each benchmark): {', '.join(pending)}.")
    result = {
        "benchmark": output,
        "command": "python -m bench.ablation" + ("" if level == "ablation" else f" --{level}"),
        "title": ("Ablation: no LM / frozen LM / LM + adapters / irrelevant prompt, same data, budget and seeds"
                  + ("" if level == "ablation" else f", at the {level} budgets")),
        **environment(),
        "settings": {"quick": quick, "headline": level == "headline", "level": level, "seeds": seeds,
                     "budgets": budgets,
                     "irrelevant_prompt": IRRELEVANT_PROMPT,
                     "variants": {key: label for key, (label, _) in VARIANTS.items()},
                     "variant_overrides": {key: overrides for key, (_, overrides) in VARIANTS.items()},
                     "headline_budgets": {name: BENCHMARKS[name].headline_budget for name in names},
                     "timed_apart": [name for name, entry in done.items() if entry["timed_apart"]],
                     "seconds": round(seconds)},
        "complete": not pending,
        "summary": {name: entry["summary"] for name, entry in done.items()},
        "baselines": {name: entry["baseline"] for name, entry in done.items()},
        "paper": {name: BENCHMARKS[name].paper for name in done},
        "runs": runs,
        "notes": notes,
        "headline": [f"Ablation{'' if level == 'ablation' else f' at the {level} budgets'}: {line}"
                     for line in readings],
    }
    table = table_lines(done, seeds, level) + ["", "Budgets: " + "; ".join(
        f"{name}: " + ", ".join(f"{k} {v}" for k, v in budgets[name].items()) for name in names) + "."]
    write_results(output, result, table)
    (RESULTS / "headlines.json").write_text(json.dumps(headlines(), indent=2) + "\n")


if __name__ == "__main__":
    main()

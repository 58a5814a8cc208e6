"""The ablation's plain reading of (c) against (a): the verdict, and a training-time ratio only where both ran
together."""

from __future__ import annotations

import json

from bench.ablation import BENCHMARKS, VARIANTS, kept_results, reading


def _summary(a_ade: float, c_ade: float, a_seconds: float, c_seconds: float) -> dict:
    spread = {"std": 0.005}
    return {"min_ade": {"a_no_lm": {"mean": a_ade, **spread}, "c_lm_adapters": {"mean": c_ade, **spread}},
            "train_seconds": {"a_no_lm": {"mean": a_seconds, "std": 1.0}, "c_lm_adapters": {"mean": c_seconds,
                                                                                              "std": 1.0}}}


def test_the_reading_gives_the_verdict_and_the_time_ratio_of_variants_timed_together():
    [line] = reading(BENCHMARKS["eth"], _summary(0.410, 0.441, 900.0, 1800.0))
    assert "the LM (c vs a): ADE best-of-20 -0.031, hurts" in line
    assert "Training with the LM took 2.0x as long as without." in line


def test_the_reading_compares_no_training_times_of_variants_that_ran_apart():
    [line] = reading(BENCHMARKS["eth"], _summary(0.410, 0.441, 1813.0, 1938.0), timed_together=False)
    assert "hurts" in line and "x as long" not in line
    assert "ran apart, so their training times are not compared" in line


def test_a_benchmark_kept_from_the_previous_file_stays_marked_as_timed_apart(tmp_path):
    """``--only prsa`` after ETH's (c) ran apart from its (a): ETH's reading must still not compare their times."""
    summary = _summary(0.410, 0.441, 1813.0, 1938.0)
    previous = {"settings": {"seeds": [0, 1, 2], "quick": False, "budgets": {"eth": {"epochs": 8}},
                             "timed_apart": ["eth"]},
                "summary": {"eth": summary}, "baselines": {"eth": {}}, "runs": []}
    path = tmp_path / "ablation_long.json"
    path.write_text(json.dumps(previous))
    done, runs, budgets, ran_apart = kept_results(path, ["prsa"], [0, 1, 2], False, {"prsa": {"epochs": 10}}, VARIANTS)
    assert done["eth"]["timed_apart"] and budgets == {"eth": {"epochs": 8}} and runs == [] and ran_apart == {"eth"}
    previous["settings"]["timed_apart"] = []
    path.write_text(json.dumps(previous))
    done = kept_results(path, ["prsa"], [0, 1, 2], False, {"prsa": {"epochs": 10}}, VARIANTS)[0]
    assert not done["eth"]["timed_apart"]

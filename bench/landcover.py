"""Land cover on the demo's Landsat 7 labelled pixels: AllSpark's region fine-tuning against random forests.

The region pipeline's own steps (the ingest :func:`allspark.region.steps.ingest`, the labels on the scene's
grid :func:`allspark.region.read.read_labels`, :func:`allspark.region.inputs.fine_tune`)
on the demo catalog (Landsat 7 ETM+, North Carolina, 6 bands, 7 classes). One fixed split, the
demo's: whole labelled polygons (connected same-class pixels) held out, 30 % stratified by class
with StratifiedGroupKFold, split seed 0, so no held-out pixel has a training pixel from its own
polygon. Scored on the held-out pixels: overall accuracy, kappa, per-class and macro F1.

Baselines in the same run, trained on exactly the same training pixels:

- a random forest on each pixel's six band values;
- random forests on neighbourhoods (per band: the centre value, the window's mean and standard
  deviation): 5x5, as in the data notes, and the chip-sized one AllSpark sees, so that the
  comparison is fair to context.

    python -m bench.landcover            # the demo's setting: 4 LM layers, 6 epochs, every training pixel
    python -m bench.landcover --quick    # 2 LM layers, 2 epochs, 400 training pixels
    python -m bench.landcover --llm-layers 0 --epochs 50   # all 30 layers, the paper's MSI epochs

:func:`prepare` and :func:`run_allspark` are what the ablation (``bench.ablation``) calls.
"""

from __future__ import annotations

import argparse
import time
import warnings
from dataclasses import dataclass

import numpy as np
from sklearn.ensemble import RandomForestClassifier

from allspark.core.config import LanguageModelSettings
from allspark.model import AllSpark, seed_everything
from allspark.raster.scene import open_scene, read_values
from allspark.raster.windows import Window
from allspark.region import steps
from allspark.region.config import RegionConfig
from allspark.region.inputs import (
    LabelledPixels,
    centred_windows,
    classification_metrics,
    fine_tune,
    training_split,
)
from allspark.region.read import find_label_item, label_href, load_plan, read_labels
from bench.common import environment, write_results

SPLIT_SEED = 0  # the demo's split: every run and seed is scored on the same held-out polygons
PAPER = {
    "figure": "none for this task",
    "closest": "per-pixel classification of Pavia University (HSI, 4:6 train:test): OA 89.18 / AA 86.65 / "
               "kappa 85.32; scene classification of EuroSAT (MSI, 13 bands): top-1 94.03",
    "note": "different data, sensors and protocols: for orientation only, not comparable",
}
DEFAULT = {"llm_layers": 4, "epochs": 6, "max_train_pixels": None, "chip_size": 16}
QUICK = {"llm_layers": 2, "epochs": 2, "max_train_pixels": 400, "chip_size": 16}
RF_TREES = 300
NEIGHBOURHOOD = 5  # the data notes' random forest reads 5x5 windows


@dataclass
class LandCover:
    """The demo's labelled raster, the fixed split and the run settings."""

    config: RegionConfig
    window: Window  # where ``image`` and ``labels`` lie on the scene grid
    image: np.ndarray  # (band, y, x), NaN = no data
    labels: np.ndarray  # (y, x), 1..K, 0 = unlabelled
    wavelengths: list[float]
    train: LabelledPixels
    holdout: LabelledPixels
    dropped_nodata: int


def prepare(llm_layers: int | None, epochs: int, max_train_pixels: int | None, chip_size: int) -> LandCover:
    """Read the demo scene around its labels once (as the train step does) and fix the split (what every run shares)."""
    config = RegionConfig(
        name="bench-landcover",
        chips={"size": chip_size, "overlap": chip_size // 2},
        language={"layers": llm_layers},
        train={"epochs": epochs, "max_train_pixels": max_train_pixels, "holdout": "regions"},
        seed=SPLIT_SEED,
    )
    ingested = steps.ingest(config, log=lambda line: None)
    plan = load_plan(ingested.work_dir)
    scene, dn = open_scene(ingested.store)
    label_item = find_label_item(plan.catalog, plan.pystac_items(), config.train.label_item)
    window, labels = read_labels(label_href(label_item), scene, margin=config.chips.size)
    image = read_values(scene, dn, window)
    train, holdout, dropped = training_split(labels, image, len(config.class_names), config.train, SPLIT_SEED)
    return LandCover(config, window, image, labels, [b.center_wavelength for b in scene.bands], train, holdout,
                     dropped)


def summary(metrics: dict) -> dict:
    """Overall accuracy, kappa, macro F1 over the classes measured, and per-class F1."""
    measured = [f for f in metrics["f1"].values() if f is not None]
    return {"overall_accuracy": metrics["overall_accuracy"], "kappa": metrics["kappa"],
            "macro_f1": float(np.mean(measured)), "f1": metrics["f1"]}


def run_allspark(data: LandCover, seed: int, language: dict | None = None) -> dict:
    """Fine-tune a fresh model (seeded weights and data order) with ``language`` block overrides
    (e.g. ``{"enabled": False}``, ``{"adapter_every": 0}``, ``{"prompt": ...}``); held-out scores."""
    config = data.config
    settings = LanguageModelSettings.model_validate({**config.language.model_dump(), **(language or {})})
    seed_everything(seed)
    network = AllSpark(config.model.allspark_config(config.class_names, settings))
    _, metrics, _ = fine_tune(
        network, data.image, data.labels, config.bands, data.wavelengths, config.class_names, config.chips.size,
        config.train, seed=seed, split_seed=SPLIT_SEED, log=lambda line: None,
    )
    return {**summary(metrics["holdout"]), "train_seconds": metrics["training"]["seconds"],
            "confusion_matrix": metrics["holdout"]["confusion_matrix"]}


def neighbourhood_features(image: np.ndarray, pixels: LabelledPixels, size: int) -> np.ndarray:
    """Per band: the pixel's value, and the mean and standard deviation of the chip centred on it."""
    windows = centred_windows(image, pixels.rows, pixels.cols, size).reshape(len(pixels), len(image), -1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN windows of a band: NaN, which the forest handles
        return np.concatenate([image[:, pixels.rows, pixels.cols].T, np.nanmean(windows, -1), np.nanstd(windows, -1)],
                              axis=1)


def run_baselines(data: LandCover, seed: int = 0) -> dict:
    """Random forests on the training pixels' band values, and on 5x5 and chip-sized neighbourhoods.

    The 5x5 window is the data notes' random forest (0.84 overall accuracy on a 5-fold whole-polygon
    hold-out); the chip-sized one sees what AllSpark sees.
    """
    features = {"random forest, pixel bands": lambda px: data.image[:, px.rows, px.cols].T}
    for size in sorted({NEIGHBOURHOOD, data.config.chips.size}):
        features[f"random forest, {size}x{size} neighbourhood"] = (
            lambda px, size=size: neighbourhood_features(data.image, px, size))
    results = {}
    for name, make in features.items():
        forest = RandomForestClassifier(n_estimators=RF_TREES, n_jobs=-1, random_state=seed)
        started = time.perf_counter()
        forest.fit(make(data.train), data.train.classes)  # NaN (no data in a band) is split on as missing
        seconds = time.perf_counter() - started
        predicted = forest.predict(make(data.holdout))
        metrics = classification_metrics(data.holdout.classes, predicted, data.config.class_names)
        results[name] = {**summary(metrics), "train_seconds": round(seconds, 1),
                         "confusion_matrix": metrics["confusion_matrix"]}
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help=f"the quick setting: {QUICK}")
    parser.add_argument("--llm-layers", type=int, help=f"first N SmolLM2 layers, 0 = all 30 (default {DEFAULT['llm_layers']})")
    parser.add_argument("--epochs", type=int, help=f"default {DEFAULT['epochs']}")
    parser.add_argument("--max-train-pixels", type=int, help="stratified cap on training pixels (default: all)")
    parser.add_argument("--chip-size", type=int, help=f"default {DEFAULT['chip_size']}")
    parser.add_argument("--seed", type=int, default=0, help="AllSpark's weights and data order (the split is fixed)")
    args = parser.parse_args()
    settings = {**(QUICK if args.quick else DEFAULT),
                **{k: v for k, v in vars(args).items() if k in DEFAULT and v is not None}}
    settings["llm_layers"] = settings["llm_layers"] or None

    data = prepare(**settings)
    allspark = run_allspark(data, args.seed)
    baselines = run_baselines(data, args.seed)
    config, depth = data.config, settings["llm_layers"] or 30
    rows = {f"AllSpark ({depth} LM layers, adapters)": allspark, **baselines}
    counts = {"train_pixels": len(data.train), "holdout_pixels": len(data.holdout),
              "holdout_polygons_rule": "whole labelled polygons held out, 30 % stratified by class, split seed 0",
              "labelled_pixels_without_image_data": data.dropped_nodata}
    best_forest = max(baselines, key=lambda name: baselines[name]["overall_accuracy"])
    gap = allspark["overall_accuracy"] - baselines[best_forest]["overall_accuracy"]
    result = {
        "benchmark": "landcover",
        "title": "Land cover, Landsat 7 NC demo pixels: AllSpark vs random forests, whole polygons held out",
        **environment(),
        "settings": {
            "quick": args.quick, "llm_layers": depth, "adapters": f"every {config.language.adapter_every} layers",
            "epochs": config.train.epochs, "learning_rate": config.train.learning_rate,
            "chip_size": config.chips.size, **counts, "seed": args.seed, "split_seed": SPLIT_SEED,
            "random_forest_trees": RF_TREES, "bands": config.bands,
        },
        "class_names": config.class_names,
        "holdout_support": {name: int((data.holdout.classes == i).sum()) for i, name in enumerate(config.class_names)},
        "results": rows,
        "paper": PAPER,
        "headline": [
            (f"Land cover (whole polygons held out): AllSpark OA {allspark['overall_accuracy']:.3f} / kappa "
             f"{allspark['kappa']:.3f} vs {best_forest} {baselines[best_forest]['overall_accuracy']:.3f} / "
             f"{baselines[best_forest]['kappa']:.3f} ({depth} LM layers, {config.train.epochs} epochs).")
        ],
        "notes": [
            (f"AllSpark is {'ahead of' if gap >= 0 else 'behind'} the best random forest ({best_forest}) by "
             f"{abs(gap) * 100:.1f} points of overall accuracy on the same {len(data.holdout)} held-out pixels, "
             f"trained on the same {len(data.train)} pixels."),
            ("Agriculture is not measured: its labelled pixels form one polygon, which stays in training "
             "(F1 '-' in the table)."),
            f"The paper has no figure for this task; the closest are {PAPER['closest']} ({PAPER['note']}).",
            "AllSpark here: " + ("the quick setting, far below the paper's budget" if args.quick else
                                 "the demo's CPU budget") + f" ({depth} of SmolLM2's 30 layers, "
            f"{config.train.epochs} epochs; the paper trains MSI 50 epochs through Vicuna-7B).",
        ],
    }
    classes = config.class_names

    def f1_cell(value):
        return "-" if value is None else f"{value:.2f}"

    table = [
        (f"Held-out pixels: {len(data.holdout)} in whole polygons (30 %, stratified by class, split seed 0); "
         f"training pixels: {len(data.train)}. AllSpark: {depth} SmolLM2 layers, {config.train.epochs} epochs, "
         f"{config.chips.size}x{config.chips.size} chips, seed {args.seed}."),
        "",
        "| method | OA | kappa | macro F1 | " + " | ".join(f"F1 {c}" for c in classes) + " | train s |",
        "|---|---:|---:|---:|" + "---:|" * len(classes) + "---:|",
        *(f"| {name} | {r['overall_accuracy']:.3f} | {r['kappa']:.3f} | {r['macro_f1']:.3f} | "
          + " | ".join(f1_cell(r["f1"][c]) for c in classes) + f" | {r['train_seconds']:.1f} |"
          for name, r in rows.items()),
        "",
        (f"Held-out pixels per class: {', '.join(f'{k} {v}' for k, v in result['holdout_support'].items())}. "
         f"The paper has no figure for this task; closest (not comparable): {PAPER['closest']}."),
    ]
    write_results("landcover", result, table)


if __name__ == "__main__":
    main()

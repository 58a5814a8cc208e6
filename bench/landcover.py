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
from allspark.core.location import Location
from allspark.raster.scene import open_scene, read_values
from allspark.raster.windows import Window
from allspark.region import steps
from allspark.region.config import RegionConfig
from allspark.region.inputs import (
    LabelledPixels,
    Normalizer,
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
    store: Location  # the scene store
    window: Window  # where ``image`` and ``labels`` lie on the scene grid
    image: np.ndarray  # (band, y, x), NaN = no data
    labels: np.ndarray  # (y, x), 1..K, 0 = unlabelled
    wavelengths: list[float]
    train: LabelledPixels
    holdout: LabelledPixels
    dropped_nodata: int


def prepare(llm_layers: int | None, epochs: int, max_train_pixels: int | None, chip_size: int,
            overlap: int | None = None, patch_size: int | None = None) -> LandCover:
    """Read the demo scene around its labels once (as the train step does) and fix the split (what every run shares).

    ``overlap`` and ``patch_size`` default to the region config's."""
    config = RegionConfig(
        name="bench-landcover",
        chips={"size": chip_size, **({} if overlap is None else {"overlap": overlap})},
        model={} if patch_size is None else {"patch_size": patch_size},
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
    return LandCover(config, ingested.store, window, image, labels, [b.center_wavelength for b in scene.bands], train,
                     holdout, dropped)


def summary(metrics: dict) -> dict:
    """Overall accuracy, kappa, macro F1 over the classes measured, and per-class F1."""
    measured = [f for f in metrics["f1"].values() if f is not None]
    return {"overall_accuracy": metrics["overall_accuracy"], "kappa": metrics["kappa"],
            "macro_f1": float(np.mean(measured)), "f1": metrics["f1"]}


def train_allspark(data: LandCover, seed: int, language: dict | None = None) -> tuple[AllSpark, Normalizer, dict]:
    """Fine-tune a fresh model (seeded weights and data order) with ``language`` block overrides
    (e.g. ``{"enabled": False}``, ``{"adapter_every": 0}``, ``{"prompt": ...}``): the model, its normaliser,
    and the held-out scores of the chips centred on the held-out pixels."""
    config = data.config
    settings = LanguageModelSettings.model_validate({**config.language.model_dump(), **(language or {})})
    seed_everything(seed)
    network = AllSpark(config.model.allspark_config(config.class_names, settings))
    normalizer, metrics, _ = fine_tune(
        network, data.image, data.labels, config.bands, data.wavelengths, config.class_names, config.chips.size,
        config.train, seed=seed, split_seed=SPLIT_SEED, log=lambda line: None,
    )
    return network, normalizer, {**summary(metrics["holdout"]), "train_seconds": metrics["training"]["seconds"],
                                 "confusion_matrix": metrics["holdout"]["confusion_matrix"]}


def run_allspark(data: LandCover, seed: int, language: dict | None = None) -> dict:
    """The held-out scores of :func:`train_allspark` (what the ablation compares)."""
    return train_allspark(data, seed, language)[2]


def map_scores(data: LandCover, network: AllSpark, normalizer: Normalizer, size: int, overlap: int) -> dict:
    """What the published map makes of a model: the labelled window mapped as the region flow maps a block (the
    scene's chips over it, predicted and blended: :func:`allspark.region.steps.predict_window`), scored at the
    held-out pixels, with its chip grid (:func:`offset_ratios`) and its speed (megapixels of finished map per
    second, reading the scene store included; language-model passes per pixel)."""
    scene, dn = open_scene(data.store)
    started = time.perf_counter()
    blended, _, rows, _ = steps.predict_window(network, normalizer, scene, dn, data.window, size, overlap,
                                               data.config.inference_batch)
    seconds = time.perf_counter() - started
    classmap = np.where(np.isfinite(blended).all(axis=0), np.nan_to_num(blended).argmax(axis=0) + 1, 0)
    predicted = classmap[data.holdout.rows, data.holdout.cols] - 1
    grid = offset_ratios(classmap, size - overlap, (data.window["y"].start, data.window["x"].start))
    pixels = classmap.size
    return {**summary(classification_metrics(data.holdout.classes, predicted, data.config.class_names)),
            "grid": grid, "grid_worst": max(max(grid["columns"]), max(grid["rows"])),
            "megapixels_per_second": round(pixels / seconds / 1e6, 4), "seconds": round(seconds, 1),
            "chips": len(rows), "lm_passes_per_pixel": round(len(rows) * size**2 / pixels, 2)}


def offset_ratios(classmap: np.ndarray, stride: int, origin: tuple[int, int] = (0, 0)) -> dict[str, list[float]]:
    """Per axis, the share of class boundaries at each offset modulo ``stride`` over the uniform share.

    A map predicted chip by chip shows a grid when its boundaries pile up at some offsets from the
    chips' origins (see :mod:`bench.chipgrid`); 1.0 at every offset is a map without one.
    ``classmap``: ``(y, x)`` class values, 0 = no data (pairs touching it are not boundaries);
    ``origin``: the scene row and column of ``classmap[0, 0]``, so offsets are counted from the chips' origin.
    """
    valid = classmap > 0
    ratios = {}
    for axis, name in ((1, "columns"), (0, "rows")):
        ahead = [slice(None), slice(None)]
        behind = [slice(None), slice(None)]
        ahead[axis], behind[axis] = slice(1, None), slice(None, -1)
        boundary = (classmap[tuple(ahead)] != classmap[tuple(behind)]) & valid[tuple(ahead)] & valid[tuple(behind)]
        positions = np.nonzero(boundary)[axis] + 1 + origin[axis]
        counts = np.bincount(positions % stride, minlength=stride)
        ratios[name] = (counts / max(counts.sum(), 1) * stride).round(3).tolist()
    return ratios


def unlike_their_class(data: LandCover) -> list[str]:
    """Held-out classes whose pixels look like another class: their mean band values lie nearer (in training
    standard deviations) to another class's training mean than to their own class's. No pixel model can get
    those right (the demo's label raster is named for 1996, its image is from 2000)."""
    scale = np.nanstd(data.image[:, data.train.rows, data.train.cols], axis=1)

    def mean(pixels: LabelledPixels, index: int) -> np.ndarray:
        chosen = pixels.classes == index
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # a band without data for the class: NaN, left out below
            return np.nanmean(data.image[:, pixels.rows[chosen], pixels.cols[chosen]], axis=1).astype("float64")

    names = data.config.class_names
    trained = {index: mean(data.train, index) for index in np.unique(data.train.classes)}
    notes = []
    for index in np.unique(data.holdout.classes):
        held = mean(data.holdout, index)
        distance = {other: float(np.sqrt(np.nansum(((held - centre) / scale) ** 2))) for other, centre in trained.items()}
        nearest = min(distance, key=distance.get)
        if nearest != index:
            notes.append(f"Held-out {names[index]} pixels look like {names[nearest]}: their mean band values are "
                         f"{distance[nearest]:.1f} training standard deviations from the training {names[nearest]} "
                         f"pixels' and {distance[index]:.1f} from the training {names[index]} pixels' "
                         f"(means of {', '.join(data.config.bands)}: held out {np.round(held, 1).tolist()}, trained "
                         f"{np.round(trained[index], 1).tolist()}). A model that learned {names[index]} from the "
                         f"training pixels calls them something else.")
    return notes


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
    network, normalizer, allspark = train_allspark(data, args.seed)
    baselines = run_baselines(data, args.seed)
    config, depth = data.config, settings["llm_layers"] or 30
    chips = config.chips
    mapped = {**map_scores(data, network, normalizer, chips.size, chips.overlap),
              "train_seconds": allspark["train_seconds"]}
    rows = {f"AllSpark ({depth} LM layers, adapters)": allspark,
            f"AllSpark, read off the map ({chips.size} px chips, overlap {chips.overlap}, blended)": mapped, **baselines}
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
             f"{baselines[best_forest]['kappa']:.3f} ({depth} LM layers, {config.train.epochs} epochs); read off the "
             f"blended map {mapped['overall_accuracy']:.3f}, chip grid {mapped['grid_worst']:.2f}x uniform at its "
             f"worst offset.")
        ],
        "notes": [
            (f"AllSpark is {'ahead of' if gap >= 0 else 'behind'} the best random forest ({best_forest}) by "
             f"{abs(gap) * 100:.1f} points of overall accuracy on the same {len(data.holdout)} held-out pixels, "
             f"trained on the same {len(data.train)} pixels."),
            ("Agriculture is not measured: its labelled pixels form one polygon, which stays in training "
             "(F1 '-' in the table)."),
            (f"Read off the map: the labelled window mapped as the region flow maps a block ({chips.size} px chips at "
             f"overlap {chips.overlap}, blended), scored at the same held-out pixels; "
             f"{mapped['megapixels_per_second']:.4f} Mpx of finished map per second, "
             f"{mapped['lm_passes_per_pixel']:.1f} language-model passes per pixel, worst chip-grid offset "
             f"{mapped['grid_worst']:.2f}x uniform (bench.chipgrid)."),
            *unlike_their_class(data),
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

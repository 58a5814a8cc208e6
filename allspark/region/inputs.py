"""What turns a region's pixels into model inputs: the band normaliser, training chips, held-out splits, metrics.

Fine-tuning: the multispectral AllSpark path learns from labelled pixels and is measured on held-out ones.

Training samples are chips centred on labelled pixels. The loss is per-pixel cross-entropy over
every *training* label that falls inside the chip (held-out labels never reach the loss), so one
forward pass learns from a whole neighbourhood. The held-out split is stratified by class and
seeded. Everything but the language model trains (stem, bridge, adapters, head).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict
from scipy import ndimage
from sklearn.metrics import cohen_kappa_score, confusion_matrix, f1_score
from sklearn.model_selection import StratifiedGroupKFold, train_test_split

from allspark.errors import InputError
from allspark.model.heads import IGNORE_INDEX
from allspark.model.model import AllSpark
from allspark.model.training import Trainer, seed_everything
from allspark.region.config import RegionTrainSettings

SPLIT_RULES = {
    "regions": "whole labelled regions (connected same-class pixels, i.e. polygons) held out, stratified "
    "by class (StratifiedGroupKFold, seeded); held-out labels never enter the loss",
    "pixels": "stratified random split of labelled pixels (seeded); neighbours of one polygon fall on both "
    "sides, so this figure is optimistic against a regions hold-out",
}


class Normalizer(BaseModel):
    """Per-band mean and standard deviation of the training pixels: the region bundle's preprocessing."""

    model_config = ConfigDict(extra="forbid")
    bands: list[str]
    mean: list[float]
    std: list[float]

    @classmethod
    def fit(cls, bands: list[str], pixels: np.ndarray) -> Normalizer:
        """``pixels``: (band, n) raw values, NaN for nodata."""
        mean = np.nanmean(pixels, axis=1)
        std = np.nanstd(pixels, axis=1)
        return cls(bands=list(bands), mean=mean.tolist(), std=np.where(std > 0, std, 1.0).tolist())

    def apply(self, chips: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """Normalise (n, band, y, x) chips; nodata becomes 0. Returns (inputs, pixel has data)."""
        if chips.shape[1] != len(self.bands):
            raise InputError(f"chips have {chips.shape[1]} bands, the normaliser expects {self.bands}")
        mean = np.asarray(self.mean, dtype="float32")[None, :, None, None]
        std = np.asarray(self.std, dtype="float32")[None, :, None, None]
        scaled = (chips.astype("float32") - mean) / std
        has_data = np.isfinite(scaled).any(axis=1)
        return torch.from_numpy(np.nan_to_num(scaled, nan=0.0)), torch.from_numpy(has_data)


def predict_chips(model: AllSpark, normalizer: Normalizer, chips: np.ndarray, wavelengths: Sequence[float],
                  batch_size: int) -> np.ndarray:
    """Class probabilities (n, class, y, x) of (n, band, y, x) chips, in batches; NaN where no band has data."""
    wl = torch.tensor(list(wavelengths), dtype=torch.float32)
    out = [np.empty((0, model.config.head.num_classes, *chips.shape[2:]), "float32")]
    for start in range(0, len(chips), batch_size):
        inputs, has_data = normalizer.apply(chips[start : start + batch_size])
        probs = model.predict({"image": inputs, "wavelengths": wl}).float().cpu()
        out.append(torch.where(has_data[:, None], probs, torch.nan).numpy())
    return np.concatenate(out)


def centred_windows(image: np.ndarray, rows: np.ndarray, cols: np.ndarray, size: int) -> np.ndarray:
    """(n, band, size, size) windows of a (band, H, W) array centred on pixels; NaN outside."""
    half = size // 2
    padded = np.pad(image, ((0, 0), (half, size), (half, size)), constant_values=np.nan)
    return np.stack([padded[:, r : r + size, c : c + size] for r, c in zip(rows, cols)])


@dataclass
class LabelledPixels:
    """Labelled pixel positions (row, col) on the image grid and their 0-based class index."""

    rows: np.ndarray
    cols: np.ndarray
    classes: np.ndarray

    @classmethod
    def from_raster(cls, labels: np.ndarray, image: np.ndarray, num_classes: int) -> tuple[LabelledPixels, int]:
        """Pixels labelled 1..num_classes that have data in at least one band.

        Returns them and the count of labelled pixels dropped because the image has no data there.
        """
        rows, cols = np.nonzero((labels >= 1) & (labels <= num_classes))
        has_data = np.isfinite(image[:, rows, cols]).any(axis=0)
        kept = cls(rows[has_data], cols[has_data], labels[rows, cols][has_data].astype(np.int64) - 1)
        return kept, int((~has_data).sum())

    def subset(self, index: np.ndarray) -> LabelledPixels:
        return LabelledPixels(self.rows[index], self.cols[index], self.classes[index])

    def __len__(self) -> int:
        return len(self.rows)


def labelled_regions(pixels: LabelledPixels, shape: tuple[int, int]) -> np.ndarray:
    """Id of the connected same-class region (8-connected) of each labelled pixel: its polygon."""
    regions = np.zeros(shape, dtype=np.int64)
    class_map = np.full(shape, -1, dtype=np.int64)
    class_map[pixels.rows, pixels.cols] = pixels.classes
    offset = 0
    for label in np.unique(pixels.classes):
        components, count = ndimage.label(class_map == label, structure=np.ones((3, 3)))
        regions[components > 0] = components[components > 0] + offset
        offset += count
    return regions[pixels.rows, pixels.cols]


def split_holdout(
    pixels: LabelledPixels, shape: tuple[int, int], fraction: float, seed: int, unit: str,
    labels_name: str = "the labels",
) -> tuple[LabelledPixels, LabelledPixels]:
    """Seeded split into training and held-out pixels, stratified by class.

    ``unit="regions"`` holds out whole labelled regions (polygons), so no held-out pixel has a
    training neighbour from its own polygon: the honest figure. ``unit="pixels"`` splits pixels
    at random, which lets neighbours of one polygon fall on both sides (optimistic). Labels too
    few to split raise :class:`InputError` naming ``labels_name`` and what the split needs.
    """
    index = np.arange(len(pixels))
    if unit == "pixels":
        _check_pixel_split(pixels, fraction, labels_name)
        train, holdout = train_test_split(index, test_size=fraction, stratify=pixels.classes, random_state=seed)
    else:
        regions = labelled_regions(pixels, shape)
        folds = max(2, round(1 / fraction))
        found = len(np.unique(regions))
        if found < folds:
            raise InputError(
                f"{labels_name} hold {found} labelled region(s) with image data (connected pixels of one class, "
                f"e.g. a polygon); holding out whole regions (train.holdout: regions, holdout_fraction {fraction}) "
                f"needs at least {folds}: label more regions, or set train.holdout: pixels"
            )
        split = StratifiedGroupKFold(n_splits=folds, shuffle=True, random_state=seed)
        train, holdout = next(split.split(index, pixels.classes, groups=regions))
    return pixels.subset(np.sort(train)), pixels.subset(np.sort(holdout))


def _check_pixel_split(pixels: LabelledPixels, fraction: float, labels_name: str) -> None:
    """What a stratified pixel split needs: two pixels of each class, and a pixel of each class on each side."""
    counts = np.bincount(pixels.classes)
    single = np.flatnonzero(counts == 1)
    if len(single):
        raise InputError(f"{labels_name}: class value {single[0] + 1} has a single labelled pixel with image data; "
                         "a stratified pixel hold-out needs at least 2 pixels of each class")
    classes, held_out = np.count_nonzero(counts), math.ceil(fraction * len(pixels))
    if min(held_out, len(pixels) - held_out) < classes:
        raise InputError(f"{labels_name} hold {len(pixels)} labelled pixel(s) with image data in {classes} classes; "
                         f"a stratified hold-out of {fraction} needs at least {classes} pixels on each side")


def target_windows(shape: tuple[int, int], train: LabelledPixels, size: int,
                   centres: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
    """(n, size, size) targets of the training chips centred on ``centres`` (rows, columns): training labels,
    IGNORE_INDEX elsewhere."""
    target = np.full(shape, IGNORE_INDEX, dtype=np.int64)
    target[train.rows, train.cols] = train.classes
    windows = centred_windows(target[None].astype("float64"), *centres, size)[:, 0]
    return np.nan_to_num(windows, nan=IGNORE_INDEX).astype(np.int64)


def training_chip_centres(train: LabelledPixels, shape: tuple[int, int], size: int,
                          seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Centres of the training chips: each labelled pixel moved by up to a quarter chip in each direction (seeded).

    A map is blended from chips at every offset, so every pixel is answered from near a chip's edge too;
    chips centred on their labelled pixel taught the model mostly its centre, and pixels near chip edges
    then followed each chip's context, which drew the chip grid into maps (issue 16).
    """
    reach = size // 4
    rng = np.random.default_rng(seed)
    rows = np.clip(train.rows + rng.integers(-reach, reach + 1, len(train)), 0, shape[0] - 1)
    cols = np.clip(train.cols + rng.integers(-reach, reach + 1, len(train)), 0, shape[1] - 1)
    return rows, cols


def classification_metrics(truth: np.ndarray, predicted: np.ndarray, class_names: list[str]) -> dict:
    """Overall accuracy, kappa, per-class F1 and support, and the confusion matrix (rows: truth).

    A class with no held-out pixel has F1 ``None``: it was not measured, which is not a score of 0.
    """
    labels = list(range(len(class_names)))
    f1 = f1_score(truth, predicted, labels=labels, average=None, zero_division=0)
    support = np.bincount(truth, minlength=len(class_names))
    return {
        "overall_accuracy": float((truth == predicted).mean()),
        "kappa": float(cohen_kappa_score(truth, predicted, labels=labels)),
        "f1": {name: float(v) if n else None for name, v, n in zip(class_names, f1, support, strict=True)},
        "support": {name: int(n) for name, n in zip(class_names, support, strict=True)},
        "confusion_matrix": confusion_matrix(truth, predicted, labels=labels).tolist(),
        "class_names": list(class_names),
        "n": len(truth),
    }


def predict_centres(
    model: AllSpark,
    normalizer: Normalizer,
    image: np.ndarray,
    wavelengths: torch.Tensor,
    pixels: LabelledPixels,
    size: int,
    batch_size: int,
) -> np.ndarray:
    """Class index predicted at each pixel from the chip centred on it."""
    model.eval()
    predicted = []
    half = size // 2
    with torch.no_grad():
        for start in range(0, len(pixels), batch_size):
            part = pixels.subset(np.arange(start, min(start + batch_size, len(pixels))))
            inputs, _ = normalizer.apply(centred_windows(image, part.rows, part.cols, size))
            probabilities = model.predict({"image": inputs, "wavelengths": wavelengths})
            predicted.append(probabilities[:, :, half, half].argmax(dim=1).cpu().numpy())
    return np.concatenate(predicted)


def values_outside_classes(labels: np.ndarray, num_classes: int) -> dict[int, int]:
    """Labelled pixels (not 0) whose value is no class 1..num_classes: their count per value."""
    values, counts = np.unique(labels[(labels != 0) & ((labels < 1) | (labels > num_classes))], return_counts=True)
    return {int(value): int(count) for value, count in zip(values, counts, strict=True)}


def _describe_values(counts: dict[int, int]) -> str:
    """``{9: 120, 12: 3}`` as "value 9 (120 px), value 12 (3 px)"."""
    return ", ".join(f"value {value} ({count} px)" for value, count in counts.items())


def training_split(
    labels: np.ndarray, image: np.ndarray, num_classes: int, config: RegionTrainSettings, seed: int,
    labels_name: str = "the labels",
) -> tuple[LabelledPixels, LabelledPixels, int]:
    """Training and held-out pixels (:func:`split_holdout`, then the stratified ``max_train_pixels`` cap).

    Also returns the count of labelled pixels dropped because the image has no data there.
    Seeded, so a baseline given the same arguments trains on exactly the same pixels.
    """
    pixels, dropped_nodata = LabelledPixels.from_raster(labels, image, num_classes)
    if len(pixels) == 0:
        outside = values_outside_classes(labels, num_classes)
        if outside and not ((labels >= 1) & (labels <= num_classes)).any():
            raise InputError(f"{labels_name} hold no value of the class list (1..{num_classes}, one per class name); "
                             f"found only {_describe_values(outside)}")
        raise InputError(f"{labels_name}: no labelled pixel with image data: the labels do not overlap the imagery")
    train, holdout = split_holdout(pixels, labels.shape, config.holdout_fraction, seed, config.holdout, labels_name)
    if config.max_train_pixels is not None and len(train) > config.max_train_pixels:
        keep, _ = train_test_split(
            np.arange(len(train)), train_size=config.max_train_pixels, stratify=train.classes, random_state=seed
        )
        train = train.subset(np.sort(keep))
    return train, holdout, dropped_nodata


def fine_tune(
    model: AllSpark,
    image: np.ndarray,
    labels: np.ndarray,
    bands: list[str],
    wavelengths: list[float],
    class_names: list[str],
    chip_size: int,
    config: RegionTrainSettings,
    seed: int,
    log=print,
    split_seed: int | None = None,
    labels_name: str = "the labels",
) -> tuple[Normalizer, dict, LabelledPixels]:
    """Train ``model`` in place on chips around labelled pixels.

    Returns the normaliser fitted on the training pixels, the metrics, and the held-out pixels
    (so the published map can be scored on the same ones). ``seed`` sets the data order;
    ``split_seed`` (default: ``seed``) the held-out split, so runs of several seeds can share one.

    ``image`` is (band, H, W) with NaN for nodata and ``labels`` (H, W) holds class values
    1..K (0 unlabelled) on the same grid. Other values are left out, counted in the metrics
    (``labels.outside_class_list``) and logged as a warning naming ``labels_name``.
    """
    generator = seed_everything(seed)
    split_seed = seed if split_seed is None else split_seed
    train, holdout, dropped_nodata = training_split(labels, image, len(class_names), config, split_seed, labels_name)
    outside = values_outside_classes(labels, len(class_names))
    if outside:
        log(f"warning: {labels_name}: {sum(outside.values())} labelled pixel(s) hold values outside the class list "
            f"(1..{len(class_names)}: {', '.join(class_names)}) and are left out: {_describe_values(outside)}")
    normalizer = Normalizer.fit(bands, image[:, train.rows, train.cols])
    centres = training_chip_centres(train, labels.shape, chip_size, seed)
    inputs, _ = normalizer.apply(centred_windows(image, *centres, chip_size))
    targets = torch.from_numpy(target_windows(labels.shape, train, chip_size, centres))
    wl = torch.tensor(wavelengths, dtype=torch.float32)

    trainer = Trainer(model, config.schedule(), batches_per_epoch=math.ceil(len(train) / config.batch_size))
    history = trainer.fit(len(train), lambda batch: ({"image": inputs[batch], "wavelengths": wl}, targets[batch]),
                          config.batch_size, generator, log)

    predicted = predict_centres(model, normalizer, image, wl, holdout, chip_size, config.batch_size)
    metrics = {
        "holdout": classification_metrics(holdout.classes, predicted, class_names),
        "split": {
            "unit": config.holdout,
            "rule": SPLIT_RULES[config.holdout],
            "seed": split_seed,
            "train_pixels": len(train),
            "holdout_pixels": len(holdout),
            "labelled_pixels_without_image_data": dropped_nodata,
        },
        "labels": {
            "outside_class_list": sum(outside.values()),
            "outside_values": {str(value): count for value, count in outside.items()},
        },
        "training": {
            "epochs": config.epochs,
            "loss_per_epoch": [epoch["loss"] for epoch in history["epochs"]],
            "seconds": history["seconds"],
            "llm_layers": model.config.llm_layers,
        },
    }
    return normalizer, metrics, holdout


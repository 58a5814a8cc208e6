"""Fine-tuning: honest hold-out splits, metrics, and bit-for-bit reproducible training."""

from __future__ import annotations

import numpy as np
import rasterio
import torch

from allspark.core.config import LanguageModelSettings
from allspark.model import AllSpark, seed_everything
from allspark.region.config import RegionModelConfig, RegionTrainSettings
from allspark.region.inputs import LabelledPixels, fine_tune, labelled_regions, split_holdout
from tests.conftest import shared_data
from tests.regions import CROP

BANDS = ["B1", "B2", "B3", "B4", "B5", "B7"]
WAVELENGTHS = [0.483, 0.560, 0.662, 0.835, 1.648, 2.206]
FILES = ["10", "20", "30", "40", "50", "70"]


def demo_crop() -> tuple[np.ndarray, np.ndarray]:
    """The 96x96 test crop of the real Landsat 7 bands (NaN for nodata) and its label raster."""
    folder = shared_data("landsat7_nc_labeled")
    bands = []
    for name in FILES:
        with rasterio.open(folder / f"lsat7_2000_{name}.tif") as src:
            data = src.read(1, window=CROP, masked=True).astype("float32")
            bands.append(data.filled(np.nan))
    with rasterio.open(folder / "landsat96_labelled_pixels.tif") as src:
        labels = src.read(1, window=CROP).astype(np.int64)
    return np.stack(bands), labels


def test_region_holdout_never_splits_a_polygon():
    image, labels = demo_crop()
    pixels, _ = LabelledPixels.from_raster(labels, image, 7)
    regions = labelled_regions(pixels, labels.shape)
    train, holdout = split_holdout(pixels, labels.shape, 0.3, seed=0, unit="regions")
    region_of = dict(zip(zip(pixels.rows, pixels.cols, strict=True), regions, strict=True))
    train_regions = {region_of[p] for p in zip(train.rows, train.cols, strict=True)}
    holdout_regions = {region_of[p] for p in zip(holdout.rows, holdout.cols, strict=True)}
    assert train_regions and holdout_regions and not train_regions & holdout_regions
    assert len(train) + len(holdout) == len(pixels)


def test_pixel_holdout_is_stratified():
    image, labels = demo_crop()
    pixels, _ = LabelledPixels.from_raster(labels, image, 7)
    train, holdout = split_holdout(pixels, labels.shape, 0.3, seed=0, unit="pixels")
    for cls in np.unique(pixels.classes):
        share = (holdout.classes == cls).sum() / (pixels.classes == cls).sum()
        assert 0.2 < share < 0.4


def train_once(image, labels):
    seed_everything(0)
    config = RegionModelConfig(num_queries=4, stem_dim=32, bridge_depth=1)
    model = AllSpark(config.allspark_config([f"c{i}" for i in range(7)], LanguageModelSettings(layers=1)))
    config = RegionTrainSettings(epochs=2, batch_size=16, max_train_pixels=48, learning_rate=3e-3,
                                 warmup_epochs=1, weight_decay=0.01)  # the region run defaults
    normalizer, metrics, _ = fine_tune(
        model, image, labels, BANDS, WAVELENGTHS, [f"c{i}" for i in range(7)], 8, config, seed=0, log=lambda _: None
    )
    return model.trainable_state_dict(), normalizer, metrics


def test_training_is_reproducible_and_reports_metrics():
    image, labels = demo_crop()
    first, normalizer_a, metrics = train_once(image, labels)
    second, normalizer_b, _ = train_once(image, labels)
    assert normalizer_a == normalizer_b
    for key, value in first.items():
        assert torch.equal(value, second[key]), f"{key} differs between two seeded runs"
    holdout = metrics["holdout"]
    assert holdout["n"] == metrics["split"]["holdout_pixels"] > 0
    assert np.asarray(holdout["confusion_matrix"]).sum() == holdout["n"]
    assert 0 <= holdout["overall_accuracy"] <= 1 and set(holdout["f1"]) == {f"c{i}" for i in range(7)}
    assert metrics["training"]["loss_per_epoch"][-1] < metrics["training"]["loss_per_epoch"][0]

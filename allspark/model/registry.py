"""The modality registry: one explicit table from modality name to encoder, prompts, input form, head.

Adding a modality means writing one encoder file under ``allspark/model/encoders/`` and adding
one :class:`Modality` entry to ``MODALITIES`` below. Encoders are named as ``"module:Class"``
and imported on first use (as transformers' auto mappings do), so listing the modalities stays
cheap.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from functools import cached_property

from allspark.model.encoders.base import ModalityEncoder
from allspark.model.heads import HeadConfig
from allspark.model.inputs import InputSpec
from allspark.model.prompts import PROMPTS

_ENCODERS = "allspark.model.encoders"


@dataclass(frozen=True)
class PaperTraining:
    """The paper's fine-tuning schedule for a modality (AdamW, cosine with warm-up)."""

    learning_rate: float
    epochs: int
    warmup_epochs: int


@dataclass(frozen=True)
class Modality:
    """One registry entry.

    Attributes:
        name: registry key (``allspark modalities`` lists them).
        description: the data and task in a few words.
        encoder: ``"module:Class"`` of the :class:`ModalityEncoder`, relative to ``allspark.model.encoders``.
        head: the default task head.
        training: the paper's schedule, the default of :class:`allspark.model.training.TrainingSettings`.
        num_queries: bridge output tokens; 0 when the encoder's tokens already live in the LM's
            embedding space (text, code) and there is no bridge.
        paper_benchmark: the paper's data set and figure, for reports.
    """

    name: str
    description: str
    encoder: str
    head: HeadConfig
    training: PaperTraining
    num_queries: int
    paper_benchmark: str

    @property
    def prompts(self) -> tuple[str, ...]:
        """The modality's prompts; the first is the evaluation prompt."""
        return PROMPTS[self.name]

    @property
    def has_bridge(self) -> bool:
        return self.num_queries > 0

    @cached_property
    def encoder_class(self) -> type[ModalityEncoder]:
        module, _, name = self.encoder.partition(":")
        return getattr(importlib.import_module(f"{_ENCODERS}.{module}"), name)

    @property
    def input_spec(self) -> InputSpec:
        return self.encoder_class.input_spec

    def describe(self) -> dict:
        """A JSON-ready description (what ``allspark modalities --json`` prints)."""
        return {
            "name": self.name,
            "description": self.description,
            "inputs": self.input_spec.as_list(),
            "encoder": f"{_ENCODERS}.{self.encoder.replace(':', '.')}",
            "encoder_config": self.encoder_class.Config().model_dump(),
            "bridge_queries": self.num_queries,
            "head": self.head.model_dump(exclude_none=True),
            "prompts": list(self.prompts),
            "paper_training": {
                "learning_rate": self.training.learning_rate,
                "epochs": self.training.epochs,
                "warmup_epochs": self.training.warmup_epochs,
            },
            "paper_benchmark": self.paper_benchmark,
        }


def _classes(n: int) -> HeadConfig:
    return HeadConfig(kind="classification", num_classes=n)


MODALITIES: dict[str, Modality] = {
    entry.name: entry
    for entry in (
        Modality("text", "natural-language text, e.g. a review to label", "language:LanguageTokenEncoder",
                 HeadConfig(kind="language"), PaperTraining(9e-6, 5, 1), 0, "IMDB accuracy 96.78 %"),
        Modality("code", "source code, e.g. a function to summarise or match to a query",
                 "language:LanguageTokenEncoder", HeadConfig(kind="language"), PaperTraining(1e-5, 4, 1), 0,
                 "CodeSearchNet Ruby / JavaScript MRR 0.627 / 0.635"),
        Modality("rgb", "RGB scene image, classified", "rgb:RGBEncoder", _classes(45),
                 PaperTraining(5e-5, 50, 5), 32, "NWPU-RESISC45 (20 % train) top-1 94.85 %"),
        Modality("multispectral", "multispectral image with band wavelengths, classified",
                 "multispectral:MultispectralEncoder", _classes(10), PaperTraining(2e-5, 50, 5), 16,
                 "EuroSAT (13 bands) top-1 94.03 %"),
        Modality("hyperspectral", "one pixel's spectrum with band wavelengths, classified",
                 "hyperspectral:HyperspectralEncoder", _classes(9), PaperTraining(1e-4, 30, 3), 8,
                 "Pavia University OA / AA / kappa 89.18 / 86.65 / 85.32"),
        Modality("sar", "SAR image (one or more polarisations), classified", "sar:SAREncoder", _classes(10),
                 PaperTraining(9e-6, 30, 3), 16, "MSTAR SOC top-1 88 %"),
        Modality("infrared", "infrared and visible image pair, person re-identification as classification",
                 "infrared:InfraredVisibleEncoder", _classes(395), PaperTraining(5e-5, 50, 5), 16,
                 "SYSU-MM01 rank-20 76.31 %"),
        Modality("table", "one row of a sensor table (continuous and categorical columns), regression",
                 "table:TableEncoder", HeadConfig(kind="regression", outputs=1), PaperTraining(2e-5, 30, 3), 8,
                 "PRSA Beijing PM2.5 RMSE / MAE / R2 29.03 / 18.04 / 0.87"),
        Modality("trajectory", "an agent's observed path and its neighbours, K candidate futures",
                 "trajectory:TrajectoryEncoder", HeadConfig(kind="trajectory", horizon=12, modes=20),
                 PaperTraining(1e-5, 30, 5), 8, "ETH (ETH-UCY) ADE / FDE 0.43 / 0.69"),
        Modality("graph", "sensor network signals over time, per-node forecast", "graph:TrafficGraphEncoder",
                 HeadConfig(kind="dense_regression", outputs=12), PaperTraining(8e-5, 10, 2), 16,
                 "METR-LA 60-min MAE / RMSE / MAPE 3.81 / 7.52 / 11.24 %"),
        Modality("oblique", "several oblique views of one scene, depth map of the first view",
                 "oblique:ObliqueEncoder", HeadConfig(kind="dense_regression", outputs=1),
                 PaperTraining(5e-5, 30, 3), 32, "WHU-OMVS area 1 -> 2 PAG 0.6 m / 1.0 m 6.4 / 10.4"),
        Modality("video", "a short RGB clip, action classified", "video:VideoEncoder", _classes(101),
                 PaperTraining(1e-5, 3, 1), 32, "UCF101 top-1 27.5 %"),
        Modality("point_cloud", "a 3D point cloud (xyz and optional features), classified",
                 "point_cloud:PointCloudEncoder", _classes(40), PaperTraining(3e-5, 100, 10), 16,
                 "ModelNet40 top-1 91.2 %"),
    )
}


def get_modality(name: str) -> Modality:
    """The registry entry for ``name``; a clear error listing the known names otherwise."""
    try:
        return MODALITIES[name]
    except KeyError:
        raise KeyError(f"unknown modality {name!r}; known: {', '.join(MODALITIES)}") from None

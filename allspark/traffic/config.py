"""The traffic run config: the three input files, the time axis, the windows, the model and its training."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import Field, field_validator, model_validator

from allspark.core.config import LanguageModelSettings, ModelRunConfig, StrictModel, TrainSettings

MINUTES_PER_DAY = 24 * 60


class TrafficModelConfig(StrictModel):
    """The AllSpark graph model's own parts: STAEformer-style encoder, Lynx bridge and dense head.

    The defaults are a CPU setting; the paper's is STAEformer's encoder (width 152, 3 + 3 layers).
    """

    width: int = Field(32, ge=2, multiple_of=2, description="encoder token width (STAEformer: 152)")
    temporal_depth: int = Field(1, ge=0, description="Transformer layers over the steps (STAEformer: 3)")
    spatial_depth: int = Field(1, ge=0, description="Transformer layers over the sensors (STAEformer: 3)")
    heads: int = Field(4, ge=1)
    use_locations: bool = Field(True, description="feed the sensors' lon/lat to the space embedding")
    predict_change: bool = Field(
        True, description="learn the change from each sensor's last observed speed (persistence plus a learned "
                          "correction: a short CPU schedule cannot learn to copy the input); false: absolute speeds "
                          "as STAEformer does",
    )
    num_queries: int = Field(16, ge=1)
    bridge_depth: int = Field(2, ge=1)
    bridge_heads: int = Field(8, ge=1)

    def allspark_config(self, num_nodes: int, horizon: int, step_minutes: int, language: LanguageModelSettings):
        """The model's :class:`~allspark.model.model.AllSparkConfig` for a graph of ``num_nodes`` sensors."""
        from allspark.model.model import AllSparkConfig

        return AllSparkConfig(
            modality="graph",
            encoder={
                "num_nodes": num_nodes, "in_features": 1, "time_of_day_slots": MINUTES_PER_DAY // step_minutes,
                "width": self.width, "temporal_depth": self.temporal_depth, "spatial_depth": self.spatial_depth,
                "heads": self.heads,
            },
            bridge={"num_queries": self.num_queries, "depth": self.bridge_depth, "heads": self.bridge_heads},
            head={"kind": "dense_regression", "outputs": horizon},
            **language.allspark_fields(),
        )


class TrafficTrainSettings(TrainSettings):
    """Fine-tuning on the training windows, plus which of them are used."""

    window_stride: int = Field(3, ge=1, description="train on every N-th training window (1 = all; CPU: 3)")


class TrafficConfig(ModelRunConfig):
    """Everything one run of the traffic pipeline needs."""

    kind: ClassVar[str] = "traffic"
    modality: ClassVar[str] = "graph"
    block_defaults: ClassVar[dict[str, dict[str, Any]]] = {
        "language": {"layers": 2},
        # paper: 10 epochs at 8e-5 with 2 warm-up
        "train": {"epochs": 3, "warmup_epochs": 0.5},
    }

    name: str = Field("losloop", pattern=r"^[A-Za-z0-9_.-]+$")
    speeds: Path = Field(description="CSV of speeds: header = sensor ids, one row per step, 0 = missing")
    adjacency: Path = Field(description="N x N adjacency: CSV without header, or .npz with 'adjacency' [+ 'sensor_ids']")
    locations: Path = Field(description="CSV with columns sensor_id, latitude, longitude (EPSG:4326)")
    missing_location: Literal["error", "drop"] = Field(
        "error", description="a sensor without a location: stop with an error, or drop it (counted)"
    )
    start: datetime = Field(
        datetime.fromisoformat("2012-03-05T00:00:00-08:00"),
        description="time of the first row, with its UTC offset (nominal by default: the file has no timestamps)",
    )
    step_minutes: int = Field(5, ge=1, description="minutes between rows; must divide a day")
    input_steps: int = Field(12, ge=1)
    horizon: int = Field(12, ge=1, description="steps forecast (12 x 5 min = 60 min)")
    split: tuple[float, float, float] = Field((0.7, 0.1, 0.2), description="train / validation / test, in time order")
    forecast: Literal["latest", "test"] = Field(
        "latest",
        description="published rows: the latest forecast whose future is observed (sensors x horizons), "
                    "or every test window's forecast",
    )
    model: TrafficModelConfig = Field(default_factory=TrafficModelConfig)
    train: TrafficTrainSettings | None = Field(description="fine-tuning; null with a checkpoint")

    @field_validator("start")
    @classmethod
    def _aware(cls, value: datetime) -> datetime:
        if value.tzinfo is None:
            raise ValueError("start needs a UTC offset, e.g. 2012-03-05T00:00:00-08:00")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> TrafficConfig:
        if MINUTES_PER_DAY % self.step_minutes:
            raise ValueError(f"step_minutes ({self.step_minutes}) must divide a day (1440 minutes)")
        if abs(sum(self.split) - 1) > 1e-6 or min(self.split) <= 0:
            raise ValueError(f"split {self.split} must be three positive fractions summing to 1")
        return self

    def contract(self) -> dict[str, Any]:
        """The forecast's steps and their length: the head's outputs and the encoder's time-of-day slots."""
        return {"horizon": self.horizon, "step_minutes": self.step_minutes}

    def input_files(self) -> list[Path]:
        """The speeds, adjacency and locations files (their content keys the work folder)."""
        return [self.speeds, self.adjacency, self.locations]

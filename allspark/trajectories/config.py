"""The trajectories run config: which track files, how they become windows, the model and its training."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Any, ClassVar, Literal

import pyproj
from pydantic import Field, model_validator

from allspark.core.config import LanguageModelSettings, ModelRunConfig, StrictModel, TrainSettings
from allspark.trajectories.read import WindowRule, find_input_files


class TableColumns(StrictModel):
    """Column names of a table input (CSV or Parquet)."""

    agent: str = "agent_id"
    time: str = Field("timestamp", description="seconds (numbers) or date-times")
    x: str = "x"
    y: str = "y"


class TrajectoryModelConfig(StrictModel):
    """The AllSpark trajectory model's own parts: encoder, bridge and the K-future head."""

    width: int = Field(64, ge=2, description="encoder token width")
    depth: int = Field(2, ge=0, description="encoder Transformer layers (paper: 2)")
    num_queries: int = Field(8, ge=1)
    bridge_depth: int = Field(2, ge=1)
    modes: int = Field(20, ge=1, description="candidate futures K")
    predict_residual: bool = Field(True, description="learn the offset from the constant-velocity extrapolation")

    def allspark_config(self, horizon: int, language: LanguageModelSettings):
        from allspark.model.model import AllSparkConfig

        return AllSparkConfig(
            modality="trajectory",
            encoder={"width": self.width, "depth": self.depth},
            bridge={"num_queries": self.num_queries, "depth": self.bridge_depth},
            head={"kind": "trajectory", "horizon": horizon, "modes": self.modes},
            **language.allspark_fields(),
        )


class TrajectoryTrainSettings(TrainSettings):
    """Fine-tuning, plus which training windows are drawn and how they are augmented."""

    max_windows: int | None = Field(None, ge=1, description="random subsample of training windows (seeded)")
    rotate: bool = Field(True, description="rotate each training scene by a random angle (augmentation)")


class TrajectoriesConfig(ModelRunConfig):
    """Everything one run of the trajectories pipeline needs."""

    kind: ClassVar[str] = "trajectories"
    modality: ClassVar[str] = "trajectory"
    block_defaults: ClassVar[dict[str, dict[str, Any]]] = {
        "language": {"layers": 4},
        # paper: 1e-5 over 30 epochs; a higher rate for short CPU runs
        "train": {"epochs": 2, "learning_rate": 5e-4},
    }

    name: str = Field("trajectories", pattern=r"^[A-Za-z0-9_.-]+$")
    format: Literal["eth_ucy", "table"] = "eth_ucy"
    train_files: list[Path] = Field(default_factory=list, description="files or folders (all inputs inside)")
    predict_files: list[Path] = Field(min_length=1, description="files or folders to predict and publish")
    columns: TableColumns = Field(default_factory=TableColumns, description="table format only")
    input_crs: str | None = Field(None, description="table format: CRS of x/y (projected, or lon/lat)")
    frame_step: int = Field(10, ge=1, description="eth_ucy: frame numbers between two steps")
    step_seconds: float = Field(0.4, gt=0, description="time between two steps (ETH/UCY: 0.4 s = 2.5 fps)")
    observed_steps: int = Field(8, ge=2)
    future_steps: int = Field(12, ge=1)
    min_agents: int = Field(2, ge=1, description="focal agents a window needs (2: the Social-GAN rule)")
    max_neighbours: int = Field(16, ge=0, description="nearest neighbours kept per focal agent")
    start_time: datetime | None = Field(None, description="eth_ucy: date-time of frame 0 (else times in seconds)")
    origin: tuple[float, float] | None = Field(None, description="eth_ucy: map position of local (0, 0) in crs")
    crs: str | None = Field(None, description="eth_ucy: CRS of origin (a projected CRS in metres)")
    model: TrajectoryModelConfig = Field(default_factory=TrajectoryModelConfig)
    train: TrajectoryTrainSettings | None = Field(description="fine-tuning; null with a checkpoint")
    inference_batch: int = Field(64, ge=1)

    @model_validator(mode="after")
    def _consistent(self) -> TrajectoriesConfig:
        if (self.origin is None) != (self.crs is None):
            raise ValueError("give origin and crs together (or neither: a local engineering CRS)")
        if self.crs is not None and not pyproj.CRS(self.crs).is_projected:
            raise ValueError(f"crs {self.crs!r} must be projected (metres), since origin + local metres are added")
        if self.format == "table" and self.input_crs is None:
            raise ValueError("the table format needs input_crs (the CRS of its x/y columns)")
        if self.fine_tunes and not self.train_files:
            raise ValueError("fine-tuning needs train_files")
        return self

    def contract(self) -> dict[str, Any]:
        """The future's steps and their length: the head's horizon and what one step of motion means."""
        return {"future_steps": self.future_steps, "step_seconds": self.step_seconds}

    @property
    def window_rule(self) -> WindowRule:
        return WindowRule(self.observed_steps, self.future_steps, self.min_agents, self.max_neighbours)

    def split_files(self) -> dict[str, list[Path]]:
        """The input files of each split: ``predict``, and ``train`` when this run fine-tunes."""
        splits = {"predict": find_input_files(self.predict_files, self.format)}
        if self.fine_tunes:
            splits["train"] = find_input_files(self.train_files, self.format)
        return splits

    def input_files(self) -> list[Path]:
        """Every file the run reads (their content keys the work folder)."""
        return [file for files in self.split_files().values() for file in files]

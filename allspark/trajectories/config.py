"""The trajectories run config: which track files, how they become windows, the model and its training."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Any, ClassVar, Literal

import pyproj
from pydantic import Field, field_validator, model_validator

from allspark.core.config import LanguageModelSettings, ModelRunConfig, StrictModel, TrainSettings
from allspark.core.tables import TableSchema
from allspark.trajectories.read import WindowRule, find_input_files


class TrajectoryModelConfig(StrictModel):
    """The AllSpark trajectory model's own parts: encoder, bridge and the K-future head."""

    width: int = Field(64, ge=2, description="encoder token width")
    depth: int = Field(2, ge=0, description="encoder Transformer layers (paper: 2)")
    num_queries: int = Field(8, ge=1)
    bridge_depth: int = Field(2, ge=1)
    modes: int = Field(20, ge=1, description="candidate futures K")
    predict_residual: bool = Field(True, description="learn the offset from the constant-velocity extrapolation")
    heading_frame: bool = Field(True, description="turn each window so the agent's heading points along +x")
    end_point_weight: float = Field(0.0, ge=0, description="weight of the end-point distance beside the mean "
                                    "distance in choosing the candidate that trains (winner-takes-all)")
    proposals: int | None = Field(None, ge=1, description="candidates proposed and trained; more than modes are "
                                  "cut to modes by clustering their end points (SocialVAE's final-position "
                                  "clustering). Unset: modes")
    expected_loss_weight: float = Field(0.0, ge=0, description="weight of the expected future's error in the loss; "
                                        "it trains the probabilities to weigh the candidates so that their mean, "
                                        "the published `expected` path, fits the truth")
    cluster_modes: bool = Field(True, description="start the candidates at k-means clusters of the training "
                                "targets")

    @model_validator(mode="after")
    def _proposals_cover_modes(self) -> TrajectoryModelConfig:
        if self.proposals is not None and self.proposals < self.modes:
            raise ValueError(f"model.proposals ({self.proposals}) must be at least model.modes ({self.modes}): the "
                             "proposals are cut to the modes")
        return self

    def allspark_config(self, horizon: int, language: LanguageModelSettings):
        from allspark.model.model import AllSparkConfig

        return AllSparkConfig(
            modality="trajectory",
            encoder={"width": self.width, "depth": self.depth},
            bridge={"num_queries": self.num_queries, "depth": self.bridge_depth},
            head={"kind": "trajectory", "horizon": horizon, "modes": self.modes,
                  "end_point_weight": self.end_point_weight or None, "proposals": self.proposals,
                  "expected_loss_weight": self.expected_loss_weight or None},
            **language.allspark_fields(),
        )


class TrajectoryTrainSettings(TrainSettings):
    """Fine-tuning, plus which training windows are drawn and how they are augmented."""

    max_windows: int | None = Field(None, ge=1, description="random subsample of training windows (seeded)")
    augment: bool = Field(True, description="mirror each training scene across the agent's heading at random, and "
                          "rotate it by a random angle without the heading frame")
    keep_best: Literal["min_ade", "min_fde", "expected_ade", "expected_fde", "ade", "fde"] = Field(
        "min_ade", description="with validation_files: the figure (metres, on their windows) whose lowest epoch is "
        "kept. The training loss is no guide: on ETH it rose while every ADE and FDE fell")


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
    validation_files: list[Path] = Field(default_factory=list, description="files or folders of tracks held out "
                                         "from training: the epoch best on their windows by train.keep_best is "
                                         "kept (early stopping). ETH/UCY's releases carve them from the training "
                                         "scenes (val/). Empty: the last epoch is kept")
    predict_files: list[Path] = Field(min_length=1, description="files or folders to predict and publish")
    table: TableSchema | None = Field(None, description="table format: the agent id column, the time column with "
                                      "its step, and the x/y columns with their crs (projected, or lon/lat)")
    frame_step: int = Field(10, ge=1, description="eth_ucy: frame numbers between two steps")
    step_seconds: float = Field(0.4, gt=0, description="eth_ucy: time between two steps (0.4 s = 2.5 fps); "
                                "a table's step is table.time.step")
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

    @field_validator("table")
    @classmethod
    def _tracks_table(cls, table: TableSchema | None) -> TableSchema | None:
        """A table of tracks: each row an agent's position at a time, on a step grid given on purpose."""
        if table is None:
            return table
        unused = [name for name in ("targets", "continuous", "categorical") if getattr(table, name)]
        if unused:
            raise ValueError(f"table.{'/'.join(unused)} are not used by trajectories (the model reads the agents' "
                             "positions only): remove them")
        location = table.location
        if location is None or location.file is not None:
            raise ValueError("table.location needs the x and y columns of each row's position and their crs: a "
                             "locations file or a GeoParquet geometry gives one fixed place per id, not a moving agent")
        if location.static:
            raise ValueError("table.location.static is not used by trajectories (agents have no fixed attributes)")
        if location.crs is None:
            raise ValueError("table.location.crs is required: the CRS of the x/y columns (projected, or lon/lat)")
        try:
            crs = pyproj.CRS(location.crs)
        except pyproj.exceptions.CRSError as err:
            raise ValueError(f"table.location.crs {location.crs!r} is not a CRS ({err})") from None
        if not (crs.is_projected or crs.is_geographic):
            raise ValueError(f"table.location.crs {location.crs!r} is neither projected nor lon/lat")
        if "step" not in table.time.model_fields_set:
            raise ValueError("table.time.step is required: the tracks' step, e.g. 400ms (2.5 fps)")
        return table

    @model_validator(mode="after")
    def _consistent(self) -> TrajectoriesConfig:
        if (self.origin is None) != (self.crs is None):
            raise ValueError("give origin and crs together (or neither: a local engineering CRS)")
        if self.crs is not None and not pyproj.CRS(self.crs).is_projected:
            raise ValueError(f"crs {self.crs!r} must be projected (metres), since origin + local metres are added")
        if (self.format == "table") != (self.table is not None):
            raise ValueError("format table needs a table block (id: the agent column; time: column, unit or format, "
                             "step; location: x, y, crs)" if self.table is None else
                             "the table block is for format: table (eth_ucy files have fixed columns)")
        if self.fine_tunes and not self.train_files:
            raise ValueError("fine-tuning needs train_files")
        if self.validation_files and not self.fine_tunes:
            raise ValueError("validation_files are for fine-tuning (they pick its best epoch); a run with a "
                             "checkpoint does not read them: remove them")
        return self

    @property
    def step_length_seconds(self) -> float:
        """Seconds between two steps: the table's ``time.step``, or ``step_seconds`` for ETH/UCY."""
        return self.table.time.step_delta.total_seconds() if self.table is not None else self.step_seconds

    @property
    def tracks_crs(self) -> str | None:
        """The CRS of the tracks' x/y as read: the table's; None for ETH/UCY local metres (placed by origin)."""
        return self.table.location.crs if self.table is not None else None

    def contract(self) -> dict[str, Any]:
        """The future's steps and their length: the head's horizon and what one step of motion means."""
        return {"future_steps": self.future_steps, "step_seconds": self.step_length_seconds}

    @property
    def window_rule(self) -> WindowRule:
        return WindowRule(self.observed_steps, self.future_steps, self.min_agents, self.max_neighbours)

    def split_files(self) -> dict[str, list[Path]]:
        """The input files of each split: ``predict``; ``train`` (and ``validation`` when given) when this run
        fine-tunes."""
        splits = {"predict": find_input_files(self.predict_files, self.format)}
        if self.fine_tunes:
            splits["train"] = find_input_files(self.train_files, self.format)
        if self.validation_files:
            splits["validation"] = find_input_files(self.validation_files, self.format)
        return splits

    def input_files(self) -> list[Path]:
        """Every file the run reads (their content keys the work folder)."""
        return [file for files in self.split_files().values() for file in files]

"""The sensors run config: which station tables, stations and period; the split; the model and its training."""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import Field

from allspark.core.config import (
    NAME_PATTERN,
    LanguageModelSettings,
    ModelRunConfig,
    SettingsBlock,
    TrainSettings,
    load_config,
)
from allspark.sensors.read import WIND_DIRECTIONS, find_input_files, locations_path


class SensorModelConfig(SettingsBlock):
    """AllSpark's table path: TabFormer-style encoder, Lynx bridge, regression head (the LM: ``language``)."""

    width: int = Field(64, ge=4, description="column token width of the table encoder")
    depth: int = Field(1, ge=0, description="Transformer layers over the column tokens (paper: 1)")
    num_queries: int = Field(8, ge=1, description="bridge queries the LM reads per row")

    def allspark_config(self, language: LanguageModelSettings, station_count: int) -> Any:
        """The :class:`allspark.model.AllSparkConfig` for rows with ``station_count`` known stations."""
        from allspark.model.model import AllSparkConfig  # imports torch and transformers: only when needed
        from allspark.sensors.inputs import CONTINUOUS_FEATURES

        return AllSparkConfig(
            modality="table",
            encoder={
                "continuous_columns": len(CONTINUOUS_FEATURES),
                "categorical_cardinalities": [station_count, len(WIND_DIRECTIONS), 12, 24, 7],
                "width": self.width,
                "depth": self.depth,
            },
            bridge={"num_queries": self.num_queries},
            head={"kind": "regression", "outputs": 1},
            **language.allspark_fields(),
        )


class SensorsTrainSettings(TrainSettings):
    """Fine-tuning, plus how many training rows are drawn (CPU-sized; the paper trains 30 epochs at 2e-5 on all)."""

    max_train_rows: int | None = Field(
        4000, ge=1, description="random subsample of the training rows (seeded); None = every training row"
    )


class SensorsConfig(ModelRunConfig):
    """Everything one run of the sensors pipeline needs."""

    kind: ClassVar[str] = "sensors"
    modality: ClassVar[str] = "table"
    block_defaults: ClassVar[dict[str, dict[str, Any]]] = {
        "language": {"layers": 2},
        # one epoch on a 4,000-row subsample (CPU-sized)
        "train": {"epochs": 1, "batch_size": 64, "learning_rate": 1e-3, "warmup_epochs": 0.1, "weight_decay": 0.01},
    }

    name: str = Field("prsa", pattern=NAME_PATTERN)
    inputs: list[str] = Field(min_length=1, description="station CSV files or glob patterns (PRSA layout)")
    locations: str = Field("prsa_stations", description="GeoJSON of station points: a name under catalogs/ or a path")
    stations: list[str] | None = Field(None, min_length=1, description="use only these stations; none = all in inputs")
    period: tuple[str, str] | None = Field(None, description="inclusive local-time range, ISO 8601; none = all")
    allow_time_gaps: bool = Field(True, description="count missing hours (true) or stop with an error (false)")
    split: Literal["random", "chronological"] = "chronological"
    train_fraction: float = Field(0.4, gt=0, lt=1, description="share of rows (random) or of hours (chronological)")
    model: SensorModelConfig = Field(default_factory=SensorModelConfig)
    train: SensorsTrainSettings | None = Field(description="fine-tuning; null with a checkpoint")
    inference_batch: int = Field(256, ge=1)

    def station_files(self) -> list[Path]:
        """The station tables ``inputs`` names, sorted; a pattern matching nothing is an error."""
        return find_input_files(self.inputs)

    def input_files(self) -> list[Path]:
        """Every file the run reads: the station tables and the locations file (their content keys the work folder)."""
        return [*self.station_files(), locations_path(self.locations)]


def load_sensors_config(path: str | Path | None = None, **overrides: object) -> SensorsConfig:
    """The sensors run config: see :func:`allspark.core.config.load_config`."""
    return load_config(SensorsConfig, path, **overrides)

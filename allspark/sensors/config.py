"""The sensors run config: which station tables and their columns, the forecast, the split, the model and its training."""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import Field, model_validator

from allspark.core.config import (
    NAME_PATTERN,
    LanguageModelSettings,
    ModelRunConfig,
    SettingsBlock,
    TrainSettings,
    load_config,
)
from allspark.core.tables import TableSchema, TimeFeature, find_files, locations_path
from allspark.settings import catalogs_dir


class SensorModelConfig(SettingsBlock):
    """AllSpark's table path: TabFormer-style encoder, Lynx bridge, regression head (the LM: ``language``).

    A station is described to the model by its location and static attributes (``use_location``),
    so stations never seen in training can be predicted; its id embedding (``use_station_id``) is
    optional. Training shows a share of rows without their id (``station_id_dropout``): the model
    then also learns what to do with a station it does not know (the encoder's *missing* id). With
    a ``history``, the model learns the change from the last known value (``predict_change``), so
    an untrained or short-trained model starts from persistence rather than from nothing.
    """

    width: int = Field(64, ge=4, description="column token width of the table encoder")
    depth: int = Field(1, ge=0, description="Transformer layers over the column tokens (paper: 1)")
    num_queries: int = Field(4, ge=1, description="bridge queries the LM reads per row (8, with 2 bridge blocks: "
                                                  "2.4x the training time)")
    bridge_depth: int = Field(1, ge=1, description="the bridge's cross-attention blocks")
    numeric_embedding: Literal["linear", "periodic"] = Field(
        "linear", description="how the encoder embeds a continuous value: linear (FT-Transformer's) or periodic (PLR: "
                              "learned frequencies, then a linear layer and ReLU). On PRSA periodic is better for "
                              "estimating the hour from its other columns, linear for forecasts from the target's "
                              "history (README)")
    frequency_scale: float = Field(0.1, gt=0, description="periodic: std of the frequencies' start per std of a value")
    use_location: bool = Field(True, description="describe each station by its longitude, latitude and attributes")
    use_station_id: bool = Field(True, description="also give the model each training station's id embedding")
    station_id_dropout: float = Field(0.1, ge=0, lt=1, description="share of training rows shown without their id")
    predict_change: bool = Field(True, description="with history: learn the change from the last known value "
                                                   "(persistence plus a learned correction)")

    @model_validator(mode="after")
    def _some_station_description(self) -> SensorModelConfig:
        if not (self.use_location or self.use_station_id):
            raise ValueError("use_location and use_station_id are both false: the model could not tell stations apart")
        return self

    def allspark_config(self, language: LanguageModelSettings, continuous: int, cardinalities: list[int],
                        targets: list[str]) -> Any:
        """The :class:`allspark.model.AllSparkConfig` for rows of ``continuous`` numbers and categories of
        ``cardinalities``, answering ``targets`` (named in the prompt)."""
        from allspark.model.model import AllSparkConfig  # imports torch and transformers: only when needed

        return AllSparkConfig(
            modality="table",
            encoder={"continuous_columns": continuous, "categorical_cardinalities": cardinalities,
                     "width": self.width, "depth": self.depth, "numeric_embedding": self.numeric_embedding,
                     "frequency_scale": self.frequency_scale},
            bridge={"num_queries": self.num_queries, "depth": self.bridge_depth},
            head={"kind": "regression", "outputs": len(targets)},
            class_names=tuple(targets),
            **language.allspark_fields(),
        )


class SensorsTrainSettings(TrainSettings):
    """Fine-tuning, plus how many training rows are drawn (CPU-sized; the paper trains 30 epochs at 2e-5 on all)."""

    max_train_rows: int | None = Field(
        4000, ge=1, description="random subsample of the training rows (seeded); None = every training row"
    )
    validation_fraction: float = Field(
        0.1, ge=0, lt=1, description="share of those rows held out to keep the best epoch (early stopping): "
                                     "a seeded draw of whole days with a chronological split, of rows with a random "
                                     "one; 0 = train on all and keep the last epoch")


class SensorsConfig(ModelRunConfig):
    """Everything one run of the sensors pipeline needs.

    ``horizon`` 0 estimates the targets at each row's own time from its other columns; ``horizon``
    h > 0 forecasts them h steps ahead from what is known h steps before (the other columns then,
    and the last ``history`` values of the targets).
    """

    kind: ClassVar[str] = "sensors"
    modality: ClassVar[str] = "table"
    block_defaults: ClassVar[dict[str, dict[str, Any]]] = {
        "language": {"layers": 2},
        # one epoch on a 4,000-row subsample (CPU-sized)
        "train": {"epochs": 1, "batch_size": 64, "learning_rate": 1e-3, "warmup_epochs": 0.1, "weight_decay": 0.01},
    }

    name: str = Field("sensors", pattern=NAME_PATTERN)
    inputs: list[str] = Field(min_length=1, description="station tables (CSV, Parquet, GeoParquet) or glob patterns")
    table: TableSchema = Field(description="the tables' columns: id, time, location, targets, features")
    time_features: list[TimeFeature] = Field(["hour", "weekday", "month"], description="calendar inputs")
    horizon: int = Field(0, ge=0, description="steps ahead to predict (0: each row's own time)")
    history: int = Field(0, ge=0, description="past steps of the targets given as inputs")
    stations: list[str] | None = Field(None, min_length=1, description="use only these stations; none = all in inputs")
    test_stations: list[str] = Field(default_factory=list, description="stations never trained on (all rows test)")
    period: tuple[str, str] | None = Field(None, description="inclusive range in the table's time zone; none = all")
    allow_time_gaps: bool = Field(True, description="count missing steps (true) or stop with an error (false)")
    split: Literal["random", "chronological"] = "chronological"
    train_fraction: float = Field(0.4, gt=0, lt=1, description="share of rows (random) or of times (chronological)")
    model: SensorModelConfig = Field(default_factory=SensorModelConfig)
    train: SensorsTrainSettings | None = Field(description="fine-tuning; null with a checkpoint")
    inference_batch: int = Field(256, ge=1)

    @model_validator(mode="after")
    def _consistent(self) -> SensorsConfig:
        if not self.table.targets:
            raise ValueError("table.targets names no column: the sensors pipeline needs at least one target")
        if self.stations is not None and set(self.test_stations) - set(self.stations):
            raise ValueError(f"test_stations {sorted(set(self.test_stations) - set(self.stations))} are not in stations")
        if len(set(self.time_features)) != len(self.time_features):
            raise ValueError(f"time_features {self.time_features} repeat a feature")
        return self

    def contract(self) -> dict[str, Any]:
        """What a model is tied to: the columns it reads and answers, their step, and the forecast."""
        return {"targets": self.table.targets, "continuous": self.table.continuous,
                "categorical": self.table.categorical, "static": self.static_attributes(),
                "time_features": self.time_features, "step": self.table.time.step,
                "horizon": self.horizon, "history": self.history}

    def static_attributes(self) -> list[str]:
        return [] if self.table.location is None else list(self.table.location.static)

    def station_files(self) -> list[Path]:
        """The station tables ``inputs`` names, sorted; a pattern matching nothing is an error."""
        return find_files(self.inputs, "station tables: CSV, Parquet or GeoParquet files")

    def locations_file(self) -> Path | None:
        """The locations file ``table.location.file`` names: a path, or a file under the packaged ``catalogs/``."""
        return locations_path(self.table.location, catalogs_dir())

    def input_files(self) -> list[Path]:
        """Every file the run reads: the station tables and the locations file (their content keys the work folder)."""
        return [*self.station_files(), *filter(None, [self.locations_file()])]


def load_sensors_config(path: str | Path | None = None, **overrides: object) -> SensorsConfig:
    """The sensors run config: see :func:`allspark.core.config.load_config`."""
    return load_config(SensorsConfig, path, **overrides)

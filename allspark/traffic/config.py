"""The traffic run config: the input files (wide CSV or long table), the time axis, the windows, the model and
its training."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Any, ClassVar, Literal

import pandas as pd
from pydantic import Field, field_validator, model_serializer, model_validator

from allspark.core.config import LanguageModelSettings, ModelRunConfig, StrictModel, TrainSettings
from allspark.core.tables import TableSchema, locations_path

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
    use_profile: bool = Field(
        True, description="give the model each sensor's time-of-day profile, fitted on the training part (what makes "
                          "the historical average strong): its inputs carry each speed's deviation from the profile "
                          "too, and with predict_change it learns the change from the last deviation carried onto "
                          "the profile of the target times",
    )
    num_queries: int = Field(16, ge=1)
    bridge_depth: int = Field(2, ge=1)
    bridge_heads: int = Field(8, ge=1)

    @property
    def in_features(self) -> int:
        """Features per sensor and step: the speed, and its deviation from the profile when ``use_profile``."""
        return 2 if self.use_profile else 1

    def allspark_config(self, num_nodes: int, horizon: int, step_minutes: int, language: LanguageModelSettings):
        """The model's :class:`~allspark.model.model.AllSparkConfig` for a graph of ``num_nodes`` sensors."""
        from allspark.model.model import AllSparkConfig

        return AllSparkConfig(
            modality="graph",
            encoder={
                "num_nodes": num_nodes, "in_features": self.in_features, "time_of_day_slots": MINUTES_PER_DAY // step_minutes,
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
    speeds: Path = Field(
        description="speeds: a wide CSV (header = sensor ids, one row per step, 0 = missing), or with `table` a "
                    "long table (CSV, Parquet or GeoParquet: one row per sensor and time)",
    )
    table: TableSchema | None = Field(
        None,
        description="the columns of a long `speeds` table: id = the sensor, one target = the speed, the time (its "
                    "first value is the start, its step sets step_minutes), optionally the location; null: wide CSV",
    )
    adjacency: Path | None = Field(
        None,
        description="N x N adjacency: CSV without header (rows in the speeds' sensor order: a long table's is by "
                    "sensor id), or .npz with 'adjacency' [+ 'sensor_ids']. Checked against the sensors and stored "
                    "with the graph; the model does not use it (its graph encoder learns the relations by attention)",
    )
    locations: Path | None = Field(
        None, description="CSV with columns sensor_id, latitude, longitude (EPSG:4326); none with table.location",
    )
    missing_location: Literal["error", "drop"] = Field(
        "error", description="a sensor without a location in `locations`: stop with an error, or drop it (counted)"
    )
    start: datetime | None = Field(
        None, description="a wide CSV's time of the first row, with its UTC offset (it has no timestamps; sets the "
                          "time of day and weekday); with a `table`, its first time",
    )
    step_minutes: int = Field(5, ge=1, description="minutes between rows; must divide a day; with a `table`, its step")
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
    def _aware(cls, value: datetime | None) -> datetime | None:
        if value is not None and value.tzinfo is None:
            raise ValueError("start needs a UTC offset, e.g. 2012-03-05T00:00:00-08:00")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> TrafficConfig:
        if self.table is not None:
            self._check_table(self.table)
        elif self.start is None:
            raise ValueError("a wide speeds CSV has no timestamps: give start, the time of its first row with its UTC "
                             "offset (e.g. 2012-03-05T00:00:00-08:00), or a long table with a `table` block")
        if MINUTES_PER_DAY % self.step_minutes:
            raise ValueError(f"step_minutes ({self.step_minutes}) must divide a day (1440 minutes)")
        if abs(sum(self.split) - 1) > 1e-6 or min(self.split) <= 0:
            raise ValueError(f"split {self.split} must be three positive fractions summing to 1")
        table_locations = self.table is not None and self.table.location is not None
        if self.locations is None and not table_locations:
            raise ValueError("no sensor locations: give `locations` (a CSV of sensor_id, latitude, longitude)"
                             + (" or table.location (longitude/latitude columns, or a locations file)"
                                if self.table is not None else ""))
        if self.locations is not None and table_locations:
            raise ValueError("sensor locations given twice: `locations` and table.location (keep one)")
        if table_locations and self.missing_location == "drop":
            raise ValueError("missing_location: drop applies to a `locations` CSV; with table.location every "
                             "sensor needs its location")
        return self

    def _check_table(self, table: TableSchema) -> None:
        """A long table holds one speed per sensor and time; its time gives the start (its first time, read at
        ingest) and the step, so neither may be set."""
        explicit = sorted({"start", "step_minutes"} & self.model_fields_set)
        if explicit:
            raise ValueError(f"leave out {' and '.join(explicit)} with a `table`: its first time is the start and "
                             "table.time.step the step")
        if len(table.targets) != 1:
            raise ValueError(f"table.targets must name exactly one column, the speed (got {table.targets})")
        if table.continuous or table.categorical:
            raise ValueError("table.continuous and table.categorical must be empty: the traffic model reads the "
                             "speed alone")
        minutes, rest = divmod(table.time.step_delta, pd.Timedelta(minutes=1))
        if rest or MINUTES_PER_DAY % minutes:
            raise ValueError(f"table.time.step {table.time.step!r} must be a whole number of minutes that divides "
                             "a day (1440 minutes)")
        object.__setattr__(self, "step_minutes", int(minutes))  # derived, so not counted as set

    @model_serializer(mode="wrap")
    def _dump_what_the_layout_uses(self, handler) -> dict[str, Any]:
        """A wide config dumps as before ``table`` existed (its fingerprint, so its work folder, is unchanged);
        a table config leaves out the ``start`` and ``step_minutes`` it derives, so its config.yaml loads again."""
        data = handler(self)
        for derived in ("table",) if self.table is None else ("start", "step_minutes"):
            data.pop(derived, None)
        return data

    def contract(self) -> dict[str, Any]:
        """The forecast's steps and their length: the head's outputs and the encoder's time-of-day slots."""
        return {"horizon": self.horizon, "step_minutes": self.step_minutes}

    def input_files(self) -> list[Path]:
        """The speeds file and the adjacency and locations files given (their content keys the work folder)."""
        located = locations_path(self.table.location) if self.table is not None else None
        return [path for path in (self.speeds, self.adjacency, self.locations, located) if path is not None]

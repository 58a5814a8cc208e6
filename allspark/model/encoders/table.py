"""Table encoder: one row of mixed continuous and categorical columns -> one token per column.

The paper predicts PM2.5 from the PRSA Beijing multi-site air-quality table with a TabFormer-style
encoder: one embedding per column, discrete and continuous columns embedded apart, then a
1-layer Transformer over the column tokens.

What we do:

- **Continuous column c**, by ``numeric_embedding``:

  - ``linear``: ``value * w_c + column_c``, a per-column linear embedding of the value whose bias
    is the column-identity embedding (FT-Transformer's). TabFormer quantises continuous fields
    into bins first; the linear embedding needs no binning and keeps the value exact. But every
    value of a column lies on one line, so any threshold (PM2.5 rises steeply once CO passes a
    level) must be found by the layers after it, which is where trees beat such networks.
  - ``periodic``: ``ReLU(Linear_c([cos(2 pi f_c value), sin(2 pi f_c value)])) + column_c`` with
    ``frequencies`` learned frequencies per column, started at N(0, ``frequency_scale``): the PLR
    embedding of Gorishniy et al., "On Embeddings for Numerical Features in Tabular Deep
    Learning" (NeurIPS 2022), who find it narrows the gap to gradient-boosted trees (on PRSA: the
    README). Built with their package ``rtdl_num_embeddings``.

  Values should be standardised per column by the data pipeline (the encoder does not rescale).
- **Missing continuous cells (NaN)** become a learned per-column *missing* embedding
  (``missing_c + column_c``): real sensor tables have gaps (PRSA has them in every pollutant and
  weather column), and dropping or imputing rows would waste or bias data.
- **Categorical column j:** its own embedding table (all tables share one ``nn.Embedding`` at
  per-column offsets) plus ``column_j``. A value of ``-1`` means *missing* and has its own row
  in the column's table (PRSA's wind direction has gaps too).
- A Transformer (``depth``; paper 1) mixes the column tokens; every column token comes out.

The default sizes are the paper's PRSA setting (10 continuous columns: PM10, SO2, NO2, CO, O3,
TEMP, PRES, DEWP, RAIN, WSPM; categoricals station 12, wind direction 16, month 12, hour 24); the
sensors pipeline sets both from the run's ``table`` block.

    continuous (B, Cc) [NaN = missing] + categorical (B, Ck) [-1 = missing]
      --per-column embeddings--> (B, Cc + Ck, width)
      --TransformerTrunk (depth; paper 1)--> tokens (B, Cc + Ck, width)
"""

from __future__ import annotations

from typing import Annotated, Literal

import torch
from pydantic import Field, model_validator
from rtdl_num_embeddings import PeriodicEmbeddings
from torch import nn

from allspark.model.encoders.base import AttentionEncoderConfig, EncoderOutput, Inputs, ModalityEncoder
from allspark.model.inputs import InputSpec, TensorSpec
from allspark.model.layers import TransformerTrunk

PAPER_CONTINUOUS_COLUMNS = 10
"""The paper's PRSA setting: PM10, SO2, NO2, CO, O3, TEMP, PRES, DEWP, RAIN, WSPM."""

PAPER_CATEGORY_SIZES = (12, 16, 12, 24)
"""The paper's PRSA setting: station, wind direction, month, hour."""

MISSING_CATEGORY = -1
"""Categorical value meaning "missing"."""


class TableConfig(AttentionEncoderConfig):
    """Hyper-parameters of :class:`TableEncoder`; the columns default to PRSA's (module docstring)."""

    continuous_columns: int = Field(
        PAPER_CONTINUOUS_COLUMNS, ge=0,
        description="continuous columns (PRSA: PM10, SO2, NO2, CO, O3, TEMP, PRES, DEWP, RAIN, WSPM)",
    )
    categorical_cardinalities: list[Annotated[int, Field(ge=1)]] = Field(
        list(PAPER_CATEGORY_SIZES),
        description="categories per categorical column (PRSA: station 12, wind direction 16, month 12, hour 24)",
    )
    width: int = Field(64, ge=1, description="token width (divisible by heads)")
    depth: int = Field(1, ge=0, description="Transformer layers over the column tokens (paper: 1)")
    heads: int = Field(4, ge=1, description="attention heads")
    numeric_embedding: Literal["linear", "periodic"] = Field(
        "linear", description="how a continuous value becomes a token: linear (FT-Transformer) or periodic (PLR, "
                              "Gorishniy et al. 2022); linear is the default so models saved before it load as trained",
    )
    frequencies: int = Field(16, ge=1, description="periodic: learned frequencies per continuous column")
    frequency_scale: float = Field(0.1, gt=0, description="periodic: std of the frequencies' start, per std of the "
                                                          "value (the PLR paper's sigma; it matters)")

    @model_validator(mode="after")
    def _check(self) -> TableConfig:
        if self.continuous_columns + len(self.categorical_cardinalities) == 0:
            raise ValueError("a table needs at least one continuous or categorical column")
        return self


class TableEncoder(ModalityEncoder):
    """One token per column of a table row (see the module docstring)."""

    Config = TableConfig
    input_spec = InputSpec(
        (
            TensorSpec(
                "continuous", ("batch", "continuous_columns"), optional=True, allow_nan=True,
                description="continuous values, standardised per column; NaN = missing",
            ),
            TensorSpec(
                "categorical", ("batch", "categorical_columns"), dtype="int", optional=True,
                description="category index per column in [0, cardinality); -1 = missing",
            ),
        )
    )

    def __init__(self, modality: str, config: TableConfig) -> None:
        super().__init__(modality, config)
        cardinalities = torch.tensor(config.categorical_cardinalities, dtype=torch.long)
        columns = config.continuous_columns + len(cardinalities)
        self.column_embedding = nn.Parameter(torch.randn(columns, config.width) * 0.02)
        if config.numeric_embedding == "periodic":
            self.periodic = PeriodicEmbeddings(config.continuous_columns, config.width,
                                               n_frequencies=config.frequencies,
                                               frequency_init_scale=config.frequency_scale, lite=False)
        else:
            self.value_weight = nn.Parameter(torch.randn(config.continuous_columns, config.width) * 0.02)
        self.missing_embedding = nn.Parameter(torch.randn(config.continuous_columns, config.width) * 0.02)
        # Column j's table holds rows offset_j .. offset_j + cardinality_j, the last one for "missing".
        self.category_embedding = nn.Embedding(int((cardinalities + 1).sum()), config.width)
        nn.init.normal_(self.category_embedding.weight, std=0.02)
        offsets = torch.cumsum(cardinalities + 1, 0) - (cardinalities + 1)
        self.register_buffer("category_offsets", offsets, persistent=False)
        self.register_buffer("cardinalities", cardinalities, persistent=False)
        self.trunk = TransformerTrunk(config.width, config.depth, config.heads)
        self.out_dim = config.width

    def check(self, inputs: Inputs, sizes: dict[str, int]) -> None:
        config = self.config
        given = {name: inputs.get(name) is not None for name in ("continuous", "categorical")}
        if not any(given.values()):
            raise self.input_error("neither 'continuous' nor 'categorical' given")
        expected = {"continuous": config.continuous_columns, "categorical": len(config.categorical_cardinalities)}
        for name, columns in expected.items():
            got = sizes.get(f"{name}_columns", 0) if given[name] else 0
            if got != columns:
                raise self.input_error(
                    f"{name!r} has {got} columns but the encoder is configured for {columns}"
                    + (" (leave it out)" if columns == 0 else "")
                )
        if given["continuous"] and inputs["continuous"].isinf().any():
            raise self.input_error("'continuous' contains infinite values (NaN marks a missing cell)")
        if given["categorical"]:
            values = inputs["categorical"]
            bad = (values < MISSING_CATEGORY) | (values >= self.cardinalities.to(values.device))
            if bad.any():
                column = int(bad.any(dim=0).nonzero()[0])
                found = values[:, column][bad[:, column]][0].item()
                raise self.input_error(
                    f"categorical column {column} has value {found}, outside [0, "
                    f"{config.categorical_cardinalities[column]}) (its cardinality; -1 = missing)"
                )

    def encode(self, inputs: Inputs) -> EncoderOutput:
        parts = []
        if self.config.continuous_columns:
            values = inputs["continuous"].to(self.missing_embedding.dtype)
            present = ~values.isnan()[..., None]  # (B, Cc, 1)
            parts.append(torch.where(present, self.embed_values(values.nan_to_num()), self.missing_embedding))
        if self.config.categorical_cardinalities:
            categories = inputs["categorical"].long()
            rows = self.category_offsets + torch.where(categories == MISSING_CATEGORY, self.cardinalities, categories)
            parts.append(self.category_embedding(rows))
        tokens = torch.cat(parts, dim=1) + self.column_embedding
        return EncoderOutput(tokens=self.trunk(tokens))

    def embed_values(self, values: torch.Tensor) -> torch.Tensor:
        """``(B, Cc)`` standardised values (no NaN) -> ``(B, Cc, width)`` value embeddings."""
        if self.config.numeric_embedding == "periodic":
            return self.periodic(values)
        return values[..., None] * self.value_weight

    @classmethod
    def example_inputs(
        cls, config: TableConfig, batch_size: int, generator: torch.Generator
    ) -> dict[str, torch.Tensor]:
        """Standardised values with about 5 % missing cells, and uniform categories."""
        inputs = {}
        if config.continuous_columns:
            values = torch.randn(batch_size, config.continuous_columns, generator=generator)
            missing = torch.rand(values.shape, generator=generator) < 0.05
            inputs["continuous"] = values.masked_fill(missing, float("nan"))
        if config.categorical_cardinalities:
            cardinalities = torch.tensor(config.categorical_cardinalities)
            uniform = torch.rand(batch_size, len(cardinalities), generator=generator)
            inputs["categorical"] = (uniform * cardinalities).long()
        return inputs

"""Traffic graph encoder: sensor-network signals over time -> one token (and dense feature) per node.

The paper forecasts METR-LA traffic speed (207 sensors, 12 five-minute steps in, 12 out) with a
STAEformer-style encoder: a linear lift of each node's signal per step plus embeddings of node
identity, space and time (time of day, day of week), then Transformers over time and over nodes.

What we do (STAEformer's ideas, in a smaller and readable form):

- **Embedding of one (step, node) cell:** ``lift(features)`` + time-of-day slot embedding
  (``time_of_day_slots``, 288 five-minute slots) + day-of-week embedding + a sine/cosine embedding
  of the step's offset from the last input step + node-identity embedding + a space embedding
  (a linear map of the node's location, when ``locations`` are given). STAEformer concatenates its
  embeddings; we sum them, which keeps one width throughout. STAEformer's spatio-temporal
  *adaptive* embedding (one learned vector per step and node) is replaced by the node identity
  plus the step offset, so any number of input steps works.
- **Time, then space.** A Transformer over the steps of each node (``temporal_depth``), the mean
  over steps as that node's summary, then a Transformer over the node summaries
  (``spatial_depth``), where nodes exchange information (the road graph is learned by attention,
  as in STAEformer, not given as an adjacency matrix).
- **Output.** One token per node for the bridge, and the same features as ``dense`` (one per
  node, no grid), so a dense regression head answers ``(batch, nodes, horizon)``.

    signals (B, T, N, F), time_of_day (B, T), day_of_week (B, T) [+ locations (N, 2)]
      --lift + time, node and space embeddings--> (B, T, N, width)
      --TransformerTrunk over T per node, mean over T--> (B, N, width)
      --TransformerTrunk over N--> tokens = dense (B, N, width)
"""

from __future__ import annotations

import torch
from pydantic import Field
from torch import nn

from allspark.model.encoders.base import AttentionEncoderConfig, EncoderOutput, Inputs, ModalityEncoder
from allspark.model.inputs import InputSpec, TensorSpec
from allspark.model.layers import TransformerTrunk, sincos_embedding_1d

DAYS_PER_WEEK = 7


class TrafficGraphConfig(AttentionEncoderConfig):
    """Hyper-parameters of :class:`TrafficGraphEncoder`."""

    num_nodes: int = Field(16, ge=1, description="sensors in the network (METR-LA: 207, PEMS-BAY: 325)")
    in_features: int = Field(1, ge=1, description="signal features per node and step (METR-LA: 1, speed)")
    time_of_day_slots: int = Field(288, ge=1, description="time-of-day embedding slots (288: five minutes each)")
    width: int = Field(64, ge=2, multiple_of=2, description="token width, even, divisible by heads (STAEformer: 152)")
    temporal_depth: int = Field(1, ge=0, description="Transformer layers over the steps of each node (STAEformer: 3)")
    spatial_depth: int = Field(1, ge=0, description="Transformer layers over the nodes (STAEformer: 3)")
    heads: int = Field(4, ge=1, description="attention heads (STAEformer: 4)")


class TrafficGraphEncoder(ModalityEncoder):
    """One token per sensor node, from its recent signals and the time (see the module docstring)."""

    Config = TrafficGraphConfig
    input_spec = InputSpec(
        (
            TensorSpec(
                "signals", ("batch", "steps", "nodes", "features"),
                description="sensor readings per step and node (e.g. speed), standardised per feature",
            ),
            TensorSpec("time_of_day", ("batch", "steps"), description="fraction of the day in [0, 1) of each step"),
            TensorSpec("day_of_week", ("batch", "steps"), dtype="int", description="day of each step in [0, 7)"),
            TensorSpec(
                "locations", ("nodes", 2), optional=True,
                description="node positions (projected x/y or lon/lat), normalised to about [-1, 1]",
            ),
        )
    )

    def __init__(self, modality: str, config: TrafficGraphConfig) -> None:
        super().__init__(modality, config)
        self.lift = nn.Linear(config.in_features, config.width)
        self.time_of_day_embedding = nn.Embedding(config.time_of_day_slots, config.width)
        self.day_of_week_embedding = nn.Embedding(DAYS_PER_WEEK, config.width)
        self.node_embedding = nn.Embedding(config.num_nodes, config.width)
        self.space_embedding = nn.Linear(2, config.width)
        for table in (self.time_of_day_embedding, self.day_of_week_embedding, self.node_embedding):
            nn.init.normal_(table.weight, std=0.02)
        self.temporal_trunk = TransformerTrunk(config.width, config.temporal_depth, config.heads)
        self.spatial_trunk = TransformerTrunk(config.width, config.spatial_depth, config.heads)
        self.out_dim = config.width

    def check(self, inputs: Inputs, sizes: dict[str, int]) -> None:
        config = self.config
        if sizes["nodes"] != config.num_nodes:
            raise self.input_error(
                f"the inputs have {sizes['nodes']} nodes but the encoder is configured for "
                f"num_nodes={config.num_nodes}"
            )
        if sizes["features"] != config.in_features:
            raise self.input_error(
                f"'signals' has {sizes['features']} features per node but the encoder is configured for "
                f"in_features={config.in_features}"
            )
        time_of_day = inputs["time_of_day"]
        if (time_of_day < 0).any() or (time_of_day >= 1).any():
            raise self.input_error(
                f"'time_of_day' ranges over [{time_of_day.min().item():g}, {time_of_day.max().item():g}], "
                "outside [0, 1)"
            )
        day_of_week = inputs["day_of_week"]
        if (day_of_week < 0).any() or (day_of_week >= DAYS_PER_WEEK).any():
            raise self.input_error(
                f"'day_of_week' ranges over [{day_of_week.min().item()}, {day_of_week.max().item()}], outside [0, 7)"
            )

    def encode(self, inputs: Inputs) -> EncoderOutput:
        signals = inputs["signals"].to(self.lift.weight.dtype)
        batch, steps, nodes, _ = signals.shape
        slots = self.config.time_of_day_slots
        slot = (inputs["time_of_day"] * slots).long().clamp(max=slots - 1)
        offsets = torch.arange(steps, device=signals.device) - (steps - 1)  # last input step = 0
        time = (
            self.time_of_day_embedding(slot)
            + self.day_of_week_embedding(inputs["day_of_week"].long())
            + sincos_embedding_1d(offsets, self.config.width).to(signals.dtype)
        )  # (B, T, width)
        place = self.node_embedding.weight  # (N, width)
        if inputs.get("locations") is not None:
            place = place + self.space_embedding(inputs["locations"].to(signals.dtype))
        cells = self.lift(signals) + time[:, :, None] + place  # (B, T, N, width)
        per_node = cells.transpose(1, 2).reshape(batch * nodes, steps, -1)
        summary = self.temporal_trunk(per_node).mean(dim=1).view(batch, nodes, -1)
        features = self.spatial_trunk(summary)
        return EncoderOutput(tokens=features, dense=features)

    @classmethod
    def example_inputs(
        cls, config: TrafficGraphConfig, batch_size: int, generator: torch.Generator
    ) -> dict[str, torch.Tensor]:
        """METR-LA-like windows: 12 five-minute steps of a daily cycle around a per-node level."""
        steps = 12
        start = torch.rand(batch_size, 1, generator=generator)
        elapsed = start + torch.arange(steps) / 288  # days since midnight of the start day
        first_day = torch.randint(DAYS_PER_WEEK, (batch_size, 1), generator=generator)
        level = torch.randn(config.num_nodes, 1, generator=generator)  # (N, 1)
        cycle = torch.cos(2 * torch.pi * elapsed)[:, :, None, None]  # (B, T, 1, 1)
        noise = torch.randn(batch_size, steps, config.num_nodes, config.in_features, generator=generator)
        return {
            "signals": level + cycle + 0.1 * noise,
            "time_of_day": elapsed % 1,
            "day_of_week": (first_day + elapsed.floor().long()) % DAYS_PER_WEEK,
            "locations": torch.rand(config.num_nodes, 2, generator=generator) * 2 - 1,
        }

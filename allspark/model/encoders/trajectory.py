"""Trajectory encoder: a pedestrian's observed path and its neighbours -> step and neighbour tokens.

The paper forecasts pedestrian paths on ETH/UCY (8 observed steps, 12 future, 0.4 s apart) with a
TUTR-style encoder: a linear lift of each (x, y) step, then a 2-layer Transformer; the head
proposes K candidate futures (best-of-K ADE/FDE).

What we do:

- **Frame.** Positions are in metres, relative to the focal agent's last observed position (so
  the last observed step is (0, 0)); neighbours are in the same frame. Translation-free inputs let
  one model serve every scene. The encoder does not enforce this; the data pipeline must (the
  trajectories pipeline also turns each window so that the agent heads along +x).
- **Step tokens.** Each step becomes ``(x, y, vx, vy)`` (velocity = difference to the previous
  step, zero at the first), lifted by one linear layer, plus a sine/cosine embedding of the step's
  offset from the last observed step (0, -1, -2, ...), so any number of observed steps (>= 2)
  works and "now" always has the same position.
- **Neighbours (social context).** Each neighbour's steps go through the same lift and time
  embedding, are averaged over the steps where it was seen (NaN = not seen), and become one token
  (plus a learned "neighbour" embedding). TUTR models social interaction in its decoder; we append
  the neighbour tokens before the Transformer, so the focal steps attend to them from the first
  layer. Neighbours never seen (all NaN) are padding: masked in attention, and marked in the
  returned ``padding_mask`` so the bridge ignores them.

    observed (B, T, 2) [+ neighbours (B, N, T, 2), NaN = absent]
      --lift + time embedding--> focal steps (B, T, width) [+ pooled neighbour tokens (B, N, width)]
      --TransformerTrunk (depth; paper 2), padding masked--> tokens (B, T [+ N], width)
"""

from __future__ import annotations

import torch
from pydantic import Field
from torch import nn

from allspark.model.encoders.base import AttentionEncoderConfig, EncoderOutput, Inputs, ModalityEncoder
from allspark.model.inputs import InputSpec, TensorSpec
from allspark.model.layers import TransformerTrunk, sincos_embedding_1d


class TrajectoryConfig(AttentionEncoderConfig):
    """Hyper-parameters of :class:`TrajectoryEncoder`."""

    width: int = Field(64, ge=2, multiple_of=2, description="token width (even, divisible by heads)")
    depth: int = Field(2, ge=0, description="Transformer layers over steps and neighbours (paper: 2)")
    heads: int = Field(4, ge=1, description="attention heads")


def step_features(positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-step ``(x, y, vx, vy)`` and validity of positions ``(..., steps, 2)`` that may hold NaN.

    A step is valid when both coordinates are finite; invalid steps get zero features, and a
    velocity is only taken between two valid steps (zero otherwise, and at the first step).
    """
    valid = positions.isfinite().all(dim=-1)  # (..., T)
    positions = torch.where(valid[..., None], positions, 0)
    velocity = positions[..., 1:, :] - positions[..., :-1, :]
    moving = (valid[..., 1:] & valid[..., :-1])[..., None]
    velocity = torch.cat([torch.zeros_like(positions[..., :1, :]), velocity * moving], dim=-2)
    return torch.cat([positions, velocity], dim=-1), valid


class TrajectoryEncoder(ModalityEncoder):
    """Tokens for the focal agent's observed steps, then one per neighbour (see the module docstring)."""

    Config = TrajectoryConfig
    input_spec = InputSpec(
        (
            TensorSpec(
                "observed", ("batch", "observed_steps", 2), min_sizes=(("observed_steps", 2),),
                description="focal agent's positions in metres, relative to its last observed position",
            ),
            TensorSpec(
                "neighbours", ("batch", "neighbours", "observed_steps", 2), optional=True, allow_nan=True,
                min_sizes=(("neighbours", 0),),
                description="neighbours' positions in the same frame; NaN where a neighbour is not seen",
            ),
        )
    )

    def __init__(self, modality: str, config: TrajectoryConfig) -> None:
        super().__init__(modality, config)
        self.lift = nn.Linear(4, config.width)
        self.neighbour_embedding = nn.Parameter(torch.randn(config.width) * 0.02)
        self.trunk = TransformerTrunk(config.width, config.depth, config.heads)
        self.out_dim = config.width

    def check(self, inputs: Inputs, sizes: dict[str, int]) -> None:
        neighbours = inputs.get("neighbours")
        if neighbours is not None and neighbours.isinf().any():
            raise self.input_error("'neighbours' contains infinite values (NaN marks a step not seen)")

    def embed_steps(self, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Step tokens ``(..., T, width)`` (lift + time embedding) and validity ``(..., T)``."""
        features, valid = step_features(positions.to(self.lift.weight.dtype))
        steps = positions.shape[-2]
        offsets = torch.arange(steps, device=positions.device) - (steps - 1)  # last observed step = 0
        time = sincos_embedding_1d(offsets, self.config.width).to(features.dtype)
        return self.lift(features) + time, valid

    def encode(self, inputs: Inputs) -> EncoderOutput:
        tokens, _ = self.embed_steps(inputs["observed"])  # (B, T, width)
        neighbours = inputs.get("neighbours")
        if neighbours is None:
            return EncoderOutput(tokens=self.trunk(tokens))
        steps, valid = self.embed_steps(neighbours)  # (B, N, T, width), (B, N, T)
        seen = valid[..., None].to(steps.dtype)
        pooled = (steps * seen).sum(dim=2) / seen.sum(dim=2).clamp(min=1)
        focal = torch.zeros(tokens.shape[:2], dtype=torch.bool, device=tokens.device)
        padding = torch.cat([focal, ~valid.any(dim=2)], dim=1)  # (B, T + N), True = never seen
        tokens = torch.cat([tokens, pooled + self.neighbour_embedding.to(pooled.dtype)], dim=1)
        return EncoderOutput(tokens=self.trunk(tokens, padding_mask=padding), padding_mask=padding)

    @classmethod
    def example_inputs(
        cls, config: TrajectoryConfig, batch_size: int, generator: torch.Generator
    ) -> dict[str, torch.Tensor]:
        """ETH/UCY-like scenes: 8 observed steps of near-constant velocity, 4 neighbours.

        Neighbours miss about 20 % of their steps, and about a quarter of them are never seen.
        """
        steps, count = 8, 4
        offsets = (torch.arange(steps) - (steps - 1)).float()[:, None]  # (T, 1)
        velocity = torch.randn(batch_size, 1, 2, generator=generator) * 0.5  # metres per 0.4 s step
        observed = offsets * velocity + 0.05 * torch.randn(batch_size, steps, 2, generator=generator)
        observed = observed - observed[:, -1:]
        start = torch.randn(batch_size, count, 1, 2, generator=generator) * 2.0
        neighbour_velocity = torch.randn(batch_size, count, 1, 2, generator=generator) * 0.5
        neighbours = start + offsets * neighbour_velocity
        unseen = torch.rand(batch_size, count, steps, generator=generator) < 0.2
        unseen |= torch.rand(batch_size, count, 1, generator=generator) < 0.25
        return {"observed": observed, "neighbours": neighbours.masked_fill(unseen[..., None], float("nan"))}

"""Point-cloud encoder: points -> one token per local patch of the surface (PointBERT-style).

The paper classifies ModelNet40 shapes with PointBERT's encoder: farthest-point sampling picks
G centres, each centre's S nearest points form a group (PointBERT: 64 groups of 32 points out of
1024), a mini-PointNet (shared 1D convolutions and max-pooling) turns each group, in coordinates
relative to its centre, into a token, an MLP of the centre's xyz is added as the position
embedding, and a 12-layer Transformer (width 384) reads the group tokens.

We follow that design with CPU-sized defaults (32 groups of 16, width 64, 2 layers; the paper's
sizes are one config value away). Differences:

- The mini-PointNet uses Linear layers on the last axis (the same as PointBERT's kernel-1 1D
  convolutions) and LayerNorm instead of BatchNorm, so a sample's tokens do not depend on the
  rest of its batch.
- Channels beyond xyz (normals, colour, intensity) are accepted: they join the relative xyz as
  per-point inputs of the mini-PointNet. Grouping uses xyz only.
- No class token: every group token goes to the bridge.

Clouds should be normalised (centred, scaled into the unit sphere) by the data pipeline, as
PointBERT does. Grouping runs in float32 (distances), also under bf16 autocast.

    points (B, P, C)  [xyz first]
      --farthest-point sampling--> centres (B, G, 3)
      --kNN (S nearest points of each centre), xyz relative to the centre--> groups (B, G, S, C)
      --mini-PointNet, max over each group--> (B, G, width) + MLP(centre xyz)
      --TransformerTrunk (depth; paper 12)--> tokens (B, G, width)
"""

from __future__ import annotations

import torch
from pydantic import Field
from torch import nn

from allspark.model.encoders.base import AttentionEncoderConfig, EncoderOutput, Inputs, ModalityEncoder
from allspark.model.inputs import InputSpec, TensorSpec
from allspark.model.layers import TransformerTrunk


class PointCloudConfig(AttentionEncoderConfig):
    """Hyper-parameters of :class:`PointCloudEncoder`."""

    num_groups: int = Field(32, ge=1, description="group centres from farthest-point sampling (PointBERT: 64)")
    group_size: int = Field(16, ge=1, description="nearest points per group (PointBERT: 32)")
    in_channels: int = Field(3, ge=3, description="channels per point: xyz first, then any extra features")
    group_hidden: int = Field(
        32, ge=1, description="mini-PointNet first width; later layers use 2x and 4x (PointBERT: 128, 256, 512)"
    )
    width: int = Field(64, ge=1, description="token width, divisible by heads (PointBERT: 384)")
    depth: int = Field(2, ge=0, description="Transformer layers over the group tokens (PointBERT: 12)")
    heads: int = Field(4, ge=1, description="attention heads (PointBERT: 6)")


def farthest_point_sampling(xyz: torch.Tensor, count: int) -> torch.Tensor:
    """Indices ``(B, count)`` of ``count`` distinct points of ``xyz`` ``(B, P, 3)``, spread out.

    Starts at the first point (deterministic), then repeatedly takes the point farthest from all
    points taken so far. Vectorised over the batch; the loop runs over the ``count`` picks.
    Taken points get distance -1, so even duplicated points are never picked twice.
    """
    xyz = xyz.detach().float()
    batch, points, _ = xyz.shape
    rows = torch.arange(batch, device=xyz.device)
    chosen = torch.empty(batch, count, dtype=torch.long, device=xyz.device)
    distance = torch.full((batch, points), float("inf"), device=xyz.device)
    farthest = torch.zeros(batch, dtype=torch.long, device=xyz.device)
    for i in range(count):
        chosen[:, i] = farthest
        to_new = (xyz - xyz[rows, farthest][:, None]).square().sum(dim=-1)  # (B, P)
        distance = torch.minimum(distance, to_new)
        distance[rows, farthest] = -1.0
        farthest = distance.argmax(dim=1)
    return chosen


def knn_indices(xyz: torch.Tensor, centres: torch.Tensor, k: int) -> torch.Tensor:
    """Indices ``(B, G, k)`` of the ``k`` points of ``xyz`` ``(B, P, 3)`` nearest each centre ``(B, G, 3)``.

    Nearest first. Exact float32 distances (no matrix-product shortcut), so close ties keep their order.
    """
    distances = torch.cdist(
        centres.detach().float(), xyz.detach().float(), compute_mode="donot_use_mm_for_euclid_dist"
    )
    return distances.topk(k, dim=-1, largest=False).indices


class MiniPointNet(nn.Module):
    """PointBERT's group encoder: per-point MLP, max-pool, pooled feature joined to every point, MLP, max-pool.

    ``(B, G, S, in_channels) -> (B, G, out_dim)``, invariant to the order of a group's points.
    Widths ``hidden -> 2 hidden``, then ``4 hidden -> 4 hidden -> out_dim`` (PointBERT: 128, 256, 512).
    """

    def __init__(self, in_channels: int, hidden: int, out_dim: int) -> None:
        super().__init__()
        self.first = nn.Sequential(
            nn.Linear(in_channels, hidden), nn.LayerNorm(hidden), nn.ReLU(), nn.Linear(hidden, 2 * hidden)
        )
        self.second = nn.Sequential(
            nn.Linear(4 * hidden, 4 * hidden), nn.LayerNorm(4 * hidden), nn.ReLU(), nn.Linear(4 * hidden, out_dim)
        )

    def forward(self, groups: torch.Tensor) -> torch.Tensor:
        local = self.first(groups)  # (B, G, S, 2h)
        pooled = local.max(dim=2, keepdim=True).values.expand_as(local)
        return self.second(torch.cat([pooled, local], dim=-1)).max(dim=2).values


class PointCloudEncoder(ModalityEncoder):
    """One token per farthest-point-sampled local group of points (see the module docstring)."""

    Config = PointCloudConfig
    input_spec = InputSpec(
        (
            TensorSpec(
                "points", ("batch", "points", "channels"), min_sizes=(("channels", 3),),
                description="xyz (normalised into the unit sphere) then any extra per-point features",
            ),
        )
    )

    def __init__(self, modality: str, config: PointCloudConfig) -> None:
        super().__init__(modality, config)
        self.group_encoder = MiniPointNet(config.in_channels, config.group_hidden, config.width)
        self.position_embedding = nn.Sequential(
            nn.Linear(3, config.group_hidden), nn.GELU(), nn.Linear(config.group_hidden, config.width)
        )
        self.trunk = TransformerTrunk(config.width, config.depth, config.heads)
        self.out_dim = config.width

    def check(self, inputs: Inputs, sizes: dict[str, int]) -> None:
        config = self.config
        if sizes["channels"] != config.in_channels:
            raise self.input_error(
                f"'points' has {sizes['channels']} channels but the encoder is configured for "
                f"in_channels={config.in_channels}"
            )
        needed = max(config.num_groups, config.group_size)
        if sizes["points"] < needed:
            raise self.input_error(
                f"'points' has {sizes['points']} points; at least {needed} needed for "
                f"num_groups={config.num_groups} groups of group_size={config.group_size}"
            )

    def group(self, points: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Centres ``(B, G, 3)`` and groups ``(B, G, S, C)`` with xyz relative to their centre."""
        xyz = points[..., :3]
        rows = torch.arange(len(points), device=points.device)[:, None]
        centres = xyz[rows, farthest_point_sampling(xyz, self.config.num_groups)]  # (B, G, 3)
        members = knn_indices(xyz, centres, self.config.group_size)  # (B, G, S)
        groups = points[rows[..., None], members]  # (B, G, S, C)
        relative = groups[..., :3] - centres[:, :, None]
        return centres, torch.cat([relative, groups[..., 3:]], dim=-1)

    def encode(self, inputs: Inputs) -> EncoderOutput:
        centres, groups = self.group(inputs["points"])
        dtype = self.position_embedding[0].weight.dtype
        tokens = self.group_encoder(groups.to(dtype)) + self.position_embedding(centres.to(dtype))
        return EncoderOutput(tokens=self.trunk(tokens))

    @classmethod
    def example_inputs(
        cls, config: PointCloudConfig, batch_size: int, generator: torch.Generator
    ) -> dict[str, torch.Tensor]:
        """Surfaces of random ellipsoids (axes 0.3-1), four times as many points as the grouping needs."""
        count = 4 * max(config.num_groups, config.group_size)
        directions = torch.randn(batch_size, count, 3, generator=generator)
        axes = 0.3 + 0.7 * torch.rand(batch_size, 1, 3, generator=generator)
        xyz = directions / directions.norm(dim=-1, keepdim=True) * axes
        extra = torch.randn(batch_size, count, config.in_channels - 3, generator=generator)
        return {"points": torch.cat([xyz, extra], dim=-1)}

"""Infrared-visible encoder: a person's infrared and visible images -> one token sequence.

The paper follows DDAG for cross-modality person re-identification (SYSU-MM01): two independent
(unshared) ResNet-50s, one per modality, because infrared and visible images differ too much in
their low-level statistics for one stem to serve both. The task is re-identification cast as
classification: the default head is one linear layer over the training identities.

We keep two unshared branches, written as a small, readable residual network: a stride-2 3x3
stem, then stages of BasicBlocks (the first stage keeps the resolution, each later one halves it).
``widths`` and ``blocks_per_stage`` set the size: ``(64, 128, 256, 512)`` with ``(3, 4, 6, 3)``
gives ResNet-34's depth of BasicBlocks, the closest this form gets to the paper's ResNet-50 (which
uses bottleneck blocks). Each branch's final feature grid becomes tokens with a 2D sine/cosine
position embedding and a learned branch-type embedding (infrared or visible); the two token
sequences are concatenated so the bridge can attend across both.

Either image may be left out (a query infrared image alone, a gallery visible image alone, as
cross-modal retrieval needs); then only that branch's tokens are returned. GroupNorm replaces
BatchNorm so training with small batches and inference behave the same.

    infrared (B, 1, H, W) --infrared ResNet--> (B, h*w, C) + positions + type[0] --+
                                                                                   +--concat--> (B, 2*h*w, C)
    visible  (B, 3, H, W) --visible ResNet---> (B, h*w, C) + positions + type[1] --+
"""

from __future__ import annotations

import math
from typing import Annotated

import torch
from pydantic import Field, model_validator
from torch import nn

from allspark.model.encoders.base import EncoderConfig, EncoderOutput, Inputs, ModalityEncoder
from allspark.model.inputs import InputSpec, TensorSpec
from allspark.model.layers import sincos_position_embedding_2d

BRANCHES: tuple[tuple[str, int], ...] = (("infrared", 1), ("visible", 3))
"""Input name and channel count of each branch, in token order."""


def group_norm(channels: int) -> nn.GroupNorm:
    """GroupNorm with up to 8 groups (batch-independent normalisation)."""
    return nn.GroupNorm(math.gcd(8, channels), channels)


class BasicBlock(nn.Module):
    """ResNet's basic residual block: two 3x3 convolutions, a shortcut projected when the shape changes."""

    def __init__(self, in_channels: int, out_channels: int, stride: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False),
            group_norm(out_channels),
            nn.ReLU(),
            nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False),
            group_norm(out_channels),
        )
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False), group_norm(out_channels)
            )
        self.activation = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.activation(self.body(x) + self.shortcut(x))


class ResNetBranch(nn.Module):
    """A small ResNet without its classifier: ``(B, in_channels, H, W) -> (B, widths[-1], h, w)``."""

    def __init__(self, in_channels: int, widths: tuple[int, ...], blocks_per_stage: tuple[int, ...]) -> None:
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, widths[0], 3, stride=2, padding=1, bias=False), group_norm(widths[0]), nn.ReLU()
        )
        blocks: list[nn.Module] = []
        channels = widths[0]
        for stage, (width, count) in enumerate(zip(widths, blocks_per_stage)):
            for index in range(count):
                stride = 2 if stage > 0 and index == 0 else 1
                blocks.append(BasicBlock(channels, width, stride))
                channels = width
        self.stages = nn.Sequential(*blocks)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.stages(self.stem(x))


class InfraredVisibleConfig(EncoderConfig):
    """Hyper-parameters of :class:`InfraredVisibleEncoder`."""

    widths: tuple[Annotated[int, Field(ge=4)], ...] = Field(
        (32, 64), min_length=1,
        description="channels per stage; the last is the token width (a multiple of 4). "
        "Paper: ResNet-50; (64, 128, 256, 512) is ResNet's width",
    )
    blocks_per_stage: tuple[Annotated[int, Field(ge=1)], ...] = Field(
        (1, 1), min_length=1,
        description="BasicBlocks per stage, one entry per width; (3, 4, 6, 3) is ResNet-34/50 depth",
    )

    @model_validator(mode="after")
    def _stages_match(self) -> InfraredVisibleConfig:
        if len(self.widths) != len(self.blocks_per_stage):
            raise ValueError(f"widths {self.widths} and blocks_per_stage {self.blocks_per_stage} differ in length")
        if self.widths[-1] % 4:
            raise ValueError(f"the last width (token width) must be a multiple of 4, got {self.widths[-1]}")
        return self


class InfraredVisibleEncoder(ModalityEncoder):
    """Tokens of an infrared image and a visible image from two unshared ResNet branches."""

    Config = InfraredVisibleConfig
    input_spec = InputSpec(
        (
            TensorSpec(
                "infrared", ("batch", 1, "height", "width"), optional=True,
                description="single-channel infrared image, normalised",
            ),
            TensorSpec(
                "visible", ("batch", 3, "height", "width"), optional=True,
                description="RGB visible image of the same size, normalised",
            ),
        )
    )

    def __init__(self, modality: str, config: InfraredVisibleConfig) -> None:
        super().__init__(modality, config)
        self.branches = nn.ModuleDict(
            {name: ResNetBranch(channels, config.widths, config.blocks_per_stage) for name, channels in BRANCHES}
        )
        self.out_dim = config.widths[-1]
        self.branch_type = nn.Parameter(0.02 * torch.randn(len(BRANCHES), self.out_dim))

    def check(self, inputs: Inputs, sizes: dict[str, int]) -> None:
        if all(inputs.get(name) is None for name, _ in BRANCHES):
            raise self.input_error("give an infrared image, a visible image or both")

    def encode(self, inputs: Inputs) -> EncoderOutput:
        tokens = []
        for index, (name, _) in enumerate(BRANCHES):
            image = inputs.get(name)
            if image is None:
                continue
            features = self.branches[name](image)  # (B, C, h, w)
            position = sincos_position_embedding_2d(*features.shape[-2:], self.out_dim, device=image.device)
            branch_tokens = features.flatten(2).transpose(1, 2)
            tokens.append(branch_tokens + (position + self.branch_type[index]).to(branch_tokens.dtype))
        return EncoderOutput(tokens=torch.cat(tokens, dim=1))

    @classmethod
    def example_inputs(
        cls, config: InfraredVisibleConfig, batch_size: int, generator: torch.Generator
    ) -> dict[str, torch.Tensor]:
        """A pair of 32 x 16 person crops (SYSU-MM01's 2:1 aspect, scaled down)."""
        return {
            "infrared": torch.randn(batch_size, 1, 32, 16, generator=generator),
            "visible": torch.randn(batch_size, 3, 32, 16, generator=generator),
        }

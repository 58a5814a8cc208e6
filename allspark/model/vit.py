"""A small Vision Transformer shared by the RGB and oblique-photography encoders.

The paper encodes RGB images with the frozen EVA ViT of Lynx (40 blocks, width 1408, patch 14,
pretrained on web-scale image-text data). Those weights cannot be had offline, so we build a
plain ViT from scratch instead: a Conv2d patchify stem, fixed 2D sine/cosine positions (so any
image size works without interpolating a learned table) and a pre-LN Transformer trunk. Sizes
come as presets (``tiny``/``small``/``base``, the usual DeiT/ViT widths) or as an explicit
``custom`` width/depth/heads; the default is a tiny custom ViT that trains on a CPU.

No class token: callers get every patch token plus the patch ``grid``, which is what the bridge
reads and what dense heads (a class or a depth per pixel) need.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field, model_validator
from torch import nn

from allspark.model.encoders.base import AttentionEncoderConfig
from allspark.model.layers import TransformerTrunk, sincos_position_embedding_2d

VIT_PRESETS: dict[str, tuple[int, int, int]] = {
    "tiny": (192, 12, 3),
    "small": (384, 12, 6),
    "base": (768, 12, 12),
}
"""Preset sizes as ``(width, depth, heads)``."""

_SIZE_FIELDS = ("width", "depth", "heads")


class ViTConfig(AttentionEncoderConfig):
    """Hyper-parameters of :class:`VisionTransformer`.

    A preset ``size`` fills in ``width``, ``depth`` and ``heads`` (so the fields always state the
    real model, and a saved config reloads as it was); giving other values with a preset is an
    error rather than being silently ignored. ``size="custom"`` takes them as given.
    """

    size: Literal["tiny", "small", "base", "custom"] = Field(
        "custom",
        description="preset (tiny: width 192, 12 layers, 3 heads; small: 384/12/6; base: 768/12/12) or 'custom'; "
        "the paper's frozen EVA ViT (40 blocks, width 1408) has no offline weights",
    )
    patch_size: int = Field(8, ge=1, le=64, description="pixels per square patch side (EVA in the paper: 14)")
    width: int = Field(64, ge=4, multiple_of=4, description="token width (divisible by 4 and by heads)")
    depth: int = Field(2, ge=0, description="Transformer layers (0: patch embedding only)")
    heads: int = Field(4, ge=1, description="attention heads")

    @model_validator(mode="before")
    @classmethod
    def _apply_preset(cls, data: object) -> object:
        if not isinstance(data, dict) or data.get("size") not in VIT_PRESETS:
            return data
        preset = dict(zip(_SIZE_FIELDS, VIT_PRESETS[data["size"]]))
        clash = {name: data[name] for name in preset if name in data and data[name] != preset[name]}
        if clash:
            raise ValueError(f"size={data['size']!r} fixes {preset}; got {clash} (use size='custom')")
        return {**data, **preset}


class PatchEmbedding(nn.Module):
    """Non-overlapping square patches to tokens, with fixed 2D sine/cosine positions.

    Images of any height and width are accepted: the right and bottom edges are zero-padded to a
    multiple of the patch size (dense heads crop the padded patches away again).
    """

    def __init__(self, in_channels: int, width: int, patch_size: int) -> None:
        super().__init__()
        self.patch_size = patch_size
        self.width = width
        self.projection = nn.Conv2d(in_channels, width, kernel_size=patch_size, stride=patch_size)

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        """``(B, C, H, W) -> (tokens (B, rows * cols, width), (rows, cols))``."""
        height, width = images.shape[-2:]
        images = F.pad(images, (0, -width % self.patch_size, 0, -height % self.patch_size))
        patches = self.projection(images)  # (B, width, rows, cols)
        grid = (patches.shape[-2], patches.shape[-1])
        tokens = patches.flatten(2).transpose(1, 2)
        positions = sincos_position_embedding_2d(*grid, self.width, device=tokens.device)
        return tokens + positions.to(tokens.dtype), grid


class VisionTransformer(nn.Module):
    """Patch embedding, then a pre-LN Transformer trunk; every patch token comes out.

    Args:
        config: sizes and patch size.
        in_channels: image channels (3 for RGB).
    """

    def __init__(self, config: ViTConfig, in_channels: int = 3) -> None:
        super().__init__()
        self.width = config.width
        self.patch_size = config.patch_size
        self.patch_embedding = PatchEmbedding(in_channels, config.width, config.patch_size)
        self.trunk = TransformerTrunk(config.width, config.depth, config.heads)

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        """``(B, C, H, W) -> (tokens (B, rows * cols, width), (rows, cols))``."""
        tokens, grid = self.patch_embedding(images)
        return self.trunk(tokens), grid

"""Building blocks shared by several encoders: Transformer trunks and fixed sine/cosine positions."""

from __future__ import annotations

import torch
from torch import nn


def sincos_embedding_1d(positions: torch.Tensor, dim: int) -> torch.Tensor:
    """Transformer-style sine/cosine features of scalar positions: ``(n,) -> (n, dim)``."""
    if dim % 2:
        raise ValueError(f"sincos embedding dimension must be even, got {dim}")
    omega = 1.0 / 10000 ** (torch.arange(dim // 2, dtype=torch.float64, device=positions.device) / (dim // 2))
    angles = positions.to(torch.float64)[:, None] * omega[None, :]
    return torch.cat([angles.sin(), angles.cos()], dim=1).float()


def sincos_position_embedding_2d(
    grid_h: int, grid_w: int, dim: int, device: torch.device | None = None
) -> torch.Tensor:
    """Fixed 2D sine/cosine position embedding for a ``grid_h x grid_w`` token grid: ``(grid_h * grid_w, dim)``.

    Half of the channels encode the row, half the column; any grid size works, so inputs of any
    size share the same encoder.
    """
    if dim % 4:
        raise ValueError(f"2D position embedding dimension must be divisible by 4, got {dim}")
    rows, cols = torch.meshgrid(
        torch.arange(grid_h, device=device), torch.arange(grid_w, device=device), indexing="ij"
    )
    return torch.cat(
        [sincos_embedding_1d(rows.flatten(), dim // 2), sincos_embedding_1d(cols.flatten(), dim // 2)], dim=1
    )


class TransformerTrunk(nn.Module):
    """A stack of pre-LayerNorm Transformer encoder layers (GELU, no dropout) and a final LayerNorm.

    ``depth=0`` is allowed and makes the trunk the identity (no parameters), so "no trunk" is a
    config value, not a code path.
    """

    def __init__(self, dim: int, depth: int, num_heads: int, mlp_ratio: float = 4.0) -> None:
        super().__init__()
        if depth < 0:
            raise ValueError(f"depth must be >= 0, got {depth}")
        if depth and dim % num_heads:
            raise ValueError(f"trunk width {dim} is not divisible by num_heads={num_heads}")
        self.layers = nn.ModuleList(
            nn.TransformerEncoderLayer(
                d_model=dim, nhead=num_heads, dim_feedforward=int(mlp_ratio * dim), dropout=0.0,
                activation="gelu", batch_first=True, norm_first=True,
            )
            for _ in range(depth)
        )
        self.norm = nn.LayerNorm(dim) if depth else nn.Identity()

    def forward(self, tokens: torch.Tensor, padding_mask: torch.Tensor | None = None) -> torch.Tensor:
        """``(B, N, dim) -> (B, N, dim)``; ``padding_mask`` ``(B, N)`` is True where a token is padding."""
        for layer in self.layers:
            tokens = layer(tokens, src_key_padding_mask=padding_mask)
        return self.norm(tokens)

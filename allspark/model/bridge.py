"""The bridge from a modality encoder's tokens to the language model's embedding space.

AllSpark takes its bridge from Lynx: a Perceiver-style resampler in which a fixed number of
learnable queries cross-attend to the encoder tokens. Whatever the number of encoder tokens
(chip size, patch size), the language model always reads ``num_queries`` tokens.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class CrossAttention(nn.Module):
    """Multi-head attention of queries (width ``dim``) over context tokens (width ``dim_context``)."""

    def __init__(self, dim: int, dim_context: int, num_heads: int) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"bridge width {dim} is not divisible by num_heads={num_heads}")
        self.num_heads = num_heads
        self.to_q = nn.Linear(dim, dim)
        self.to_kv = nn.Linear(dim_context, 2 * dim)
        self.to_out = nn.Linear(dim, dim)

    def forward(
        self, queries: torch.Tensor, context: torch.Tensor, padding_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """``(B, Q, dim)`` queries over ``(B, N, dim_context)`` context -> ``(B, Q, dim)``.

        ``padding_mask`` ``(B, N)`` is True at context tokens to ignore.
        """
        batch, num_queries, dim = queries.shape
        heads = self.num_heads
        q = self.to_q(queries).view(batch, num_queries, heads, -1).transpose(1, 2)
        k, v = self.to_kv(context).view(batch, context.shape[1], 2, heads, -1).permute(2, 0, 3, 1, 4)
        keep = None if padding_mask is None else ~padding_mask[:, None, None, :]
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=keep)  # (B, heads, Q, head_dim)
        return self.to_out(out.transpose(1, 2).reshape(batch, num_queries, dim))


class ResamplerBlock(nn.Module):
    """Pre-LayerNorm cross-attention then feed-forward, each with a residual connection."""

    def __init__(self, dim: int, dim_context: int, num_heads: int, ff_mult: int = 4) -> None:
        super().__init__()
        self.norm_queries = nn.LayerNorm(dim)
        self.norm_context = nn.LayerNorm(dim_context)
        self.attention = CrossAttention(dim, dim_context, num_heads)
        self.norm_ff = nn.LayerNorm(dim)
        self.feed_forward = nn.Sequential(nn.Linear(dim, ff_mult * dim), nn.GELU(), nn.Linear(ff_mult * dim, dim))

    def forward(
        self, queries: torch.Tensor, context: torch.Tensor, padding_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        queries = queries + self.attention(self.norm_queries(queries), self.norm_context(context), padding_mask)
        return queries + self.feed_forward(self.norm_ff(queries))


class PerceiverResampler(nn.Module):
    """Learnable queries that summarise a variable-length token set into ``num_queries`` tokens.

    Keys and values come from the modality tokens only (projected from ``dim_in`` in every
    block); the queries carry the state from block to block. A final LayerNorm sets the output
    scale, which callers may match to the language model's token embeddings through its weight.

    Args:
        dim_in: width of the encoder tokens.
        dim_out: width of the output tokens (the language model's hidden size).
        num_queries: number of output tokens.
        depth: number of cross-attention + feed-forward blocks.
        num_heads: attention heads; must divide ``dim_out``.
    """

    def __init__(self, dim_in: int, dim_out: int, num_queries: int, depth: int, num_heads: int) -> None:
        super().__init__()
        if num_queries < 1 or depth < 1:
            raise ValueError(f"num_queries and depth must be >= 1, got {num_queries} and {depth}")
        self.queries = nn.Parameter(torch.randn(num_queries, dim_out) * 0.02)
        self.blocks = nn.ModuleList(ResamplerBlock(dim_out, dim_in, num_heads) for _ in range(depth))
        self.norm_out = nn.LayerNorm(dim_out)

    def forward(self, tokens: torch.Tensor, padding_mask: torch.Tensor | None = None) -> torch.Tensor:
        """``(B, N, dim_in)`` encoder tokens -> ``(B, num_queries, dim_out)``; ``padding_mask`` (B, N) True = ignore."""
        queries = self.queries.expand(tokens.shape[0], -1, -1)
        for block in self.blocks:
            queries = block(queries, tokens, padding_mask)
        return self.norm_out(queries)

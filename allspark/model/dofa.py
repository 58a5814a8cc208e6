"""Wavelength-conditioned patch embedding (after DOFA, arXiv 2403.15356).

A standard ViT stem has a fixed number of input channels. DOFA instead lets a small hypernetwork
write the patch-embedding weights from each band's centre wavelength, so one stem serves any
sensor (Sentinel-2's 13 bands, Landsat's 6, any subset) without retraining the first layer.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from allspark.model.layers import sincos_embedding_1d, sincos_position_embedding_2d


class WavelengthConditionedPatchEmbed(nn.Module):
    """Patch embedding whose per-band weights are generated from band centre wavelengths.

    Each wavelength (micrometres) is encoded with sine/cosine features (of the wavelength in
    nanometres, as DOFA does), lifted by an MLP, and mixed with the other bands of the same set by
    one transformer layer, so a band's filter can depend on which bands accompany it. Linear heads
    then emit that band's ``embed_dim x patch x patch`` slice of the convolution weight and its
    bias contribution (bias contributions are averaged over bands). The weights are scaled by
    ``1/sqrt(bands * patch**2)`` so the token scale does not depend on the number of bands.

    Args:
        embed_dim: token width.
        patch_size: side of the square, non-overlapping patches.
        hidden: width of the hypernetwork.
    """

    def __init__(self, embed_dim: int, patch_size: int, hidden: int = 128) -> None:
        super().__init__()
        if embed_dim % 4:
            raise ValueError(f"embed_dim must be divisible by 4 (2D sincos positions), got {embed_dim}")
        if patch_size < 1:
            raise ValueError(f"patch_size must be >= 1, got {patch_size}")
        self.embed_dim = embed_dim
        self.patch_size = patch_size
        self.hidden = hidden
        self.wavelength_mlp = nn.Sequential(nn.Linear(hidden, hidden), nn.GELU(), nn.Linear(hidden, hidden))
        self.band_mixer = nn.TransformerEncoderLayer(
            d_model=hidden, nhead=4, dim_feedforward=2 * hidden, dropout=0.0,
            activation="gelu", batch_first=True, norm_first=True,
        )
        self.band_norm = nn.LayerNorm(hidden)
        self.weight_generator = nn.Linear(hidden, embed_dim * patch_size * patch_size)
        self.bias_generator = nn.Linear(hidden, embed_dim)
        self._weight_cache: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}
        self._weight_cache_versions: tuple[int, ...] = ()

    def generate_weights(self, wavelengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Convolution weight ``(embed_dim, bands, patch, patch)`` and bias ``(embed_dim,)`` for a band set."""
        features = sincos_embedding_1d(wavelengths * 1000.0, self.hidden).to(self.weight_generator.weight.dtype)
        features = self.wavelength_mlp(features)
        features = self.band_norm(self.band_mixer(features[None]))[0]  # (bands, hidden)
        bands, p = wavelengths.shape[0], self.patch_size
        weight = self.weight_generator(features).view(bands, self.embed_dim, p, p).transpose(0, 1)
        weight = weight / math.sqrt(bands * p * p)
        bias = self.bias_generator(features).mean(dim=0)
        return weight.contiguous(), bias

    def _cached_weights(self, wavelengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Generated weights, reused across calls in inference (eval mode without autograd).

        The cache is emptied whenever a hypernetwork parameter changes in place (optimizer step,
        ``load_state_dict``), detected through the parameters' version counters.
        """
        if self.training or torch.is_grad_enabled():
            return self.generate_weights(wavelengths)
        versions = tuple(p._version for p in self.parameters())
        if versions != self._weight_cache_versions:
            self._weight_cache.clear()
            self._weight_cache_versions = versions
        band_set = tuple(round(w, 4) for w in wavelengths.tolist())
        device = wavelengths.device
        key = (band_set, device, self.weight_generator.weight.dtype, torch.is_autocast_enabled(device.type))
        if key not in self._weight_cache:
            self._weight_cache[key] = self.generate_weights(wavelengths)
        return self._weight_cache[key]

    def position_embedding(self, grid_h: int, grid_w: int, device: torch.device | None = None) -> torch.Tensor:
        """Fixed 2D sincos position embedding for a token grid, ``(grid_h * grid_w, embed_dim)``."""
        return sincos_position_embedding_2d(grid_h, grid_w, self.embed_dim, device=device)

    def forward(
        self, x: torch.Tensor, wavelengths: torch.Tensor, add_position: bool = True
    ) -> tuple[torch.Tensor, tuple[int, int]]:
        """Embed a multispectral batch into patch tokens.

        Args:
            x: ``(batch, bands, height, width)`` float tensor, without NaN. Height and width need not
                be multiples of the patch size: the right and bottom edges are zero-padded.
            wavelengths: ``(bands,)`` centre wavelengths in micrometres, in the order of ``x``'s bands.
            add_position: add the 2D position embedding (turn off to get pure per-patch features).

        Returns:
            tokens ``(batch, grid_h * grid_w, embed_dim)`` in row-major patch order, and ``(grid_h, grid_w)``.
        """
        wavelengths = wavelengths.to(device=x.device, dtype=torch.float32)
        weight, bias = self._cached_weights(wavelengths)
        p = self.patch_size
        pad_h, pad_w = -x.shape[-2] % p, -x.shape[-1] % p
        if pad_h or pad_w:
            x = F.pad(x, (0, pad_w, 0, pad_h))
        patches = F.conv2d(x.to(weight.dtype), weight, bias, stride=p)  # (B, E, gh, gw)
        grid = (patches.shape[-2], patches.shape[-1])
        tokens = patches.flatten(2).transpose(1, 2)
        if add_position:
            tokens = tokens + self.position_embedding(*grid, device=x.device).to(tokens.dtype)
        return tokens, grid


def wavelength_problem(wavelengths: torch.Tensor) -> str | None:
    """What is wrong with a band set's centre wavelengths (micrometres), or None when they are usable."""
    if not torch.isfinite(wavelengths).all() or (wavelengths <= 0).any():
        return f"wavelengths must be positive micrometres, got {wavelengths.tolist()}"
    return None

"""Hyperspectral (HSI) encoder: one pixel's spectrum -> spectral group tokens.

The paper classifies single pixels of Pavia University (103 bands, 0.43-0.86 µm): a linear
projection of the whole spectrum, then a 12-layer Transformer encoder.

We differ in two ways, both so that the encoder is useful beyond one sensor:

- **Wavelength-conditioned weights (DOFA).** A fixed linear layer is tied to one band count. Here
  each band's projection weights are written by the DOFA hypernetwork from its centre wavelength
  (:class:`~allspark.model.dofa.WavelengthConditionedPatchEmbed` with patch size 1), so the same
  weights read Pavia's 103 bands, Indian Pines' 200 or any subset. In inference (eval mode, no
  autograd) the generated weights are cached per band set, so a repeated sensor costs nothing.
- **Group tokens (SpectralFormer).** One token per band gives hundreds of tokens; one token for
  the whole spectrum gives the Transformer nothing to attend over. We split the bands into
  contiguous groups of about ``group_size`` bands and make one token per group (the weighted sum
  of its bands), plus a sine/cosine embedding of the group's mean wavelength, so the trunk knows
  where in the spectrum each token lies. Hundreds of bands become tens of tokens.

    spectrum (B, C) + wavelengths (C,)
      --DOFA 1x1 weights, summed within each band group--> (B, G, dim)   G = ceil(C / group_size)
      + sincos(mean wavelength of each group)
      --TransformerTrunk (depth; paper 12)--> tokens (B, G, dim)
"""

from __future__ import annotations

import math

import torch
from pydantic import Field

from allspark.model.dofa import WavelengthConditionedPatchEmbed, wavelength_problem
from allspark.model.encoders.base import EncoderConfig, EncoderOutput, Inputs, ModalityEncoder
from allspark.model.inputs import InputSpec, TensorSpec
from allspark.model.layers import TransformerTrunk, sincos_embedding_1d


class HyperspectralConfig(EncoderConfig):
    """Hyper-parameters of :class:`HyperspectralEncoder`."""

    dim: int = Field(64, ge=8, multiple_of=4, description="token width (a multiple of 4 and of num_heads)")
    depth: int = Field(2, ge=0, description="Transformer layers after the group tokens (paper: 12)")
    num_heads: int = Field(4, ge=1, description="attention heads of the trunk")
    group_size: int = Field(
        8, ge=1, description="bands per spectral group token (1: one token per band, as a plain band Transformer)"
    )
    hypernet_dim: int = Field(64, ge=8, multiple_of=4, description="width of the DOFA weight-generating network")


class HyperspectralEncoder(ModalityEncoder):
    """Tokens for single-pixel spectra of any band set (see the module docstring)."""

    Config = HyperspectralConfig
    input_spec = InputSpec(
        (
            TensorSpec("spectrum", ("batch", "bands"), description="one pixel's reflectance per band, normalised"),
            TensorSpec("wavelengths", ("bands",), description="band centre wavelengths in micrometres"),
        )
    )

    def __init__(self, modality: str, config: HyperspectralConfig) -> None:
        super().__init__(modality, config)
        if config.dim % config.num_heads:
            raise ValueError(f"dim={config.dim} is not divisible by num_heads={config.num_heads}")
        self.stem = WavelengthConditionedPatchEmbed(config.dim, patch_size=1, hidden=config.hypernet_dim)
        self.trunk = TransformerTrunk(config.dim, config.depth, config.num_heads)
        self.out_dim = config.dim

    def check(self, inputs: Inputs, sizes: dict[str, int]) -> None:
        problem = wavelength_problem(inputs["wavelengths"])
        if problem:
            raise self.input_error(problem)

    def band_groups(self, bands: int, device: torch.device) -> torch.Tensor:
        """``(bands, groups)`` one-hot assignment of each band to its contiguous group.

        Groups are as even as possible (sizes differ by at most one), so a band count that is not
        a multiple of ``group_size`` leaves no tiny last group.
        """
        groups = math.ceil(bands / self.config.group_size)
        group_of_band = torch.arange(bands, device=device) * groups // bands
        return torch.nn.functional.one_hot(group_of_band, groups).float()

    def encode(self, inputs: Inputs) -> EncoderOutput:
        spectrum = inputs["spectrum"]
        wavelengths = inputs["wavelengths"].to(device=spectrum.device, dtype=torch.float32)
        bands = spectrum.shape[1]
        membership = self.band_groups(bands, spectrum.device)  # (C, G)
        group_sizes = membership.sum(dim=0)
        # Column g of this (B, C, G, 1) "image" holds group g's bands only, so the stem's 1x1
        # convolution (the weight cache included) yields one token per group. The DOFA weights are
        # scaled by 1/sqrt(C); the factor sqrt(C / n_g) makes that 1/sqrt(n_g) for a group of n_g
        # bands, so the token scale does not depend on the total band count.
        scattered = spectrum[:, :, None, None] * (membership * (bands / group_sizes).sqrt())[None, :, :, None]
        tokens, _ = self.stem(scattered, wavelengths, add_position=False)  # (B, G, dim)
        # Mean wavelength per group, elementwise in float32 (a bf16 matmul would blur it by nanometres).
        group_wavelengths = (wavelengths[:, None] * membership).sum(dim=0) / group_sizes
        position = sincos_embedding_1d(group_wavelengths * 1000.0, self.config.dim)  # nm, as in DOFA
        return EncoderOutput(tokens=self.trunk(tokens + position.to(tokens.dtype)))

    @classmethod
    def example_inputs(
        cls, config: HyperspectralConfig, batch_size: int, generator: torch.Generator
    ) -> dict[str, torch.Tensor]:
        """Pavia University-like pixels: 103 bands evenly spaced over 0.43-0.86 µm."""
        return {
            "spectrum": torch.randn(batch_size, 103, generator=generator),
            "wavelengths": torch.linspace(0.43, 0.86, 103),
        }

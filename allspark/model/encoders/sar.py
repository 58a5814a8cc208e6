"""Synthetic aperture radar (SAR) encoder: polarisation channels -> patch tokens.

The paper classifies MSTAR target chips (single-polarisation X-band amplitude) with a
three-layer CNN. We keep the three-layer CNN as the trunk, but put a DOFA stem in front of it
(:class:`~allspark.model.dofa.WavelengthConditionedPatchEmbed`), so one encoder reads any number
of polarisation channels (MSTAR's single HH, Sentinel-1's VV+VH, quad-pol) and any radar band:

    image (B, P, H, W) + wavelengths (P,) + polarisations (P,)
      --DOFA patch embedding + per-polarisation filters--> token grid (B, dim, H/p, W/p)
      --3 x [conv 3x3, GroupNorm, ReLU] (paper: three-layer CNN)--> (B, dim, H/p, W/p)
      --flatten + 2D sine/cosine positions--> tokens (B, H/p * W/p, dim)

**What "wavelength" a caller passes.** DOFA's hypernetwork reads wavelengths in micrometres
through sine/cosine features of ``wavelength * 1000``. A radar's physical wavelength (C-band
5.55 cm = 55,500 µm) would put those features far beyond the range they were designed for (even
the slowest sinusoid wraps around about a thousand times, so nearby radar bands look unrelated). DOFA
(its README and TorchGeo's tests) instead passes Sentinel-1's C-band as ``5.405``: the radar
centre *frequency in GHz*, in the wavelength slot. We follow that convention (it is what
pretrained DOFA weights expect): pass the centre frequency in GHz, see
:data:`RADAR_BAND_GHZ` (X 9.6 for MSTAR/TerraSAR-X, C 5.405 for Sentinel-1, L 1.2575 for ALOS-2).

**Polarisations.** VV and VH of one radar share the centre frequency, so DOFA gives them the
same generated filters and the stem would only see VV + VH (the cross-pol ratio, which separates
vegetation from bare surfaces, is lost). We therefore add a learned filter per polarisation
(``polarisations`` input: codes into :data:`POLARISATIONS`), applied to that channel alongside
the generated weights.

GroupNorm rather than the usual BatchNorm: it behaves the same in training and inference and
with batches of one, which fine-tuning a language model often needs.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from allspark.model.dofa import WavelengthConditionedPatchEmbed, wavelength_problem
from allspark.model.encoders.base import EncoderConfig, EncoderOutput, Inputs, ModalityEncoder
from allspark.model.inputs import InputSpec, TensorSpec

POLARISATIONS: tuple[str, ...] = ("VV", "VH", "HH", "HV")
"""Transmit/receive polarisation of a channel; the ``polarisations`` input holds indices into this."""

RADAR_BAND_GHZ: dict[str, float] = {"X": 9.6, "C": 5.405, "L": 1.2575}
"""What to pass as ``wavelengths`` for each radar band (centre frequency in GHz, DOFA's convention)."""


class SARConfig(EncoderConfig):
    """Hyper-parameters of :class:`SAREncoder`."""

    dim: int = Field(64, ge=8, multiple_of=4, description="token width and CNN channels (a multiple of 4)")
    patch_size: int = Field(4, ge=1, description="pixels per patch side of the DOFA stem")
    cnn_layers: int = Field(3, ge=1, description="conv-GroupNorm-ReLU layers on the token grid (paper: 3)")
    hypernet_dim: int = Field(64, ge=8, multiple_of=4, description="width of the DOFA weight-generating network")


class SAREncoder(ModalityEncoder):
    """Patch tokens for SAR amplitude images with any set of polarisations (see the module docstring)."""

    Config = SARConfig
    input_spec = InputSpec(
        (
            TensorSpec(
                "image", ("batch", "polarisations", "height", "width"),
                description="amplitude per polarisation (e.g. dB), normalised by the caller",
            ),
            TensorSpec(
                "wavelengths", ("polarisations",),
                description="radar centre frequency in GHz per channel (DOFA convention, e.g. 5.405 for C-band)",
            ),
            TensorSpec(
                "polarisations", ("polarisations",), dtype="int",
                description=f"polarisation per channel, index into {list(POLARISATIONS)}",
            ),
        )
    )

    def __init__(self, modality: str, config: SARConfig) -> None:
        super().__init__(modality, config)
        dim, p = config.dim, config.patch_size
        self.stem = WavelengthConditionedPatchEmbed(dim, p, hidden=config.hypernet_dim)
        self.polarisation_filters = nn.Parameter(0.5 * torch.randn(len(POLARISATIONS), dim, p, p))
        self.cnn = nn.Sequential(
            *(
                nn.Sequential(
                    nn.Conv2d(dim, dim, kernel_size=3, padding=1),
                    nn.GroupNorm(math.gcd(8, dim), dim),
                    nn.ReLU(),
                )
                for _ in range(config.cnn_layers)
            )
        )
        self.out_dim = dim

    def check(self, inputs: Inputs, sizes: dict[str, int]) -> None:
        wavelengths = inputs["wavelengths"]
        if wavelength_problem(wavelengths):
            raise self.input_error(
                f"wavelengths must be positive radar centre frequencies in GHz (DOFA's convention, e.g. "
                f"{RADAR_BAND_GHZ['C']} for C-band), got {wavelengths.tolist()}"
            )
        codes = inputs["polarisations"]
        if (codes < 0).any() or (codes >= len(POLARISATIONS)).any():
            raise self.input_error(
                f"polarisations must be indices into {list(POLARISATIONS)}, got {codes.tolist()}"
            )

    def polarisation_features(self, image: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
        """``(B, dim, gh, gw)``: each channel convolved with its polarisation's learned filter.

        Scaled like the generated weights (``1/sqrt(channels * patch**2)``) and padded like the stem.
        """
        p = self.config.patch_size
        weight = self.polarisation_filters[codes.to(image.device)].transpose(0, 1)  # (dim, P, p, p)
        weight = weight / math.sqrt(image.shape[1] * p * p)
        image = F.pad(image, (0, -image.shape[-1] % p, 0, -image.shape[-2] % p))
        return F.conv2d(image.to(weight.dtype), weight, stride=p)

    def encode(self, inputs: Inputs) -> EncoderOutput:
        image = inputs["image"]
        tokens, grid = self.stem(image, inputs["wavelengths"], add_position=False)  # (B, N, dim)
        features = tokens.transpose(1, 2).unflatten(2, grid)
        features = features + self.polarisation_features(image, inputs["polarisations"]).to(features.dtype)
        tokens = self.cnn(features).flatten(2).transpose(1, 2)
        tokens = tokens + self.stem.position_embedding(*grid, device=image.device).to(tokens.dtype)
        return EncoderOutput(
            tokens=tokens, dense=tokens, grid=grid, patch_size=self.config.patch_size,
            size=(image.shape[-2], image.shape[-1]),
        )

    @classmethod
    def example_inputs(
        cls, config: SARConfig, batch_size: int, generator: torch.Generator
    ) -> dict[str, torch.Tensor]:
        """Sentinel-1-like dual-polarisation (VV, VH) C-band chips of 32 x 32 normalised dB values."""
        return {
            "image": torch.randn(batch_size, 2, 32, 32, generator=generator),
            "wavelengths": torch.full((2,), RADAR_BAND_GHZ["C"]),
            "polarisations": torch.tensor([POLARISATIONS.index("VV"), POLARISATIONS.index("VH")]),
        }

"""Multispectral encoder: DOFA wavelength-conditioned stem, then a ViT trunk.

The paper encodes multispectral imagery (EuroSAT, 13 bands) with a standard ViT whose patch
embedding takes C channels. Following DOFA, the patch-embedding weights here are generated from
each band's centre wavelength (micrometres; in a STAC pipeline, from the items' ``eo:bands``), so
the same weights serve Sentinel-2's 13 bands, Landsat's 6 or any subset; generated weights are
cached per band set at inference. A Transformer trunk over the patch tokens (with fixed 2D sine /
cosine positions) follows; ``depth=0`` leaves the stem alone, which is what the region flow uses
by default for speed on a CPU.

Besides the tokens, the encoder returns per-patch ``dense`` features (the trunk's output, or the
stem's features without positions when there is no trunk) so a dense head can map every pixel.
"""

from __future__ import annotations

import torch
from pydantic import Field

from allspark.model.dofa import WavelengthConditionedPatchEmbed, wavelength_problem
from allspark.model.encoders.base import EncoderConfig, EncoderOutput, Inputs, ModalityEncoder
from allspark.model.inputs import InputSpec, TensorSpec
from allspark.model.layers import TransformerTrunk

LANDSAT7_WAVELENGTHS = (0.482, 0.565, 0.660, 0.825, 1.650, 2.220)


class MultispectralConfig(EncoderConfig):
    patch_size: int = Field(2, ge=1, description="pixels per patch side (a ViT-B on EuroSAT would use 8-16)")
    width: int = Field(128, ge=4, multiple_of=4, description="token width")
    depth: int = Field(2, ge=0, description="ViT trunk layers after the stem (ViT-B: 12); 0 = stem only")
    heads: int = Field(4, ge=1, description="attention heads of the trunk")


class MultispectralEncoder(ModalityEncoder):
    """``image (B, bands, H, W)`` + ``wavelengths (bands,)`` -> patch tokens ``(B, N, width)``."""

    Config = MultispectralConfig
    input_spec = InputSpec((
        TensorSpec("image", ("batch", "bands", "height", "width"), "float",
                   "reflectances normalised per band, nodata filled"),
        TensorSpec("wavelengths", ("bands",), "float", "centre wavelength of each band in micrometres"),
    ))

    def __init__(self, modality: str, config: MultispectralConfig) -> None:
        super().__init__(modality, config)
        self.stem = WavelengthConditionedPatchEmbed(config.width, config.patch_size)
        self.trunk = TransformerTrunk(config.width, config.depth, config.heads)
        self.out_dim = config.width

    def check(self, inputs: Inputs, sizes: dict[str, int]) -> None:
        problem = wavelength_problem(inputs["wavelengths"])
        if problem:
            raise self.input_error(problem)

    def encode(self, inputs: Inputs) -> EncoderOutput:
        image = inputs["image"]
        features, grid = self.stem(image, inputs["wavelengths"].to(image.device), add_position=False)
        tokens = features + self.stem.position_embedding(*grid, device=image.device).to(features.dtype)
        tokens = self.trunk(tokens)
        dense = tokens if self.config.depth else features
        return EncoderOutput(
            tokens=tokens, dense=dense, grid=grid, patch_size=self.config.patch_size, size=tuple(image.shape[-2:])
        )

    @classmethod
    def example_inputs(cls, config: MultispectralConfig, batch_size: int, generator: torch.Generator) -> dict:
        """Six Landsat 7 bands, 16 x 16 pixels."""
        return {
            "image": torch.randn((batch_size, len(LANDSAT7_WAVELENGTHS), 16, 16), generator=generator),
            "wavelengths": torch.tensor(LANDSAT7_WAVELENGTHS),
        }

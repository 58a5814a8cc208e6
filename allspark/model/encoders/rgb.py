"""RGB image encoder: a Vision Transformer over 3-channel images.

The paper reads RGB images (NWPU-RESISC45 scene classification) with Lynx's frozen EVA ViT
(40 blocks, width 1408, pretrained on web-scale image-text pairs). Those weights cannot be had
offline, so we train the small ViT of :mod:`allspark.model.vit` from scratch instead; its size is
a preset away from the usual ViT-Ti/S/B (``size``), and the trunk can still be frozen by the
training code exactly as the paper freezes EVA. Images of any size work (fixed 2D sine/cosine
positions, right/bottom padding to whole patches).

Every patch token goes to the bridge; the same tokens are also returned as ``dense`` features with
their ``grid``, so a dense head (a class per pixel) works on RGB without another encoder.
"""

from __future__ import annotations

import torch

from allspark.model.encoders.base import EncoderOutput, Inputs, ModalityEncoder
from allspark.model.inputs import InputSpec, TensorSpec
from allspark.model.vit import VisionTransformer, ViTConfig


class RGBConfig(ViTConfig):
    """Hyper-parameters of :class:`RGBEncoder` (all from :class:`~allspark.model.vit.ViTConfig`)."""


class RGBEncoder(ModalityEncoder):
    """ViT patch tokens of an RGB image: ``image (B, 3, H, W) -> tokens (B, rows * cols, width)``."""

    Config = RGBConfig
    input_spec = InputSpec(
        (
            TensorSpec(
                "image", ("batch", 3, "height", "width"), description="RGB image, normalised reflectance or colour"
            ),
        )
    )

    def __init__(self, modality: str, config: RGBConfig) -> None:
        super().__init__(modality, config)
        self.vit = VisionTransformer(config, in_channels=3)
        self.out_dim = config.width

    def encode(self, inputs: Inputs) -> EncoderOutput:
        image = inputs["image"]
        tokens, grid = self.vit(image)
        return EncoderOutput(
            tokens=tokens, dense=tokens, grid=grid, patch_size=self.vit.patch_size, size=tuple(image.shape[-2:])
        )

    @classmethod
    def example_inputs(cls, config: RGBConfig, batch_size: int, generator: torch.Generator) -> dict[str, torch.Tensor]:
        """Random 32x32 images (a 4x4 patch grid at the default patch size 8)."""
        return {"image": torch.randn((batch_size, 3, 32, 32), generator=generator)}

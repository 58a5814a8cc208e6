"""Oblique-photography encoder: one shared ViT per view, tokens of all views concatenated.

The paper encodes the five oblique views of a WHU-OMVS scene with a ViT per view, concatenates
their tokens for the bridge, and predicts a depth map with an MVS head after Ada-MVS. We do the
same with the small ViT of :mod:`allspark.model.vit`, its weights shared by all views (a view is
an image like any other; sharing keeps the encoder one view's size), plus a learned view
embedding added to each view's tokens so the bridge knows which view a token comes from. The
number of views may vary per batch, from 2 up to ``max_views``.

Where we differ: the depth answer comes from the project's generic ``DenseHead`` (one linear layer
over each reference-view patch feature and its attention over the language model's reading of
all views), not from an Ada-MVS cost volume; ``dense`` holds the reference view's (view 0) patch
tokens, which do not attend to the other views, so geometry across views reaches the depth map
only through the language model's context. The paper reports that this modality is weak (PAG 6.4% at 0.6 m).
"""

from __future__ import annotations

import torch
from pydantic import Field
from torch import nn

from allspark.model.encoders.base import EncoderOutput, Inputs, ModalityEncoder
from allspark.model.inputs import InputSpec, TensorSpec
from allspark.model.vit import VisionTransformer, ViTConfig


class ObliqueConfig(ViTConfig):
    """Hyper-parameters of :class:`ObliqueEncoder`: the shared ViT's, and how many views it takes."""

    max_views: int = Field(
        5, ge=2, le=64, description="most views per scene, rows of the learned view embedding (paper: 5, WHU-OMVS)"
    )


class ObliqueEncoder(ModalityEncoder):
    """``views (B, V, 3, H, W) -> tokens (B, V * rows * cols, width)``; ``dense``: view 0's patch tokens.

    With ``dense``, ``grid``, ``patch_size`` and ``size=(H, W)`` set, a ``DenseHead`` regression with
    one output gives a depth map ``(B, 1, H, W)`` of the reference view.
    """

    Config = ObliqueConfig
    input_spec = InputSpec(
        (
            TensorSpec(
                "views",
                ("batch", "views", 3, "height", "width"),
                description="RGB oblique views of one scene, the reference view first",
                min_sizes=(("views", 2),),
            ),
        )
    )

    def __init__(self, modality: str, config: ObliqueConfig) -> None:
        super().__init__(modality, config)
        self.vit = VisionTransformer(config, in_channels=3)
        self.view_embedding = nn.Parameter(torch.randn(config.max_views, config.width) * 0.02)
        self.out_dim = config.width

    def check(self, inputs: Inputs, sizes: dict[str, int]) -> None:
        if sizes["views"] > self.config.max_views:
            raise self.input_error(
                f"{sizes['views']} views, more than max_views={self.config.max_views} of the view embedding"
            )

    def encode(self, inputs: Inputs) -> EncoderOutput:
        views = inputs["views"]
        batch, count = views.shape[:2]
        tokens, grid = self.vit(views.flatten(0, 1))  # every view through the same ViT
        tokens = tokens.unflatten(0, (batch, count))  # (B, V, patches, width)
        reference = tokens[:, 0]
        tokens = tokens + self.view_embedding[:count, None].to(tokens.dtype)
        return EncoderOutput(
            tokens=tokens.flatten(1, 2),
            dense=reference,
            grid=grid,
            patch_size=self.vit.patch_size,
            size=tuple(views.shape[-2:]),
        )

    @classmethod
    def example_inputs(
        cls, config: ObliqueConfig, batch_size: int, generator: torch.Generator
    ) -> dict[str, torch.Tensor]:
        """``max_views`` random 32x32 views per scene (five by default, as in the paper)."""
        return {"views": torch.randn((batch_size, config.max_views, 3, 32, 32), generator=generator)}

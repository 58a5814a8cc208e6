"""Video encoder: TubeViT-style sparse tubes, then a Transformer.

The paper tokenises video (UCF101) with TubeViT's sparse tube sampling and reads the tokens with
a 6-layer Transformer. TubeViT ("Rethinking Video ViTs: Sparse Video Tubes for Joint Image and
Video Learning", Piergiovanni et al., 2023) does not cut the clip into a dense grid of space-time
patches; it samples a few *tube* shapes sparsely, each a 3D convolution with its own kernel and
(large) stride: long thin tubes that follow a small area through many frames, short wide ones that
see a large area over a few frames, and single-frame image patches. Few tokens cover the whole
clip, and each token carries a fixed sine/cosine position of its tube's centre in (time, row,
column), so tokens of different shapes share one coordinate frame.

We do the same with one Conv3d per tube shape (TubeViT derives all kernels from one shared kernel
by interpolation; separate kernels are simpler and cost little at these sizes), plus a learned
tube-type embedding per shape. The default tubes suit small CPU clips (8 frames of 32x32); the
paper's 32-frame 224x224 clips want TubeViT's larger tubes (kernels such as 8x8x8 and 1x16x16 at
spatial strides of 16-32 pixels), set through ``tubes``. The default trunk is 2 layers of width 64;
the paper's 6 layers are ``depth=6``. No class token: every tube token goes to the bridge.
"""

from __future__ import annotations

import torch
from pydantic import BaseModel, ConfigDict, Field, NonNegativeInt, PositiveInt
from torch import nn

from allspark.model.encoders.base import AttentionEncoderConfig, EncoderOutput, Inputs, ModalityEncoder
from allspark.model.inputs import InputSpec, TensorSpec
from allspark.model.layers import TransformerTrunk, sincos_embedding_1d

Triple = tuple[PositiveInt, PositiveInt, PositiveInt]


class Tube(BaseModel):
    """One tube shape: a 3D convolution over ``(time, height, width)``, started at ``offset``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    kernel: Triple = Field(description="frames, rows, columns the tube covers")
    stride: Triple = Field(description="step between tubes in frames, rows, columns")
    offset: tuple[NonNegativeInt, NonNegativeInt, NonNegativeInt] = Field(
        (0, 0, 0), description="where the first tube starts, so tube shapes do not all align at the origin"
    )

    @property
    def reach(self) -> tuple[int, int, int]:
        """Smallest clip ``(frames, height, width)`` that holds one tube."""
        return tuple(o + k for o, k in zip(self.offset, self.kernel))


DEFAULT_TUBES: tuple[Tube, ...] = (
    Tube(kernel=(8, 4, 4), stride=(8, 8, 8), offset=(0, 2, 2)),  # long and thin: a small area through all frames
    Tube(kernel=(2, 16, 16), stride=(4, 16, 16), offset=(1, 0, 0)),  # short and wide: large areas, two frames
    Tube(kernel=(1, 8, 8), stride=(8, 8, 8)),  # single-frame image patches
)


class VideoConfig(AttentionEncoderConfig):
    """Hyper-parameters of :class:`VideoEncoder`."""

    tubes: tuple[Tube, ...] = Field(
        DEFAULT_TUBES, min_length=1, description="tube shapes (default for 8-frame 32x32 clips; TubeViT uses four)"
    )
    width: int = Field(64, ge=8, multiple_of=2, description="token width (even, divisible by heads)")
    depth: int = Field(2, ge=0, description="Transformer layers after the tube embedding (the paper uses 6)")
    heads: int = Field(4, ge=1, description="attention heads")

    @property
    def min_clip(self) -> tuple[int, int, int]:
        """Smallest ``(frames, height, width)`` that holds one tube of every shape."""
        return tuple(max(reach) for reach in zip(*(tube.reach for tube in self.tubes)))


def tube_positions(
    tube: Tube, grid: tuple[int, int, int], dim: int, device: torch.device | None = None
) -> torch.Tensor:
    """Fixed sine/cosine features of tube centres in clip coordinates: ``(t * rows * cols, dim)``.

    Channels are split between time, row and column (rows and columns get equal shares, time the
    rest); positions are in frames and pixels, so tubes of every shape share one frame.
    """
    share = dim // 3 // 2 * 2
    centres = [
        offset + stride * torch.arange(count, device=device) + (kernel - 1) / 2
        for offset, stride, kernel, count in zip(tube.offset, tube.stride, tube.kernel, grid)
    ]
    time, row, col = (axis.flatten() for axis in torch.meshgrid(*centres, indexing="ij"))
    return torch.cat(
        [sincos_embedding_1d(time, dim - 2 * share), sincos_embedding_1d(row, share), sincos_embedding_1d(col, share)],
        dim=1,
    )


class VideoEncoder(ModalityEncoder):
    """``frames (B, T, 3, H, W) -> tokens (B, tubes, width)``: sparse tube tokens read by a Transformer."""

    Config = VideoConfig
    input_spec = InputSpec(
        (TensorSpec("frames", ("batch", "time", 3, "height", "width"), description="RGB video frames in time order"),)
    )

    def __init__(self, modality: str, config: VideoConfig) -> None:
        super().__init__(modality, config)
        self.tube_embeddings = nn.ModuleList(
            nn.Conv3d(3, config.width, kernel_size=tube.kernel, stride=tube.stride) for tube in config.tubes
        )
        self.tube_type = nn.Parameter(torch.randn(len(config.tubes), config.width) * 0.02)
        self.trunk = TransformerTrunk(config.width, config.depth, config.heads)
        self.out_dim = config.width

    def check(self, inputs: Inputs, sizes: dict[str, int]) -> None:
        frames, height, width = self.config.min_clip
        if sizes["time"] < frames or sizes["height"] < height or sizes["width"] < width:
            raise self.input_error(
                f"a clip of {sizes['time']} frames of {sizes['height']}x{sizes['width']} px is smaller than the "
                f"largest tube needs: at least {frames} frames of {height}x{width} px"
            )

    def encode(self, inputs: Inputs) -> EncoderOutput:
        clip = inputs["frames"].transpose(1, 2)  # (B, 3, T, H, W), as Conv3d wants
        tokens = []
        for index, (tube, embedding) in enumerate(zip(self.config.tubes, self.tube_embeddings)):
            t, y, x = tube.offset
            features = embedding(clip[:, :, t:, y:, x:])  # (B, width, t', rows, cols)
            positions = tube_positions(tube, features.shape[2:], self.out_dim, features.device)
            features = features.flatten(2).transpose(1, 2)
            tokens.append(features + (positions + self.tube_type[index]).to(features.dtype))
        return EncoderOutput(tokens=self.trunk(torch.cat(tokens, dim=1)))

    @classmethod
    def example_inputs(
        cls, config: VideoConfig, batch_size: int, generator: torch.Generator
    ) -> dict[str, torch.Tensor]:
        """Random clips of 8 frames of 32x32 px, or the smallest clip the tubes allow if that is larger."""
        frames, height, width = (max(size, least) for size, least in zip((8, 32, 32), config.min_clip))
        return {"frames": torch.randn((batch_size, frames, 3, height, width), generator=generator)}

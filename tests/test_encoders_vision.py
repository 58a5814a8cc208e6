"""Vision encoders: RGB and oblique (shared small ViT) and video (sparse tubes).

Shapes of the example batch, gradients reaching every parameter, determinism, bf16 autocast, the
ViT sizes, and wrong inputs raising errors that name the modality and the expected form.
"""

from __future__ import annotations

import re

import pytest
import torch
from pydantic import ValidationError

from allspark.model.encoders.oblique import ObliqueConfig, ObliqueEncoder
from allspark.model.encoders.rgb import RGBConfig, RGBEncoder
from allspark.model.encoders.video import Tube, VideoConfig, VideoEncoder, tube_positions
from allspark.model.heads import HeadConfig, build_head
from allspark.model.inputs import ModalityInputError
from allspark.model.vit import VIT_PRESETS, PatchEmbedding, VisionTransformer, ViTConfig

ENCODERS = {"rgb": RGBEncoder, "oblique": ObliqueEncoder, "video": VideoEncoder}
# modality -> (tokens per sample, dense (elements, grid) or None) for the default example batch
EXPECTED = {"rgb": (16, (16, (4, 4))), "oblique": (5 * 16, (16, (4, 4))), "video": (16 + 8 + 16, None)}
BATCH = 2


def build(modality: str, seed: int = 0, **config) -> torch.nn.Module:
    encoder_class = ENCODERS[modality]
    torch.manual_seed(seed)
    return encoder_class(modality, encoder_class.Config(**config))


def example(modality: str, batch: int = BATCH, seed: int = 1) -> dict[str, torch.Tensor]:
    encoder_class = ENCODERS[modality]
    return encoder_class.example_inputs(encoder_class.Config(), batch, torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("modality", ENCODERS)
def test_example_batch_shapes(modality):
    encoder = build(modality)
    output = encoder(example(modality))
    tokens, dense = EXPECTED[modality]
    assert encoder.out_dim == 64
    assert output.tokens.shape == (BATCH, tokens, 64)
    assert output.tokens.dtype == torch.float32 and torch.isfinite(output.tokens).all()
    assert output.padding_mask is None
    if dense is None:
        assert output.dense is None and output.grid is None
    else:
        assert output.dense.shape == (BATCH, dense[0], 64)
        assert output.grid == dense[1]
        assert output.patch_size == 8 and output.size == (32, 32)


@pytest.mark.parametrize("modality", ENCODERS)
def test_gradients_reach_every_parameter(modality):
    encoder = build(modality)
    output = encoder(example(modality))
    generator = torch.Generator().manual_seed(2)
    loss = (output.tokens * torch.randn(output.tokens.shape, generator=generator)).sum()
    if output.dense is not None:
        loss = loss + (output.dense * torch.randn(output.dense.shape, generator=generator)).sum()
    loss.backward()
    for name, parameter in encoder.named_parameters():
        assert parameter.grad is not None, name
        assert torch.isfinite(parameter.grad).all() and parameter.grad.abs().sum() > 0, name


@pytest.mark.parametrize("modality", ENCODERS)
def test_deterministic_under_seed(modality):
    inputs = example(modality)
    first = build(modality, seed=0)(inputs).tokens
    again = build(modality, seed=0)(inputs).tokens
    other = build(modality, seed=1)(inputs).tokens
    assert torch.equal(first, again)
    assert not torch.allclose(first, other)
    assert all(torch.equal(a, b) for a, b in zip(example(modality).values(), inputs.values()))


@pytest.mark.parametrize("modality", ENCODERS)
def test_bf16_autocast(modality):
    encoder = build(modality)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        output = encoder(example(modality))
    assert output.tokens.shape == (BATCH, EXPECTED[modality][0], 64)
    assert torch.isfinite(output.tokens.float()).all()


# --- the shared ViT ---------------------------------------------------------------------------


def test_vit_presets_build_declared_sizes():
    for size, (width, depth, heads) in VIT_PRESETS.items():
        config = ViTConfig(size=size)
        assert (config.width, config.depth, config.heads) == (width, depth, heads)
        with torch.device("meta"):  # built, never run: no memory, no time
            vit = VisionTransformer(config)
            encoder = RGBEncoder("rgb", RGBConfig(size=size))
        assert encoder.out_dim == vit.width == width
        assert vit.patch_embedding.projection.out_channels == width
        assert len(vit.trunk.layers) == depth
        assert all(layer.self_attn.num_heads == heads for layer in vit.trunk.layers)
        assert vit.trunk.layers[0].linear1.out_features == 4 * width
    assert VIT_PRESETS == {"tiny": (192, 12, 3), "small": (384, 12, 6), "base": (768, 12, 12)}


def test_vit_custom_size_rules():
    with pytest.raises(ValidationError, match="not divisible by heads=3"):
        ViTConfig(size="custom", width=64, heads=3)
    with pytest.raises(ValidationError, match="use size='custom'"):
        ViTConfig(size="small", width=64)
    with pytest.raises(ValidationError, match="extra"):
        ViTConfig(widht=64)
    config = ObliqueConfig(size="base", patch_size=14)
    assert ObliqueConfig(**config.model_dump()) == config  # a saved preset config reloads
    assert (ViTConfig(size="custom", width=96, depth=3, heads=6).width, ViTConfig().depth) == (96, 2)


def test_patch_embedding_pads_right_and_bottom():
    torch.manual_seed(0)
    embedding = PatchEmbedding(3, 16, patch_size=8)
    image = torch.randn(1, 3, 20, 12)
    tokens, grid = embedding(image)
    assert grid == (3, 2) and tokens.shape == (1, 6, 16)
    padded = torch.zeros(1, 3, 24, 16)
    padded[..., :20, :12] = image
    assert torch.allclose(tokens, embedding(padded)[0])
    # the same patch content at another place gets another (fixed) position
    same = torch.zeros(1, 3, 16, 16)
    rows = embedding(same)[0][0]
    assert not torch.allclose(rows[0], rows[1])


# --- oblique ----------------------------------------------------------------------------------


def test_oblique_views_share_one_vit_and_differ_by_view_embedding():
    encoder = build("oblique")
    view = torch.randn(2, 1, 3, 24, 16)
    output = encoder({"views": view.expand(-1, 3, -1, -1, -1)})
    per_view = output.tokens.unflatten(1, (3, 6))  # (B, views, patches, width)
    embedding = encoder.view_embedding.detach()
    assert torch.allclose(per_view[:, 2] - per_view[:, 0], (embedding[2] - embedding[0]).expand(2, 6, -1), atol=1e-5)
    assert torch.allclose(output.dense, per_view[:, 0] - embedding[0], atol=1e-5)


def test_oblique_depth_head_gives_a_depth_map_of_the_input_size():
    encoder = build("oblique", max_views=3)
    views = torch.randn(2, 2, 3, 20, 28)  # not whole patches: padded, then cropped by the head
    output = encoder({"views": views})
    assert output.grid == (3, 4) and output.size == (20, 28) and output.tokens.shape == (2, 2 * 12, 64)
    head = build_head(HeadConfig(kind="dense_regression", outputs=1), width=32, feature_dim=encoder.out_dim)
    depth = head(torch.randn(2, 4, 32), output)
    assert depth.shape == (2, 1, 20, 28)
    loss = head.loss(depth, torch.randn(2, 20, 28))
    loss.backward()
    assert torch.isfinite(loss) and encoder.vit.patch_embedding.projection.weight.grad.abs().sum() > 0


# --- video ------------------------------------------------------------------------------------


def test_video_token_count_follows_the_tubes():
    config = VideoConfig()
    assert config.min_clip == (8, 16, 16)
    encoder = build("video")
    frames, height, width = 13, 40, 48
    expected = 0
    for tube in config.tubes:
        count = 1
        for size, offset, kernel, stride in zip((frames, height, width), tube.offset, tube.kernel, tube.stride):
            count *= (size - offset - kernel) // stride + 1
        expected += count
    output = encoder({"frames": torch.randn(1, frames, 3, height, width)})
    assert output.tokens.shape == (1, expected, 64)


def test_video_tube_positions_share_one_frame():
    # a 1x1x1 tube at offset (1, 1, 1) and a 3x3x3 tube at the origin have the same centre
    small = tube_positions(Tube(kernel=(1, 1, 1), stride=(1, 1, 1), offset=(1, 1, 1)), (1, 1, 1), 64, None)
    large = tube_positions(Tube(kernel=(3, 3, 3), stride=(5, 5, 5)), (2, 1, 1), 64, None)
    assert small.shape == (1, 64) and large.shape == (2, 64)
    assert torch.allclose(small[0], large[0]) and not torch.allclose(large[0], large[1])


def test_video_config_rules():
    with pytest.raises(ValidationError, match="not divisible by heads=3"):
        VideoConfig(width=64, heads=3)
    with pytest.raises(ValidationError):
        VideoConfig(tubes=())
    with pytest.raises(ValidationError):
        Tube(kernel=(0, 4, 4), stride=(1, 1, 1))
    assert len(VideoEncoder("video", VideoConfig(depth=6)).trunk.layers) == 6


# --- wrong inputs -----------------------------------------------------------------------------


def _rgb(shape, fill=None):
    image = torch.randn(shape)
    if fill is not None:
        image[0, 0, 0, 0] = fill
    return {"image": image}


RGB_FORM = re.escape("image (batch, 3, height, width) float")
VIEWS_FORM = re.escape("views (batch, views, 3, height, width) float")
FRAMES_FORM = re.escape("frames (batch, time, 3, height, width) float")

BAD_INPUTS = {
    "rgb wrong rank": ("rgb", _rgb((3, 32, 32)), f"^rgb input: 'image' has rank 3.*{RGB_FORM}"),
    "rgb four channels": ("rgb", _rgb((2, 4, 32, 32)), f"^rgb input: 'image' has shape.*{RGB_FORM}"),
    "rgb NaN": ("rgb", _rgb((2, 3, 32, 32), float("nan")), f"^rgb input: 'image' contains NaN.*{RGB_FORM}"),
    "rgb integer": ("rgb", {"image": torch.zeros(2, 3, 32, 32, dtype=torch.uint8)}, "^rgb input: 'image' has dtype"),
    "rgb unknown name": ("rgb", {"frames": torch.randn(2, 3, 32, 32)}, "^rgb input: unknown input"),
    "oblique one view": (
        "oblique",
        {"views": torch.randn(2, 1, 3, 32, 32)},
        f"^oblique input: .*at least 2 needed.*{VIEWS_FORM}",
    ),
    "oblique too many views": (
        "oblique",
        {"views": torch.randn(1, 6, 3, 16, 16)},
        f"^oblique input: 6 views, more than max_views=5.*{VIEWS_FORM}",
    ),
    "oblique wrong rank": ("oblique", {"views": torch.randn(2, 3, 32, 32)}, f"^oblique input: .*rank 4.*{VIEWS_FORM}"),
    "oblique NaN": (
        "oblique",
        {"views": torch.full((1, 2, 3, 16, 16), float("nan"))},
        "^oblique input: 'views' contains NaN",
    ),
    "video too few frames": (
        "video",
        {"frames": torch.randn(1, 4, 3, 32, 32)},
        f"^video input: .*at least 8 frames of 16x16 px.*{FRAMES_FORM}",
    ),
    "video frames too small": (
        "video",
        {"frames": torch.randn(1, 8, 3, 12, 32)},
        "^video input: a clip of 8 frames of 12x32 px .*at least 8",
    ),
    "video wrong rank": ("video", {"frames": torch.randn(8, 3, 32, 32)}, f"^video input: .*rank 4.*{FRAMES_FORM}"),
    "video infinite": (
        "video",
        {"frames": torch.full((1, 8, 3, 16, 16), float("inf"))},
        "^video input: 'frames' contains NaN or infinite",
    ),
}


@pytest.mark.parametrize("case", BAD_INPUTS)
def test_wrong_inputs_name_the_modality_and_form(case):
    modality, inputs, pattern = BAD_INPUTS[case]
    encoder = build(modality)
    with pytest.raises(ModalityInputError, match=pattern) as error:
        encoder(inputs)
    assert error.value.modality == modality


@pytest.mark.parametrize("modality", ENCODERS)
def test_smallest_valid_inputs_work(modality):
    smallest = {
        "rgb": {"image": torch.randn(1, 3, 1, 1)},
        "oblique": {"views": torch.randn(1, 2, 3, 1, 1)},
        "video": {"frames": torch.randn(1, 8, 3, 16, 16)},
    }[modality]
    output = build(modality)(smallest)
    assert output.tokens.shape[0] == 1 and torch.isfinite(output.tokens).all()

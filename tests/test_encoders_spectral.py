"""Hyperspectral, SAR and infrared-visible encoders: shapes, gradients, determinism, input errors."""

from __future__ import annotations

import pydantic
import pytest
import torch

from allspark.model.encoders.base import ModalityEncoder
from allspark.model.encoders.hyperspectral import HyperspectralEncoder
from allspark.model.encoders.infrared import InfraredVisibleEncoder
from allspark.model.encoders.sar import POLARISATIONS, RADAR_BAND_GHZ, SAREncoder
from allspark.model.inputs import ModalityInputError
from allspark.model.layers import sincos_embedding_1d

ENCODERS = {"hyperspectral": HyperspectralEncoder, "sar": SAREncoder, "infrared": InfraredVisibleEncoder}
# Tokens for the default config's example inputs: 103 bands in groups of 8; 32x32 / patch 4;
# two branches of 32x16 / 4.
EXPECTED_TOKENS = {"hyperspectral": 13, "sar": 64, "infrared": 2 * 8 * 4}


def build(modality: str, seed: int = 0, **config) -> ModalityEncoder:
    torch.manual_seed(seed)
    cls = ENCODERS[modality]
    return cls(modality, cls.Config(**config))


def example(modality: str, batch_size: int = 2, seed: int = 0, **config) -> dict[str, torch.Tensor]:
    cls = ENCODERS[modality]
    return cls.example_inputs(cls.Config(**config), batch_size, torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("modality", ENCODERS)
def test_example_inputs_give_tokens_of_the_right_shape(modality):
    encoder = build(modality)
    out = encoder(example(modality))
    assert out.tokens.shape == (2, EXPECTED_TOKENS[modality], encoder.out_dim)
    assert encoder.out_dim == 64
    assert out.tokens.dtype == torch.float32 and torch.isfinite(out.tokens).all()
    assert 0.3 < out.tokens.std().item() < 3.0  # neither collapsed nor exploding


def test_sar_returns_dense_patch_features():
    out = build("sar")(example("sar"))
    assert out.grid == (8, 8) and out.patch_size == 4 and out.size == (32, 32)
    assert out.dense.shape == (2, 64, 64)


@pytest.mark.parametrize("modality", ENCODERS)
def test_backward_reaches_every_parameter(modality):
    encoder = build(modality)
    encoder(example(modality)).tokens.square().mean().backward()
    missing = [name for name, p in encoder.named_parameters() if p.grad is None]
    assert not missing
    assert all(torch.isfinite(p.grad).all() for p in encoder.parameters())


@pytest.mark.parametrize("modality", ENCODERS)
def test_deterministic_under_a_seed(modality):
    first = build(modality, seed=3)(example(modality, seed=5)).tokens
    second = build(modality, seed=3)(example(modality, seed=5)).tokens
    other = build(modality, seed=4)(example(modality, seed=5)).tokens
    assert torch.equal(first, second)
    assert not torch.allclose(first, other)


@pytest.mark.parametrize("modality", ENCODERS)
def test_runs_under_bf16_autocast(modality):
    encoder = build(modality)
    inputs = example(modality)
    reference = encoder(inputs).tokens
    with torch.autocast("cpu", dtype=torch.bfloat16):
        tokens = encoder(inputs).tokens
    assert tokens.dtype == torch.bfloat16
    assert (tokens.float() - reference).abs().max() < 0.15


def replaced(inputs: dict[str, torch.Tensor], **changes) -> dict[str, torch.Tensor]:
    return {**inputs, **changes}


def with_nan(tensor: torch.Tensor) -> torch.Tensor:
    tensor = tensor.clone()
    tensor.view(-1)[0] = float("nan")
    return tensor


HSI = example("hyperspectral")
SAR = example("sar")
IRV = example("infrared")
BAD_INPUTS = [
    ("hyperspectral", replaced(HSI, spectrum=HSI["spectrum"][..., None]), r"'spectrum' has rank 3"),
    ("hyperspectral", replaced(HSI, spectrum=with_nan(HSI["spectrum"])), r"'spectrum' contains NaN"),
    ("hyperspectral", replaced(HSI, wavelengths=HSI["wavelengths"][:100]), r"103 along 'bands'|100 along 'bands'"),
    ("hyperspectral", replaced(HSI, wavelengths=HSI["wavelengths"] - 0.5), r"wavelengths must be positive"),
    ("hyperspectral", {"spectrum": HSI["spectrum"]}, r"missing input 'wavelengths'"),
    ("sar", replaced(SAR, image=SAR["image"][0]), r"'image' has rank 3"),
    ("sar", replaced(SAR, image=with_nan(SAR["image"])), r"'image' contains NaN"),
    ("sar", replaced(SAR, wavelengths=torch.full((3,), 5.405)), r"along 'polarisations'"),
    ("sar", replaced(SAR, wavelengths=torch.tensor([5.405, 0.0])), r"positive radar centre frequencies in GHz"),
    ("sar", replaced(SAR, polarisations=torch.tensor([0, 4])), r"indices into \['VV', 'VH', 'HH', 'HV'\]"),
    ("sar", replaced(SAR, polarisations=torch.tensor([0.0, 1.0])), r"'polarisations' has dtype"),
    ("infrared", replaced(IRV, visible=IRV["visible"][:, :, :16]), r"along 'height'"),
    ("infrared", replaced(IRV, infrared=IRV["infrared"][:, 0]), r"'infrared' has rank 3"),
    ("infrared", replaced(IRV, visible=IRV["visible"][:, :1]), r"'visible' has shape"),
    ("infrared", replaced(IRV, visible=with_nan(IRV["visible"])), r"'visible' contains NaN"),
    ("infrared", {}, r"give an infrared image, a visible image or both"),
]


@pytest.mark.parametrize(("modality", "inputs", "problem"), BAD_INPUTS)
def test_bad_inputs_raise_errors_naming_the_modality_and_form(modality, inputs, problem):
    with pytest.raises(ModalityInputError, match=rf"^{modality} input: .*(?:{problem}).*; expected ") as info:
        build(modality)(inputs)
    assert info.value.modality == modality


# Hyperspectral ------------------------------------------------------------------------------


def test_hyperspectral_same_weights_read_any_band_set():
    encoder = build("hyperspectral")
    generator = torch.Generator().manual_seed(1)

    def pixels(bands: int, first: float, last: float) -> dict[str, torch.Tensor]:
        return {
            "spectrum": torch.randn(2, bands, generator=generator),
            "wavelengths": torch.linspace(first, last, bands),
        }

    pavia = encoder(pixels(103, 0.43, 0.86))  # ROSIS, Pavia University
    aviris = encoder(pixels(200, 0.4, 2.5))  # AVIRIS, Indian Pines
    few = encoder(pixels(5, 0.45, 0.9))
    assert pavia.tokens.shape == (2, 13, 64)
    assert aviris.tokens.shape == (2, 25, 64)
    assert few.tokens.shape == (2, 1, 64)


def test_hyperspectral_groups_are_contiguous_and_even():
    encoder = build("hyperspectral")
    membership = encoder.band_groups(103, torch.device("cpu"))
    assert membership.shape == (103, 13)
    assert torch.equal(membership.sum(dim=1), torch.ones(103))  # every band in exactly one group
    assert set(membership.sum(dim=0).tolist()) == {7.0, 8.0}  # no tiny remainder group
    group_of_band = membership.argmax(dim=1)
    assert torch.equal(group_of_band, group_of_band.sort().values)  # contiguous
    assert build("hyperspectral", group_size=1).band_groups(9, torch.device("cpu")).equal(torch.eye(9))


def test_hyperspectral_group_tokens_are_scaled_sums_of_their_bands():
    """With no trunk, a token is sum over its bands of the generated weight times the value, scaled to
    1/sqrt(group size), plus the bias and the group's wavelength position."""
    encoder = build("hyperspectral", depth=0, group_size=4)
    spectrum, wavelengths = torch.randn(1, 10), torch.linspace(0.5, 0.95, 10)
    tokens = encoder({"spectrum": spectrum, "wavelengths": wavelengths}).tokens[0]
    weight, bias = encoder.stem.generate_weights(wavelengths)
    weight = weight[:, :, 0, 0] * 10**0.5  # undo DOFA's 1/sqrt(bands)
    groups = [range(4), range(4, 7), range(7, 10)]  # 10 bands, 3 even groups
    for token, group in zip(tokens, groups):
        band_ids = list(group)
        expected = weight[:, band_ids] @ spectrum[0, band_ids] / len(band_ids) ** 0.5 + bias
        expected = expected + sincos_embedding_1d(wavelengths[band_ids].mean()[None] * 1000, 64)[0]
        # (atol: the fastest position sinusoid turns once per 2*pi nm; float32 means differ by ~1e-4 nm)
        torch.testing.assert_close(token, expected, atol=1e-3, rtol=1e-4)


def test_hyperspectral_reuses_generated_weights_in_inference(monkeypatch):
    encoder = build("hyperspectral").eval()
    calls = []
    generate = encoder.stem.generate_weights
    monkeypatch.setattr(encoder.stem, "generate_weights", lambda wl: calls.append(len(wl)) or generate(wl))
    inputs = example("hyperspectral")
    with torch.no_grad():
        first = encoder(inputs).tokens
        second = encoder(replaced(inputs, spectrum=inputs["spectrum"].flip(0))).tokens
        assert calls == [103]  # generated once, then read from the cache
        torch.testing.assert_close(second, first.flip(0))
        encoder({"spectrum": torch.randn(2, 50), "wavelengths": torch.linspace(0.4, 1.0, 50)})
        assert calls == [103, 50]  # a new band set is generated
    encoder(inputs)  # with autograd on, weights are generated afresh (they need a graph)
    assert calls == [103, 50, 103]


# SAR ----------------------------------------------------------------------------------------


def test_sar_reads_any_number_of_polarisations():
    encoder = build("sar")
    generator = torch.Generator().manual_seed(2)
    mstar = {  # single-polarisation X-band, not a multiple of the patch size
        "image": torch.randn(2, 1, 30, 30, generator=generator),
        "wavelengths": torch.tensor([RADAR_BAND_GHZ["X"]]),
        "polarisations": torch.tensor([POLARISATIONS.index("HH")]),
    }
    quad = {
        "image": torch.randn(2, 4, 16, 16, generator=generator),
        "wavelengths": torch.full((4,), RADAR_BAND_GHZ["L"]),
        "polarisations": torch.arange(4),
    }
    out = encoder(mstar)
    assert out.tokens.shape == (2, 64, 64) and out.grid == (8, 8) and out.size == (30, 30)
    assert encoder(quad).tokens.shape == (2, 16, 64)


def test_sar_polarisations_are_told_apart():
    """VV and VH share one radar frequency, so only the polarisation codes separate them."""
    encoder = build("sar")
    inputs = example("sar")
    swapped_channels = replaced(inputs, image=inputs["image"].flip(1))
    swapped_both = replaced(swapped_channels, polarisations=inputs["polarisations"].flip(0))
    reference = encoder(inputs).tokens
    assert not torch.allclose(encoder(swapped_channels).tokens, reference, atol=1e-3)
    torch.testing.assert_close(encoder(swapped_both).tokens, reference, atol=1e-5, rtol=1e-5)


# Infrared-visible ---------------------------------------------------------------------------


def test_infrared_branches_are_unshared_and_either_may_be_alone():
    encoder = build("infrared")
    branches = encoder.branches
    assert branches["infrared"].stages[0].body[0].weight is not branches["visible"].stages[0].body[0].weight
    both = encoder(IRV).tokens
    infrared_only = encoder({"infrared": IRV["infrared"]}).tokens
    visible_only = encoder({"visible": IRV["visible"]}).tokens
    torch.testing.assert_close(torch.cat([infrared_only, visible_only], dim=1), both)


def test_infrared_resnet_size_is_a_config_value():
    encoder = build("infrared", widths=(8, 16, 32, 64), blocks_per_stage=(3, 4, 6, 3))
    blocks = encoder.branches["visible"].stages
    assert len(blocks) == 16  # ResNet-34/50 stage depths
    out = encoder({"visible": torch.randn(1, 3, 64, 32)})
    assert out.tokens.shape == (1, 4 * 2, 64)  # 64x32: stem /2, then three stride-2 stages -> 4x2


def test_configs_are_validated():
    with pytest.raises(pydantic.ValidationError, match="differ in length"):
        InfraredVisibleEncoder.Config(widths=(16, 32), blocks_per_stage=(1,))
    with pytest.raises(pydantic.ValidationError, match="multiple of 4"):
        InfraredVisibleEncoder.Config(widths=(16, 30), blocks_per_stage=(1, 1))
    with pytest.raises(pydantic.ValidationError):
        HyperspectralEncoder.Config(group_size=0)
    with pytest.raises(pydantic.ValidationError):
        SAREncoder.Config(patch=4)  # a typo is an error
    with pytest.raises(ValueError, match="not divisible by num_heads"):
        HyperspectralEncoder("hyperspectral", HyperspectralEncoder.Config(dim=36, num_heads=8))

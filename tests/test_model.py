"""The AllSpark core on the real SmolLM2 weights (first 2 decoder layers), through the region's model.

The region flow maps land cover with the multispectral modality and a dense (per-pixel) head;
these tests pin the pieces every modality shares: the DOFA stem, the bridge, the adapters, the
prompt prefix cache, the training step and checkpoints. Per-modality tests: test_modalities.py.
"""

from __future__ import annotations

import math
import random
import shutil

import pytest
import torch
import torch.nn.functional as F

from allspark.core.config import LanguageModelSettings
from allspark.errors import TrainingError
from allspark.model import (
    PROMPTS,
    AllSpark,
    ModalityInputError,
    Trainer,
    TrainingSettings,
    load_checkpoint,
    load_language_model,
    save_checkpoint,
    select_prompt,
)
from allspark.model.heads import DENSE_ATTENTION_DIM
from allspark.region.config import RegionModelConfig
from tests.conftest import TEST_LLM_LAYERS

LANDSAT_WAVELENGTHS = torch.tensor([0.482, 0.562, 0.655, 0.865, 1.609, 2.201])
SENTINEL2_WAVELENGTHS = torch.tensor(
    [0.443, 0.490, 0.560, 0.665, 0.705, 0.740, 0.783, 0.842, 0.865, 0.945, 1.375, 1.610, 2.190]
)
MSI_PROMPTS = PROMPTS["multispectral"]

pytestmark = pytest.mark.usefixtures("language_model")


def build_model(seed: int = 0, num_classes: int = 4, **overrides) -> AllSpark:
    """A small CPU region model on the session's LM; the seed fixes the trainable parts' initialisation."""
    torch.manual_seed(seed)
    language_keys = set(LanguageModelSettings.model_fields) & set(overrides)
    language = LanguageModelSettings(layers=TEST_LLM_LAYERS, **{k: overrides.pop(k) for k in language_keys})
    config = RegionModelConfig(**overrides)
    return AllSpark(config.allspark_config([f"class{i}" for i in range(num_classes)], language), device="cpu")


def randomise_adapters(model: AllSpark) -> None:
    """Adapters start as the identity (zero up-projection); give them weights, as training would."""
    with torch.no_grad():
        for adapter in model.reader.adapters.values():
            adapter.up.weight.normal_(0, 0.05)


def msi(x: torch.Tensor, wavelengths: torch.Tensor = LANDSAT_WAVELENGTHS) -> dict[str, torch.Tensor]:
    return {"image": x, "wavelengths": wavelengths}


@pytest.fixture(scope="module")
def model() -> AllSpark:
    return build_model().eval()


def test_language_model_is_truncated_and_frozen(language_model):
    lm, tokenizer = language_model
    assert len(lm.get_decoder().layers) == TEST_LLM_LAYERS == lm.config.num_hidden_layers
    assert not any(p.requires_grad for p in lm.parameters())
    assert not lm.training
    assert load_language_model("smollm2", num_layers=TEST_LLM_LAYERS)[0] is lm  # cached per process
    assert tokenizer("multi-spectral").input_ids
    with pytest.raises(ValueError, match="num_layers must be between 1 and 30"):
        load_language_model("smollm2", num_layers=31)


@pytest.mark.parametrize(
    ("wavelengths", "height", "width"),
    [(LANDSAT_WAVELENGTHS, 16, 16), (SENTINEL2_WAVELENGTHS, 16, 16), (SENTINEL2_WAVELENGTHS[[1, 2, 3, 7]], 15, 13)],
    ids=["landsat-6", "sentinel2-13", "subset-4-odd-size"],
)
def test_one_stem_serves_any_band_set(model, wavelengths, height, width):
    """Sentinel-2's 13 bands, Landsat 7's 6 and a 4-band subset, from the same weights."""
    x = torch.randn(3, len(wavelengths), height, width)
    with torch.no_grad():
        logits = model(msi(x, wavelengths))
        tokens = model.encoder(msi(x, wavelengths)).tokens
    assert logits.shape == (3, 4, height, width)
    assert logits.dtype == torch.float32 and torch.isfinite(logits).all()
    assert tokens.shape == (3, -(-height // 2) * -(-width // 2), 128) and torch.isfinite(tokens).all()
    assert tokens.std() > 0.1  # a real embedding, not a collapsed one
    probabilities = model.predict(msi(x, wavelengths))
    torch.testing.assert_close(probabilities.sum(dim=1), torch.ones(3, height, width))


def test_generated_band_weights_are_reused_for_a_repeated_band_set(model):
    stem = model.encoder.stem
    stem._weight_cache.clear()
    x = torch.randn(1, 6, 4, 4)
    with torch.no_grad():
        first = stem._cached_weights(LANDSAT_WAVELENGTHS)
        assert stem._cached_weights(LANDSAT_WAVELENGTHS.clone()) is first
        stem._cached_weights(SENTINEL2_WAVELENGTHS)
        assert len(stem._weight_cache) == 2
        before = stem(x, LANDSAT_WAVELENGTHS)[0]
        stem.bias_generator.bias.add_(1.0)  # an in-place update, as an optimizer step makes
        after = stem(x, LANDSAT_WAVELENGTHS)[0]
        stem.bias_generator.bias.sub_(1.0)
    torch.testing.assert_close(after, before + 1.0)


def test_dense_head_is_one_linear_layer_over_each_patch_and_its_reading_of_the_hidden_states(model):
    x = torch.randn(2, 6, 8, 8)
    head = model.head
    with torch.no_grad():
        logits = model(msi(x))
        encoded, hidden = model.encode(msi(x))
        features = encoded.dense + head.feature_mlp(encoded.dense)
        attention = (head.query(features) @ head.key(hidden).transpose(1, 2) / DENSE_ATTENTION_DIM**0.5).softmax(-1)
        per_patch = head.linear(torch.cat([features, attention @ hidden], dim=-1))  # (B, patches, classes)
        per_patch = per_patch.transpose(1, 2).unflatten(2, encoded.grid)
        expected = F.interpolate(per_patch, scale_factor=2, mode="bilinear", align_corners=False)
    torch.testing.assert_close(logits, expected, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("use_prefix_cache", [True, False], ids=["prefix-cache", "full-sequence"])
def test_gradients_reach_every_trainable_part_but_not_the_language_model(use_prefix_cache):
    model = build_model(use_prefix_cache=use_prefix_cache).train()
    randomise_adapters(model)
    x = torch.randn(2, 6, 8, 8)
    labels = torch.randint(0, 4, (2, 8, 8))
    F.cross_entropy(model(msi(x)), labels).backward()
    trainable = dict(model.named_parameters())
    assert {name.split(".")[0] for name in model.trainable_state_dict()} == {"encoder", "bridge", "reader", "head"}
    assert len(model.reader.adapters) == 1  # after decoder layer 1 of 2 (every second layer)
    for name in model.trainable_state_dict():
        param = trainable.get(name)
        if param is not None:
            assert param.grad is not None and param.grad.abs().sum() > 0, f"no gradient in {name}"
    assert all(p.grad is None for p in model.reader.language_model.parameters())


def test_prefix_cache_matches_full_sequence():
    cached = build_model(use_prefix_cache=True).eval()
    randomise_adapters(cached)  # trained adapters must not change the prompt's keys and values
    full = build_model(use_prefix_cache=False).eval()
    full.load_state_dict(cached.state_dict())
    with torch.no_grad():
        for batch in (3, 1, 5):  # the stored prefix is expanded per call and never extended in place
            x = torch.randn(batch, 6, 16, 16)
            torch.testing.assert_close(cached(msi(x)), full(msi(x)), atol=1e-4, rtol=0)
    prefix = next(iter(cached.reader._prefix_cache.values()))
    assert prefix[0][0].shape[0] == 1  # still the single, unexpanded prompt


def test_adapters_start_as_the_identity_and_change_the_reading_once_trained(model):
    x = torch.randn(2, 6, 8, 8)
    with torch.no_grad():
        _, plain = model.encode(msi(x))
        disabled = build_model(adapter_every=0).eval()
        disabled.load_state_dict({k: v for k, v in model.state_dict().items() if ".adapters." not in k})
        _, without_adapters = disabled.encode(msi(x))
        torch.testing.assert_close(plain, without_adapters)
        changed = build_model().eval()
        randomise_adapters(changed)
        _, with_trained = changed.encode(msi(x))
    assert (with_trained - plain).abs().max() > 1e-3


def test_overfits_a_tiny_batch():
    """8 chips of 8x8 pixels; each 2x2 region's class is written into the spectrum (a bump in band `class`)."""
    generator = torch.Generator().manual_seed(0)
    regions = torch.randint(0, 4, (8, 4, 4), generator=generator)
    labels = regions.repeat_interleave(2, dim=1).repeat_interleave(2, dim=2)
    x = 0.1 * torch.randn(8, 6, 8, 8, generator=generator) + F.one_hot(labels, 6).permute(0, 3, 1, 2).float()
    model = build_model()
    trainer = Trainer(model, TrainingSettings(learning_rate=3e-3, epochs=100), batches_per_epoch=1)
    losses = [trainer.step(msi(x), labels) for _ in range(100)]
    assert min(losses[-5:]) <= 0.1 * losses[0], f"loss went from {losses[0]:.3f} to {losses[-1]:.3f}"


def test_training_is_deterministic_and_accumulation_matches_a_full_batch():
    x, labels = torch.randn(4, 6, 8, 8), torch.randint(0, 4, (4, 8, 8))
    settings = TrainingSettings(learning_rate=1e-3, epochs=3)

    def run(accumulation: int) -> dict[str, torch.Tensor]:
        model = build_model(prompt="Map the land cover of this chip")  # one prompt: no draw per micro-batch
        trainer = Trainer(model, settings.model_copy(update={"accumulation_steps": accumulation}), accumulation)
        for _ in range(settings.epochs):
            for part in torch.arange(4).chunk(accumulation):
                trainer.step(msi(x[part]), labels[part])
        return model.trainable_state_dict()

    full, again, accumulated = run(1), run(1), run(2)
    for key in full:
        assert torch.equal(full[key], again[key]), f"{key} differs between two seeded runs"
        torch.testing.assert_close(full[key], accumulated[key], atol=1e-4, rtol=1e-4)


def test_early_stopping_keeps_the_weights_of_the_epoch_with_the_lowest_validation_figure():
    x, labels = torch.randn(4, 6, 8, 8), torch.randint(0, 4, (4, 8, 8))
    model = build_model()
    trainer = Trainer(model, TrainingSettings(learning_rate=1e-3, epochs=3), batches_per_epoch=1)
    snapshots, figures = [], iter([0.5, 0.2, 0.9])  # epoch 2 validates best

    def validate() -> dict:
        snapshots.append({key: value.clone() for key, value in model.trainable_state_dict().items()})
        return {"validation_loss": next(figures)}

    history = trainer.fit(4, lambda batch: (msi(x[batch]), labels[batch]), 4, torch.Generator().manual_seed(0),
                          log=lambda line: None, validate=validate, keep_best="validation_loss")
    assert history["best_epoch"] == 2 and [e["validation_loss"] for e in history["epochs"]] == [0.5, 0.2, 0.9]
    kept = model.trainable_state_dict()
    assert all(torch.equal(kept[key], snapshots[1][key]) for key in kept)
    assert any(not torch.equal(kept[key], snapshots[2][key]) for key in kept)
    with pytest.raises(ValueError, match="needs a validate function"):
        trainer.fit(4, lambda batch: (msi(x[batch]), labels[batch]), 4, torch.Generator(), keep_best="loss")


def test_a_step_after_evaluation_trains_again_and_the_language_model_stays_in_eval_mode():
    x, labels = torch.randn(2, 6, 8, 8), torch.randint(0, 4, (2, 8, 8))
    model = build_model().eval()  # as after a validation pass
    trainer = Trainer(model, TrainingSettings(learning_rate=1e-3, epochs=1), batches_per_epoch=1)
    trainer.step(msi(x), labels)
    modes = {name: module.training for name, module in model.named_modules()}
    assert not any(mode for name, mode in modes.items() if name.startswith("reader.language_model"))
    assert all(mode for name, mode in modes.items() if not name.startswith("reader.language_model"))


@pytest.mark.parametrize("figures, kept", [([math.nan, 0.3, math.nan], 2), ([math.nan] * 3, None)])
def test_early_stopping_skips_non_finite_figures_and_refuses_a_run_with_none(figures, kept):
    x, labels = torch.randn(4, 6, 8, 8), torch.randint(0, 4, (4, 8, 8))
    trainer = Trainer(build_model(), TrainingSettings(learning_rate=1e-3, epochs=3), batches_per_epoch=1)
    answers = iter(figures)

    def fit() -> dict:
        return trainer.fit(4, lambda batch: (msi(x[batch]), labels[batch]), 4, torch.Generator().manual_seed(0),
                           log=lambda line: None, validate=lambda: {"validation_loss": next(answers)},
                           keep_best="validation_loss")

    if kept is None:
        with pytest.raises(TrainingError, match="validation_loss was not a finite number after any of the 3 epochs"):
            fit()
    else:
        assert fit()["best_epoch"] == kept


def test_cosine_schedule_warms_up_then_decays():
    model = build_model()
    trainer = Trainer(model, TrainingSettings(learning_rate=1e-3, epochs=10, warmup_epochs=2), batches_per_epoch=4)
    rates = []
    for _ in range(40):
        rates.append(trainer.scheduler.get_last_lr()[0])
        trainer.optimizer.step()
        trainer.scheduler.step()
    assert rates[0] == 0 and rates[8] == pytest.approx(1e-3)
    assert all(a < b for a, b in zip(rates[:8], rates[1:9])) and all(a >= b for a, b in zip(rates[8:], rates[9:]))
    assert TrainingSettings.paper("hyperspectral").learning_rate == 1e-4  # the paper's per-modality defaults


@pytest.mark.parametrize(
    ("x", "wavelengths", "message"),
    [
        (torch.randn(6, 8, 8), LANDSAT_WAVELENGTHS, "'image' has rank 3"),
        (torch.randn(2, 13, 8, 8), LANDSAT_WAVELENGTHS, "'wavelengths' has 6 along 'bands' but 'image' has 13"),
        (torch.randn(2, 6, 8, 8).index_fill_(2, torch.tensor([3]), float("nan")), LANDSAT_WAVELENGTHS, "NaN"),
        (torch.randn(2, 6, 0, 8), LANDSAT_WAVELENGTHS, "'image' has 0 along 'height'"),
        (torch.randn(2, 6, 8, 8), -LANDSAT_WAVELENGTHS, "positive micrometres"),
    ],
    ids=["rank-3", "band-count-mismatch", "nan", "empty", "negative-wavelength"],
)
def test_invalid_inputs_raise(model, x, wavelengths, message):
    with pytest.raises(ModalityInputError, match=rf"^multispectral input: .*{message}") as error:
        model(msi(x, wavelengths))
    assert "image (batch, bands, height, width) float" in str(error.value)


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
    randomise_adapters(model)
    save_checkpoint(model, tmp_path / "ckpt")
    restored = load_checkpoint(tmp_path / "ckpt", device="cpu")
    assert restored.config == model.config
    assert not any(key.startswith("reader.language_model") for key in restored.trainable_state_dict())
    for key, value in model.trainable_state_dict().items():
        assert torch.equal(value, restored.trainable_state_dict()[key]), key
    x = torch.randn(2, 6, 8, 8)
    torch.testing.assert_close(restored.predict(msi(x)), model.predict(msi(x)))


def test_checkpoint_of_another_shape_fails_loudly(tmp_path):
    save_checkpoint(build_model(num_classes=4), tmp_path / "four")
    save_checkpoint(build_model(num_classes=7), tmp_path / "seven")
    shutil.copy(tmp_path / "seven" / "model.safetensors", tmp_path / "four" / "model.safetensors")
    with pytest.raises(
        ValueError, match=r"four/model\.safetensors.*mis-shaped: head\.linear\.bias: file \(7,\) vs model \(4,\)"
    ):
        load_checkpoint(tmp_path / "four")


def test_checkpoint_with_wrong_keys_or_config_fails_loudly(tmp_path):
    from safetensors.torch import load_file, save_file

    directory = save_checkpoint(build_model(), tmp_path / "ckpt")
    tensors = load_file(directory / "model.safetensors")
    tensors["encoder.extra"] = tensors.pop("head.linear.weight")
    save_file(tensors, directory / "model.safetensors")
    with pytest.raises(ValueError, match=r"missing: head\.linear\.weight; unexpected: encoder\.extra"):
        load_checkpoint(directory)
    config_path = directory / "config.json"
    config_path.write_text(config_path.read_text().replace('"num_classes"', '"n_classes"'))
    with pytest.raises(ValueError, match=r"invalid checkpoint config .*config\.json"):
        load_checkpoint(directory)

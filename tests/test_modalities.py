"""Every registered modality, end to end on the real SmolLM2 weights (first 2 decoder layers).

For each modality: the registry describes it; the model builds from the registry's defaults; a
forward and backward pass on a small batch of the right form reaches every trainable part; the
cached prompt prefix gives the same outputs as the full sequence; the model fits a small fixed
batch (training loss falls by at least 90 %); and malformed input raises an error naming the
modality and the expected form.
"""

from __future__ import annotations

import json

import pytest
import torch

from allspark.model import (
    MODALITIES,
    AllSpark,
    AllSparkConfig,
    ModalityInputError,
    Trainer,
    TrainingSettings,
    seed_everything,
)
from flows.cli import main as allspark_cli
from tests.conftest import TEST_LLM_LAYERS

pytestmark = pytest.mark.usefixtures("language_model")

ALL = list(MODALITIES)
MAX_STEPS = 200


def build(modality: str, **overrides) -> AllSpark:
    seed_everything(0)
    return AllSpark(AllSparkConfig(modality=modality, llm_layers=TEST_LLM_LAYERS, **overrides), device="cpu")


def first(output) -> torch.Tensor:
    """The tensor to compare of a head's raw output (trajectory heads return several)."""
    return output["futures"] if isinstance(output, dict) else output


def test_registry_lists_thirteen_modalities_with_input_forms(capsys):
    assert ALL == ["text", "code", "rgb", "multispectral", "hyperspectral", "sar", "infrared", "table",
                   "trajectory", "graph", "oblique", "video", "point_cloud"]
    assert allspark_cli(["modalities", "--json"]) == 0
    described = json.loads(capsys.readouterr().out)
    assert [entry["name"] for entry in described] == ALL
    for entry in described:
        assert entry["inputs"] and all(i["dims"] and i["dtype"] in {"float", "int", "bool"} for i in entry["inputs"])
        assert entry["prompts"] and entry["head"]["kind"] and entry["paper_training"]["learning_rate"] > 0


def test_config_typos_and_mismatches_fail_loudly():
    with pytest.raises(ValueError, match="unknown modality 'lidar'"):
        AllSparkConfig(modality="lidar")
    with pytest.raises(ValueError, match="patch_sise"):
        AllSparkConfig(modality="rgb", encoder={"patch_sise": 4})
    with pytest.raises(ValueError, match="does not suit modality 'rgb'"):
        AllSparkConfig(modality="rgb", head={"kind": "language"})
    with pytest.raises(ValueError, match="does not use \\['num_classes'\\]"):
        AllSparkConfig(modality="table", head={"kind": "regression", "outputs": 1, "num_classes": 3})


@pytest.mark.parametrize("modality", ALL)
def test_forward_backward_prefix_cache_and_overfit(modality):
    model = build(modality)
    inputs, target = model.example_batch(4, seed=0)

    # Forward and backward reach every trainable part; the language model stays frozen.
    model.train()
    model.loss(inputs, target).backward()
    for name, parameter in model.named_parameters():
        if name.startswith("reader.language_model."):
            assert parameter.grad is None, name
        elif ".adapters." in name and not name.endswith(("up.weight", "up.bias")):
            continue  # zero until the zero-initialised up-projection has moved
        else:
            assert parameter.grad is not None, f"{modality}: no gradient reaches {name}"
    model.zero_grad(set_to_none=True)

    # The cached prompt prefix equals reading the whole sequence (adapters trained or not).
    with torch.no_grad():
        for adapter in model.reader.adapters.values():
            adapter.up.weight.normal_(0, 0.05)
        model.eval()
        cached = first(model(inputs))
        model.reader.use_prefix_cache = False
        full = first(model(inputs))
        model.reader.use_prefix_cache = True
    torch.testing.assert_close(cached, full, atol=1e-4, rtol=0)

    # Fits a small fixed batch: training loss falls by at least 90 %.
    model = build(modality)
    trainer = Trainer(model, TrainingSettings(learning_rate=1e-3, epochs=MAX_STEPS), batches_per_epoch=1)
    losses = [trainer.step(inputs, target)]
    while len(losses) < MAX_STEPS and losses[-1] > 0.1 * losses[0]:
        losses.append(trainer.step(inputs, target))
    assert losses[-1] <= 0.1 * losses[0], f"{modality}: loss {losses[0]:.3f} -> {losses[-1]:.3f} in {len(losses)} steps"


@pytest.mark.parametrize("modality", ALL)
def test_malformed_input_names_the_modality_and_the_expected_form(modality):
    model = build(modality).eval()
    inputs, _ = model.example_batch(2, seed=0)
    spec = model.encoder.input_spec.tensors[0]
    name, expected_form = spec.name, spec.form()

    with pytest.raises(ModalityInputError, match=rf"^{modality} input: '{name}' has rank") as error:
        model({**inputs, name: inputs[name][0]})  # one rank short
    assert expected_form in str(error.value)

    # An empty sequence / no bands / no points: nothing along the first named dimension after batch.
    axis = next(i for i, dim in enumerate(spec.dims) if i > 0 and isinstance(dim, str))
    empty = inputs[name].narrow(axis, 0, 0)
    with pytest.raises(ModalityInputError, match=rf"^{modality} input: '{name}' has 0 along"):
        model({**inputs, name: empty})

    if inputs[name].is_floating_point() and not spec.allow_nan:
        broken = inputs[name].clone()
        broken.view(-1)[0] = float("nan")
        with pytest.raises(ModalityInputError, match=rf"^{modality} input: '{name}' contains NaN"):
            model({**inputs, name: broken})

    if not spec.optional:
        with pytest.raises(ModalityInputError, match=rf"^{modality} input: missing input '{name}'"):
            model({key: value for key, value in inputs.items() if key != name})


def test_text_model_learns_to_answer_generates_and_ranks_candidates():
    """The language head: teacher-forced answers, greedy generation, and log-likelihood scoring."""
    from allspark.model.encoders.language import tokenize

    model = build("text")
    tokenizer = model.reader.tokenizer
    reviews = ["A wonderful, moving film.", "Dull plot and wooden acting."]
    inputs, labels = tokenize(tokenizer, reviews, ["positive", "negative"])
    trainer = Trainer(model, TrainingSettings(learning_rate=1e-3, epochs=60), batches_per_epoch=1)
    losses = [trainer.step(inputs, labels) for _ in range(60)]
    assert losses[-1] < 0.1 * losses[0]
    assert model.generate(tokenize(tokenizer, reviews)[0], max_new_tokens=4) == ["positive", "negative"]
    scores = {
        answer: model.score(*tokenize(tokenizer, reviews, [answer] * 2)) for answer in ("positive", "negative")
    }
    assert scores["positive"][0] > scores["negative"][0] and scores["negative"][1] > scores["positive"][1]


@pytest.mark.parametrize("numeric_embedding", ["linear", "periodic"])
def test_checkpoint_keeps_the_target_scaling_of_a_regression_head(tmp_path, numeric_embedding):
    from allspark.model import load_checkpoint, save_checkpoint

    model = build("table", encoder={"numeric_embedding": numeric_embedding})
    model.head.scaling.fit(torch.tensor([[35.0], [80.0], [120.0]]))
    inputs, _ = model.example_batch(2)
    restored = load_checkpoint(save_checkpoint(model, tmp_path / "table"), device="cpu")
    assert "head.scaling.mean" in restored.trainable_state_dict()
    torch.testing.assert_close(restored.predict(inputs), model.predict(inputs))
    assert restored.predict(inputs).mean() > 20  # in µg/m³, not in normalised units
    assert restored.encoder.config.numeric_embedding == numeric_embedding

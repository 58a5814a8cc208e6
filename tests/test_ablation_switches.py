"""The ablation's switches on the real SmolLM2 (first 2 layers): no language model, no adapters, own prompt.

``use_language_model: false`` must leave the LM out entirely (not run, so the prompt cannot matter),
still train, and every kind's ``language:`` block must pass the switches on to the model.
"""

from __future__ import annotations

import pytest
import torch

from allspark.core.config import LanguageModelSettings, load_config
from allspark.model import AllSpark, Trainer, TrainingSettings, seed_everything
from allspark.pipelines import KINDS, get_kind
from allspark.region.config import RegionModelConfig
from allspark.sensors.config import SensorModelConfig
from allspark.traffic.config import TrafficModelConfig
from allspark.trajectories.config import TrajectoryModelConfig
from tests.conftest import PROJECT, TEST_LLM_LAYERS

pytestmark = pytest.mark.usefixtures("language_model")

TABLE_CATEGORIES = [12, 16, 24, 7]  # station, wind direction, hour, weekday

TO_MODEL = {
    "region": lambda language: RegionModelConfig().allspark_config(["a", "b", "c"], language),
    "trajectories": lambda language: TrajectoryModelConfig().allspark_config(12, language),
    "sensors": lambda language: SensorModelConfig().allspark_config(language, 10, TABLE_CATEGORIES, ["PM2.5"]),
    "traffic": lambda language: TrafficModelConfig().allspark_config(num_nodes=5, horizon=12, step_minutes=5,
                                                                      language=language),
}


def test_every_kind_has_its_model_switch_check():
    assert set(TO_MODEL) == set(KINDS)


@pytest.mark.parametrize("kind", TO_MODEL)
def test_every_kind_passes_the_language_block_switches_to_the_model(kind):
    """The switches as a run config gives them: the kind's example config with a ``language:`` block."""
    spec = get_kind(kind)
    example = PROJECT / "deployments" / spec.example
    default = TO_MODEL[kind](load_config(spec.config_class(), example).language)
    assert default.use_language_model and default.prompt is None and default.adapters.every == 2
    switches = {"enabled": False, "adapter_every": 0, "prompt": "Describe pancakes."}
    language = load_config(spec.config_class(), example, language=switches).language
    ablated = TO_MODEL[kind](language)
    assert not ablated.use_language_model and ablated.adapters.every == 0 and ablated.prompt == "Describe pancakes."
    assert ablated.llm_layers == spec.config_class().block_defaults["language"]["layers"]


def table_model(**overrides) -> AllSpark:
    seed_everything(0)
    config = SensorModelConfig().allspark_config(LanguageModelSettings(layers=TEST_LLM_LAYERS, **overrides), 10,
                                                 TABLE_CATEGORIES, ["PM2.5"])
    return AllSpark(config, device="cpu")


def decoder_calls(model: AllSpark, inputs: dict) -> tuple[torch.Tensor, int]:
    """The model's output in eval mode and how often the LM's decoder ran for it."""
    calls = []
    handle = model.reader.language_model.get_decoder().register_forward_hook(lambda *args: calls.append(1))
    try:
        with torch.no_grad():
            output = model.eval()(inputs)
    finally:
        handle.remove()
    return output, len(calls)


def test_without_the_language_model_it_is_not_run_and_the_prompt_cannot_matter():
    with_lm = table_model()
    inputs, _ = with_lm.example_batch(4, seed=0)
    read, calls = decoder_calls(with_lm, inputs)
    assert calls == 1
    with_lm.prompts = ("Describe a recipe for pancakes.",)
    assert not torch.allclose(decoder_calls(with_lm, inputs)[0], read)  # with the LM, the prompt matters

    without = table_model(enabled=False)  # adapter_every stays 2: no LM, no adapters anyway
    assert len(without.reader.adapters) == 0
    skipped, calls = decoder_calls(without, inputs)
    assert calls == 0
    without.prompts = ("Describe a recipe for pancakes.",)
    torch.testing.assert_close(decoder_calls(without, inputs)[0], skipped, atol=0, rtol=0)


def test_without_the_language_model_it_still_trains_and_the_lm_stays_untouched():
    model = table_model(enabled=False)
    inputs, target = model.example_batch(8, seed=1)
    frozen = {k: v.clone() for k, v in model.reader.language_model.state_dict().items()}
    trainer = Trainer(model, TrainingSettings(learning_rate=1e-3, epochs=60), batches_per_epoch=1)
    losses = [trainer.step(inputs, target) for _ in range(60)]
    assert losses[-1] < 0.2 * losses[0], f"loss {losses[0]:.3f} -> {losses[-1]:.3f}"
    assert all(torch.equal(frozen[k], v) for k, v in model.reader.language_model.state_dict().items())

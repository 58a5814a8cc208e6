"""The AllSpark model: modality encoders, the Lynx bridge, a frozen causal LM with adapters, task heads.

Names are imported lazily, so ``import allspark.model.registry`` does not pay for importing
transformers.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_EXPORTS = {
    "AllSpark": "model",
    "AllSparkConfig": "model",
    "MODALITIES": "registry",
    "get_modality": "registry",
    "ModalityInputError": "inputs",
    "PROMPTS": "prompts",
    "select_prompt": "prompts",
    "Trainer": "training",
    "TrainingSettings": "training",
    "seed_everything": "training",
    "fetch_smollm2_gguf": "llm",
    "load_language_model": "llm",
    "pick_device": "llm",
    "save_checkpoint": "checkpoint",
    "load_checkpoint": "checkpoint",
    "load_trainable_weights": "checkpoint",
}

__all__ = sorted(_EXPORTS)

if TYPE_CHECKING:
    from allspark.model.checkpoint import load_checkpoint, load_trainable_weights, save_checkpoint
    from allspark.model.inputs import ModalityInputError
    from allspark.model.llm import fetch_smollm2_gguf, load_language_model, pick_device
    from allspark.model.model import AllSpark, AllSparkConfig
    from allspark.model.prompts import PROMPTS, select_prompt
    from allspark.model.registry import MODALITIES, get_modality
    from allspark.model.training import Trainer, TrainingSettings, seed_everything


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)


def __dir__() -> list[str]:
    return sorted(list(globals()) + __all__)

"""AllSpark model parts: wavelength-conditioned stem, Perceiver bridge, frozen LM, dense MSI model.

Names are imported lazily, so ``import allspark.model.prompts`` does not pay for importing
transformers.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_EXPORTS = {
    "AllSparkMSI": "msi",
    "MSIModelConfig": "msi",
    "PerceiverResampler": "bridge",
    "WavelengthConditionedPatchEmbed": "dofa",
    "MSI_PROMPTS": "prompts",
    "select_prompt": "prompts",
    "fetch_smollm2_gguf": "llm",
    "load_language_model": "llm",
    "pick_device": "llm",
    "save_checkpoint": "checkpoint",
    "load_checkpoint": "checkpoint",
    "load_trainable_weights": "checkpoint",
}

__all__ = sorted(_EXPORTS)

if TYPE_CHECKING:
    from allspark.model.bridge import PerceiverResampler
    from allspark.model.checkpoint import load_checkpoint, load_trainable_weights, save_checkpoint
    from allspark.model.dofa import WavelengthConditionedPatchEmbed
    from allspark.model.llm import fetch_smollm2_gguf, load_language_model, pick_device
    from allspark.model.msi import AllSparkMSI, MSIModelConfig
    from allspark.model.prompts import MSI_PROMPTS, select_prompt


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)


def __dir__() -> list[str]:
    return sorted(list(globals()) + __all__)

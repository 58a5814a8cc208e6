"""Task prompts that the language model reads together with the modality tokens.

AllSpark gives each modality one to four prompts: training picks one at random per forward
pass, evaluation always uses the first (for reproducibility).
"""

from __future__ import annotations

import random
from collections.abc import Sequence

import torch

MSI_PROMPTS: tuple[str, ...] = (
    "Based on the multi-spectral imagery feature description, please classify this object",
    "Given the following multi-spectral imagery characteristics, please output the most fitting scene label",
)


def select_prompt(
    prompts: Sequence[str], training: bool, generator: random.Random | torch.Generator | None = None
) -> str:
    """Pick the prompt for one forward pass.

    Args:
        prompts: candidate prompts; the first is the evaluation prompt.
        training: draw uniformly at random when True, otherwise return ``prompts[0]``.
        generator: seeded ``random.Random`` or ``torch.Generator`` for reproducible draws
            (``None`` uses the global torch generator).
    """
    if not prompts:
        raise ValueError("at least one prompt is required")
    if not training or len(prompts) == 1:
        return prompts[0]
    if isinstance(generator, random.Random):
        return prompts[generator.randrange(len(prompts))]
    return prompts[int(torch.randint(len(prompts), (1,), generator=generator))]

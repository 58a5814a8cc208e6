"""Task prompts that the language model reads together with the modality tokens.

AllSpark gives each modality one to four prompts: training picks one at random per forward
pass, evaluation always uses the first (for reproducibility). The first prompt of each modality
is the paper's wording (restated in ``design/ALLSPARK.md``); where the paper lists further prompts
without quoting them, the extra ones here are written in the same style. ``{classes}`` is filled
with the model's class names, ``{targets}`` with the names of what a regression model predicts
(the table prompts name the run's targets instead of the paper's PM2.5).
"""

from __future__ import annotations

import random
from collections.abc import Sequence

import torch

PROMPTS: dict[str, tuple[str, ...]] = {
    "text": (
        "Please determine if this movie review is positive or negative?",
    ),
    "code": (
        "Please summarise what this code does in one sentence.",
        "Describe the purpose of the following function.",
    ),
    "rgb": (
        "This remote sensing image belongs to which of the following categories: {classes}",
        "Describe this remote sensing image briefly",
        "Find a word that is most relevant to this remote sensing image",
        "Describe the key elements in this remote sensing image",
    ),
    "multispectral": (
        "Based on the multi-spectral imagery feature description, please classify this object",
        "Given the following multi-spectral imagery characteristics, please output the most fitting scene label",
    ),
    "hyperspectral": (
        "Given the spectral information, can you help determine which class this pixel belongs to?",
        "Based on the hyperspectral signature of this pixel, please output its land-cover class",
        "Classify this pixel according to its reflectance across the spectral bands",
    ),
    "sar": (
        "Based on the SAR imagery feature description, please classify this object",
        "Given the following synthetic aperture radar image characteristics, please output the target category",
    ),
    "infrared": (
        "Given an infrared image of a person, find and highlight the same person in a set of visible light "
        "images, considering their body shape, clothing and posture",
        "Match the person in this infrared image with their identity in visible light images",
    ),
    "table": (  # the paper's (PRSA): "...the provided air quality indicators to ... predict ... PM2.5 ..."
        "Please utilize the provided indicators to accurately predict {targets}",
        "Based on the measurements and conditions in this record, estimate {targets}",
    ),
    "trajectory": (
        "Based on their past positions and movements in a crowded environment, predict the future trajectory "
        "of a selected pedestrian.",
        "Given the observed path of this pedestrian and the people around them, forecast where they will walk "
        "next.",
        "Predict the next positions of the selected pedestrian from their recent movement and their neighbours.",
    ),
    "graph": (
        "Given the current traffic data including vehicle flow rate, average speed, and time of day at each "
        "sensor of the road network, predict the traffic flow",
        "Based on the recent speeds recorded by the road sensors and their positions in the network, forecast "
        "the traffic speed for the coming hour",
    ),
    "oblique": (
        "Please reconstruct the 3D model from the given images of five different views.",
    ),
    "video": (
        "Please analyze this video and describe the characteristics of the action in detail",
        "Which human action is shown in this video?",
    ),
    "point_cloud": (
        "Classify the provided point cloud sample into the correct category",
        "What object does this 3D point cloud represent?",
        "Identify the category of the object scanned in this point cloud",
    ),
}
MSI_PROMPTS = PROMPTS["multispectral"]


def fill_prompt(prompt: str, class_names: Sequence[str] | None) -> str:
    """Fill ``{classes}`` and ``{targets}`` with the output names (or a neutral phrase when the model has none)."""
    named = ", ".join(class_names) if class_names else None
    return prompt.replace("{classes}", named or "the known classes").replace("{targets}", named or "the target values")


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

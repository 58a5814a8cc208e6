"""What every modality encoder is: named inputs in, tokens out.

An encoder turns one modality's inputs (a mapping of named tensors, declared in
``input_spec``) into a token sequence that the bridge resamples into the language model's
embedding space. Encoders whose task needs a dense answer (a class per pixel, a value per node,
a depth per pixel) also return per-element ``dense`` features for the head.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass
from typing import ClassVar

import torch
from pydantic import BaseModel, ConfigDict, model_validator
from torch import nn

from allspark.model.inputs import InputSpec, ModalityInputError, validate_inputs

Inputs = Mapping[str, torch.Tensor]


class EncoderConfig(BaseModel):
    """Base of every encoder's hyper-parameters: frozen, and a typo is an error."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class AttentionEncoderConfig(EncoderConfig):
    """Base of the configs of encoders with attention over ``width``-wide tokens split into ``heads``.

    Subclasses declare ``width`` and ``heads`` (with their own defaults); this checks that the
    heads divide the width, when the config is read rather than when the model is built.
    """

    @model_validator(mode="after")
    def _heads_divide_width(self) -> AttentionEncoderConfig:
        if self.width % self.heads:
            raise ValueError(f"width {self.width} is not divisible by heads={self.heads}")
        return self


@dataclass
class EncoderOutput:
    """An encoder's answer.

    Attributes:
        tokens: ``(batch, tokens, out_dim)``, what the bridge reads.
        padding_mask: ``(batch, tokens)``, True where a token is padding (None: no padding).
        dense: ``(batch, elements, out_dim)`` features for dense heads (pixels, nodes), or None.
        grid: ``(rows, cols)`` of ``dense`` when its elements are image patches, else None.
        patch_size: pixels per patch side, to bring patch answers back to pixels.
        size: ``(height, width)`` of the input image, to crop padded patches.
    """

    tokens: torch.Tensor
    padding_mask: torch.Tensor | None = None
    dense: torch.Tensor | None = None
    grid: tuple[int, int] | None = None
    patch_size: int = 1
    size: tuple[int, int] | None = None


class ModalityEncoder(nn.Module, ABC):
    """Base class: validates inputs against ``input_spec``, then calls :meth:`encode`.

    Subclasses set ``Config`` (their pydantic hyper-parameters), ``input_spec`` and ``out_dim``
    (token width), implement :meth:`encode` and :meth:`example_inputs`, and may override
    :meth:`check` for rules the spec cannot express (e.g. enough points for the grouping).

    Args:
        modality: registry name, used in error messages.
        config: an instance of ``Config``.
    """

    Config: ClassVar[type[EncoderConfig]] = EncoderConfig
    input_spec: ClassVar[InputSpec]
    out_dim: int

    def __init__(self, modality: str, config: EncoderConfig) -> None:
        super().__init__()
        self.modality = modality
        self.config = config

    def forward(self, inputs: Inputs) -> EncoderOutput:
        sizes = validate_inputs(self.modality, self.input_spec, inputs)
        self.check(inputs, sizes)
        return self.encode(inputs)

    def attach_language_model(self, reader: nn.Module) -> None:
        """Called once by the model with its :class:`~allspark.model.reader.LanguageModelReader`.

        Most encoders ignore it; text and code read with the language model's own embeddings.
        """

    def check(self, inputs: Inputs, sizes: dict[str, int]) -> None:
        """Extra input rules; raise :meth:`input_error` when one is broken. ``sizes``: named dimension sizes."""

    def input_error(self, message: str) -> ModalityInputError:
        """An error naming this modality and its expected input form."""
        return ModalityInputError(self.modality, message, self.input_spec.form())

    @abstractmethod
    def encode(self, inputs: Inputs) -> EncoderOutput:
        """Tokens for validated inputs."""

    @classmethod
    @abstractmethod
    def example_inputs(cls, config: EncoderConfig, batch_size: int, generator: torch.Generator) -> dict[str, torch.Tensor]:
        """A small random batch of the right form (for tests, benchmarks and the model tour)."""

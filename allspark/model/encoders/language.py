"""Text and code: the language model's own tokenizer and input embeddings, no extra encoder.

AllSpark reads text and code natively: token ids go through the frozen LM's input embeddings,
so they are already in its embedding space and need no bridge. The answer comes from the LM's
own output layer (generation, or scoring candidate answers by log-likelihood).

:func:`tokenize` builds a batch: ``[text ; answer]`` token ids, right padding, and labels that
put the loss on the answer tokens only (Hugging Face's ``-100`` elsewhere).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from pydantic import Field
from torch import nn
from transformers import PreTrainedTokenizerBase

from allspark.model.encoders.base import EncoderConfig, EncoderOutput, Inputs, ModalityEncoder
from allspark.model.heads import LANGUAGE_IGNORE_INDEX
from allspark.model.inputs import InputSpec, TensorSpec


class LanguageConfig(EncoderConfig):
    max_length: int = Field(512, ge=2, description="longest token sequence accepted (text + answer)")


class LanguageTokenEncoder(ModalityEncoder):
    """``token_ids (B, L)`` -> the LM's input embeddings ``(B, L, hidden)``; no trainable parameters."""

    Config = LanguageConfig
    input_spec = InputSpec((
        TensorSpec("token_ids", ("batch", "length"), "int", "token ids from the language model's tokenizer"),
        TensorSpec("attention_mask", ("batch", "length"), "int", "1 for tokens, 0 for right padding",
                   optional=True),
    ))

    def __init__(self, modality: str, config: LanguageConfig) -> None:
        super().__init__(modality, config)
        self._reader: nn.Module | None = None
        self.out_dim = 0  # set by attach_language_model: the LM's hidden size

    def attach_language_model(self, reader: nn.Module) -> None:
        # A plain attribute, not a submodule: the LM is frozen, shared, and not part of checkpoints.
        object.__setattr__(self, "_reader", reader)
        self.out_dim = reader.width

    def check(self, inputs: Inputs, sizes: dict[str, int]) -> None:
        if sizes["length"] > self.config.max_length:
            raise self.input_error(f"{sizes['length']} tokens, more than max_length={self.config.max_length}")
        vocabulary = self._reader.language_model.get_input_embeddings().num_embeddings
        ids = inputs["token_ids"]
        if (ids < 0).any() or (ids >= vocabulary).any():
            raise self.input_error(f"token ids must lie in [0, {vocabulary}) for this language model")

    def encode(self, inputs: Inputs) -> EncoderOutput:
        mask = inputs.get("attention_mask")
        return EncoderOutput(
            tokens=self._reader.embed_tokens(inputs["token_ids"]),
            padding_mask=None if mask is None else mask == 0,
        )

    @classmethod
    def example_inputs(cls, config: LanguageConfig, batch_size: int, generator: torch.Generator) -> dict:
        """Random ids of ordinary tokens (skipping the special ones at the start of the vocabulary), 12 per row."""
        return {"token_ids": torch.randint(100, 20_000, (batch_size, 12), generator=generator)}


def tokenize(
    tokenizer: PreTrainedTokenizerBase,
    texts: Sequence[str],
    answers: Sequence[str] | None = None,
) -> tuple[dict[str, torch.Tensor], torch.Tensor | None]:
    """Token ids and attention mask for ``[text ; answer]`` rows, and labels on the answer tokens.

    Returns ``(inputs, labels)``; ``labels`` is None when no answers are given. Rows are right-padded
    with the end-of-sequence token (masked out). Answers are followed by end-of-sequence, so the
    model learns where an answer stops.
    """
    if answers is not None and len(answers) != len(texts):
        raise ValueError(f"{len(texts)} texts but {len(answers)} answers")
    eos = tokenizer.eos_token_id
    rows, label_rows = [], []
    for index, text in enumerate(texts):
        ids = tokenizer(text).input_ids
        labels = [LANGUAGE_IGNORE_INDEX] * len(ids)
        if answers is not None:
            answer_ids = tokenizer(" " + answers[index].strip()).input_ids + [eos]
            ids, labels = ids + answer_ids, labels + answer_ids
        rows.append(ids)
        label_rows.append(labels)
    length = max(len(row) for row in rows)
    token_ids = torch.full((len(rows), length), eos, dtype=torch.long)
    attention_mask = torch.zeros((len(rows), length), dtype=torch.long)
    labels = torch.full((len(rows), length), LANGUAGE_IGNORE_INDEX, dtype=torch.long)
    for index, (row, label_row) in enumerate(zip(rows, label_rows)):
        token_ids[index, : len(row)] = torch.tensor(row)
        attention_mask[index, : len(row)] = 1
        labels[index, : len(row)] = torch.tensor(label_row)
    return {"token_ids": token_ids, "attention_mask": attention_mask}, (labels if answers is not None else None)

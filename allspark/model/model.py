"""AllSpark: one modality's encoder, a bridge into the language model, the prompt, a light head.

    inputs --encoder--> tokens (B, N, d)          [dense features for dense heads]
           --bridge (Lynx resampler)--> queries (B, Q, D)     [D = the LM's hidden size]
    prompt --tokenizer / input embeddings--> (P, D)
    [prompt ; queries] --frozen LM + trainable adapters--> hidden states at the Q positions
           --head--> logits, values (un-scaled), K futures, a dense map, or next-token logits

Text and code skip the bridge: their tokens are the LM's own input embeddings. Everything but
the language model trains (encoder, bridge, adapters, head); :meth:`AllSpark.trainable_state_dict`
is what a checkpoint holds. Which modality, which sizes, which head: :class:`AllSparkConfig`,
validated against the registry so that a typo fails when the config is read.
"""

from __future__ import annotations

import contextlib
import random
from collections.abc import Iterator, Mapping
from typing import Any

import torch
from pydantic import BaseModel, ConfigDict, Field, model_validator
from torch import nn

from allspark.model.bridge import PerceiverResampler
from allspark.model.encoders.base import EncoderConfig, EncoderOutput
from allspark.model.heads import HeadConfig, build_head
from allspark.model.llm import SMOLLM2, load_language_model, pick_device
from allspark.model.prompts import fill_prompt, select_prompt
from allspark.model.reader import LanguageModelReader
from allspark.model.registry import MODALITIES, get_modality

LANGUAGE_MODEL_PREFIX = "reader.language_model."


class BridgeConfig(BaseModel):
    """The Lynx resampler: ``num_queries`` learnable queries, ``depth`` cross-attention + feed-forward blocks."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    num_queries: int = Field(ge=1, description="tokens the LM reads per sample (default: the registry's)")
    depth: int = Field(2, ge=1)
    heads: int = Field(8, ge=1, description="must divide the LM's hidden size")


class AdapterConfig(BaseModel):
    """Lynx-style bottleneck adapters in the frozen LM (see :mod:`allspark.model.adapters`)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    every: int = Field(2, ge=0, description="an adapter after every N-th decoder layer; 0 = no adapters")
    bottleneck: int = Field(64, ge=1)


class AllSparkConfig(BaseModel):
    """Everything needed to rebuild an :class:`AllSpark` model (stored in every checkpoint).

    Unset ``bridge.num_queries`` and ``head`` take the registry's defaults for the modality;
    ``encoder`` is validated by the modality encoder's own config class and stored with every
    default filled in.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    modality: str
    llm: str = Field(SMOLLM2, description='"smollm2" (registry wheel), a local path or a cached HF model id')
    llm_layers: int | None = Field(None, ge=1, description="keep the first N decoder layers (None: all)")
    encoder: dict[str, Any] = Field(default_factory=dict, description="the encoder's config fields")
    bridge: BridgeConfig
    adapters: AdapterConfig = AdapterConfig()
    head: HeadConfig
    class_names: tuple[str, ...] | None = Field(
        None, description="the outputs' names (classes, or regression targets): fill {classes} / {targets} in prompts")
    prompt: str | None = Field(None, min_length=1, description="a user prompt replacing the modality's prompts")
    use_prefix_cache: bool = True
    prompt_seed: int = Field(0, description="seed of the per-step prompt draw in training")
    use_language_model: bool = Field(
        True, description="False: the ablation without the LM; the bridge's queries go straight to the head"
    )

    @model_validator(mode="before")
    @classmethod
    def _registry_defaults(cls, data: Any) -> Any:
        if not isinstance(data, Mapping) or "modality" not in data:
            return data
        modality = MODALITIES.get(data["modality"])
        if modality is None:
            raise ValueError(f"unknown modality {data['modality']!r}; known: {', '.join(MODALITIES)}")
        data = dict(data)
        # Store the encoder's config resolved, defaults included, so a checkpoint says exactly what it holds.
        data["encoder"] = modality.encoder_class.Config.model_validate(data.get("encoder") or {}).model_dump(mode="json")
        data.setdefault("head", modality.head)
        bridge = data.get("bridge") or {}
        if isinstance(bridge, Mapping) and "num_queries" not in bridge:
            data["bridge"] = {**bridge, "num_queries": max(modality.num_queries, 1)}
        return data

    @model_validator(mode="after")
    def _consistent(self) -> AllSparkConfig:
        reads_text = not get_modality(self.modality).has_bridge  # text and code
        if (self.head.kind == "language") != reads_text:
            raise ValueError(
                f"head kind {self.head.kind!r} does not suit modality {self.modality!r}: "
                "text and code answer with the language head, every other modality with its own head"
            )
        if reads_text and not self.use_language_model:
            raise ValueError(f"modality {self.modality!r} is read by the language model: use_language_model must be true")
        if self.class_names is not None and self.head.num_classes not in (None, len(self.class_names)):
            raise ValueError(f"{len(self.class_names)} class_names for head.num_classes={self.head.num_classes}")
        return self

    def encoder_config(self) -> EncoderConfig:
        """The encoder's typed config (``encoder`` validated by the modality's encoder class)."""
        return get_modality(self.modality).encoder_class.Config.model_validate(self.encoder)


class AllSpark(nn.Module):
    """One modality's AllSpark model on a frozen, shared causal language model.

    Args:
        config: the model's config.
        device: where to put it; ``None`` picks CUDA when available, else CPU. The LM object is
            shared with every other model on the same LM in this process, so all of them must
            live on the same device.
    """

    def __init__(self, config: AllSparkConfig, device: torch.device | str | None = None) -> None:
        super().__init__()
        self.config = config
        modality = get_modality(config.modality)
        language_model, tokenizer = load_language_model(config.llm, config.llm_layers)
        adapter_every = config.adapters.every if config.use_language_model else 0  # no LM, nothing to adapt
        self.reader = LanguageModelReader(
            language_model, tokenizer, adapter_every, config.adapters.bottleneck, config.use_prefix_cache
        )
        width = self.reader.width
        self.encoder = modality.encoder_class(config.modality, config.encoder_config())
        self.encoder.attach_language_model(self.reader)
        self.bridge = None
        if modality.has_bridge:
            self.bridge = PerceiverResampler(
                self.encoder.out_dim, width, config.bridge.num_queries, config.bridge.depth, config.bridge.heads
            )
            # Start the query tokens at the scale of the LM's own token embeddings.
            with torch.no_grad():
                embedding_rms = language_model.get_input_embeddings().weight.float().pow(2).mean().sqrt()
                self.bridge.norm_out.weight.fill_(embedding_rms.item())
        self.head = build_head(config.head, width, self.encoder.out_dim, token_logits=self.reader.token_logits)
        prompts = (config.prompt,) if config.prompt else modality.prompts
        self.prompts = tuple(fill_prompt(prompt, config.class_names) for prompt in prompts)
        self._prompt_rng = random.Random(config.prompt_seed)
        self.to(pick_device() if device is None else device)

    # -- running ------------------------------------------------------------------------------

    @property
    def device(self) -> torch.device:
        """Device of the model (move inputs here; :meth:`forward` does it for you)."""
        return self.reader.language_model.get_input_embeddings().weight.device

    def autocast(self) -> contextlib.AbstractContextManager:
        """bfloat16 autocast on CUDA, a no-op on CPU."""
        if self.device.type == "cuda":
            return torch.autocast(device_type="cuda", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def current_prompt(self) -> str:
        """The first prompt in eval mode, a seeded random one per forward pass in training."""
        return select_prompt(self.prompts, self.training, self._prompt_rng)

    def encode(self, inputs: Mapping[str, torch.Tensor]) -> tuple[EncoderOutput, torch.Tensor]:
        """Encoder output and the LM's last hidden states at the modality positions ``(B, Q, D)``.

        Without the language model (``use_language_model=False``) the bridge's queries are returned.
        """
        inputs = {name: value.to(self.device) for name, value in inputs.items() if value is not None}
        encoded = self.encoder(inputs)
        if self.bridge is None:
            tokens, attention_mask = encoded.tokens, inputs.get("attention_mask")
        else:
            tokens, attention_mask = self.bridge(encoded.tokens, encoded.padding_mask), None
        if not self.config.use_language_model:
            return encoded, tokens
        return encoded, self.reader.hidden_states(tokens, self.current_prompt(), attention_mask)

    def forward(self, inputs: Mapping[str, torch.Tensor]):
        """The head's raw output for a batch of named inputs (see the registry's input forms)."""
        with self.autocast():
            encoded, hidden = self.encode(inputs)
            return self.head(hidden, encoded)

    def loss(self, inputs: Mapping[str, torch.Tensor], target: torch.Tensor) -> torch.Tensor:
        """The head's training loss for a batch and its target (in the target's own units)."""
        output = self(inputs)
        with self.autocast():
            return self.head.loss(output, target.to(self.device))

    @torch.no_grad()
    def predict(self, inputs: Mapping[str, torch.Tensor]):
        """Predictions in the target's units (probabilities for classification), in eval mode."""
        with self.evaluating():
            return self.head.postprocess(self(inputs))

    @torch.no_grad()
    def generate(self, inputs: Mapping[str, torch.Tensor], max_new_tokens: int = 32) -> list[str]:
        """Text and code: greedy answers to each (unpadded) row of ``token_ids``, decoded."""
        self._require_language_head("generate")
        mask = inputs.get("attention_mask")
        with self.evaluating(), self.autocast():
            encoded = self.encoder({name: value.to(self.device) for name, value in inputs.items()})
            answers = []
            for row, tokens in enumerate(encoded.tokens):
                length = len(tokens) if mask is None else int(mask[row].sum())
                ids = self.reader.generate(tokens[None, :length], self.current_prompt(), max_new_tokens)[0]
                answers.append(self.reader.tokenizer.decode(ids, skip_special_tokens=True).strip())
        return answers

    @torch.no_grad()
    def score(self, inputs: Mapping[str, torch.Tensor], labels: torch.Tensor) -> torch.Tensor:
        """Text and code: summed log-probability of each row's labelled tokens ``(B,)`` (rank candidates)."""
        self._require_language_head("score")
        with self.evaluating():
            return self.head.log_likelihood(self(inputs), labels.to(self.device)).cpu()

    @contextlib.contextmanager
    def evaluating(self) -> Iterator[None]:
        """Eval mode inside the block, the previous mode after it (a model already in eval mode is not
        switched: walking every module twice per batch cost 1-2% of inference)."""
        was_training = self.training
        if was_training:
            self.eval()
        try:
            yield
        finally:
            if was_training:
                self.train()

    # -- training and checkpoints -------------------------------------------------------------

    def train(self, mode: bool = True) -> AllSpark:
        """Switch the trainable parts; the frozen LM always stays in eval mode."""
        super().train(mode)
        self.reader.language_model.eval()
        return self

    def trainable_parameters(self) -> Iterator[nn.Parameter]:
        """Encoder, bridge, adapter and head parameters (what an optimizer updates)."""
        for name, parameter in self.named_parameters():
            if not name.startswith(LANGUAGE_MODEL_PREFIX):
                yield parameter

    def trainable_state_dict(self) -> dict[str, torch.Tensor]:
        """Everything but the language model (rebuilt from ``config.llm``): what a checkpoint holds."""
        return {key: value for key, value in self.state_dict().items() if not key.startswith(LANGUAGE_MODEL_PREFIX)}

    def example_batch(self, batch_size: int, seed: int = 0) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        """A random batch of the right form and a random target of the head's form (tests, tours, benchmarks)."""
        generator = torch.Generator().manual_seed(seed)
        inputs = type(self.encoder).example_inputs(self.encoder.config, batch_size, generator)
        with torch.no_grad(), self.evaluating(), self.autocast():
            encoded, hidden = self.encode(inputs)
            output = _to_cpu(self.head(hidden, encoded))
        return inputs, self.head.example_target(output, encoded, inputs, generator)

    def _require_language_head(self, what: str) -> None:
        if self.config.head.kind != "language":
            raise ValueError(f"{what} needs the language head (text, code); {self.config.modality} has none")


def _to_cpu(output):
    if isinstance(output, dict):
        return {key: value.cpu() for key, value in output.items()}
    return output.cpu()

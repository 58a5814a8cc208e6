"""Reading modality tokens with a prompt through the frozen causal language model.

The sequence the LM reads is ``[prompt ; modality tokens]``. The prompt comes first and the LM is
causal and frozen (adapters never touch prompt positions, see :mod:`allspark.model.adapters`), so
the prompt's keys and values never depend on the input or on trained weights: they are computed
once per prompt and reused for every batch (the prefix cache), and each call runs only the
modality tokens through the LM. The uncached path runs the whole sequence and gives the same
hidden states.
"""

from __future__ import annotations

import torch
from torch import nn
from transformers import DynamicCache, PreTrainedModel, PreTrainedTokenizerBase

from allspark.model.adapters import active_adapters, install_adapter_hooks, make_adapters

KeyValues = tuple[tuple[torch.Tensor, torch.Tensor], ...]


class LanguageModelReader(nn.Module):
    """The frozen LM plus this model's adapters and prompt cache.

    Args:
        language_model: a frozen causal LM (shared; see :func:`allspark.model.llm.load_language_model`).
        tokenizer: its tokenizer.
        adapter_every: put an adapter after every N-th decoder layer; 0 disables adapters.
        adapter_bottleneck: adapter hidden width.
        use_prefix_cache: reuse the prompt's keys and values across calls.
    """

    def __init__(
        self,
        language_model: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        adapter_every: int,
        adapter_bottleneck: int,
        use_prefix_cache: bool,
    ) -> None:
        super().__init__()
        self.language_model = language_model
        self.tokenizer = tokenizer
        self.use_prefix_cache = use_prefix_cache
        layers = language_model.get_decoder().layers
        install_adapter_hooks(layers)
        self.adapters = make_adapters(len(layers), self.width, adapter_every, adapter_bottleneck) if adapter_every else nn.ModuleDict()
        self._prefix_cache: dict[tuple, KeyValues] = {}

    @property
    def width(self) -> int:
        """Hidden size of the LM (the width of the tokens it reads)."""
        return self.language_model.config.get_text_config(decoder=True).hidden_size

    def train(self, mode: bool = True) -> LanguageModelReader:
        """Adapters follow ``mode``; the frozen LM always stays in eval mode."""
        super().train(mode)
        self.language_model.eval()
        return self

    def embed_tokens(self, token_ids: torch.Tensor) -> torch.Tensor:
        """The LM's own input embeddings of token ids."""
        return self.language_model.get_input_embeddings()(token_ids)

    def prompt_ids(self, prompt: str, device: torch.device) -> torch.Tensor:
        """Plain-text prompt (no chat template) as token ids ``(1, P)``."""
        return self.tokenizer(prompt, return_tensors="pt").input_ids.to(device)

    def hidden_states(
        self, tokens: torch.Tensor, prompt: str, attention_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Last hidden states ``(B, L, D)`` at the modality positions of ``[prompt ; tokens]``.

        Args:
            tokens: ``(B, L, D)`` modality tokens in the LM's embedding space.
            prompt: the text read before them.
            attention_mask: ``(B, L)``, 1 for real tokens, 0 for right padding (None: no padding).

        The decoder is called without the LM head: hidden states are all most heads need, and the
        vocabulary projection would dominate the cost.
        """
        decoder = self.language_model.get_decoder()
        prompt_ids = self.prompt_ids(prompt, tokens.device)
        batch, prompt_length = len(tokens), prompt_ids.shape[1]
        full_mask = None
        if attention_mask is not None:
            full_mask = torch.cat([attention_mask.new_ones(batch, prompt_length), attention_mask], dim=1)
        with active_adapters(self.adapters, prompt_length):
            if self.use_prefix_cache:
                past = self._fresh_prefix_cache(prompt, prompt_ids, batch)
                return decoder(
                    inputs_embeds=tokens, cache=past, attention_mask=full_mask, use_cache=True
                ).last_hidden_state
            prompt_embeds = self.embed_tokens(prompt_ids).to(tokens.dtype).expand(batch, -1, -1)
            sequence = torch.cat([prompt_embeds, tokens], dim=1)
            hidden = decoder(inputs_embeds=sequence, attention_mask=full_mask, use_cache=False).last_hidden_state
            return hidden[:, prompt_length:]

    def token_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """The LM's own output head (next-token logits) on hidden states."""
        return self.language_model.get_output_embeddings()(hidden)

    @torch.no_grad()
    def generate(self, tokens: torch.Tensor, prompt: str, max_new_tokens: int) -> torch.Tensor:
        """Greedy continuation ``(B, max_new_tokens)`` of ``[prompt ; tokens]`` (unpadded ``tokens``).

        Stops early once every row has produced the end-of-sequence token (rows that finished are
        padded with it).
        """
        decoder = self.language_model.get_decoder()
        prompt_ids = self.prompt_ids(prompt, tokens.device)
        batch, prompt_length = len(tokens), prompt_ids.shape[1]
        eos = self.tokenizer.eos_token_id
        with active_adapters(self.adapters, prompt_length):
            if self.use_prefix_cache:
                past, step_input = self._fresh_prefix_cache(prompt, prompt_ids, batch), tokens
            else:
                past = DynamicCache()
                prompt_embeds = self.embed_tokens(prompt_ids).to(tokens.dtype).expand(batch, -1, -1)
                step_input = torch.cat([prompt_embeds, tokens], dim=1)
            generated, finished = [], torch.zeros(batch, dtype=torch.bool, device=tokens.device)
            for _ in range(max_new_tokens):
                out = decoder(inputs_embeds=step_input, cache=past, use_cache=True)
                past = out.cache
                next_ids = self.token_logits(out.last_hidden_state[:, -1]).argmax(dim=-1)
                if eos is not None:
                    next_ids = torch.where(finished, torch.full_like(next_ids, eos), next_ids)
                    finished |= next_ids == eos
                generated.append(next_ids)
                if bool(finished.all()):
                    break
                step_input = self.embed_tokens(next_ids[:, None]).to(tokens.dtype)
        return torch.stack(generated, dim=1)

    def _fresh_prefix_cache(self, prompt: str, prompt_ids: torch.Tensor, batch: int) -> DynamicCache:
        """A new cache holding the prompt's keys and values for ``batch`` rows (never extended in place)."""
        key_values = self._prompt_key_values(prompt, prompt_ids)
        return DynamicCache(
            ddp_cache_data=[(k.expand(batch, -1, -1, -1), v.expand(batch, -1, -1, -1)) for k, v in key_values]
        )

    def _prompt_key_values(self, prompt: str, prompt_ids: torch.Tensor) -> KeyValues:
        """Per-layer keys and values ``(1, kv_heads, P, head_dim)`` of the prompt, computed once per prompt."""
        device = prompt_ids.device
        key = (prompt, device, torch.is_autocast_enabled(device.type))
        if key not in self._prefix_cache:
            with torch.no_grad(), active_adapters(None, 0):
                past = self.language_model.get_decoder()(
                    inputs_embeds=self.embed_tokens(prompt_ids), use_cache=True
                ).cache
            self._prefix_cache[key] = tuple((layer.keys, layer.values) for layer in past.layers)
        return self._prefix_cache[key]

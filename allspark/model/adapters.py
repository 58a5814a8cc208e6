"""Lynx-style bottleneck adapters inside a frozen, shared causal language model.

Lynx (and AllSpark after it) keeps the language model frozen and trains small bottleneck
adapters after some decoder layers. Here one adapter follows every ``every``-th decoder layer
(layers ``every-1, 2*every-1, ...``): ``h + up(GELU(down(LayerNorm(h))))``, with ``up``
initialised to zero so a fresh model reads exactly like the frozen LM.

The LM object is shared by every model built on it in a process (one copy in memory serves all
thirteen modalities), so adapters are not inserted into its module tree. Instead, each decoder
layer gets one forward hook, installed once per LM, that applies the adapters of the model whose
forward is running (held in a context variable). The hook only changes positions at or after the
end of the prompt: the prompt's keys and values never depend on trained weights, so the prompt
prefix cache stays exact in training and inference.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator

import torch
from torch import nn

_ACTIVE: contextvars.ContextVar[tuple[nn.ModuleDict, int] | None] = contextvars.ContextVar(
    "allspark_active_adapters", default=None
)
_HOOKED_ATTRIBUTE = "_allspark_adapter_hooks"


class BottleneckAdapter(nn.Module):
    """``h -> h + up(GELU(down(LayerNorm(h))))`` with a zero-initialised ``up`` (identity at start)."""

    def __init__(self, dim: int, bottleneck: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.down = nn.Linear(dim, bottleneck)
        self.up = nn.Linear(bottleneck, dim)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    def delta(self, hidden: torch.Tensor) -> torch.Tensor:
        """The residual the adapter adds to ``hidden``."""
        return self.up(nn.functional.gelu(self.down(self.norm(hidden))))


def adapter_layer_indices(num_layers: int, every: int) -> list[int]:
    """Decoder layers followed by an adapter: every ``every``-th one (0-based ``every-1, 2*every-1, ...``)."""
    return list(range(every - 1, num_layers, every))


def make_adapters(decoder_layers: int, dim: int, every: int, bottleneck: int) -> nn.ModuleDict:
    """Adapters keyed by decoder layer index (as strings, for ``nn.ModuleDict``)."""
    return nn.ModuleDict(
        {str(i): BottleneckAdapter(dim, bottleneck) for i in adapter_layer_indices(decoder_layers, every)}
    )


def install_adapter_hooks(decoder_layers: nn.ModuleList) -> None:
    """Give each decoder layer of a (shared) LM the hook that applies the active adapters; once per LM."""
    if getattr(decoder_layers, _HOOKED_ATTRIBUTE, False):
        return
    for index, layer in enumerate(decoder_layers):
        layer.register_forward_hook(_make_hook(str(index)), with_kwargs=True)
    setattr(decoder_layers, _HOOKED_ATTRIBUTE, True)


def _make_hook(index: str):
    def hook(module: nn.Module, args: tuple, kwargs: dict, output):
        active = _ACTIVE.get()
        if active is None:
            return None
        adapters, prompt_length = active
        if index not in adapters:
            return None
        hidden = output[0] if isinstance(output, tuple) else output
        delta = adapters[index].delta(hidden)
        positions = kwargs.get("position_ids")
        if positions is not None and prompt_length > 0:
            after_prompt = (positions >= prompt_length).to(delta.dtype)  # (1 or B, L)
            delta = delta * after_prompt[..., None]
        hidden = hidden + delta.to(hidden.dtype)
        return (hidden, *output[1:]) if isinstance(output, tuple) else hidden

    return hook


@contextlib.contextmanager
def active_adapters(adapters: nn.ModuleDict | None, prompt_length: int) -> Iterator[None]:
    """Apply ``adapters`` to positions ``>= prompt_length`` of every LM forward inside the block."""
    token = _ACTIVE.set(None if adapters is None or len(adapters) == 0 else (adapters, prompt_length))
    try:
        yield
    finally:
        _ACTIVE.reset(token)

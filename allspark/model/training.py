"""Training for any AllSpark model: AdamW, cosine schedule with warm-up, accumulation, the epoch loop.

The defaults are the paper's per-modality settings (learning rate, epochs, warm-up epochs; see
the registry). Gradients accumulate over ``accumulation_steps`` micro-batches before each
optimizer step; on a GPU the forward pass runs under bfloat16 autocast (the model does that);
on a CPU, with :func:`seed_everything`, two runs give the same losses.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable, Mapping

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field
from transformers import get_cosine_schedule_with_warmup

from allspark.errors import TrainingError
from allspark.model.model import AllSpark
from allspark.model.registry import get_modality


def seed_everything(seed: int) -> torch.Generator:
    """Seed python, numpy and torch; return a torch generator for data order."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


class TrainingSettings(BaseModel):
    """Optimiser and schedule of a fine-tuning run."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    learning_rate: float = Field(gt=0, description="peak learning rate after warm-up")
    epochs: int = Field(ge=1)
    warmup_epochs: float = Field(0, ge=0)
    weight_decay: float = Field(0.05, ge=0)
    accumulation_steps: int = Field(1, ge=1, description="micro-batches per optimizer step")
    max_grad_norm: float | None = Field(1.0, gt=0, description="gradient clipping; None = off")

    @classmethod
    def paper(cls, modality: str, **overrides) -> TrainingSettings:
        """The paper's schedule for ``modality`` (AdamW, cosine, warm-up), with overrides."""
        training = get_modality(modality).training
        settings = {
            "learning_rate": training.learning_rate,
            "epochs": training.epochs,
            "warmup_epochs": training.warmup_epochs,
        }
        return cls(**(settings | overrides))


class Trainer:
    """Train an :class:`AllSpark` model's trainable parts, one micro-batch at a time.

    Args:
        model: the model (its LM stays frozen).
        settings: optimiser and schedule.
        batches_per_epoch: micro-batches per epoch, to lay out the schedule in optimizer steps.
    """

    def __init__(self, model: AllSpark, settings: TrainingSettings, batches_per_epoch: int) -> None:
        if batches_per_epoch < 1:
            raise ValueError(f"batches_per_epoch must be >= 1, got {batches_per_epoch}")
        self.model = model
        self.settings = settings
        self.parameters = [p for p in model.trainable_parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(
            self.parameters, lr=settings.learning_rate, weight_decay=settings.weight_decay
        )
        steps_per_epoch = math.ceil(batches_per_epoch / settings.accumulation_steps)
        self.scheduler = get_cosine_schedule_with_warmup(
            self.optimizer,
            num_warmup_steps=round(settings.warmup_epochs * steps_per_epoch),
            num_training_steps=settings.epochs * steps_per_epoch,
        )
        self.micro_steps = 0

    def step(self, inputs: Mapping[str, torch.Tensor], target: torch.Tensor) -> float:
        """Forward and backward one micro-batch; update the weights every ``accumulation_steps``. Returns its loss.

        The model is switched to training mode only when it is not in it already (after a validation pass, say):
        walking every module on each step took 5 of ETH's 112 ms a step (cProfile, 2026-12-07).
        """
        if not self.model.training:
            self.model.train()
        loss = self.model.loss(inputs, target)
        (loss / self.settings.accumulation_steps).backward()
        self.micro_steps += 1
        if self.micro_steps % self.settings.accumulation_steps == 0:
            self._update()
        return float(loss.detach())

    def fit(
        self,
        examples: int,
        make_batch: Callable[[torch.Tensor], tuple[Mapping[str, torch.Tensor], torch.Tensor]],
        batch_size: int,
        generator: torch.Generator,
        log: Callable[[str], None] = print,
        validate: Callable[[], Mapping[str, float | None]] | None = None,
        keep_best: str | None = None,
    ) -> dict:
        """Run ``settings.epochs`` epochs over ``examples`` examples in a seeded random order.

        ``make_batch(indices)`` returns the inputs and target of those examples; ``validate()``,
        if given, is called after every epoch and its figures join the epoch's record. With
        ``keep_best`` (one of those figures, lower is better), the model ends with the trained
        weights of the epoch where it was lowest: early stopping on a validation split, which
        never lets a late, overfitted epoch stand; :class:`TrainingError` if it was never finite
        (diverged), so no such model is saved. Returns ``{"epochs": [{"epoch", "loss",
        ...validation}], "seconds"}`` (and ``"best_epoch"`` with ``keep_best``); the loss is the
        mean over examples.
        """
        if keep_best is not None and validate is None:
            raise ValueError(f"keep_best={keep_best!r} needs a validate function")
        history, started = [], time.perf_counter()
        best_value, best_epoch, best_weights = math.inf, None, None
        for epoch in range(1, self.settings.epochs + 1):
            total = 0.0
            for batch in torch.randperm(examples, generator=generator).split(batch_size):
                total += self.step(*make_batch(batch)) * len(batch)
            self.finish_epoch()
            record = {"epoch": epoch, "loss": total / examples, **(validate() if validate else {})}
            history.append(record)
            log(f"epoch {epoch}/{self.settings.epochs}: " + ", ".join(
                f"{key} {value:.4f}" if isinstance(value, float) else f"{key} {value}"
                for key, value in record.items() if key != "epoch"))
            if keep_best is not None and record[keep_best] is not None and record[keep_best] < best_value:
                best_value, best_epoch = record[keep_best], epoch
                best_weights = {key: value.clone() for key, value in self.model.trainable_state_dict().items()}
        if keep_best is not None and best_epoch is None:
            raise TrainingError(
                f"fine-tuning diverged: {keep_best} was not a finite number after any of the {self.settings.epochs} "
                f"epochs (last training loss {history[-1]['loss']:.4g}); lower train.learning_rate or check the "
                "training data for non-finite values")
        if best_weights is not None and best_epoch != self.settings.epochs:
            self.model.load_state_dict(best_weights, strict=False)
            log(f"kept epoch {best_epoch} (lowest {keep_best})")
        kept = {"best_epoch": best_epoch} if keep_best is not None else {}
        return {"epochs": history, "seconds": round(time.perf_counter() - started, 1), **kept}

    def finish_epoch(self) -> None:
        """End an epoch: apply gradients left over when its micro-batches do not fill the last step."""
        if self.micro_steps % self.settings.accumulation_steps:
            self._update()
        self.micro_steps = 0

    def _update(self) -> None:
        if self.settings.max_grad_norm is not None:
            torch.nn.utils.clip_grad_norm_(self.parameters, self.settings.max_grad_norm)
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)

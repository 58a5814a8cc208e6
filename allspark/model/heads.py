"""Light task heads on the language model's hidden states.

AllSpark answers with one linear layer wherever it can: class logits for classification;
values plus *un-scaling* (the inverse of the target normalisation: buffers, not parameters) for
regression; K candidate futures with probabilities for trajectories (as TUTR does, for best-of-K
metrics); per-element answers for dense tasks (a class per pixel, a value per graph node, a depth
per pixel) from each element's encoder feature and the part of the LM's reading of the sample
that the element attends to; and the
language model's own output layer for text and code.

Every head maps ``hidden`` (``(B, Q, D)``, the LM's last hidden states at the modality positions)
and the encoder output to a raw output, computes its loss against a target, and turns a raw
output into a prediction in the target's units (:meth:`Head.postprocess`).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Callable, ClassVar, Literal

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field, model_validator
from torch import nn

from allspark.model.encoders.base import EncoderOutput, Inputs

HeadKind = Literal[
    "classification", "regression", "trajectory", "dense_classification", "dense_regression", "language"
]
IGNORE_INDEX = -1
LANGUAGE_IGNORE_INDEX = -100  # Hugging Face's convention for label positions without a loss
TRAJECTORY_OPTIONS = ("end_point_weight", "proposals", "expected_loss_weight")
DENSE_ATTENTION_DIM = 64  # query and key width of the dense head's attention over the hidden states


class HeadConfig(BaseModel):
    """Which head, and its sizes. Fields a kind does not use must stay unset."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: HeadKind
    num_classes: int | None = Field(None, ge=2, description="classification kinds")
    outputs: int | None = Field(None, ge=1, description="regression values per sample or per element")
    horizon: int | None = Field(None, ge=1, description="trajectory: future steps")
    modes: int | None = Field(None, ge=1, description="trajectory: candidate futures (K)")
    end_point_weight: float | None = Field(None, ge=0, description="trajectory: weight of the end-point distance "
                                           "beside the mean distance in choosing the winner candidate (0 if unset)")
    proposals: int | None = Field(None, ge=1, description="trajectory: candidates proposed and trained, cut to "
                                  "`modes` by clustering their end points (`modes` if unset)")
    expected_loss_weight: float | None = Field(None, ge=0, description="trajectory: weight of the expected "
                                               "future's error in the loss, which trains the probabilities (0 if "
                                               "unset)")

    @model_validator(mode="after")
    def _sizes_match_kind(self) -> HeadConfig:
        needed = {
            "classification": {"num_classes"},
            "dense_classification": {"num_classes"},
            "regression": {"outputs"},
            "dense_regression": {"outputs"},
            "trajectory": {"horizon", "modes"},
            "language": set(),
        }[self.kind]
        optional = set(TRAJECTORY_OPTIONS) if self.kind == "trajectory" else set()
        given = {name for name in ("num_classes", "outputs", "horizon", "modes", *TRAJECTORY_OPTIONS)
                 if getattr(self, name) is not None}
        if needed - given:
            raise ValueError(f"head kind {self.kind!r} needs {sorted(needed - given)}")
        if given - needed - optional:
            raise ValueError(f"head kind {self.kind!r} does not use {sorted(given - needed - optional)}")
        if self.proposals is not None and self.proposals < self.modes:
            raise ValueError(f"proposals ({self.proposals}) must be at least modes ({self.modes}): the proposals are "
                             "cut to modes")
        return self


class Head(nn.Module, ABC):
    """A task head: raw output, loss, prediction, and an example target of the right form."""

    kind: ClassVar[str]

    @abstractmethod
    def forward(self, hidden: torch.Tensor, encoded: EncoderOutput) -> torch.Tensor | dict[str, torch.Tensor]:
        """Raw output (logits, or values in normalised target units)."""

    @abstractmethod
    def loss(self, output, target: torch.Tensor) -> torch.Tensor:
        """Scalar training loss of a raw output against a target in original units."""

    def postprocess(self, output):
        """Prediction in the target's units (probabilities for classification)."""
        return output

    @abstractmethod
    def example_target(
        self, output, encoded: EncoderOutput, inputs: Inputs, generator: torch.Generator
    ) -> torch.Tensor:
        """A random target shaped like this head's predictions, that the head can represent (tests, tours)."""


class TargetScaling(nn.Module):
    """Target normalisation ``(y - mean) / std`` and its inverse; saved with the head, not trained."""

    def __init__(self, outputs: int) -> None:
        super().__init__()
        self.register_buffer("mean", torch.zeros(outputs))
        self.register_buffer("std", torch.ones(outputs))

    @torch.no_grad()
    def fit(self, targets: torch.Tensor) -> None:
        """Set mean and std per output from training targets ``(..., outputs)`` (NaN ignored)."""
        flat = targets.reshape(-1, targets.shape[-1]).float()
        finite = torch.isfinite(flat)
        count = finite.sum(0).clamp(min=1)
        mean = torch.where(finite, flat, 0).sum(0) / count
        var = torch.where(finite, (flat - mean) ** 2, 0).sum(0) / count
        self.mean.copy_(mean)
        self.std.copy_(var.sqrt().clamp(min=1e-6))

    def normalise(self, values: torch.Tensor) -> torch.Tensor:
        return (values - self.mean) / self.std

    def unscale(self, values: torch.Tensor) -> torch.Tensor:
        return values * self.std + self.mean


def _masked_mse(prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean squared error over finite targets (missing observations are NaN)."""
    finite = torch.isfinite(target)
    if not finite.any():
        return prediction.sum() * 0.0
    return F.mse_loss(prediction[finite], target[finite])


def _feature_mlp(feature_dim: int) -> nn.Sequential:
    """The MLP a head adds to an encoder feature (residually), so the feature can answer non-linearly."""
    return nn.Sequential(nn.Linear(feature_dim, 2 * feature_dim), nn.GELU(), nn.Linear(2 * feature_dim, feature_dim))


class ClassificationHead(Head):
    """Mean of the hidden states, then one linear layer to class logits ``(B, num_classes)``."""

    kind = "classification"

    def __init__(self, width: int, feature_dim: int, config: HeadConfig) -> None:
        super().__init__()
        self.linear = nn.Linear(width, config.num_classes)

    def forward(self, hidden, encoded):
        return self.linear(hidden.mean(dim=1))

    def loss(self, output, target):
        return F.cross_entropy(output.float(), target.long())

    def postprocess(self, output):
        return output.float().softmax(dim=-1)

    def example_target(self, output, encoded, inputs, generator):
        return torch.randint(output.shape[-1], output.shape[:1], generator=generator)


class RegressionHead(Head):
    """Values from the sample's own feature and the LM's reading of it, then un-scaling.

    As in :class:`DenseHead`, one linear layer answers from ``concat(feature, mean hidden state)``:
    the feature is the mean of the encoder's tokens through a residual MLP, so what the encoder
    learned about the row reaches the answer directly, and the language model's reading adds to
    it. Without that path every row had to pass through the bridge's few queries and the LM, and
    the table model stayed far behind gradient-boosted trees on the same rows (issue 16).
    """

    kind = "regression"

    def __init__(self, width: int, feature_dim: int, config: HeadConfig) -> None:
        super().__init__()
        self.feature_mlp = _feature_mlp(feature_dim)
        self.linear = nn.Linear(feature_dim + width, config.outputs)
        self.scaling = TargetScaling(config.outputs)

    def forward(self, hidden, encoded):
        feature = encoded.tokens.mean(dim=1)
        feature = feature + self.feature_mlp(feature)
        return self.linear(torch.cat([feature, hidden.mean(dim=1).to(feature.dtype)], dim=-1))

    def loss(self, output, target):
        return _masked_mse(output.float(), self.scaling.normalise(target.float()))

    def postprocess(self, output):
        return self.scaling.unscale(output.float())

    def example_target(self, output, encoded, inputs, generator):
        return torch.randn(output.shape, generator=generator)


class TrajectoryHead(Head):
    """K candidate futures ``(B, K, horizon, 2)`` and their probabilities, from one linear layer each.

    Training is winner-takes-all, as in TUTR: the candidate closest to the true future (mean
    Euclidean distance, plus ``end_point_weight`` times the end-point distance) is regressed towards
    it, and the mode logits learn to pick it (cross-entropy), so the candidates spread over
    distinct plausible futures. Weighting the end point makes candidates differ more in where they
    end, which best-of-K FDE rewards (issue 16). Targets are positions relative to the last
    observed one, normalised per coordinate. The candidates can start at k-means clusters of the
    training futures (:meth:`start_modes_at_clusters`).

    With ``proposals`` above ``modes`` the head proposes and trains more candidates than it
    answers with, and cuts them to K by clustering their end points
    (:func:`keep_by_final_position`), as SocialVAE's final-position clustering does: K futures
    that end far apart cover more of where a walker may go than the K most probable ones.

    With ``expected_loss_weight`` the loss also scores the expected future (the
    probability-weighted mean of the proposals) against the truth, through the probabilities
    alone: the candidates stay where winner-takes-all puts them, and the probabilities learn to
    weigh them so that their mean, the single path the head answers with, lands on the truth.
    Cross-entropy alone calibrates which candidate wins, not how far the losers pull the mean.
    """

    kind = "trajectory"

    def __init__(self, width: int, feature_dim: int, config: HeadConfig) -> None:
        super().__init__()
        self.horizon, self.modes = config.horizon, config.modes
        self.proposals = config.proposals or config.modes
        self.end_point_weight = config.end_point_weight or 0.0
        self.expected_loss_weight = config.expected_loss_weight or 0.0
        self.futures = nn.Linear(width, self.proposals * config.horizon * 2)
        self.mode_logits = nn.Linear(width, self.proposals)
        self.scaling = TargetScaling(2)

    def forward(self, hidden, encoded):
        pooled = hidden.mean(dim=1)
        futures = self.futures(pooled).view(len(pooled), self.proposals, self.horizon, 2)
        return {"futures": futures, "logits": self.mode_logits(pooled)}

    @torch.no_grad()
    def start_modes_at_clusters(self, targets: torch.Tensor, seed: int) -> None:
        """Start the candidates at k-means centres of training targets ``(N, horizon, 2)``.

        Call it after fitting the target scaling: the centres are taken in normalised units.

        As MultiPath's anchors and TUTR's motion modes: each candidate starts as a distinct typical
        future and learns its offset from there, so winner-takes-all training does not leave
        candidates that never win.
        """
        from sklearn.cluster import KMeans

        flat = self.scaling.normalise(targets.float()).reshape(len(targets), -1).numpy()
        clusters = min(self.proposals, len(flat))  # fewer futures than candidates: some start twice
        centres = KMeans(clusters, n_init=4, random_state=seed).fit(flat).cluster_centers_
        starts = centres[np.arange(self.proposals) % clusters]
        self.futures.bias.copy_(torch.from_numpy(starts).float().reshape(-1))
        self.futures.weight.mul_(0.1)  # each candidate starts near its centre whatever the input

    def loss(self, output, target):
        futures, logits = output["futures"].float(), output["logits"].float()
        target = self.scaling.normalise(target.float())[:, None]  # (B, 1, T, 2)
        gaps = (futures - target).norm(dim=-1)  # (B, K, T)
        distance = gaps.mean(dim=-1) + self.end_point_weight * gaps[..., -1]
        best = distance.argmin(dim=1)
        chosen = futures[torch.arange(len(futures)), best]
        loss = F.smooth_l1_loss(chosen, target[:, 0]) + F.cross_entropy(logits, best)
        if self.expected_loss_weight:
            expected = (logits.softmax(dim=-1)[..., None, None] * futures.detach()).sum(dim=1)
            loss = loss + self.expected_loss_weight * F.smooth_l1_loss(expected, target[:, 0])
        return loss

    def postprocess(self, output):
        """``futures`` ``(B, K, horizon, 2)`` in target units and ``probabilities`` ``(B, K)``, most likely first,
        and the ``expected`` future ``(B, horizon, 2)``.

        The expected future is the probability-weighted mean of every proposal (before any are cut
        by :func:`keep_by_final_position`): the one path with the lowest expected squared error
        under the predicted distribution, where the most likely candidate bets on a single mode.
        """
        probabilities = output["logits"].float().softmax(dim=-1)
        futures = self.scaling.unscale(output["futures"].float())
        expected = (probabilities[..., None, None] * futures).sum(dim=1)
        if self.proposals > self.modes:
            futures, probabilities = keep_by_final_position(futures, probabilities, self.modes)
        order = probabilities.argsort(dim=-1, descending=True)
        rows = torch.arange(len(order))[:, None]
        return {"futures": futures[rows, order], "probabilities": probabilities[rows, order], "expected": expected}

    def example_target(self, output, encoded, inputs, generator):
        return torch.randn((len(output["futures"]), self.horizon, 2), generator=generator)


def keep_by_final_position(futures: torch.Tensor, probabilities: torch.Tensor, keep: int, restarts: int = 4,
                           iterations: int = 20) -> tuple[torch.Tensor, torch.Tensor]:
    """Cut proposals ``(B, P, T, 2)`` to ``keep`` by k-means on their end points, each window on its own.

    SocialVAE's final-position clustering: each cluster is answered by the proposal that ends
    nearest its centre, with the cluster's summed probability. As scikit-learn's ``KMeans``
    (greedy k-means++ seeding, Lloyd's iterations, the restart with the lowest inertia kept), but
    batched over windows and without chance: restart ``r`` seeds from the ``r``-th most probable
    proposal's end point (:func:`farthest_first_seeds`), so a window's answer does not depend on
    the batch around it. A cluster left empty keeps its centre. Returns ``(B, keep, T, 2)`` and
    ``(B, keep)``.
    """
    ends = futures[:, :, -1].float()  # (B, P, 2)
    rows = torch.arange(len(ends), device=ends.device)[:, None]
    by_probability = probabilities.argsort(dim=-1, descending=True)
    best_centres, best_inertia = None, None
    for restart in range(min(restarts, ends.shape[1])):
        centres = farthest_first_seeds(ends, keep, by_probability[:, restart])
        for _ in range(iterations):
            members = F.one_hot(torch.cdist(ends, centres).argmin(dim=-1), keep).float()  # (B, P, keep)
            counts = members.sum(dim=1)[..., None]  # (B, keep, 1)
            centres = torch.where(counts > 0, members.transpose(1, 2) @ ends / counts.clamp(min=1), centres)
        inertia = torch.cdist(ends, centres).min(dim=-1).values.square().sum(dim=-1)  # (B,)
        if best_inertia is None:
            best_centres, best_inertia = centres, inertia
        else:
            best_centres = torch.where((inertia < best_inertia)[:, None, None], centres, best_centres)
            best_inertia = torch.minimum(inertia, best_inertia)
    members = F.one_hot(torch.cdist(ends, best_centres).argmin(dim=-1), keep).float()
    mass = (members * probabilities[..., None]).sum(dim=1)  # (B, keep)
    representatives = torch.cdist(best_centres, ends).argmin(dim=-1)  # (B, keep)
    return futures[rows, representatives], mass


def farthest_first_seeds(points: torch.Tensor, count: int, first: torch.Tensor) -> torch.Tensor:
    """``count`` k-means starting centres ``(B, count, 2)`` per row of ``points`` ``(B, P, 2)``, from point ``first``.

    Greedy k-means++ without chance: each step weighs the ``2 + log(count)`` points farthest from
    the centres so far (where k-means++ would draw them at random, farther ones likelier) and
    keeps the one that leaves the lowest summed squared distance.
    """
    rows = torch.arange(len(points), device=points.device)
    trials = min(2 + int(np.log(count)), points.shape[1])
    chosen = [points[rows, first]]
    nearest = (points - chosen[0][:, None]).square().sum(dim=-1)  # (B, P)
    for _ in range(count - 1):
        candidates = nearest.topk(trials, dim=-1).indices  # (B, trials)
        after = torch.minimum(nearest[:, None], torch.cdist(points[rows[:, None], candidates], points).square())
        best = after.sum(dim=-1).argmin(dim=-1)  # (B,)
        chosen.append(points[rows, candidates[rows, best]])
        nearest = after[rows, best]
    return torch.stack(chosen, dim=1)


class DenseHead(Head):
    """Every element answers from its own feature and from its reading of the LM's hidden states.

    Elements are the encoder's ``dense`` features: image patches or other elements such as graph
    nodes. As in Perceiver IO's decoder, each element queries the LM's hidden states with its own
    feature (one attention head), so the context it gets depends on what it is, not only on the
    sample around it: a chip-wide context term, the same for all of a chip's pixels, decided the
    pixels near chip borders and drew the chip grid into blended maps (issue 16). A residual MLP
    over the feature lets an element's own values answer non-linearly. The answer is one linear
    layer over ``concat(feature, attended hidden state)``, computed in its two parts.

    Patch answers are brought back to pixels by bilinear upsampling (nearest upsampling put every
    class boundary on a patch edge), then cropped to the input size.

    Output: ``(B, C, H, W)`` for patch grids, ``(B, N, C)`` otherwise (C classes or values).
    Classification ignores target ``-1``; regression ignores NaN targets and un-scales per channel.
    """

    def __init__(self, width: int, feature_dim: int, config: HeadConfig) -> None:
        super().__init__()
        self.kind = config.kind
        channels = config.num_classes if config.kind == "dense_classification" else config.outputs
        self.feature_mlp = _feature_mlp(feature_dim)
        self.query = nn.Linear(feature_dim, DENSE_ATTENTION_DIM)
        self.key = nn.Linear(width, DENSE_ATTENTION_DIM)
        self.linear = nn.Linear(feature_dim + width, channels)
        self.scaling = TargetScaling(channels) if config.kind == "dense_regression" else None

    def forward(self, hidden, encoded):
        if encoded.dense is None:
            raise ValueError("a dense head needs an encoder that returns dense features")
        features = encoded.dense
        features = features + self.feature_mlp(features)
        hidden = hidden.to(features.dtype)
        weight_features, weight_context = self.linear.weight.split(
            [features.shape[-1], hidden.shape[-1]], dim=1
        )
        # The linear layer's context part applied to each hidden state, then mixed per element by its attention.
        answers_per_state = F.linear(hidden, weight_context.to(hidden.dtype))  # (B, Q, C)
        scores = self.query(features) @ self.key(hidden).transpose(1, 2) / DENSE_ATTENTION_DIM**0.5  # (B, N, Q)
        context = scores.softmax(dim=-1) @ answers_per_state
        values = F.linear(features, weight_features.to(features.dtype), self.linear.bias) + context
        if encoded.grid is None:
            return values  # (B, N, C)
        values = values.transpose(1, 2).unflatten(2, encoded.grid)  # (B, C, gh, gw)
        return self._to_pixels(values, encoded)

    @staticmethod
    def _to_pixels(values: torch.Tensor, encoded: EncoderOutput) -> torch.Tensor:
        """Per-patch ``(B, C, gh, gw)`` answers upsampled bilinearly to pixels and cropped to the input size."""
        if encoded.patch_size > 1:
            values = F.interpolate(values, scale_factor=encoded.patch_size, mode="bilinear", align_corners=False)
        if encoded.size is not None:
            values = values[..., : encoded.size[0], : encoded.size[1]]
        return values

    def _channels_last(self, output: torch.Tensor) -> torch.Tensor:
        return output.movedim(1, -1) if output.ndim == 4 else output

    def loss(self, output, target):
        if self.scaling is None:
            return F.cross_entropy(output.float().movedim(-1, 1) if output.ndim == 3 else output.float(),
                                   target.long(), ignore_index=IGNORE_INDEX)
        prediction = self._channels_last(output.float())
        if target.ndim == prediction.ndim - 1:
            target = target[..., None]  # one value per pixel, e.g. depth (B, H, W)
        return _masked_mse(prediction, self.scaling.normalise(target.float()))

    def postprocess(self, output):
        if self.scaling is None:
            return output.float().softmax(dim=1 if output.ndim == 4 else -1)
        values = self.scaling.unscale(self._channels_last(output.float()))
        return values.movedim(-1, 1) if output.ndim == 4 else values

    def example_target(self, output, encoded, inputs, generator):
        """Per element, or per patch brought to pixels as the head brings its answers: what the head can fit."""
        channels = output.shape[1] if output.ndim == 4 else output.shape[-1]
        if output.ndim == 4:
            values = self._to_pixels(torch.randn((len(output), channels, *encoded.grid), generator=generator), encoded)
            return values.argmax(dim=1) if self.scaling is None else values.movedim(1, -1)
        if self.scaling is None:
            return torch.randint(channels, output.shape[:-1], generator=generator)
        return torch.randn(output.shape, generator=generator)


class LanguageModelHead(Head):
    """The language model's own output layer: next-token logits ``(B, L, vocab)``.

    Targets are Hugging Face-style labels ``(B, L)`` aligned with the input tokens: the token id
    where a loss is wanted (the answer), ``-100`` elsewhere; logits at position t predict
    label t+1. The head has no parameters of its own.
    """

    kind = "language"

    def __init__(self, token_logits: Callable[[torch.Tensor], torch.Tensor]) -> None:
        super().__init__()
        self._token_logits = token_logits

    def forward(self, hidden, encoded):
        return self._token_logits(hidden)

    def loss(self, output, target):
        return F.cross_entropy(
            output[:, :-1].float().flatten(0, 1), target[:, 1:].long().flatten(), ignore_index=LANGUAGE_IGNORE_INDEX
        )

    def log_likelihood(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Summed log-probability of each row's labelled tokens ``(B,)``, to score candidate answers."""
        log_probs = output[:, :-1].float().log_softmax(dim=-1)
        labels = target[:, 1:].long()
        known = labels != LANGUAGE_IGNORE_INDEX
        picked = log_probs.gather(-1, labels.clamp(min=0)[..., None])[..., 0]
        return (picked * known).sum(dim=1)

    def example_target(self, output, encoded, inputs, generator):
        labels = torch.full_like(inputs["token_ids"], LANGUAGE_IGNORE_INDEX)
        labels[:, -2:] = inputs["token_ids"][:, -2:]  # the last two tokens play the answer
        return labels


def build_head(config: HeadConfig, width: int, feature_dim: int, token_logits: Callable | None = None) -> Head:
    """The head for ``config``: ``width`` is the LM's hidden size, ``feature_dim`` the encoder's token width."""
    if config.kind == "language":
        if token_logits is None:
            raise ValueError("the language head needs the language model's output layer")
        return LanguageModelHead(token_logits)
    head_class = {
        "classification": ClassificationHead,
        "regression": RegressionHead,
        "trajectory": TrajectoryHead,
        "dense_classification": DenseHead,
        "dense_regression": DenseHead,
    }[config.kind]
    return head_class(width, feature_dim, config)

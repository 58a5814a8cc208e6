"""Task heads on their own (no language model): shapes, un-scaling, K futures, dense maps, scoring."""

from __future__ import annotations

import pytest
import torch

from allspark.model.encoders.base import EncoderOutput
from allspark.model.heads import (
    LANGUAGE_IGNORE_INDEX,
    HeadConfig,
    LanguageModelHead,
    build_head,
    keep_by_final_position,
)

WIDTH, FEATURES = 16, 8


def encoded(batch: int = 2, elements: int = 5, **fields) -> EncoderOutput:
    return EncoderOutput(tokens=torch.randn(batch, elements, FEATURES), **fields)


def test_regression_head_learns_in_normalised_units_and_answers_in_target_units():
    head = build_head(HeadConfig(kind="regression", outputs=1), WIDTH, FEATURES)
    targets = torch.tensor([[100.0], [120.0], [80.0], [float("nan")]])
    head.scaling.fit(targets)
    assert head.scaling.mean.item() == pytest.approx(100.0) and head.scaling.std.item() == pytest.approx(16.33, 0.01)
    normalised = torch.tensor([[1.0], [0.0]])
    torch.testing.assert_close(head.postprocess(normalised), torch.tensor([[116.33], [100.0]]), atol=0.01, rtol=0)
    # The loss compares in normalised units and skips missing targets.
    loss = head.loss(torch.tensor([[0.0], [0.0]]), torch.tensor([[100.0], [float("nan")]]))
    assert loss.item() == 0.0


def test_regression_head_answers_from_the_encoder_tokens_and_from_the_hidden_states():
    head = build_head(HeadConfig(kind="regression", outputs=2), WIDTH, FEATURES)
    hidden, sample = torch.randn(3, 4, WIDTH), encoded(3)
    answer = head(hidden, sample)
    assert answer.shape == (3, 2)
    # The row's own encoding reaches the answer without the LM, and the LM's reading adds to it.
    assert not torch.allclose(answer, head(hidden, encoded(3)))
    assert not torch.allclose(answer, head(torch.randn(3, 4, WIDTH), sample))


def test_trajectory_head_gives_k_futures_most_likely_first_and_trains_the_closest():
    head = build_head(HeadConfig(kind="trajectory", horizon=12, modes=5), WIDTH, FEATURES)
    hidden = torch.randn(3, 4, WIDTH)
    output = head(hidden, encoded(3))
    assert output["futures"].shape == (3, 5, 12, 2) and output["logits"].shape == (3, 5)
    prediction = head.postprocess(output)
    probabilities = prediction["probabilities"]
    torch.testing.assert_close(probabilities.sum(dim=1), torch.ones(3))
    assert (probabilities[:, :-1] >= probabilities[:, 1:]).all()
    # The most likely future listed first is the one with the largest logit.
    best = output["logits"].argmax(dim=1)
    torch.testing.assert_close(prediction["futures"][:, 0], output["futures"][torch.arange(3), best])
    # Winner-takes-all: only the candidate closest to the truth gets a regression gradient.
    futures = output["futures"].detach().requires_grad_(True)
    target = futures[:, 2].detach() + 0.01
    head.loss({"futures": futures, "logits": output["logits"].detach()}, target).backward()
    moved = futures.grad.abs().sum(dim=(2, 3)) > 0
    assert moved[:, 2].all() and moved.sum() == 3


def test_trajectory_expected_future_is_the_probability_weighted_mean_of_every_proposal():
    """Left at 0.6, right and three times as far right at 0.2 each: the expected path is their weighted mean, and
    counts all three proposals though only two are answered."""
    left, right = torch.tensor([[0.0, 1], [0, 2], [0, 4]]), torch.tensor([[0.0, -1], [0, -2], [0, -4]])
    head = build_head(HeadConfig(kind="trajectory", horizon=3, modes=2, proposals=3), WIDTH, FEATURES)
    with torch.no_grad():
        head.futures.weight.zero_()
        head.futures.bias.copy_(torch.stack([left, right, right * 3]).reshape(-1))
        head.mode_logits.weight.zero_()
        head.mode_logits.bias.copy_(torch.tensor([0.6, 0.2, 0.2]).log())
    answer = head.postprocess(head(torch.randn(2, 4, WIDTH), encoded(2)))
    expected = 0.6 * left + 0.2 * right + 0.2 * right * 3
    torch.testing.assert_close(answer["expected"], expected.expand(2, 3, 2))
    assert answer["futures"].shape == (2, 2, 3, 2)
    torch.testing.assert_close(answer["futures"][:, 0], left.expand(2, 3, 2))  # left alone is the most likely


@pytest.mark.parametrize(("end_point_weight", "winner"), [(None, 0), (1.0, 1)])
def test_trajectory_winner_can_weigh_the_end_point(end_point_weight, winner):
    """Candidate 0 is closer on average (0.40 against 0.43), candidate 1 ends closer (0.1 against 1.0)."""
    head = build_head(HeadConfig(kind="trajectory", horizon=3, modes=2, end_point_weight=end_point_weight),
                      WIDTH, FEATURES)
    futures = torch.tensor([[[[0.1, 0], [0.1, 0], [1.0, 0]], [[0.6, 0], [0.6, 0], [0.1, 0]]]], requires_grad=True)
    head.loss({"futures": futures, "logits": torch.zeros(1, 2)}, torch.zeros(1, 3, 2)).backward()
    moved = futures.grad.abs().sum(dim=(2, 3))[0] > 0
    assert moved.tolist() == [winner == 0, winner == 1]


def test_trajectory_expected_loss_reweighs_the_candidates_and_leaves_them_where_they_are():
    """Candidates walk to x = 0, 1 and -3; the truth to 0.4. Their even mean (-0.67) lies short of the truth, so the
    expected loss lowers the probability of the one that pulls it back (-3) and raises the one beyond the truth (1),
    while cross-entropy alone would lower both for the winner (0). The candidates' own gradients do not change."""
    ends = torch.tensor([0.0, 1.0, -3.0])
    paths = torch.stack([torch.stack([ends * step / 3, torch.zeros(3)], dim=-1) for step in (1, 2, 3)], dim=1)
    target = torch.tensor([[[0.4 * step / 3, 0.0] for step in (1, 2, 3)]])
    gradients = {}
    for weight in (None, 1.0):
        head = build_head(HeadConfig(kind="trajectory", horizon=3, modes=3, expected_loss_weight=weight),
                          WIDTH, FEATURES)
        futures, logits = paths[None].clone().requires_grad_(), torch.zeros(1, 3, requires_grad=True)
        head.loss({"futures": futures, "logits": logits}, target).backward()
        gradients[weight] = futures.grad, logits.grad[0]
    torch.testing.assert_close(gradients[1.0][0], gradients[None][0])
    extra = gradients[1.0][1] - gradients[None][1]  # gradient descent moves each logit against it
    assert extra[2] > 0 and extra[1] < 0


def test_trajectory_proposals_are_cut_to_modes_by_where_they_end():
    """Five proposals end in two places, (10, 0) and (0, 10): the two kept end one in each, with the summed mass."""
    ends = torch.tensor([[10.0, 0], [10.2, 0], [9.9, 0.1], [0, 10], [0.1, 10.1]])
    futures = torch.stack([ends * step / 3 for step in (1, 2, 3)], dim=1)[None]  # (1, 5, 3, 2), straight paths
    probabilities = torch.tensor([[0.1, 0.1, 0.1, 0.4, 0.3]])
    kept, mass = keep_by_final_position(futures, probabilities, keep=2)
    order = mass[0].argsort(descending=True)
    torch.testing.assert_close(mass[0, order], torch.tensor([0.7, 0.3]))
    assert kept[0, order[0], -1].tolist() in ([0.0, 10.0], [0.1, 10.1])
    torch.testing.assert_close(kept[0, order[1], -1], torch.tensor([10.0, 0]))  # the one nearest the centre
    # Each window is clustered on its own: the answer does not depend on the batch around it.
    batch = torch.cat([futures, torch.randn(3, 5, 3, 2, generator=torch.Generator().manual_seed(0))])
    alone, _ = keep_by_final_position(futures, probabilities, keep=2)
    together, _ = keep_by_final_position(batch, probabilities.expand(4, 5), keep=2)
    torch.testing.assert_close(together[:1], alone)
    # Through the head: 6 proposals trained, 2 answered, probabilities still summing to 1, most likely first.
    head = build_head(HeadConfig(kind="trajectory", horizon=3, modes=2, proposals=6), WIDTH, FEATURES)
    raw = head(torch.randn(3, 4, WIDTH), encoded(3))
    assert raw["futures"].shape == (3, 6, 3, 2)
    answer = head.postprocess(raw)
    assert answer["futures"].shape == (3, 2, 3, 2)
    torch.testing.assert_close(answer["probabilities"].sum(dim=-1), torch.ones(3))
    assert (answer["probabilities"][:, 0] >= answer["probabilities"][:, 1]).all()


def test_trajectory_candidates_start_at_clusters_of_the_training_futures():
    """Two kinds of future (turn left, turn right): two candidates start one on each, in target units."""
    head = build_head(HeadConfig(kind="trajectory", horizon=3, modes=2), WIDTH, FEATURES)
    left, right = torch.tensor([[0.0, 1], [0, 2], [0, 3]]), torch.tensor([[0.0, -1], [0, -2], [0, -3]])
    noise = torch.randn(40, 3, 2, generator=torch.Generator().manual_seed(0)) * 0.05
    targets = torch.cat([left.expand(20, 3, 2), right.expand(20, 3, 2)]) + noise
    head.scaling.fit(targets)
    head.start_modes_at_clusters(targets, seed=0)
    futures = head.postprocess(head(torch.zeros(1, 4, WIDTH), encoded(1)))["futures"][0]
    starts = sorted(futures.tolist(), key=lambda path: path[0][1])
    torch.testing.assert_close(torch.tensor(starts), torch.stack([right, left]), atol=0.1, rtol=0)
    # fewer training futures than candidates: every future is a start, some twice
    few = build_head(HeadConfig(kind="trajectory", horizon=3, modes=5), WIDTH, FEATURES)
    few.scaling.fit(targets[18:22])
    few.start_modes_at_clusters(targets[18:22], seed=0)
    starts = few.postprocess(few(torch.zeros(1, 4, WIDTH), encoded(1)))["futures"][0]
    assert len({tuple(path.flatten().round(decimals=3).tolist()) for path in starts}) == 4


def test_dense_head_maps_patches_back_to_pixels_and_elements_to_values():
    pixels = build_head(HeadConfig(kind="dense_classification", num_classes=3), WIDTH, FEATURES)
    hidden, features = torch.randn(2, 4, WIDTH), torch.randn(2, 6, FEATURES)
    logits = pixels(hidden, encoded(2, 6, dense=features, grid=(2, 3), patch_size=4, size=(7, 10)))
    assert logits.shape == (2, 3, 7, 10)
    # One answer per patch, brought to pixels bilinearly (no step at patch edges), cropped to the input size.
    per_patch = pixels(hidden, encoded(2, 6, dense=features, grid=(2, 3), patch_size=1, size=(2, 3)))
    upsampled = torch.nn.functional.interpolate(per_patch, scale_factor=4, mode="bilinear", align_corners=False)
    torch.testing.assert_close(logits, upsampled[..., :7, :10])
    target = torch.full((2, 7, 10), -1)
    target[:, 0, 0] = 1
    assert pixels.loss(logits, target) > 0  # only the labelled pixel counts; -1 is ignored

    nodes = build_head(HeadConfig(kind="dense_regression", outputs=12), WIDTH, FEATURES)
    values = nodes(torch.randn(2, 4, WIDTH), encoded(2, 5, dense=torch.randn(2, 5, FEATURES)))
    assert values.shape == (2, 5, 12) and nodes.postprocess(values).shape == (2, 5, 12)


def test_each_element_reads_the_hidden_states_with_its_own_query():
    """The context an element gets depends on the element: not one sample-wide term (the chip grid's cause)."""
    head = build_head(HeadConfig(kind="dense_regression", outputs=3), WIDTH, FEATURES)
    with torch.no_grad():
        head.linear.weight[:, :FEATURES] = 0  # answers from the context alone
    features = torch.randn(1, 5, FEATURES)
    varied = head(torch.randn(1, 4, WIDTH), encoded(1, 5, dense=features))
    assert not torch.allclose(varied[0, 0], varied[0, 1])
    same_states = head(torch.randn(1, 1, WIDTH).expand(1, 4, WIDTH), encoded(1, 5, dense=features))
    torch.testing.assert_close(same_states[0, 0], same_states[0, 1])  # nothing to choose between


def test_language_head_scores_labelled_tokens_only():
    vocabulary = 10
    head = LanguageModelHead(token_logits=lambda hidden: hidden[..., :vocabulary])
    logits = torch.full((1, 4, vocabulary), -10.0)
    logits[0, 1, 7] = 10.0  # position 1 predicts token 7 at position 2
    labels = torch.tensor([[LANGUAGE_IGNORE_INDEX, LANGUAGE_IGNORE_INDEX, 7, LANGUAGE_IGNORE_INDEX]])
    assert head.log_likelihood(logits, labels).item() == pytest.approx(0.0, abs=1e-6)
    assert head.loss(logits, labels).item() == pytest.approx(0.0, abs=1e-6)
    labels[0, 2] = 3
    assert head.log_likelihood(logits, labels).item() < -10


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"kind": "classification"}, "needs \\['num_classes'\\]"),
        ({"kind": "trajectory", "horizon": 12}, "needs \\['modes'\\]"),
        ({"kind": "regression", "outputs": 1, "modes": 3}, "does not use \\['modes'\\]"),
        ({"kind": "regression", "outputs": 1, "end_point_weight": 1.0}, "does not use \\['end_point_weight'\\]"),
        ({"kind": "trajectory", "horizon": 12, "modes": 20, "proposals": 10}, "proposals \\(10\\) must be at least"),
        ({"kind": "segmentation"}, "kind"),
    ],
)
def test_head_config_rejects_missing_or_foreign_sizes(fields, message):
    with pytest.raises(ValueError, match=message):
        HeadConfig(**fields)

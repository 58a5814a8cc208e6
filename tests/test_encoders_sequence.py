"""Table, trajectory, traffic-graph and point-cloud encoders: shapes, gradients, determinism, input errors."""

from __future__ import annotations

import pytest
import torch

from allspark.model.encoders.base import EncoderOutput, ModalityEncoder
from allspark.model.encoders.graph import TrafficGraphEncoder
from allspark.model.encoders.point_cloud import PointCloudEncoder, farthest_point_sampling, knn_indices
from allspark.model.encoders.table import TableEncoder
from allspark.model.encoders.trajectory import TrajectoryEncoder
from allspark.model.inputs import ModalityInputError

BATCH = 3
ENCODERS = {
    "table": TableEncoder,
    "trajectory": TrajectoryEncoder,
    "graph": TrafficGraphEncoder,
    "point_cloud": PointCloudEncoder,
}
# Expected token counts of each default config's example inputs.
TOKENS = {"table": 10 + 4, "trajectory": 8 + 4, "graph": 16, "point_cloud": 32}


def build(modality: str, seed: int = 0, **config) -> ModalityEncoder:
    cls = ENCODERS[modality]
    torch.manual_seed(seed)
    return cls(modality, cls.Config(**config))


def example(encoder: ModalityEncoder, seed: int = 0, batch: int = BATCH) -> dict[str, torch.Tensor]:
    return type(encoder).example_inputs(encoder.config, batch, torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("modality", ENCODERS)
def test_shapes(modality):
    encoder = build(modality)
    out = encoder(example(encoder))
    assert isinstance(out, EncoderOutput)
    assert out.tokens.shape == (BATCH, TOKENS[modality], encoder.out_dim)
    assert out.tokens.dtype == torch.float32 and torch.isfinite(out.tokens).all()
    assert out.grid is None
    if modality == "graph":
        assert out.dense is out.tokens  # one feature per node for the dense head
    else:
        assert out.dense is None
    if modality == "trajectory":
        assert out.padding_mask.shape == (BATCH, TOKENS[modality]) and out.padding_mask.dtype == torch.bool
        assert not out.padding_mask[:, :8].any()  # the focal agent's steps are never padding
    else:
        assert out.padding_mask is None


@pytest.mark.parametrize("modality", ENCODERS)
def test_every_parameter_gets_a_gradient(modality):
    encoder = build(modality)
    inputs = example(encoder)
    if modality == "table":
        inputs["continuous"][0] = float("nan")  # every column's "missing" embedding is used
        inputs["categorical"][1] = -1
    out = encoder(inputs)
    out.tokens.square().mean().backward()
    missing = [name for name, p in encoder.named_parameters() if p.grad is None]
    assert not missing
    assert all(torch.isfinite(p.grad).all() for p in encoder.parameters())
    assert sum(p.grad.abs().sum() for p in encoder.parameters()) > 0


@pytest.mark.parametrize("modality", ENCODERS)
def test_deterministic_under_a_seed(modality):
    first, second, other = build(modality), build(modality), build(modality, seed=1)
    inputs = example(first)
    assert torch.equal(first(inputs).tokens, second(inputs).tokens)
    assert not torch.allclose(first(inputs).tokens, other(inputs).tokens)


@pytest.mark.parametrize("modality", ENCODERS)
def test_bf16_autocast(modality):
    encoder = build(modality)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        tokens = encoder(example(encoder)).tokens
    assert torch.isfinite(tokens.float()).all()


@pytest.mark.parametrize(
    "modality, name", [("table", "continuous"), ("trajectory", "observed"), ("graph", "signals"),
                       ("point_cloud", "points")]
)
def test_wrong_rank(modality, name):
    encoder = build(modality)
    inputs = example(encoder)
    inputs[name] = inputs[name][0]
    with pytest.raises(ModalityInputError, match=rf"^{modality} input: '{name}' has rank .*; expected {name} \("):
        encoder(inputs)


# --- table ---

def test_table_column_count_must_match_config():
    encoder = build("table")
    inputs = example(encoder)
    inputs["continuous"] = inputs["continuous"][:, :9]
    with pytest.raises(ModalityInputError, match=r"^table input: 'continuous' has 9 columns .* configured for 10"):
        encoder(inputs)
    inputs = example(encoder)
    del inputs["categorical"]
    with pytest.raises(ModalityInputError, match=r"'categorical' has 0 columns .* configured for 4"):
        encoder(inputs)
    with pytest.raises(ModalityInputError, match=r"^table input: neither 'continuous' nor 'categorical' given"):
        encoder({})


def test_table_category_out_of_range_names_column_and_cardinality():
    encoder = build("table")
    inputs = example(encoder)
    inputs["categorical"][2, 1] = 16  # wind direction has 16 categories
    with pytest.raises(ModalityInputError, match=r"categorical column 1 has value 16, outside \[0, 16\)"):
        encoder(inputs)
    inputs["categorical"][2, 1] = -2
    with pytest.raises(ModalityInputError, match=r"categorical column 1 has value -2"):
        encoder(inputs)


def test_table_rejects_infinite_values():
    encoder = build("table")
    inputs = example(encoder)
    inputs["continuous"][0, 0] = float("inf")
    with pytest.raises(ModalityInputError, match="^table input: 'continuous' contains infinite"):
        encoder(inputs)


def test_table_missing_cells_use_the_missing_embeddings():
    encoder = build("table", depth=0, continuous_columns=3, categorical_cardinalities=[5])
    continuous = torch.tensor([[0.5, float("nan"), 2.0]])
    categorical = torch.tensor([[-1]])
    tokens = encoder({"continuous": continuous, "categorical": categorical}).tokens[0]
    column = encoder.column_embedding
    assert torch.allclose(tokens[0], 0.5 * encoder.value_weight[0] + column[0])
    assert torch.allclose(tokens[1], encoder.missing_embedding[1] + column[1])
    assert torch.allclose(tokens[2], 2.0 * encoder.value_weight[2] + column[2])
    assert torch.allclose(tokens[3], encoder.category_embedding.weight[5] + column[3])  # the "missing" row
    known = encoder({"continuous": continuous, "categorical": torch.tensor([[4]])}).tokens[0, 3]
    assert torch.allclose(known, encoder.category_embedding.weight[4] + column[3])


def test_table_periodic_embedding_is_plr_and_keeps_missing_cells():
    encoder = build("table", depth=0, continuous_columns=2, categorical_cardinalities=[5],
                    numeric_embedding="periodic", frequencies=3, frequency_scale=0.5)
    assert not hasattr(encoder, "value_weight")
    values = torch.tensor([[0.7, float("nan")], [-1.2, 0.3]])
    tokens = encoder({"continuous": values, "categorical": torch.tensor([[1], [2]])}).tokens
    periodic, linear = encoder.periodic.periodic.weight, encoder.periodic.linear  # (2, 3) and per-column (2, 6, W)
    angle = 2 * torch.pi * periodic[0] * 0.7
    expected = torch.relu(torch.cat([angle.cos(), angle.sin()]) @ linear.weight[0] + linear.bias[0])
    assert torch.allclose(tokens[0, 0], expected + encoder.column_embedding[0], atol=1e-6)
    assert torch.allclose(tokens[0, 1], encoder.missing_embedding[1] + encoder.column_embedding[1])
    assert torch.isfinite(tokens[1]).all()
    tokens.sum().backward()
    assert periodic.grad is not None and periodic.grad.abs().sum() > 0  # the frequencies are learned


def test_table_numeric_embedding_defaults_to_linear_for_saved_models():
    """A model saved before the setting existed has no such field in its config: it must build as trained."""
    config = TableEncoder.Config.model_validate({"continuous_columns": 3, "categorical_cardinalities": [4]})
    assert config.numeric_embedding == "linear"
    with pytest.raises(ValueError, match="numeric_embedding"):
        TableEncoder.Config(numeric_embedding="binned")


def test_table_with_one_kind_of_column_only():
    encoder = build("table", continuous_columns=0, categorical_cardinalities=[3, 7])
    inputs = example(encoder)
    assert set(inputs) == {"categorical"}
    assert encoder(inputs).tokens.shape == (BATCH, 2, encoder.out_dim)
    with pytest.raises(ModalityInputError, match=r"'continuous' has 2 columns .* configured for 0 \(leave it out\)"):
        encoder({**inputs, "continuous": torch.zeros(BATCH, 2)})
    with pytest.raises(ValueError, match="at least one continuous or categorical column"):
        TableEncoder.Config(continuous_columns=0, categorical_cardinalities=[])


# --- trajectory ---

def test_trajectory_rejects_nan_and_too_few_steps():
    encoder = build("trajectory")
    inputs = example(encoder)
    inputs["observed"][1, 3, 0] = float("nan")
    with pytest.raises(ModalityInputError, match=r"^trajectory input: 'observed' contains NaN .*observed_steps"):
        encoder(inputs)
    for steps in (1, 0):
        with pytest.raises(ModalityInputError, match=rf"'observed' has {steps} along 'observed_steps'.*at least 2"):
            encoder({"observed": torch.zeros(BATCH, steps, 2)})


def test_trajectory_neighbours_must_share_the_steps():
    encoder = build("trajectory")
    inputs = example(encoder)
    inputs["neighbours"] = inputs["neighbours"][:, :, 1:]
    with pytest.raises(ModalityInputError, match=r"'neighbours' has 7 along 'observed_steps' but 'observed' has 8"):
        encoder(inputs)


def test_trajectory_absent_neighbours_are_padding():
    encoder = build("trajectory")
    inputs = example(encoder)
    alone = encoder({"observed": inputs["observed"]})
    assert alone.padding_mask is None and alone.tokens.shape == (BATCH, 8, encoder.out_dim)

    unseen = torch.full((BATCH, 2, 8, 2), float("nan"))
    padded = encoder({"observed": inputs["observed"], "neighbours": unseen})
    assert padded.padding_mask[:, 8:].all() and not padded.padding_mask[:, :8].any()
    assert torch.allclose(padded.tokens[:, :8], alone.tokens, atol=1e-5)  # never-seen neighbours change nothing

    neighbours = inputs["neighbours"].clone()
    neighbours[0, 1] = float("nan")  # one neighbour never seen
    neighbours[0, 2, :5] = float("nan")  # another seen for its last 3 steps only
    out = encoder({"observed": inputs["observed"], "neighbours": neighbours})
    expected = torch.isnan(neighbours).all(dim=-1).all(dim=-1)
    assert torch.equal(out.padding_mask[:, 8:], expected) and out.padding_mask[0, 9]
    assert torch.isfinite(out.tokens).all()
    assert not torch.allclose(out.tokens[0, :8], alone.tokens[0])  # seen neighbours are attended to

    none = encoder({"observed": inputs["observed"], "neighbours": torch.zeros(BATCH, 0, 8, 2)})
    assert torch.allclose(none.tokens, alone.tokens, atol=1e-5)


# --- graph ---

def test_graph_node_count_must_match_config():
    encoder = build("graph")
    other = build("graph", num_nodes=15)
    with pytest.raises(ModalityInputError, match=r"^graph input: the inputs have 15 nodes .* num_nodes=16"):
        encoder(example(other))


def test_graph_checks_features_and_calendar():
    encoder = build("graph")
    inputs = example(encoder)
    with pytest.raises(ModalityInputError, match=r"'signals' has 2 features .* in_features=1"):
        encoder({**inputs, "signals": inputs["signals"].repeat(1, 1, 1, 2)})
    with pytest.raises(ModalityInputError, match=r"^graph input: 'time_of_day' ranges over .*outside \[0, 1\)"):
        encoder({**inputs, "time_of_day": inputs["time_of_day"] + 1})
    with pytest.raises(ModalityInputError, match=r"'day_of_week' ranges over \[.*, 7\], outside \[0, 7\)"):
        encoder({**inputs, "day_of_week": inputs["day_of_week"].clamp(min=0) * 0 + 7})
    with pytest.raises(ModalityInputError, match=r"'locations' has 2 along 'nodes' but 'signals' has 16"):
        encoder({**inputs, "locations": inputs["locations"][:2]})


def test_graph_locations_are_optional_and_used():
    encoder = build("graph")
    inputs = example(encoder)
    without = encoder({name: value for name, value in inputs.items() if name != "locations"})
    assert without.dense.shape == (BATCH, 16, encoder.out_dim)
    assert not torch.allclose(without.tokens, encoder(inputs).tokens)


def test_graph_time_embeddings_matter():
    encoder = build("graph")
    inputs = example(encoder)
    later = {**inputs, "day_of_week": (inputs["day_of_week"] + 1) % 7}
    assert not torch.allclose(encoder(inputs).tokens, encoder(later).tokens)


# --- point cloud ---

def test_point_cloud_needs_enough_points_and_channels():
    encoder = build("point_cloud")
    with pytest.raises(ModalityInputError, match=r"^point_cloud input: 'points' has 20 points; at least 32 needed"):
        encoder({"points": torch.randn(BATCH, 20, 3)})
    with pytest.raises(ModalityInputError, match=r"'points' has 2 along 'channels'.*at least 3"):
        encoder({"points": torch.randn(BATCH, 64, 2)})
    with pytest.raises(ModalityInputError, match=r"'points' has 4 channels .* in_channels=3"):
        encoder({"points": torch.randn(BATCH, 64, 4)})
    with pytest.raises(ModalityInputError, match="'points' contains NaN"):
        encoder({"points": torch.full((BATCH, 64, 3), float("nan"))})


def test_point_cloud_extra_channels():
    encoder = build("point_cloud", in_channels=6, num_groups=4, group_size=8)
    inputs = example(encoder)
    assert inputs["points"].shape == (BATCH, 32, 6)
    assert encoder(inputs).tokens.shape == (BATCH, 4, encoder.out_dim)


def brute_force_fps(xyz: torch.Tensor, count: int) -> list[int]:
    chosen = [0]
    while len(chosen) < count:
        nearest = [min(float(((xyz[i] - xyz[j]) ** 2).sum()) for j in chosen) for i in range(len(xyz))]
        candidates = [i for i in range(len(xyz)) if i not in chosen]
        chosen.append(max(candidates, key=lambda i: (nearest[i], -i)))
    return chosen


def test_farthest_point_sampling_matches_brute_force_and_picks_distinct_points():
    xyz = torch.randn(2, 12, 3, generator=torch.Generator().manual_seed(0))
    picked = farthest_point_sampling(xyz, 5)
    assert picked.shape == (2, 5) and (picked[:, 0] == 0).all()
    for b in range(2):
        assert picked[b].tolist() == brute_force_fps(xyz[b], 5)
    duplicated = torch.cat([torch.zeros(1, 4, 3), torch.ones(1, 4, 3)], dim=1)  # two distinct places
    everything = farthest_point_sampling(duplicated, 8)[0]
    assert sorted(everything.tolist()) == list(range(8))
    assert set(everything[:2].tolist()) == {0, 4}  # the two places first


def test_knn_groups_hold_the_nearest_points():
    generator = torch.Generator().manual_seed(1)
    xyz = torch.randn(2, 20, 3, generator=generator)
    centres = torch.randn(2, 4, 3, generator=generator)
    found = knn_indices(xyz, centres, 5)
    for b in range(2):
        for g in range(4):
            distances = [float(((xyz[b, i] - centres[b, g]) ** 2).sum()) for i in range(20)]
            assert found[b, g].tolist() == sorted(range(20), key=distances.__getitem__)[:5]


def test_point_cloud_groups_are_centred_on_their_centres():
    encoder = build("point_cloud", num_groups=4, group_size=6)
    points = torch.randn(2, 24, 3, generator=torch.Generator().manual_seed(2))
    centres, groups = encoder.group(points)
    assert centres.shape == (2, 4, 3) and groups.shape == (2, 4, 6, 3)
    assert torch.equal(centres[:, 0], points[:, 0])  # sampling starts at the first point
    assert torch.allclose(groups[:, :, 0], torch.zeros(2, 4, 3))  # each centre is its own nearest point
    absolute = groups + centres[:, :, None]
    for b in range(2):
        for g in range(4):
            expected = knn_indices(points[b : b + 1], centres[b : b + 1, g : g + 1], 6)[0, 0]
            assert torch.allclose(absolute[b, g], points[b, expected])

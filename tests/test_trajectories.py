"""Trajectories: readers and their bad-input errors, windows, metrics, the work folder, and the flow on a real ETH slice."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import geopandas as gpd
import numpy as np
import pandas as pd
import pyproj
import pystac
import pytest
import torch

from allspark.core.bundle import load_bundle
from allspark.core.steps import run_pipeline
from allspark.errors import InputError, NoDataError
from allspark.trajectories import inputs, steps
from allspark.trajectories import read as tr
from allspark.trajectories.config import TrajectoriesConfig
from tests import file_flows
from tests.stac_schemas import validate_catalog


def write_eth(path: Path, rows: list[tuple]) -> Path:
    path.write_text("".join("\t".join(str(v) for v in row) + "\n" for row in rows))
    return path


def config(tmp_path: Path, **overrides) -> TrajectoriesConfig:
    return TrajectoriesConfig(predict_files=[tmp_path], checkpoint=tmp_path / "ckpt", output_dir=tmp_path / "outputs",
                              **overrides)


def walker(agent: int, frames: range, start: tuple[float, float], velocity: tuple[float, float]) -> list[tuple]:
    """ETH rows of an agent walking at constant velocity (metres per step of 10 frames)."""
    return [(f, float(agent), start[0] + velocity[0] * (f - frames.start) / 10,
             start[1] + velocity[1] * (f - frames.start) / 10) for f in frames]


# -- bad input -------------------------------------------------------------------------------------


def test_nan_coordinates_name_the_file_and_row(tmp_path):
    file = write_eth(tmp_path / "a.txt", [(0, 1, 1.0, 2.0), (10, 1, "nan", 2.5)])
    with pytest.raises(InputError, match=r"a\.txt: row 2: missing or NaN coordinates"):
        tr.read_eth_ucy(file)


def test_text_in_a_numeric_column_names_the_row_and_column(tmp_path):
    file = write_eth(tmp_path / "a.txt", [(0, 1, 1.0, 2.0), (10, 1, 1.5, "north")])
    with pytest.raises(InputError, match=r"a\.txt: row 2: column 'y' holds 'north', expected a number"):
        tr.read_eth_ucy(file)


def test_duplicate_frame_and_agent_is_an_error(tmp_path):
    file = write_eth(tmp_path / "a.txt", [(0, 1, 1.0, 2.0), (10, 1, 1.5, 2.0), (10, 1, 1.6, 2.1)])
    with pytest.raises(InputError, match=r"a\.txt: rows \[2, 3\]: agent '1' appears more than once"):
        tr.read_eth_ucy(file)


def test_unsorted_frames_are_sorted_and_counted(tmp_path):
    rows = walker(1, range(0, 200, 10), (0, 0), (1, 0)) + walker(2, range(0, 200, 10), (0, 5), (0, 1))
    ordered = tr.build_windows(tr.read_eth_ucy(write_eth(tmp_path / "a.txt", sorted(rows))),
                               config(tmp_path).window_rule)
    shuffled_rows = [rows[i] for i in np.random.default_rng(0).permutation(len(rows))]
    tracks = tr.read_eth_ucy(write_eth(tmp_path / "b.txt", shuffled_rows))
    shuffled = tr.build_windows(tracks, config(tmp_path).window_rule)
    assert tracks.rows_out_of_order > 0
    assert shuffled.counts["rows_out_of_order_sorted"] == tracks.rows_out_of_order
    np.testing.assert_array_equal(shuffled.observed, ordered.observed)
    np.testing.assert_array_equal(shuffled.future, ordered.future)


def test_frame_off_the_step_grid_is_an_error(tmp_path):
    file = write_eth(tmp_path / "a.txt", [(0, 1, 1.0, 2.0), (15, 1, 1.5, 2.0)])
    with pytest.raises(InputError, match=r"row 2: frame 15 is not on the grid of frame_step=10"):
        tr.read_eth_ucy(file)


def test_short_tracks_are_skipped_and_counted(tmp_path):
    rows = (walker(1, range(0, 200, 10), (0, 0), (1, 0)) + walker(2, range(0, 200, 10), (0, 5), (0, 1))
            + walker(3, range(0, 150, 10), (3, 3), (1, 1)))  # 15 steps < 8 + 12
    windows = tr.build_windows(tr.read_eth_ucy(write_eth(tmp_path / "a.txt", sorted(rows))),
                               config(tmp_path).window_rule)
    assert windows.counts["short_tracks_skipped"] == 1
    assert set(windows.agent) == {"1", "2"}


def test_a_lone_agent_window_is_skipped_and_counted(tmp_path):
    file = write_eth(tmp_path / "a.txt", walker(1, range(0, 210, 10), (0, 0), (1, 0)))
    with pytest.raises(NoDataError, match=r"no 8\+12-step windows .*'lone_agent_windows_skipped': 2"):
        steps.ingest(config(tmp_path))
    assert len(tr.build_windows(tr.read_eth_ucy(file), config(tmp_path, min_agents=1).window_rule)) == 2


TABLE = {"id": "agent_id", "time": {"column": "timestamp", "unit": "s", "step": "400ms"},
         "location": {"x": "x", "y": "y", "crs": "EPSG:32632"}}
"""The ``table`` block of a CSV/Parquet of tracks: agent_id, timestamp (seconds), x, y in UTM 32N."""


def table_config(file: Path, **table) -> TrajectoriesConfig:
    """A table-format config reading ``file``; ``table`` replaces keys of :data:`TABLE`."""
    return TrajectoriesConfig(format="table", table=TABLE | table, predict_files=[file], checkpoint=file.parent)


def test_missing_table_column_names_the_file_and_columns(tmp_path):
    file = tmp_path / "tracks.csv"
    pd.DataFrame({"id": [1], "t": [0.0], "x": [1.0], "y": [2.0]}).to_csv(file, index=False)
    cfg = table_config(file, id="agent", time={"column": "t", "unit": "s", "step": "400ms"})
    with pytest.raises(InputError, match=r"tracks\.csv: column\(s\) \['agent'\] named in the config's table block "
                                         r"are not in the file \(its columns: \['id', 't', 'x', 'y'\]\)"):
        tr.read_table(file, cfg.table)


def test_text_in_a_table_column_names_the_csv_line(tmp_path):
    file = tmp_path / "tracks.csv"
    file.write_text("agent_id,timestamp,x,y\na,0,1.0,2.0\na,0.4,oops,2.0\n")
    with pytest.raises(InputError, match=r"tracks\.csv: line 3, column 'x': 'oops' is not a number"):
        tr.read_table(file, table_config(file).table)


def test_table_times_off_the_step_grid_are_an_error(tmp_path):
    file = tmp_path / "tracks.csv"
    file.write_text("agent_id,timestamp,x,y\na,2024-05-01T10:00:00Z,1,2\na,2024-05-01T10:00:00.5Z,1,2\n")
    cfg = table_config(file, time={"column": "timestamp", "step": "400ms"})
    with pytest.raises(InputError, match=r"tracks\.csv: line 3, column\(s\) \['timestamp'\]: time 2024-05-01 "
                                         r"10:00:00\.500000\+00:00 is not on the grid of table\.time\.step=400ms"):
        tr.read_table(file, cfg.table)


def test_table_rows_out_of_time_order_within_an_agent_are_sorted_and_counted(tmp_path):
    """Counted per agent: a table written agent after agent is in order (the ETH/UCY count would see each new
    agent as a step back in time); only a row earlier than its agent's row before it counts."""
    file = tmp_path / "tracks.csv"
    file.write_text("agent_id,timestamp,x,y\na,0,0,0\na,0.8,2,0\na,0.4,1,0\nb,0,5,5\nb,0.4,5,6\n")
    tracks = tr.read_table(file, table_config(file).table)
    assert tracks.rows_out_of_order == 1
    assert tracks.points[tracks.points.agent == "a"].x.tolist() == [0, 1, 2]
    assert tracks.points.frame.tolist() == [0, 1, 2, 0, 1] and tracks.time_origin is None


TABLE_CONFIG_ERRORS = {
    "no table": ({"format": "table"}, "format table needs a table block"),
    "table with eth_ucy": ({"format": "eth_ucy", "table": TABLE}, "the table block is for format: table"),
    "locations file": ({"table": TABLE | {"location": {"file": "agents.csv", "x": "x", "y": "y"}}},
                       "a locations file or a GeoParquet geometry gives one fixed place per id"),
    "targets": ({"table": TABLE | {"targets": ["speed"]}},
                r"table.targets are not used by trajectories \(the model reads the agents' positions only\)"),
    "no crs": ({"table": TABLE | {"location": {"x": "x", "y": "y"}}}, "table.location.crs is required"),
    "no step": ({"table": TABLE | {"time": {"column": "timestamp", "unit": "s"}}}, "table.time.step is required"),
}


@pytest.mark.parametrize("case", TABLE_CONFIG_ERRORS)
def test_table_config_errors_name_the_problem(case, tmp_path):
    changes, expected = TABLE_CONFIG_ERRORS[case]
    with pytest.raises(ValueError, match=expected):
        TrajectoriesConfig(**{"format": "table", "predict_files": [tmp_path], "checkpoint": tmp_path} | changes)


def test_a_table_step_is_the_contracts_step_seconds(tmp_path):
    """A checkpoint's contract holds seconds per step, whichever format gave them."""
    assert table_config(tmp_path / "tracks.csv").contract() == config(tmp_path).contract() \
        == {"future_steps": 12, "step_seconds": 0.4}


def test_validation_files_without_fine_tuning_are_refused(tmp_path):
    with pytest.raises(ValueError, match="validation_files are for fine-tuning"):
        config(tmp_path, validation_files=[tmp_path])
    with pytest.raises(ValueError, match="keep_best"):
        TrajectoriesConfig(predict_files=[tmp_path], train_files=[tmp_path], train={"keep_best": "loss"})


def test_config_needs_origin_and_crs_together(tmp_path):
    with pytest.raises(ValueError, match="origin and crs together"):
        config(tmp_path, origin=(1.0, 2.0))


def test_config_needs_at_least_as_many_proposals_as_modes(tmp_path):
    with pytest.raises(ValueError, match=r"model.proposals \(10\) must be at least model.modes \(20\)"):
        config(tmp_path, model={"proposals": 10})
    head = config(tmp_path, model={"proposals": 60}).model.allspark_config(12, config(tmp_path).language).head
    assert (head.modes, head.proposals) == (20, 60)


def test_config_passes_the_head_options_and_leaves_unset_ones_unset(tmp_path):
    settings = config(tmp_path, model={"end_point_weight": 3.0, "expected_loss_weight": 1.0})
    head = settings.model.allspark_config(12, settings.language).head
    assert (head.end_point_weight, head.expected_loss_weight, head.proposals) == (3.0, 1.0, None)
    plain = config(tmp_path).model.allspark_config(12, settings.language).head
    assert (plain.end_point_weight, plain.expected_loss_weight) == (None, None)  # bundles stay as they were


# -- windows, coordinates, metrics -----------------------------------------------------------------


def test_windows_on_a_hand_made_scene(tmp_path):
    """Two walkers seen at 21 steps (2 windows each) and a bystander seen in some observed steps only."""
    rows = (walker(1, range(100, 310, 10), (0, 0), (1, 0)) + walker(2, range(100, 310, 10), (0, 4), (0, -0.5))
            + [(120, 3.0, 5.0, 5.0), (130, 3.0, 5.0, 5.0)])
    cfg = config(tmp_path, max_neighbours=3)
    windows = tr.build_windows(tr.read_eth_ucy(write_eth(tmp_path / "a.txt", sorted(rows))), cfg.window_rule)
    assert len(windows) == 4 and windows.counts["short_tracks_skipped"] == 1  # the bystander: 2 rows
    first = np.flatnonzero((windows.agent == "1") & (windows.frame == 170))[0]  # window starting at frame 100
    np.testing.assert_allclose(windows.observed[first, :, 0], np.arange(-7, 1))
    np.testing.assert_allclose(windows.observed[first, -1], [0, 0])
    np.testing.assert_allclose(windows.future[first, :, 0], np.arange(1, 13))
    np.testing.assert_allclose(windows.now[first], [7, 0])
    neighbour = windows.neighbours[first, 0]  # walker 2, relative to walker 1's position at frame 170
    np.testing.assert_allclose(neighbour[-1], [0 - 7, 4 - 0.5 * 7])
    # the bystander: seen at steps 2 and 3 only; NaN elsewhere; the third slot is padding
    bystander = windows.neighbours[first, 1]
    np.testing.assert_allclose(bystander[2:4], [[5 - 7, 5], [5 - 7, 5]])
    assert np.isnan(bystander[[0, 1, 4, 5, 6, 7]]).all() and np.isnan(windows.neighbours[first, 2]).all()


def test_residual_targets_are_the_offset_from_walking_straight_on(tmp_path):
    """Walkers at constant velocity: the residual target is zero, the position target is not."""
    rows = walker(1, range(100, 310, 10), (0, 0), (1, 0)) + walker(2, range(100, 310, 10), (0, 4), (0, -0.5))
    cfg = config(tmp_path)
    windows = tr.build_windows(tr.read_eth_ucy(write_eth(tmp_path / "a.txt", sorted(rows))), cfg.window_rule)
    everything = np.arange(len(windows))
    residual = inputs.TrajectoryPreprocessing(residual_to_constant_velocity=True)
    positions = inputs.TrajectoryPreprocessing(residual_to_constant_velocity=False)
    assert float(residual.targets(windows, everything).abs().max()) == pytest.approx(0, abs=1e-6)
    np.testing.assert_allclose(positions.targets(windows, everything).numpy(), windows.future)


def test_the_heading_frame_points_every_walker_along_x_and_turns_predictions_back(tmp_path):
    """Walkers heading north-east, south and west: in the model's frame each heads along +x, the
    neighbours turn with the focal agent, and the truth in that frame comes back as the truth."""
    rows = (walker(1, range(100, 310, 10), (0, 0), (0.6, 0.8)) + walker(2, range(100, 310, 10), (3, 4), (0, -1))
            + walker(3, range(100, 310, 10), (-2, 1), (-0.5, 0.1)))
    tracks = tr.read_eth_ucy(write_eth(tmp_path / "a.txt", sorted(rows)))
    windows = tr.build_windows(tracks, config(tmp_path).window_rule)
    everything = np.arange(len(windows))
    heading = inputs.TrajectoryPreprocessing(heading_frame=True, residual_to_constant_velocity=False)
    turned = heading.inputs(windows, everything)
    last_step = (turned["observed"][:, -1] - turned["observed"][:, -2]).numpy()
    np.testing.assert_allclose(last_step[:, 1], 0, atol=1e-6)
    assert (last_step[:, 0] > 0).all()
    # distances to the neighbours are kept: a rotation about the focal agent's last position
    np.testing.assert_allclose(np.linalg.norm(turned["neighbours"].numpy(), axis=-1),
                               np.linalg.norm(windows.neighbours, axis=-1), atol=1e-5)
    for residual in (True, False):
        rule = inputs.TrajectoryPreprocessing(heading_frame=True, residual_to_constant_velocity=residual)
        targets = rule.targets(windows, everything).numpy()[:, None]  # a perfect model's (W, 1, T, 2)
        np.testing.assert_allclose(rule.positions(targets, windows.observed)[:, 0], windows.future, atol=1e-5)


def test_an_agent_standing_still_keeps_a_heading_from_its_path_or_none():
    still = np.zeros((2, 8, 2))
    still[0, :, 1] = np.linspace(-0.7, 0, 8)  # walked north, stood still on the last step
    still[0, -2] = still[0, -1]
    matrices = inputs.heading_rotation(still).numpy()
    np.testing.assert_allclose(matrices[0] @ [0, 1], [1, 0], atol=1e-6)  # north becomes +x
    np.testing.assert_allclose(matrices[1], np.eye(2))  # never moved: the data's frame


def test_augmentation_mirrors_across_the_heading_in_the_heading_frame():
    """In the heading frame a scene is only ever mirrored (y -> -y), never turned off its heading;
    without it, scenes are also rotated at random."""
    observed = torch.stack([torch.linspace(-7, 0, 8), torch.zeros(8)], dim=-1).repeat(64, 1, 1)  # along +x
    scene = {"observed": observed, "neighbours": torch.full((64, 1, 8, 2), 1.0)}
    target = torch.ones(64, 12, 2)
    generator = torch.Generator().manual_seed(0)
    mirrored, mirrored_target = inputs.TrajectoryPreprocessing(heading_frame=True).augment(scene, target, generator)
    torch.testing.assert_close(mirrored["observed"], observed)  # on the x axis, mirroring changes nothing
    flipped = mirrored_target[:, 0, 1] < 0
    assert 0 < flipped.sum() < 64
    torch.testing.assert_close(mirrored["neighbours"][:, 0, 0, 1] < 0, flipped)  # the scene flips as one
    torch.testing.assert_close(mirrored_target[:, :, 0], target[:, :, 0])
    rotated, _ = inputs.TrajectoryPreprocessing(heading_frame=False).augment(scene, target, generator)
    assert rotated["observed"][:, 0, 1].abs().max() > 1  # turned off the x axis


def test_lon_lat_tables_are_projected_to_utm(tmp_path):
    rows = [{"agent_id": a, "timestamp": t * 0.4, "x": 8.5 + 1e-5 * t, "y": 47.37 + 1e-4 * a}
            for a in (1, 2) for t in range(20)]
    file = tmp_path / "gps.parquet"
    pd.DataFrame(rows).to_parquet(file)
    cfg = table_config(file, location={"x": "x", "y": "y", "crs": "EPSG:4326"})
    tracks = tr.read_table(file, cfg.table)
    crs = tr.model_crs([tracks], cfg.tracks_crs)
    assert crs.to_epsg() == 32632  # UTM 32N over Zurich
    tr.to_model_crs(tracks, crs, source_crs=cfg.tracks_crs)
    windows = tr.build_windows(tracks, cfg.window_rule)
    assert len(windows) == 2
    np.testing.assert_allclose(windows.future[0, 0, 0], 1e-5 * 111_320 * np.cos(np.radians(47.37)), rtol=0.01)


def test_a_parquet_with_its_own_column_names_and_local_times_gives_the_csvs_windows(tmp_path):
    """The same tracks as a CSV of seconds since 1970 and as a Parquet of Zurich wall-clock date-times
    (``pid``, ``t``, ``east``, ``north``): the same windows, and the Parquet's are dated."""
    start = pd.Timestamp("2024-05-01T10:00:00Z")
    step = np.tile(np.arange(22), 3)
    agent = np.repeat([1, 2, 3], 22)
    times = start + pd.to_timedelta(0.4 * step, unit="s")
    x, y = 500_000 + 1.2 * step, 5_200_000 + 3.0 * agent - 0.1 * step
    csv = tmp_path / "tracks.csv"
    pd.DataFrame({"agent_id": agent, "timestamp": (times - tr.EPOCH).total_seconds(), "x": x, "y": y}).to_csv(
        csv, index=False)
    parquet = tmp_path / "tracks.parquet"
    pd.DataFrame({"pid": agent.astype(str), "t": times.tz_convert("Europe/Zurich").tz_localize(None), "east": x,
                  "north": y}).sample(frac=1, random_state=0).to_parquet(parquet)  # local wall clock, shuffled
    renamed = table_config(parquet, id="pid", time={"column": "t", "timezone": "Europe/Zurich", "step": "400ms"},
                           location={"x": "east", "y": "north", "crs": "EPSG:32632"})
    rule = renamed.window_rule
    from_csv = tr.build_windows(tr.read_table(csv, table_config(csv).table), rule)
    parquet_tracks = tr.read_table(parquet, renamed.table)
    from_parquet = tr.build_windows(parquet_tracks, rule)
    assert len(from_csv) == 3 * 3
    for name in ("observed", "future", "neighbours", "now", "frame", "agent"):
        np.testing.assert_array_equal(getattr(from_parquet, name), getattr(from_csv, name), err_msg=name)
    assert parquet_tracks.time_origin.isoformat() == "1970-01-01T00:00:00+00:00"
    now = pd.Timestamp(parquet_tracks.time_origin) + pd.Timedelta(seconds=0.4) * int(from_parquet.frame[0])
    assert now == start + pd.Timedelta(seconds=0.4 * 7)


def test_ade_fde_on_a_known_case():
    truth = np.zeros((1, 3, 2))
    truth[0, :, 0] = [1, 2, 3]
    futures = np.stack([truth[0] + [0, 2], truth[0] + [[0, 0], [0, 0], [0, 1]]])[None]  # K=2, most likely first
    errors = inputs.displacement_errors(futures, truth, expected=truth + [[0, 3], [0, 0], [0, 0]])
    assert errors["ade"][0] == pytest.approx(2) and errors["fde"][0] == pytest.approx(2)
    assert errors["min_ade"][0] == pytest.approx(1 / 3) and errors["min_fde"][0] == pytest.approx(1)
    assert errors["expected_ade"][0] == pytest.approx(1) and errors["expected_fde"][0] == pytest.approx(0)
    assert "expected_ade" not in inputs.displacement_errors(futures, truth)
    observed = np.array([[[-1.0, 0], [0, 0]]])
    np.testing.assert_allclose(inputs.constant_velocity(observed, 3)[0, 0], truth[0])


def test_local_engineering_crs_frame_opens(tmp_path):
    """Without origin and crs the GeoParquet is in a local metric CRS that readers still open."""
    rows = walker(1, range(0, 200, 10), (0, 0), (1, 0)) + walker(2, range(0, 200, 10), (0, 5), (0, 1))
    cfg = config(tmp_path)
    tracks = tr.read_eth_ucy(write_eth(tmp_path / "a.txt", sorted(rows)))
    windows = tr.build_windows(tracks, cfg.window_rule)
    futures = np.repeat(windows.future[:, None], 3, axis=1)
    attrs = {"files": [str(tracks.file)], "frames_per_step": [10], "time_origins": [None], "step_seconds": 0.4,
             "crs": tr.model_crs([tracks], cfg.crs).to_wkt()}
    forecast = {"futures": futures, "probabilities": np.full((2, 3), 1 / 3), "expected": windows.future + [0, 1]}
    frame = inputs.prediction_frame(windows, attrs, forecast,
                                    inputs.displacement_errors(futures, windows.future, forecast["expected"]))
    frame.to_parquet(tmp_path / "p.parquet")
    back = gpd.read_parquet(tmp_path / "p.parquet")
    assert back.crs.is_engineering and back.crs.axis_info[0].unit_name == "metre"
    assert np.allclose(back["time_now"], 2.8) and back["ade"].tolist() == [0, 0]
    assert back["expected_fde"].tolist() == [1, 1] and back["expected"].crs.is_engineering
    end = windows.now[0] + windows.future[0, -1] + [0, 1]
    assert back["expected"].iloc[0].coords[-1] == tuple(end)


# -- the flow on a real ETH slice ------------------------------------------------------------------


@pytest.fixture(scope="module")
def eth_slice(tmp_path_factory) -> dict[str, Path]:
    return file_flows.eth_slice(tmp_path_factory.mktemp("eth_slice"))


@pytest.mark.usefixtures("prefect_server")
def test_flow_publishes_geoparquet_metrics_and_stac_and_reuses_its_work_folder(eth_slice, tmp_path, language_model):
    from flows.files import run_file_flow

    cfg = file_flows.trajectories_config(eth_slice, tmp_path)
    outputs = run_file_flow(cfg)
    frame = gpd.read_parquet(outputs.paths["predictions"])
    assert len(frame) == 4 and frame.crs == pyproj.CRS("EPSG:2056")
    assert set(frame.geom_type) == {"LineString"} and set(frame["futures"].geom_type) == {"MultiLineString"}
    assert all(len(m.geoms) == 4 for m in frame["futures"])
    assert {"agent_id", "time_now", "future_times", "probabilities", "ade", "fde", "min_ade", "min_fde",
            "expected_ade", "expected_fde", "expected"} <= set(frame)
    assert set(frame["expected"].geom_type) == {"LineString"}
    assert frame["time_now"].dt.year.eq(2009).all()
    assert np.allclose([sum(p) for p in frame["probabilities"]], 1, atol=1e-4)
    x, y = frame.geometry.iloc[0].coords[-1]
    assert 2683600 < x < 2683700 and 1248000 < y < 1248100  # origin + local metres
    metrics = json.loads(Path(outputs.paths["metrics"]).read_text())
    assert metrics == outputs.metrics
    assert metrics["windows_published"] == 4 and metrics["counts"]["predict"]["short_tracks_skipped"] == 17
    assert metrics["fine_tuning"]["training_windows"] == 32 and metrics["allspark"]["min_ade"] <= metrics["allspark"]["ade"]
    catalog = pystac.Catalog.from_file(outputs.catalog)
    items = list(catalog.get_items())
    assert len(items) == 1 and [link.title for link in items[0].get_links("derived_from")] == ["biwi_eth.txt"]
    for asset in items[0].assets.values():
        assert Path(asset.get_absolute_href()).exists()
    assert len(validate_catalog(outputs.catalog)) == 2  # the catalog and its item

    model = cfg.work_dir() / "model"
    trained = (model / "model.safetensors").stat().st_mtime_ns
    again = run_file_flow(cfg)
    assert (model / "model.safetensors").stat().st_mtime_ns == trained  # not retrained
    assert again.metrics["allspark"] == metrics["allspark"]

    # the trained model bundle, without origin and crs: published in the local engineering CRS
    local = cfg.model_copy(update={"name": "eth-slice-local", "origin": None, "crs": None, "train": None,
                                   "checkpoint": model})
    outputs = run_file_flow(local)
    frame = gpd.read_parquet(outputs.paths["predictions"])
    assert len(frame) == 4 and frame.crs.is_engineering
    item = next(pystac.Catalog.from_file(outputs.catalog).get_items())
    assert item.geometry is None and item.bbox is None  # no place on Earth, said so
    assert len(validate_catalog(outputs.catalog)) == 2


def result(metrics: dict) -> dict:
    """A run's metrics less the training time, which no two runs share."""
    return {**metrics, "fine_tuning": {k: v for k, v in metrics["fine_tuning"].items() if k != "training_seconds"}}


def test_a_deleted_or_half_written_work_folder_is_rebuilt_to_the_same_result(eth_slice, tmp_path, language_model):
    cfg = file_flows.trajectories_config(eth_slice, tmp_path, name="eth-slice-rebuilt")
    first = run_pipeline(steps, cfg)
    work_dir = cfg.work_dir()
    shutil.rmtree(work_dir)
    rebuilt = run_pipeline(steps, cfg)
    assert result(rebuilt.metrics) == result(first.metrics)  # windows, model and predictions rebuilt
    assert (work_dir / "windows" / "predict.zarr").is_dir() and (work_dir / "model").is_dir()

    # a store removed from the work folder, and a leftover of a killed ingest beside it
    shutil.rmtree(work_dir / "windows")
    (work_dir / ".windows.partial" / "predict.zarr").mkdir(parents=True)
    ingested = steps.ingest(cfg)
    assert ingested.work_dir == work_dir and set(ingested.summary) == {"predict", "train"}
    assert sorted(p.name for p in ingested.store.iterdir()) == ["predict.zarr", "train.zarr"]
    assert not (work_dir / ".windows.partial").exists()
    assert run_pipeline(steps, cfg).metrics == rebuilt.metrics  # the model kept, the windows rebuilt


def test_validation_windows_keep_the_epoch_best_on_them(eth_slice, tmp_path, language_model):
    """Early stopping: a learning rate far too high makes the later epochs worse than the first, and the bundle
    saved is the best epoch's, scoring on the validation windows what that epoch scored."""
    cfg = file_flows.trajectories_config(eth_slice, tmp_path, name="eth-slice-validated",
                                         validation_files=[eth_slice["val"].parent],
                                         train={"epochs": 4, "batch_size": 16, "max_windows": 32,
                                                "learning_rate": 3.0, "keep_best": "expected_ade"})
    ingested = steps.ingest(cfg)
    assert set(ingested.summary) == {"predict", "train", "validation"}
    metrics = steps.train(cfg, ingested, log=lambda line: None).metrics
    figures = [epoch["expected_ade"] for epoch in metrics["epoch_validation"]]
    assert len(figures) == 4 and metrics["best_epoch"] == 1 + int(np.argmin(figures)) < 4
    validation, _ = tr.read_windows(ingested.store / "validation.zarr")
    assert metrics["validation_windows"] == len(validation) > 0
    bundle = load_bundle(cfg.work_dir() / steps.MODEL_DIR, inputs.TrajectoryPreprocessing)
    again = inputs.scores(bundle.model, bundle.preprocessing, validation, cfg.inference_batch)
    assert again == metrics["validation"] and again["expected_ade"] == min(figures) < figures[-1]


def test_an_input_file_rewritten_in_place_gets_a_new_work_folder(tmp_path):
    file = write_eth(tmp_path / "a.txt", walker(1, range(0, 200, 10), (0, 0), (1, 0)))
    cfg = config(tmp_path)
    before = cfg.work_dir()
    assert cfg.input_files() == [file] and cfg.work_dir() == before  # the same content: the same folder
    write_eth(file, walker(1, range(0, 200, 10), (0, 0), (1, 0.5)))  # the same path, other positions
    assert cfg.work_dir() != before

"""From stored windows to model inputs and targets and back, the constant-velocity baseline, ADE/FDE, the published table.

Targets are future positions relative to the last observed one, minus the constant-velocity
extrapolation by default (the model learns how people deviate from walking straight on, a strong
prior on a small training budget); without it the model learns the positions themselves, as TUTR
does. By default each window is also turned so that the agent heads along +x (the heading
frame), and training scenes are mirrored across that heading at random. Which rules a model
learned with is its bundle's :class:`TrajectoryPreprocessing`.
"""

from __future__ import annotations

import math
from datetime import datetime, timedelta
from pathlib import Path

import geopandas as gpd
import numpy as np
import pyproj
import torch
from pydantic import BaseModel, ConfigDict
from shapely import LineString, MultiLineString

from allspark.trajectories.read import Windows


class TrajectoryPreprocessing(BaseModel):
    """The frame and target rule a trajectory model is trained with, saved in its bundle.

    ``heading_frame``: each window is turned about the focal agent's last observed position so
    that its heading points along +x, and the predictions are turned back. One frame for every
    direction of travel spares the model learning the same motion in every orientation.
    ``residual_to_constant_velocity``: the target is the offset from walking straight on (see the
    module docstring).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)
    residual_to_constant_velocity: bool = True
    heading_frame: bool = False  # bundles saved before the heading frame existed were trained without it

    def inputs(self, windows: Windows, index: np.ndarray | slice) -> dict[str, torch.Tensor]:
        """The encoder's inputs for the windows at ``index``, in the model's frame."""
        inputs = {"observed": torch.from_numpy(windows.observed[index]),
                  "neighbours": torch.from_numpy(windows.neighbours[index])}
        if not self.heading_frame:
            return inputs
        matrix = heading_rotation(windows.observed[index])
        return {name: turn(value, matrix) for name, value in inputs.items()}

    def targets(self, windows: Windows, index: np.ndarray) -> torch.Tensor:
        """What the head learns for the windows at ``index``. Rotations commute with the residual."""
        future = windows.future[index]
        if self.residual_to_constant_velocity:
            future = future - constant_velocity(windows.observed[index], future.shape[1])[:, 0]
        future = torch.from_numpy(np.ascontiguousarray(future, dtype="float32"))
        return turn(future, heading_rotation(windows.observed[index])) if self.heading_frame else future

    def positions(self, futures: np.ndarray, observed: np.ndarray) -> np.ndarray:
        """Predicted futures ``(W, K, T, 2)`` as positions relative to the last observed one, in the data's frame."""
        if self.heading_frame:
            back = heading_rotation(observed).transpose(1, 2)
            futures = turn(torch.from_numpy(np.ascontiguousarray(futures, dtype="float32")), back).numpy()
        if self.residual_to_constant_velocity:
            return futures + constant_velocity(observed, futures.shape[2])
        return futures

    def augment(self, inputs: dict[str, torch.Tensor], target: torch.Tensor,
                generator: torch.Generator) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        """Each scene mirrored across the agent's heading at random; without the heading frame, also rotated.

        Both keep a scene physically plausible; a rotation would undo the heading frame.
        """
        batch = len(target)
        mirror = torch.where(torch.rand(batch, generator=generator) < 0.5, -1.0, 1.0)
        matrix = torch.diag_embed(torch.stack([torch.ones(batch), mirror], dim=-1))  # y -> -y
        if not self.heading_frame:
            matrix = rotation(torch.rand(batch, generator=generator) * 2 * math.pi) @ matrix
        return {name: turn(value, matrix) for name, value in inputs.items()}, turn(target, matrix)


STANDING_STILL = 0.05
"""Metres per step below which a step gives no heading."""


def rotation(angle: torch.Tensor) -> torch.Tensor:
    """Rotation matrices ``(B, 2, 2)`` by ``angle`` (radians, counter-clockwise)."""
    cos, sin = angle.cos(), angle.sin()
    return torch.stack([torch.stack([cos, -sin], -1), torch.stack([sin, cos], -1)], -2)


def heading_rotation(observed: np.ndarray) -> torch.Tensor:
    """Rotations ``(W, 2, 2)`` that turn each window's heading onto +x.

    The heading is the last observed step, or the whole observed path when the agent stood
    (nearly) still on that step; an agent that never moved keeps the data's frame.
    """
    step = observed[:, -1] - observed[:, -2]
    path = observed[:, -1] - observed[:, 0]
    heading = np.where(np.linalg.norm(step, axis=-1, keepdims=True) >= STANDING_STILL, step, path)
    heading = np.where(np.linalg.norm(heading, axis=-1, keepdims=True) >= STANDING_STILL, heading, [1.0, 0.0])
    return rotation(-torch.from_numpy(np.arctan2(heading[:, 1], heading[:, 0])).float())


def turn(values: torch.Tensor, matrix: torch.Tensor) -> torch.Tensor:
    """Apply one ``(2, 2)`` matrix per window to every point ``(..., 2)`` of that window (NaN stays NaN)."""
    shape = values.shape
    flat = values.reshape(len(values), -1, 2)
    return torch.einsum("bij,bnj->bni", matrix.to(flat.dtype), flat).reshape(shape)


FORECAST = ("futures", "probabilities", "expected")
"""What :func:`predict_windows` answers, and the arrays of the predict step's store."""


def predict_windows(model, preprocessing: TrajectoryPreprocessing, windows: Windows,
                    batch_size: int) -> dict[str, np.ndarray]:
    """K ``futures`` ``(W, K, T, 2)`` (relative metres, most likely first), their ``probabilities`` ``(W, K)`` and
    the ``expected`` future ``(W, T, 2)`` (the probability-weighted mean of the model's candidates)."""
    batches = [model.predict(preprocessing.inputs(windows, slice(start, start + batch_size)))
               for start in range(0, len(windows), batch_size)]
    forecast = {name: np.concatenate([batch[name].cpu().numpy() for batch in batches]) for name in FORECAST}
    forecast["futures"] = preprocessing.positions(forecast["futures"], windows.observed)
    forecast["expected"] = preprocessing.positions(forecast["expected"][:, None], windows.observed)[:, 0]
    return forecast


def scores(model, preprocessing: TrajectoryPreprocessing, windows: Windows, batch_size: int) -> dict[str, float]:
    """Mean ADE/FDE in metres (:func:`summarise`) of the model's forecast of ``windows``."""
    forecast = predict_windows(model, preprocessing, windows, batch_size)
    return summarise(displacement_errors(forecast["futures"], windows.future, forecast["expected"]))


def constant_velocity(observed: np.ndarray, steps: int) -> np.ndarray:
    """The last observed step's velocity, held for ``steps`` steps: ``(W, 1, steps, 2)`` relative futures."""
    velocity = observed[:, -1] - observed[:, -2]
    return (velocity[:, None] * np.arange(1, steps + 1)[:, None])[:, None]


def displacement_errors(futures: np.ndarray, truth: np.ndarray, expected: np.ndarray | None = None
                        ) -> dict[str, np.ndarray]:
    """Per-window errors of K futures ``(W, K, T, 2)`` (most likely first) against ``truth`` ``(W, T, 2)``.

    ``ade``/``fde``: the most likely future's average / final displacement; ``min_ade``/``min_fde``:
    best-of-K, each minimised over K on its own (as Social-GAN and TUTR report them);
    ``expected_ade``/``expected_fde``: those of the ``expected`` future ``(W, T, 2)``, when given.
    """
    distance = np.linalg.norm(futures - truth[:, None], axis=-1)  # (W, K, T)
    ade, fde = distance.mean(axis=-1), distance[..., -1]
    errors = {"ade": ade[:, 0], "fde": fde[:, 0], "min_ade": ade.min(axis=1), "min_fde": fde.min(axis=1)}
    if expected is not None:
        gaps = np.linalg.norm(expected - truth, axis=-1)  # (W, T)
        errors |= {"expected_ade": gaps.mean(axis=-1), "expected_fde": gaps[:, -1]}
    return errors


def summarise(errors: dict[str, np.ndarray]) -> dict[str, float]:
    """Mean of each per-window error, rounded to 0.1 mm."""
    return {name: round(float(values.mean()), 4) for name, values in errors.items()}


def step_times(frames: np.ndarray, frames_per_step: int, step_seconds: float, origin: str | None) -> list:
    """Times of frame numbers: date-times after ``origin`` when given, else seconds from frame 0."""
    seconds = frames / frames_per_step * step_seconds
    if origin is None:
        return [list(map(float, row)) for row in np.atleast_2d(seconds)]
    start = datetime.fromisoformat(origin)
    return [[start + timedelta(seconds=float(s)) for s in row] for row in np.atleast_2d(seconds)]


def prediction_frame(windows: Windows, attrs: dict, forecast: dict[str, np.ndarray],
                     errors: dict[str, np.ndarray]) -> gpd.GeoDataFrame:
    """One row per agent and window: observed path (geometry), K futures, times, probabilities, errors.

    ``forecast`` is :func:`predict_windows`'s answer. ``futures`` is a MultiLineString of the K
    predicted paths, most likely first (each starts at the last observed position, so it joins
    the observed path); ``most_likely``, ``expected`` and ``truth`` are LineStrings;
    ``probabilities`` is in the same order as ``futures``.
    """
    obs, fut = windows.observed.shape[1], windows.future.shape[1]
    now = windows.now[:, None]
    observed, truth = windows.observed + now, windows.future + now
    predicted, expected = forecast["futures"] + now[:, None], forecast["expected"] + now
    probabilities = forecast["probabilities"]
    rows = []
    for i in range(len(windows)):
        file = int(windows.file_index[i])
        per_step, origin = attrs["frames_per_step"][file], attrs["time_origins"][file]
        frames = windows.frame[i] + np.arange(-obs + 1, fut + 1) * per_step
        times = step_times(frames, per_step, attrs["step_seconds"], origin)[0]
        start = observed[i, -1]
        rows.append({
            "agent_id": str(windows.agent[i]),
            "source_file": Path(attrs["files"][file]).name,
            "frame_now": int(windows.frame[i]),
            "time_now": times[obs - 1],
            "observed_times": times[:obs],
            "future_times": times[obs:],
            "probabilities": probabilities[i].tolist(),
            "top_probability": float(probabilities[i, 0]),
            **{name: float(values[i]) for name, values in errors.items()},
            "futures": MultiLineString([np.vstack([start, path]) for path in predicted[i]]),
            "most_likely": LineString(np.vstack([start, predicted[i, 0]])),
            "expected": LineString(np.vstack([start, expected[i]])),
            "truth": LineString(np.vstack([start, truth[i]])),
            "geometry": LineString(observed[i]),
        })
    crs = pyproj.CRS(attrs["crs"])
    frame = gpd.GeoDataFrame(rows, geometry="geometry", crs=crs)
    for column in ("futures", "most_likely", "expected", "truth"):
        frame[column] = gpd.GeoSeries(frame[column], crs=crs)
    return frame

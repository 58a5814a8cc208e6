"""The step contract every kind of data follows: ingest -> train -> predict -> publish.

Each kind is a package under ``allspark/`` (``region``, ``sensors``, ``trajectories``,
``traffic``) with the same modules: ``config.py`` (its :class:`~allspark.core.config.RunConfig`),
``read.py`` (its readers, which take the few values they use), ``inputs.py`` (what turns stored
data into model inputs, baselines and metrics) and ``steps.py``, which defines the four steps
below with these names and these typed results. Steps know nothing of Prefect: a notebook, a
benchmark and a flow call them the same way, and each is idempotent on the run's work folder (a
complete store is reused, a missing or partial one rebuilt).

A step that fans out (region inference over blocks) takes a ``mapper``: the flow passes one that
runs the pieces as Prefect tasks on Dask; the default runs them in turn in this process.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from allspark.core.location import Location, parse_location

Log = Callable[[str], None]


@dataclass(frozen=True)
class Ingested:
    """The inputs read, checked and stored in the work folder."""

    work_dir: Location
    store: Location
    summary: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Trained:
    """A model bundle to predict with: fine-tuned by this run, or the config's checkpoint."""

    checkpoint: Location
    metrics: Mapping[str, Any] | None = None


@dataclass(frozen=True)
class Predicted:
    """Predictions stored in the work folder, ready to publish."""

    store: Location
    summary: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Published:
    """The published files by name, the STAC catalog that links them, and the run's metrics.

    Paths in a local output folder, URLs (strings) on object storage."""

    catalog: Path | str
    paths: Mapping[str, Path | str]
    metrics: Mapping[str, Any]


def given_checkpoint(checkpoint: Location) -> Trained:
    """The result of ``train`` for a run that uses a trained model instead of fine-tuning."""
    from allspark.core.bundle import bundle_info, training_metrics

    bundle_info(checkpoint)  # a clear error now when it is not a model bundle
    return Trained(checkpoint=parse_location(checkpoint), metrics=training_metrics(checkpoint))


Mapper = Callable[[Callable[[Any], Any], Sequence[Any]], list[Any]]


def serial_map(function: Callable[[Any], Any], items: Sequence[Any]) -> list[Any]:
    """The default :data:`Mapper`: one item after another, in this process."""
    return [function(item) for item in items]


class Pipeline(Protocol):
    """What a kind's ``steps`` module provides (a module satisfies this protocol)."""

    def ingest(self, config: Any, log: Log = print) -> Ingested: ...

    def train(self, config: Any, ingested: Ingested, log: Log = print) -> Trained: ...

    def predict(self, config: Any, ingested: Ingested, trained: Trained, mapper: Mapper = serial_map) -> Predicted: ...

    def publish(self, config: Any, ingested: Ingested, trained: Trained, predicted: Predicted) -> Published: ...


def run_pipeline(pipeline: Pipeline, config: Any, log: Log = print) -> Published:
    """All four steps in this process, without an orchestrator (notebooks, benchmarks).

    A checkpoint is checked against the run first, and the steps get the config of the model used
    (:func:`~allspark.core.bundle.apply_checkpoint`), which is the config they publish.
    """
    from allspark.core.bundle import apply_checkpoint

    config = apply_checkpoint(config)
    ingested = pipeline.ingest(config, log)
    trained = pipeline.train(config, ingested, log)
    return pipeline.publish(config, ingested, trained, pipeline.predict(config, ingested, trained))

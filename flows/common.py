"""The one Prefect layer every flow shares: the four steps as tasks, and how they run.

Caching is not Prefect's job here: every step is idempotent on the run's work folder (see
:mod:`allspark.core.steps`), so a rerun reuses complete stores and rebuilds missing ones whether it
runs in a flow, a notebook or a benchmark. Tasks therefore keep no cached results.
"""

from __future__ import annotations

from typing import Any

from prefect import get_run_logger, task

from allspark.core.bundle import apply_checkpoint
from allspark.core.steps import Ingested, Mapper, Predicted, Published, Trained
from allspark.pipelines import get_kind


@task(name="ingest")
def ingest_task(kind: str, config: Any) -> Ingested:
    return get_kind(kind).steps().ingest(config, log=get_run_logger().info)


@task(name="train")
def train_task(kind: str, config: Any, ingested: Ingested) -> Trained:
    return get_kind(kind).steps().train(config, ingested, log=get_run_logger().info)


@task(name="predict")
def predict_task(kind: str, config: Any, ingested: Ingested, trained: Trained) -> Predicted:
    return get_kind(kind).steps().predict(config, ingested, trained)


@task(name="publish")
def publish_task(kind: str, config: Any, ingested: Ingested, trained: Trained, predicted: Predicted) -> Published:
    return get_kind(kind).steps().publish(config, ingested, trained, predicted)


def run_steps(kind: str, config: Any, mapper: Mapper | None = None) -> Published:
    """Ingest, train, predict and publish as tasks of the current flow; log what each found.

    With a ``mapper`` (region inference fanned out on Dask), prediction runs in the flow and maps
    its pieces as tasks; otherwise it is one task. A checkpoint is checked against the run before
    any task, and the tasks get the config of the model used, which is the config they publish.
    """
    config = apply_checkpoint(config)
    logger = get_run_logger()
    ingested = ingest_task(kind, config)
    logger.info("ingested: %s", _summary(ingested.summary))
    trained = train_task(kind, config, ingested)
    if mapper is None:
        predicted = predict_task(kind, config, ingested, trained)
    else:
        predicted = get_kind(kind).steps().predict(config, ingested, trained, mapper=mapper)
    logger.info("predicted: %s", _summary(predicted.summary))
    published = publish_task(kind, config, ingested, trained, predicted)
    logger.info("published %s", published.catalog)
    return published


def _summary(summary: dict) -> str:
    return ", ".join(f"{key} {value}" for key, value in summary.items()) or "-"


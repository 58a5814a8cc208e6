"""The model bundle: what a trained model is on disk, the same for every kind of data.

A bundle is one folder::

    config.json              the model's AllSparkConfig (see allspark.model.checkpoint)
    model.safetensors        its trainable weights (the frozen LM is rebuilt from config.llm)
    preprocessing.json       what turns a kind's data into model inputs, fitted on the training data
                             (a band normaliser, feature or graph scaling, a target rule)
    bundle.json              what publishing needs without loading the model: modality, LM,
                             parameter counts, torch version
    training_metrics.json    held-out metrics of the fine-tuning run (optional)
    <extra files>            e.g. the held-out pixels of a region run

It is written atomically (complete or absent) by :func:`save_bundle` and read by
:func:`load_bundle`, once per process (a Dask worker loads it on its first task and keeps it).
"""

from __future__ import annotations

import functools
import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, TypeVar

from pydantic import BaseModel, ValidationError

from allspark.core.atomic import atomic_dir
from allspark.errors import CheckpointError

PREPROCESSING_FILE = "preprocessing.json"
INFO_FILE = "bundle.json"
METRICS_FILE = "training_metrics.json"

Preprocessing = TypeVar("Preprocessing", bound=BaseModel)


class BundleInfo(BaseModel):
    """What a published STAC record says about a model, read from ``bundle.json`` (no model load)."""

    modality: str
    llm: str
    llm_layers: int | None
    total_parameters: int
    trainable_parameters: int
    framework_version: str
    preprocessing: str


@dataclass(frozen=True)
class Bundle(Generic[Preprocessing]):
    """A loaded model (eval mode) and its fitted preprocessing."""

    model: Any  # allspark.model.AllSpark; typed loosely so this module imports without torch
    preprocessing: Preprocessing


def save_bundle(
    directory: Path,
    model,
    preprocessing: BaseModel,
    metrics: Mapping | None = None,
    extra_files: Mapping[str, str] | None = None,
) -> Path:
    """Write a bundle atomically into ``directory`` (replacing one there); return it."""
    import torch

    from allspark.model.checkpoint import save_checkpoint

    directory = Path(directory)
    with atomic_dir(directory) as tmp:
        save_checkpoint(model, tmp)
        (tmp / PREPROCESSING_FILE).write_text(json.dumps(
            {"type": type(preprocessing).__name__, "state": preprocessing.model_dump(mode="json")}, indent=2))
        info = BundleInfo(
            modality=model.config.modality,
            llm=model.config.llm,
            llm_layers=model.config.llm_layers,
            total_parameters=sum(p.numel() for p in model.parameters()),
            trainable_parameters=sum(p.numel() for p in model.trainable_parameters()),
            framework_version=torch.__version__.split("+")[0],
            preprocessing=type(preprocessing).__name__,
        )
        (tmp / INFO_FILE).write_text(info.model_dump_json(indent=2))
        if metrics is not None:
            (tmp / METRICS_FILE).write_text(json.dumps(metrics, indent=2, default=str))
        for name, text in (extra_files or {}).items():
            (tmp / name).write_text(text)
    return directory


def bundle_info(directory: str | Path) -> BundleInfo:
    """The bundle's ``bundle.json``; a clear error when the folder is not a bundle."""
    path = Path(directory) / INFO_FILE
    try:
        return BundleInfo.model_validate_json(path.read_text())
    except FileNotFoundError:
        raise CheckpointError(f"checkpoint {directory} has no {INFO_FILE}: it is not a model bundle written by "
                              f"this pipeline") from None
    except ValidationError as err:
        raise CheckpointError(f"checkpoint {directory}: invalid {INFO_FILE}: {err}") from None


def training_metrics(directory: str | Path) -> dict | None:
    """The fine-tuning metrics stored in the bundle, or None (a bundle trained elsewhere may have none)."""
    path = Path(directory) / METRICS_FILE
    return json.loads(path.read_text()) if path.is_file() else None


def load_bundle(directory: str | Path, preprocessing: type[Preprocessing]) -> Bundle[Preprocessing]:
    """Load (once per process and content) the bundle in ``directory``, checking its preprocessing is of this kind.

    Keyed by the folder's content too, so a bundle rebuilt or replaced at the same path is loaded again.
    """
    path = Path(directory).resolve()
    if not path.is_dir():
        raise CheckpointError(f"checkpoint {directory} does not exist or is not a folder")
    return _load(str(path), bundle_digest(path), preprocessing)


@functools.lru_cache(maxsize=2)
def _load(directory: str, digest: str, preprocessing: type[Preprocessing]) -> Bundle[Preprocessing]:
    from allspark.model.checkpoint import load_checkpoint

    path = Path(directory)
    try:
        document = json.loads((path / PREPROCESSING_FILE).read_text())
    except FileNotFoundError:
        raise CheckpointError(f"checkpoint {path} has no {PREPROCESSING_FILE}: it was not written by this "
                              f"pipeline") from None
    except json.JSONDecodeError as err:
        raise CheckpointError(f"checkpoint {path}: {PREPROCESSING_FILE} is not valid JSON: {err}") from None
    if document.get("type") != preprocessing.__name__:
        raise CheckpointError(f"checkpoint {path} holds a {document.get('type')} model bundle, this run needs a "
                              f"{preprocessing.__name__} one (a checkpoint of another kind of data)")
    try:
        fitted = preprocessing.model_validate(document["state"])
        model = load_checkpoint(path)
    except (ValidationError, ValueError, KeyError) as err:
        raise CheckpointError(f"checkpoint {path} cannot be loaded: {err}") from None
    return Bundle(model=model.eval(), preprocessing=fitted)


def bundle_digest(directory: str | Path) -> str:
    """A short content hash of a bundle folder, to key caches and name prediction stores."""
    digest = hashlib.sha256()
    for file in sorted(p for p in Path(directory).iterdir() if p.is_file()):
        digest.update(file.name.encode())
        digest.update(file.read_bytes())
    return digest.hexdigest()[:16]

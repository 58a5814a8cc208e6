"""The model bundle: what a trained model is on disk, the same for every kind of data.

A bundle is one folder::

    config.json              the model's AllSparkConfig (see allspark.model.checkpoint)
    model.safetensors        its trainable weights (the frozen LM is rebuilt from config.llm)
    preprocessing.json       what turns a kind's data into model inputs, fitted on the training data
                             (a band normaliser, feature or graph scaling, a target rule)
    bundle.json              what publishing needs without loading the model (modality, LM,
                             parameter counts, torch version) and the contract a run that applies
                             it must fit (:class:`Contract`, checked by :func:`check_checkpoint`)
    training_metrics.json    held-out metrics of the fine-tuning run (optional)
    <extra files>            e.g. the held-out pixels of a region run

It is written atomically (complete or absent) by :func:`save_bundle` and read by
:func:`load_bundle`, once per process (a Dask worker loads it on its first task and keeps it).
A bundle may live on object storage (a URL): it is read through a local copy in the cache,
downloaded once per content (:func:`local_bundle`).
"""

from __future__ import annotations

import functools
import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from filelock import FileLock
from pydantic import BaseModel, ValidationError
from pydantic_core import to_jsonable_python

from allspark.core.atomic import SUCCESS, atomic_dir, is_complete, staged_dir
from allspark.core.location import Location, download_folder, is_remote, listing, parse_location
from allspark.errors import CheckpointError
from allspark.settings import cache_dir

if TYPE_CHECKING:
    from allspark.core.config import ModelRunConfig

PREPROCESSING_FILE = "preprocessing.json"
INFO_FILE = "bundle.json"
METRICS_FILE = "training_metrics.json"

SETTINGS_BLOCKS = ("model", "language")
"""The run config's blocks that size the model: a checkpoint records them, a run applying it takes them."""
# The checkpoint format (allspark.model.checkpoint), raised whenever saved weights stop fitting the model code
# (3: the dense head attends to the hidden states; 4: the regression head reads the encoder too). Work folders
# are keyed by it too, so a run never resumes with a model this code cannot load.
CHECKPOINT_FORMAT = 4

Preprocessing = TypeVar("Preprocessing", bound=BaseModel)
Config = TypeVar("Config", bound="ModelRunConfig")


class Contract(BaseModel):
    """What a bundle's model is tied to, recorded from the run config that trained it."""

    fields: dict[str, Any]
    """The kind's own fields (``config.contract()``), e.g. a region's bands, wavelengths and class names in order."""
    model: dict[str, Any]
    """The run config's ``model`` block, as it was."""
    language: dict[str, Any]
    """The run config's ``language`` block, as it was."""

    def flat(self) -> dict[str, Any]:
        """Field -> value, the blocks' fields as ``model.<field>`` and ``language.<field>``."""
        return {**self.fields, **{f"{block}.{field}": value for block in SETTINGS_BLOCKS
                                  for field, value in getattr(self, block).items()}}


class BundleInfo(BaseModel):
    """What a published STAC record says about a model and what it is tied to: ``bundle.json`` (no model load)."""

    modality: str
    llm: str
    llm_layers: int | None
    total_parameters: int
    trainable_parameters: int
    framework_version: str
    preprocessing: str
    contract: Contract | None = None
    """None in a bundle written before bundles recorded it: such a bundle cannot be applied as a checkpoint."""


@dataclass(frozen=True)
class Bundle(Generic[Preprocessing]):
    """A loaded model (eval mode) and its fitted preprocessing."""

    model: Any  # allspark.model.AllSpark; typed loosely so this module imports without torch
    preprocessing: Preprocessing


def save_bundle(
    directory: Location,
    model,
    preprocessing: BaseModel,
    config: ModelRunConfig,
    metrics: Mapping | None = None,
    extra_files: Mapping[str, str] | None = None,
    contract: Mapping[str, Any] | None = None,
) -> Path:
    """Write a bundle atomically into ``directory``, a folder or URL (replacing one there); return it.

    ``config`` is the run config that trained the model: ``bundle.json`` records its kind's fields
    (``contract`` where the run knows more than the config, e.g. a region's wavelengths) and its
    ``model`` and ``language`` blocks.
    """
    import torch

    from allspark.model.checkpoint import save_checkpoint

    with staged_dir(directory) as tmp:
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
            contract=Contract(fields=_kind_fields(config, contract),
                              **{block: getattr(config, block).model_dump(mode="json") for block in SETTINGS_BLOCKS}),
        )
        (tmp / INFO_FILE).write_text(info.model_dump_json(indent=2))
        if metrics is not None:
            (tmp / METRICS_FILE).write_text(json.dumps(metrics, indent=2, default=str))
        for name, text in (extra_files or {}).items():
            (tmp / name).write_text(text)
    return directory


def local_bundle(directory: Location) -> Path:
    """The bundle's folder on this machine: ``directory`` itself, or for a URL a copy in the cache.

    The copy is keyed by the URL and its objects' sizes and ETags, so each worker downloads a bundle
    once, and again only when it was replaced. Raises :class:`CheckpointError` for a URL holding no
    complete bundle.
    """
    directory = parse_location(directory)  # a path given as a string is still a path
    if not is_remote(directory):
        return directory
    if not is_complete(directory):
        raise CheckpointError(f"checkpoint {directory} does not exist or is incomplete (no {SUCCESS} marker: its "
                              f"upload did not finish)")
    key = hashlib.sha256(json.dumps([directory, listing(directory)]).encode()).hexdigest()[:16]
    copy = cache_dir() / "bundles" / key
    copy.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(copy.with_suffix(".lock")):  # workers sharing a cache download it once
        if not copy.exists():
            with atomic_dir(copy) as tmp:
                download_folder(directory, tmp)
                (tmp / SUCCESS).unlink()
    return copy


def bundle_info(directory: Location) -> BundleInfo:
    """The bundle's ``bundle.json``; a clear error when the folder is not a bundle."""
    path = local_bundle(directory) / INFO_FILE
    try:
        return BundleInfo.model_validate_json(path.read_text())
    except FileNotFoundError:
        raise CheckpointError(f"checkpoint {directory} has no {INFO_FILE}: it is not a model bundle written by "
                              f"this pipeline") from None
    except ValidationError as err:
        raise CheckpointError(f"checkpoint {directory}: invalid {INFO_FILE}: {err}") from None


def check_checkpoint(config: ModelRunConfig, contract: Mapping[str, Any] | None = None) -> BundleInfo:
    """Refuse the config's checkpoint when it does not fit the run; return its ``bundle.json`` when it does.

    Compared: the modality; the kind's own fields (``config.contract()``, or ``contract`` where the
    run knows more, e.g. a region plan's wavelengths); the ``model`` and ``language`` settings the
    config sets explicitly (those left at their defaults are the checkpoint's: :func:`apply_checkpoint`).
    Every mismatch is named: ``checkpoint <path>: <field> is <its value> there, <the run's> in this run``.
    Reads JSON only, so it runs before any work and before the orchestrator starts.
    """
    checkpoint = config.checkpoint
    info = bundle_info(checkpoint)
    if info.modality != config.modality:
        raise CheckpointError(f"checkpoint {checkpoint}: modality is {info.modality} there, {config.modality} in "
                              f"this run (a model for another kind of data)")
    if info.contract is None:
        raise CheckpointError(f"checkpoint {checkpoint}: its {INFO_FILE} does not record the bands, classes and sizes "
                              f"its model is tied to (written by an earlier version): delete it and fine-tune again")
    recorded = info.contract.flat()
    explicit = {f"{block}.{field}": value for block in SETTINGS_BLOCKS
                for field, value in _explicit_settings(getattr(config, block)).items()}
    mismatches = [
        f"{field} is {_shown(recorded[field]) if field in recorded else 'not recorded'} there, {_shown(value)} "
        f"in this run"
        for field, value in {**_kind_fields(config, contract), **explicit}.items()
        if field not in recorded or recorded[field] != value
    ]
    if mismatches:
        raise CheckpointError(f"checkpoint {checkpoint}: " + "; ".join(mismatches))
    return info


def apply_checkpoint(config: Config, contract: Mapping[str, Any] | None = None) -> Config:
    """The config of the model a run actually uses: ``config`` when it fine-tunes; with a checkpoint,
    checked against the run (:func:`check_checkpoint`) and carrying the checkpoint's ``model`` and
    ``language`` blocks, so the published config and STAC item describe the model that made the outputs.

    Its fingerprint, and so the run's work folder, stays the same (a checkpoint run leaves those blocks out of it).
    """
    if config.checkpoint is None:
        return config
    recorded = check_checkpoint(config, contract).contract
    try:
        blocks = {block: type(getattr(config, block)).model_validate(getattr(recorded, block))
                  for block in SETTINGS_BLOCKS}
    except ValidationError as err:
        raise CheckpointError(f"checkpoint {config.checkpoint}: its recorded model settings do not fit this "
                              f"version: {err}") from None
    return config.model_copy(update=blocks)


def _kind_fields(config: ModelRunConfig, contract: Mapping[str, Any] | None) -> dict[str, Any]:
    """The kind's own fields as JSON values (tuples as lists), as ``bundle.json`` holds them."""
    return to_jsonable_python(dict(config.contract() if contract is None else contract))


def _explicit_settings(block: BaseModel) -> dict[str, Any]:
    """The fields of a config block that the config sets itself, as JSON values."""
    return block.model_dump(mode="json", include=block.model_fields_set)


def _shown(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value)


def training_metrics(directory: Location) -> dict | None:
    """The fine-tuning metrics stored in the bundle, or None (a bundle trained elsewhere may have none)."""
    path = local_bundle(directory) / METRICS_FILE
    return json.loads(path.read_text()) if path.is_file() else None


def load_bundle(directory: Location, preprocessing: type[Preprocessing]) -> Bundle[Preprocessing]:
    """Load (once per process and content) the bundle in ``directory``, checking its preprocessing is of this kind.

    Keyed by the folder's content too, so a bundle rebuilt or replaced at the same path is loaded again.
    """
    path = local_bundle(directory).resolve()
    if not path.is_dir():
        raise CheckpointError(f"checkpoint {directory} does not exist or is not a folder")
    return _load(str(path), bundle_digest(path), preprocessing)


@functools.lru_cache(maxsize=2)
def _load(directory: str, digest: str, preprocessing: type[Preprocessing]) -> Bundle[Preprocessing]:
    from allspark.model.checkpoint import load_checkpoint

    fitted = load_preprocessing(directory, preprocessing)
    try:
        model = load_checkpoint(Path(directory))
    except (ValidationError, ValueError, KeyError) as err:
        raise CheckpointError(f"checkpoint {directory} cannot be loaded: {err}") from None
    return Bundle(model=model.eval(), preprocessing=fitted)


def load_preprocessing(directory: Location, preprocessing: type[Preprocessing]) -> Preprocessing:
    """A bundle's fitted preprocessing alone (no model weights), checked to be of this kind."""
    path = local_bundle(directory)
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
        return preprocessing.model_validate(document["state"])
    except (ValidationError, KeyError) as err:
        raise CheckpointError(f"checkpoint {path} cannot be loaded: {err}") from None


def bundle_digest(directory: Location) -> str:
    """A short content hash of a bundle folder, to key caches and name prediction stores."""
    digest = hashlib.sha256()
    for file in sorted(p for p in local_bundle(directory).iterdir() if p.is_file()):
        digest.update(file.name.encode())
        digest.update(file.read_bytes())
    return digest.hexdigest()[:16]

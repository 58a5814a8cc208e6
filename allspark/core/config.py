"""Typed run configuration shared by every kind of data.

Every config rejects unknown keys (``extra="forbid"``), so a typo in a YAML file fails loudly
instead of silently falling back to a default. A run config is :class:`RunConfig` plus the kind's
own fields; the language model and training are one nested block each
(:class:`LanguageModelSettings`, :class:`TrainSettings`), the same for every kind. The resolved
config is written beside every output, so a published result always says what made it.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, Field, ModelWrapValidatorHandler, ValidationError, model_validator

from allspark.core.location import Location, LocationField, is_remote, join
from allspark.core.storage import work_dir
from allspark.errors import ConfigError
from allspark.model.llm import SMOLLM2

NAME_PATTERN = r"^[A-Za-z0-9_.-]+$"


class StrictModel(BaseModel):
    """A config block that refuses unknown keys."""

    model_config = ConfigDict(extra="forbid")


class SettingsBlock(BaseModel):
    """A frozen config block that refuses unknown keys."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class LanguageModelSettings(SettingsBlock):
    """The causal language model AllSpark reads the modality tokens with, and how it is used."""

    llm: str = Field(SMOLLM2, description='"smollm2" (registry wheel), a local path or a cached HF model id')
    layers: int | None = Field(4, ge=1, description="keep the first N decoder layers of the LM (None: all 30)")
    adapter_every: int = Field(2, ge=0, description="an LM adapter after every N-th decoder layer; 0 = none")
    prompt: str | None = Field(None, min_length=1, description="user prompt replacing the paper's prompts")
    use_prefix_cache: bool = Field(True, description="compute the prompt's LM states once per batch shape")
    prompt_seed: int = Field(0, description="seed of the per-step prompt draw in training")
    enabled: bool = Field(True, description="False: encoder, bridge and head only (the ablation)")

    def allspark_fields(self) -> dict[str, Any]:
        """The :class:`allspark.model.AllSparkConfig` fields this block sets."""
        return {
            "llm": self.llm,
            "llm_layers": self.layers,
            "adapters": {"every": self.adapter_every},
            "prompt": self.prompt,
            "use_prefix_cache": self.use_prefix_cache,
            "prompt_seed": self.prompt_seed,
            "use_language_model": self.enabled,
        }


class TrainSettings(SettingsBlock):
    """Fine-tuning: AdamW with a cosine schedule after a linear warm-up; kinds add their own sampling fields."""

    epochs: int = Field(1, ge=1)
    batch_size: int = Field(32, ge=1)
    learning_rate: float = Field(1e-3, gt=0, description="peak learning rate after warm-up")
    warmup_epochs: float = Field(0.2, ge=0, description="linear warm-up, in epochs (fractions allowed)")
    weight_decay: float = Field(0.05, ge=0)

    def schedule(self):
        """The model's :class:`allspark.model.training.TrainingSettings` (imports torch: only when training)."""
        from allspark.model.training import TrainingSettings

        return TrainingSettings(learning_rate=self.learning_rate, epochs=self.epochs,
                                warmup_epochs=self.warmup_epochs, weight_decay=self.weight_decay)


class RunConfig(StrictModel):
    """Base of every kind's run config: one output location, a seed, a fingerprint and YAML to publish.

    ``kind`` names the pipeline in error messages; ``runtime_fields`` say where and how a run
    happens without changing what it computes, so they stay out of the fingerprint (and so out of
    the work folder's name).
    """

    kind: ClassVar[str] = "run"
    runtime_fields: ClassVar[frozenset[str]] = frozenset({"output_dir"})
    block_defaults: ClassVar[dict[str, dict[str, Any]]] = {}
    """The kind's own defaults of shared blocks (e.g. ``{"language": {"layers": 2}}``): they fill the
    keys a config leaves out, whether it gives the block or not (an explicit ``null`` stays null), and are not
    counted as set by it (``model_fields_set``), so a checkpoint's settings may replace them."""
    name: str = Field(pattern=NAME_PATTERN, description="names the output folder and the work folder")
    output_dir: LocationField = Field(Path("outputs"), description="published outputs go to output_dir/name: a "
                                       "folder, or an object-storage URL (s3://bucket/prefix, gs://, az://)")
    seed: int = Field(0, description="seeds python, numpy and torch: initial weights, data order, prompts")

    @model_validator(mode="wrap")
    @classmethod
    def _fill_block_defaults(cls, data: Any, handler: ModelWrapValidatorHandler[RunConfig]) -> RunConfig:
        if not isinstance(data, dict) or not cls.block_defaults:
            return handler(data)
        data = dict(data)
        given_keys = {}
        for key, defaults in cls.block_defaults.items():
            given = data.get(key, {})
            if isinstance(given, BaseModel):
                given = given.model_dump(exclude_unset=True)
            if isinstance(given, dict):
                given_keys[key] = set(given)
                data[key] = {**defaults, **given}
        config = handler(data)
        for key, keys in given_keys.items():
            block = getattr(config, key)
            object.__setattr__(block, "__pydantic_fields_set__", block.model_fields_set & keys)
        return config

    @property
    def publish_location(self) -> Location:
        """Where this run's published outputs live: ``output_dir/name``, a local folder or a URL."""
        return join(self.output_dir, self.name)

    @property
    def publish_dir(self) -> Path:
        """The local folder of this run's published outputs (see :attr:`publish_location` for any output)."""
        if is_remote(self.output_dir):
            raise ValueError(f"run {self.name!r} publishes to {self.publish_location}, not to a local folder")
        return self.output_dir / self.name

    def fingerprint(self) -> str:
        """A short hash of everything that changes the outputs (not where they are written)."""
        payload = self.model_dump(mode="json", exclude=self.unfingerprinted_fields())
        return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]

    def unfingerprinted_fields(self) -> set[str]:
        """The fields that do not change what this run computes: the runtime fields."""
        return set(self.runtime_fields)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False)

    def input_files(self) -> list[Path]:
        """The files this run reads (their content keys the work folder); kinds with file inputs override it."""
        return []

    def work_dir(self, inputs: Iterable[Path] = ()) -> Path:
        """This run's work folder: keyed by the fingerprint and the content of its input files (and ``inputs``).

        Computed once per run (it reads the inputs) and carried in :class:`~allspark.core.steps.Ingested`.
        """
        return work_dir(self.name, self.fingerprint(), [*self.input_files(), *inputs])


class ModelRunConfig(RunConfig):
    """A run that fine-tunes AllSpark (``train``) or applies a trained model bundle (``checkpoint``).

    Kinds narrow ``train`` to their own :class:`TrainSettings` subclass and set its defaults and
    the language model's in ``block_defaults``; each has a ``model`` block (the encoder, bridge and
    head sizes) and names its model's ``modality``.
    """

    modality: ClassVar[str]
    language: LanguageModelSettings
    train: TrainSettings | None = Field(description="fine-tuning; null with a checkpoint")
    checkpoint: LocationField | None = Field(None, description="a trained model bundle to apply instead of fine-tuning "
                                             "(a folder or an object-storage URL)")
    inference_batch: int = Field(32, ge=1)

    @model_validator(mode="after")
    def _train_or_checkpoint(self) -> ModelRunConfig:
        if self.train is None and self.checkpoint is None:
            raise ValueError("give either train (fine-tune first) or checkpoint (use a trained model)")
        return self

    @property
    def fine_tunes(self) -> bool:
        """Whether this run fine-tunes a model (else it applies ``checkpoint``)."""
        return self.checkpoint is None

    def contract(self) -> dict[str, Any]:
        """The kind's own fields a model is tied to (field -> this run's value), beside its modality and sizes.

        Recorded in a bundle when it is saved; a run that applies a checkpoint must have the same values
        (:func:`allspark.core.bundle.check_checkpoint`). Kinds add theirs (bands, classes, horizon...).
        """
        return {}

    def unfingerprinted_fields(self) -> set[str]:
        """The runtime fields, and with a checkpoint the model and language blocks: the checkpoint decides those
        (:func:`allspark.core.bundle.apply_checkpoint`), so a run's work folder is the same before and after
        they are taken from it."""
        return super().unfingerprinted_fields() | ({"model", "language"} if self.checkpoint is not None else set())


Config = TypeVar("Config", bound=RunConfig)


def load_config(config_class: type[Config], path: str | Path | None = None, **overrides: object) -> Config:
    """Read a run config from YAML (or the defaults), apply overrides that are not None, validate.

    Errors name the file and the offending keys, e.g. an unknown key from a typo.
    """
    data: dict = {}
    source = "defaults"
    if path is not None:
        source = str(path)
        try:
            data = yaml.safe_load(Path(path).read_text()) or {}
        except FileNotFoundError:
            raise ConfigError(f"config file {path} does not exist") from None
        except yaml.YAMLError as err:
            raise ConfigError(f"config file {path} is not valid YAML: {err}") from None
        if not isinstance(data, dict):
            raise ConfigError(f"config file {path} must hold a mapping of keys, got {type(data).__name__}")
    data.update({k: v for k, v in overrides.items() if v is not None})
    try:
        return config_class.model_validate(data)
    except ValidationError as err:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or '<root>'}: {e['msg']}" for e in err.errors()
        )
        raise ConfigError(f"invalid {config_class.kind} config ({source}): {problems}") from None

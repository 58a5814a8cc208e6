"""Typed run configuration for the region pipeline.

Every config rejects unknown keys (``extra="forbid"``), so a typo in a YAML file fails loudly
instead of silently falling back to a default. The resolved config is written beside every
output, so a published map always says what made it.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import ClassVar, Literal, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from allspark.model.llm import SMOLLM2
from allspark.paths import cache_dir

LANDSAT7_NC_CLASSES = [
    "developed",
    "agriculture",
    "herbaceous",
    "shrubland",
    "forest",
    "water",
    "sediment",
]


class StrictModel(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ConfigError(ValueError):
    """A run configuration that cannot be used; the message names the file and the key."""


class RunConfig(StrictModel):
    """Base of every flow's run config: a fingerprint of what changes the outputs, and YAML to publish.

    ``kind`` names the flow in error messages; ``runtime_fields`` say where and how a run happens
    without changing what it computes, so they stay out of the fingerprint (and the work folder name).
    """

    kind: ClassVar[str] = "run"
    runtime_fields: ClassVar[frozenset[str]] = frozenset({"output_dir"})
    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$", description="names the output folder and the work folder")
    output_dir: Path = Field(Path("outputs"), description="published outputs go to output_dir/name")
    seed: int = Field(0, description="seeds python, numpy and torch: initial weights, data order, prompts")

    def fingerprint(self) -> str:
        """A short hash of everything that changes the outputs (not where they are written)."""
        payload = self.model_dump(mode="json", exclude=set(self.runtime_fields))
        return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False)

    def work_dir(self) -> Path:
        """Intermediate stores of this config (reused by reruns, resumable); outside the output folder."""
        return cache_dir() / "work" / f"{self.name}-{self.fingerprint()}"


Config = TypeVar("Config", bound=RunConfig)


class ChipConfig(StrictModel):
    """How the loaded raster is cut into chips (in pixels, by dimension name)."""

    size: int = Field(16, ge=4, description="Chip height and width in pixels.")
    overlap: int = Field(8, ge=0, description="Pixels shared by neighbouring chips.")
    batch: int = Field(64, ge=1, description="Chips per Zarr chunk and per inference task.")

    @model_validator(mode="after")
    def _overlap_below_size(self) -> "ChipConfig":
        if self.overlap >= self.size:
            raise ValueError(f"chips.overlap ({self.overlap}) must be smaller than chips.size ({self.size})")
        return self


class TrainConfig(StrictModel):
    """Fine-tuning on labelled pixels of the catalog (a STAC label item over the imagery)."""

    label_item: str | None = Field(
        None, description="Id of the STAC label item; default: the label item whose source is the image."
    )
    epochs: int = Field(6, ge=1)
    batch_size: int = Field(32, ge=1)
    learning_rate: float = Field(1e-3, gt=0)
    warmup_epochs: int = Field(1, ge=0)
    weight_decay: float = Field(0.01, ge=0)
    holdout: Literal["regions", "pixels"] = Field(
        "regions", description="Hold out whole labelled regions (honest) or random pixels (optimistic)."
    )
    holdout_fraction: float = Field(0.3, gt=0, lt=1)
    max_train_pixels: int | None = Field(
        None, ge=1, description="Cap on training pixels (stratified), for quick runs and tests."
    )


class RegionModelConfig(BaseModel):
    """The multispectral AllSpark model that maps a region, in the region config's flat form.

    It becomes an :class:`allspark.model.AllSparkConfig` for the ``multispectral`` modality with a
    dense (per-pixel) classification head; see :meth:`allspark_config`.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    llm: str = Field(SMOLLM2, description='"smollm2" (registry wheel), a local path or a cached HF model id')
    llm_layers: int | None = Field(4, ge=1, description="keep the first N decoder layers of the LM (None: all)")
    patch_size: int = Field(2, ge=1)
    stem_dim: int = Field(128, ge=4, multiple_of=4, description="token width of the DOFA stem")
    trunk_depth: int = Field(0, ge=0, description="ViT layers after the stem (0: stem only, fastest on a CPU)")
    num_queries: int = Field(16, ge=1)
    bridge_depth: int = Field(2, ge=1)
    bridge_heads: int = Field(8, ge=1)
    adapter_every: int = Field(2, ge=0, description="an LM adapter after every N-th decoder layer; 0 = none")
    num_classes: int = Field(ge=2)
    prompt: str | None = Field(None, min_length=1, description="user prompt replacing the paper's MSI prompts")
    use_prefix_cache: bool = True
    prompt_seed: int = Field(0, description="seed of the per-step prompt draw in training")
    use_language_model: bool = Field(True, description="False: encoder, bridge and head only (the ablation)")

    def allspark_config(self, class_names: list[str]):
        """The model's :class:`allspark.model.AllSparkConfig`."""
        from allspark.model.model import AllSparkConfig  # the model package imports torch: only when needed

        return AllSparkConfig(
            modality="multispectral",
            llm=self.llm,
            llm_layers=self.llm_layers,
            encoder={"patch_size": self.patch_size, "width": self.stem_dim, "depth": self.trunk_depth},
            bridge={"num_queries": self.num_queries, "depth": self.bridge_depth, "heads": self.bridge_heads},
            adapters={"every": self.adapter_every},
            head={"kind": "dense_classification", "num_classes": self.num_classes},
            class_names=class_names,
            prompt=self.prompt,
            use_prefix_cache=self.use_prefix_cache,
            prompt_seed=self.prompt_seed,
            use_language_model=self.use_language_model,
        )


class RegionConfig(RunConfig):
    """Everything one run of the region flow needs; the defaults are the embedded demo."""

    kind: ClassVar[str] = "region"
    runtime_fields: ClassVar[frozenset[str]] = frozenset({"output_dir", "dask_address", "n_workers"})

    name: str = Field("demo", pattern=r"^[A-Za-z0-9_.-]+$")
    catalog: str = Field("demo", description="A name under catalogs/ or a path to a catalog YAML.")
    aoi: str | None = Field(None, description="GeoJSON file or 'minx,miny,maxx,maxy' in lon/lat; none = all.")
    datetime: tuple[str, str] | None = Field(None, description="Inclusive date range, ISO 8601.")
    bands: list[str] = Field(default_factory=lambda: ["B1", "B2", "B3", "B4", "B5", "B7"], min_length=1)
    loader: Literal["odc", "stackstac"] = "odc"
    composite: Literal["median", "first"] = "median"
    resolution: float | None = Field(None, gt=0, description="Output pixel size in CRS units; none = native.")
    chips: ChipConfig = Field(default_factory=ChipConfig)
    model: RegionModelConfig = Field(default_factory=lambda: RegionModelConfig(num_classes=len(LANDSAT7_NC_CLASSES)))
    class_names: list[str] = Field(default_factory=lambda: list(LANDSAT7_NC_CLASSES))
    train: TrainConfig | None = Field(default_factory=TrainConfig)
    checkpoint: Path | None = Field(None, description="Use this checkpoint instead of fine-tuning.")
    inference_batch: int = Field(32, ge=1)
    dask_address: str | None = Field(None, description="Existing Dask scheduler; none = a local cluster.")
    n_workers: int = Field(2, ge=1)

    @model_validator(mode="after")
    def _consistent(self) -> "RegionConfig":
        if self.model.num_classes != len(self.class_names):
            raise ValueError(
                f"model.num_classes ({self.model.num_classes}) must equal the number of class_names "
                f"({len(self.class_names)})"
            )
        if self.train is None and self.checkpoint is None:
            raise ValueError("give either train (fine-tune first) or checkpoint (use a trained model)")
        return self

    @property
    def region_dir(self) -> Path:
        """Where this region's published outputs live."""
        return self.output_dir / self.name


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


def load_region_config(path: str | Path | None = None, **overrides: object) -> RegionConfig:
    """The region flow's config: see :func:`load_config`."""
    return load_config(RegionConfig, path, **overrides)

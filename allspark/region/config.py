"""The region run config: which catalog, area, dates and bands; how chips are cut; the model and its training.

The defaults are the embedded demo (Landsat 7 over North Carolina, seven land-cover classes).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from pydantic import Field, model_validator

from allspark import settings
from allspark.core.config import (
    NAME_PATTERN,
    LanguageModelSettings,
    ModelRunConfig,
    SettingsBlock,
    TrainSettings,
    load_config,
)
from allspark.core.location import Location, LocationField
from allspark.raster.filters import SearchFilters
from allspark.region.labels import LabelsSettings, file_class_names

if TYPE_CHECKING:
    from allspark.raster.catalog import BandSpec

MAX_MASKED_FRACTION = 0.8
"""Default limit of an item's masked (cloud, shadow) share of the AOI; items above it are skipped."""

LANDSAT7_NC_CLASSES = [
    "developed",
    "agriculture",
    "herbaceous",
    "shrubland",
    "forest",
    "water",
    "sediment",
]


class ChipConfig(SettingsBlock):
    """How inference cuts chips from the scene (in pixels, by dimension name) and the blocks it works in."""

    size: int = Field(16, ge=4, description="Chip height and width in pixels.")
    overlap: int = Field(11, ge=0, description="Pixels shared by neighbouring chips (blended with smooth weights). "
                         "An odd stride (size - overlap) with 2 px patches mixes the patch phases of the chips "
                         "blended at each pixel, so no patch grid shows; bench.mapcost measures the choice.")
    block: int = Field(256, ge=16, description="Side of the scene store's blocks: one inference task each.")

    @model_validator(mode="after")
    def _consistent(self) -> ChipConfig:
        if self.overlap >= self.size:
            raise ValueError(f"chips.overlap ({self.overlap}) must be smaller than chips.size ({self.size})")
        if self.block < self.size:
            raise ValueError(f"chips.block ({self.block}) must be at least chips.size ({self.size})")
        return self


class RegionTrainSettings(TrainSettings):
    """Fine-tuning on labelled pixels: the catalog's STAC label item over the imagery, or a file of the user's own."""

    label_item: str | None = Field(
        None, description="Id of the STAC label item; default: the label item whose source is the image."
    )
    labels: LabelsSettings | None = Field(
        None, exclude_if=lambda labels: labels is None,  # absent: the fingerprint it had before the field existed
        description="Your own labels instead of a STAC label item: a vector file (GeoJSON, GeoParquet, GeoPackage, "
        "Shapefile; polygons or points, any CRS) with a class_column of class names or codes 1..N, or a label "
        "raster of codes (a path alone). Without class_names in the config, a column of names gives them (sorted).")
    holdout: Literal["regions", "pixels"] = Field(
        "regions", description="Hold out whole labelled regions (honest) or random pixels (optimistic)."
    )
    holdout_fraction: float = Field(0.3, gt=0, lt=1)
    max_train_pixels: int | None = Field(
        None, ge=1, description="Cap on training pixels (stratified), for quick runs and tests."
    )

    @model_validator(mode="after")
    def _one_label_source(self) -> RegionTrainSettings:
        if self.labels is not None and self.label_item is not None:
            raise ValueError(f"give train.labels (your own file, {self.labels.path}) or train.label_item (the "
                             f"catalog's STAC label item {self.label_item!r}), not both")
        return self


class RegionModelConfig(SettingsBlock):
    """The multispectral encoder, bridge and dense head (the language model is the ``language`` block)."""

    patch_size: int = Field(2, ge=1)
    stem_dim: int = Field(128, ge=4, multiple_of=4, description="token width of the DOFA stem")
    trunk_depth: int = Field(0, ge=0, description="ViT layers after the stem (0: stem only, fastest on a CPU)")
    num_queries: int = Field(16, ge=1)
    bridge_depth: int = Field(2, ge=1)
    bridge_heads: int = Field(8, ge=1)

    def allspark_config(self, class_names: list[str], language: LanguageModelSettings) -> Any:
        """The model's :class:`allspark.model.AllSparkConfig` (a per-pixel classification head)."""
        from allspark.model.model import AllSparkConfig  # the model package imports torch: only when needed

        return AllSparkConfig(
            modality="multispectral",
            encoder={"patch_size": self.patch_size, "width": self.stem_dim, "depth": self.trunk_depth},
            bridge={"num_queries": self.num_queries, "depth": self.bridge_depth, "heads": self.bridge_heads},
            head={"kind": "dense_classification", "num_classes": len(class_names)},
            class_names=class_names,
            **language.allspark_fields(),
        )


class RegionConfig(ModelRunConfig):
    """Everything one run of the region pipeline needs; the defaults are the embedded demo."""

    kind: ClassVar[str] = "region"
    modality: ClassVar[str] = "multispectral"
    runtime_fields: ClassVar[frozenset[str]] = frozenset({"output_dir", "work_root", "dask_address", "n_workers"})
    block_defaults: ClassVar[dict[str, dict[str, Any]]] = {
        "language": {"layers": 4},
        "train": {"epochs": 6, "learning_rate": 1e-3, "warmup_epochs": 1, "weight_decay": 0.01},
    }

    name: str = Field("demo", pattern=NAME_PATTERN)
    catalog: str = Field("demo", description="A name under catalogs/ or a path to a catalog YAML.")
    aoi: str | None = Field(None, description="GeoJSON file or 'minx,miny,maxx,maxy' in lon/lat; none = all.")
    datetime: tuple[str, str] | None = Field(None, description="Inclusive date range, ISO 8601.")
    search: SearchFilters | None = Field(
        None, description="STAC query and/or CQL2 filter, sortby and max_items of the catalog search; "
        "a STAC API evaluates them, a static catalog with the same meaning (allspark.raster.filters).")
    bands: list[str] = Field(default_factory=lambda: ["B1", "B2", "B3", "B4", "B5", "B7"], min_length=1)
    loader: Literal["auto", "rasterio", "odc", "stackstac"] = Field(
        "auto", description="Pixel reader: rasterio windows when the assets lie on the output grid, else odc-stac (auto).")
    composite: Literal["median", "first"] = "median"
    cloud_mask: bool = Field(
        True, description="Drop the pixels the catalog's mask block flags (clouds, shadows) from each item before "
        "compositing and skip items masked over more than max_masked_fraction of the AOI; false composites them as "
        "they are. Nothing changes for a catalog without a mask block.")
    max_masked_fraction: float = Field(
        MAX_MASKED_FRACTION, ge=0, le=1, description="Skip items whose masked share of the AOI exceeds this.")
    resolution: float | None = Field(None, gt=0, description="Output pixel size in CRS units; none = native.")
    chips: ChipConfig = Field(default_factory=ChipConfig)
    class_names: list[str] = Field(default_factory=lambda: list(LANDSAT7_NC_CLASSES), min_length=2)
    model: RegionModelConfig = Field(default_factory=RegionModelConfig)
    train: RegionTrainSettings | None = Field(description="fine-tuning; null with a checkpoint")
    dask_address: str | None = Field(None, description="Existing Dask scheduler; none = a local cluster.")
    n_workers: int = Field(2, ge=1)
    work_root: LocationField | None = Field(
        None, description="Where the run's work folder (scene and prediction stores, fine-tuned model) goes: a folder "
        "or an object-storage URL, which a Dask cluster without a shared disk needs; none = <cache>/work.")

    @property
    def work_location(self) -> Location:
        """The parent of this run's work folder: ``work_root``, else the cache's work folder on this machine."""
        return self.work_root if self.work_root is not None else settings.work_root()

    @model_validator(mode="after")
    def _class_names_from_labels(self) -> RegionConfig:
        """Without ``class_names``, a labels file whose class column holds names gives them (sorted): set here, so
        the config a run fingerprints, gives the model head and stores beside its outputs carries them."""
        labels = self.train.labels if self.train is not None and self.checkpoint is None else None
        if labels is not None and "class_names" not in self.model_fields_set:
            names = file_class_names(labels)
            if names is not None:
                self.class_names = names
        return self

    def unfingerprinted_fields(self) -> set[str]:
        """The runtime fields, an absent or empty ``search`` block (it filters nothing) and the masking fields at
        their defaults, so a config without them keeps the fingerprint (and the work folder) it had before they
        existed."""
        empty = self.search is None or self.search.is_empty
        defaults = {name for name in ("cloud_mask", "max_masked_fraction")
                    if getattr(self, name) == type(self).model_fields[name].default}
        return super().unfingerprinted_fields() | ({"search"} if empty else set()) | defaults

    def contract(self, bands: Sequence[BandSpec] = ()) -> dict[str, Any]:
        """The band names and class names in order, and the bands' centre wavelengths when the catalog's
        ``bands`` are known (a run's plan resolves them): what a region model is tied to."""
        fields: dict[str, Any] = {"bands": list(self.bands), "class_names": list(self.class_names)}
        if bands:
            fields["wavelengths"] = [band.center_wavelength for band in bands]
        return fields


def load_region_config(path: str | Path | None = None, **overrides: object) -> RegionConfig:
    """The region run config: see :func:`allspark.core.config.load_config`."""
    return load_config(RegionConfig, path, **overrides)

"""The published rasters of a region run: class-map and probability COGs, and the quicklook.

The COGs are written from the probability store window by window (memory depends on the window,
never on the area), to a hidden temporary GeoTIFF, then translated to a COG under a temporary
name and moved into place (:func:`allspark.core.atomic.atomic_file`).
"""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import rasterio  # noqa: E402
from matplotlib.colors import ListedColormap  # noqa: E402
from matplotlib.patches import Patch  # noqa: E402
from rio_cogeo.cogeo import cog_translate  # noqa: E402
from rio_cogeo.profiles import cog_profiles  # noqa: E402

from allspark.core.atomic import atomic_file  # noqa: E402
from allspark.raster.scene import Scene, read_probabilities  # noqa: E402
from allspark.raster.windows import windows  # noqa: E402

CLASS_NODATA = 0
# Colours for the Landsat 7 NC classes, in class order; other class sets cycle through tab20.
DEFAULT_COLOURS = ["#d7191c", "#f5d300", "#a6d96a", "#8c7a3f", "#1a7837", "#2b83ba", "#c2a47a"]
WRITE_WINDOW = {"y": 512, "x": 512}


def class_colours(n: int) -> list[str]:
    if n <= len(DEFAULT_COLOURS):
        return DEFAULT_COLOURS[:n]
    cmap = plt.get_cmap("tab20")
    return [matplotlib.colors.to_hex(cmap(i % 20)) for i in range(n)]


COG_CACHE_BYTES = 64 * 2**20
"""GDAL's block cache while a COG is written: its default (5 % of RAM) fills with the whole raster
while overviews are built, so the memory of publishing would grow with the area."""


def _to_cog(src: Path, final: Path, resampling: str) -> None:
    with atomic_file(final) as tmp, rasterio.Env(GDAL_CACHEMAX=COG_CACHE_BYTES):
        cog_translate(
            str(src), str(tmp), cog_profiles.get("deflate"), overview_resampling=resampling,
            forward_band_tags=True, in_memory=False, quiet=True,  # keep the class names of the class map
        )


def write_prediction_rasters(
    probabilities_store: Path,
    scene: Scene,
    class_names: Sequence[str],
    classmap_path: Path,
    probabilities_path: Path,
) -> dict[str, int]:
    """Write the class-map COG and the probability COG from the probability store; return pixels per class.

    Class values are 1..K (0 is nodata, where no input band had data); the class map carries a
    colour table and class names.
    """
    colours = class_colours(len(class_names))
    base = dict(
        driver="GTiff", width=scene.width, height=scene.height, crs=scene.crs,
        transform=rasterio.Affine(*scene.transform), tiled=True, blockxsize=256, blockysize=256, compress="deflate",
    )
    counts = np.zeros(len(class_names) + 1, dtype=np.int64)
    with tempfile.TemporaryDirectory(dir=classmap_path.parent, prefix=".rasters-") as work:
        class_tif, prob_tif = Path(work) / "classmap.tif", Path(work) / "probabilities.tif"
        with (
            rasterio.open(class_tif, "w", count=1, dtype="uint8", nodata=CLASS_NODATA, **base) as classes,
            rasterio.open(prob_tif, "w", count=len(class_names), dtype="float32", nodata=np.nan, **base) as probs,
        ):
            for window in windows(scene.sizes, WRITE_WINDOW):
                prob = read_probabilities(probabilities_store, window)
                has_data = np.isfinite(prob).all(axis=0)
                label = np.where(has_data, np.nan_to_num(prob, nan=-1.0).argmax(axis=0) + 1, CLASS_NODATA)
                label = label.astype("uint8")
                target = rasterio.windows.Window.from_slices(window["y"], window["x"])
                classes.write(label, 1, window=target)
                probs.write(prob, window=target)
                counts += np.bincount(label.ravel(), minlength=len(counts))
            classes.write_colormap(
                1, {i + 1: tuple(int(c * 255) for c in matplotlib.colors.to_rgb(h)) + (255,) for i, h in enumerate(colours)}
            )
            classes.update_tags(1, **{f"class_{i + 1}": name for i, name in enumerate(class_names)})
            for i, name in enumerate(class_names, start=1):
                probs.set_band_description(i, f"probability of {name}")
        _to_cog(class_tif, classmap_path, resampling="mode")
        _to_cog(prob_tif, probabilities_path, resampling="average")
    return {name: int(counts[i + 1]) for i, name in enumerate(class_names)}


def write_quicklook(
    classmap_path: Path, rgb: np.ndarray | None, class_names: Sequence[str], title: str, path: Path
) -> None:
    """A PNG of the class map (beside an RGB view of the input when given) with a legend."""
    with rasterio.open(classmap_path) as src:
        scale = max(1, int(np.ceil(max(src.width, src.height) / 1024)))
        classes = src.read(1, out_shape=(src.height // scale, src.width // scale), resampling=rasterio.enums.Resampling.mode)
    colours = class_colours(len(class_names))
    cmap = ListedColormap(["#ffffff"] + colours)
    panels = 2 if rgb is not None else 1
    fig, axes = plt.subplots(1, panels, figsize=(6.5 * panels, 6.5), squeeze=False)
    if rgb is not None:
        axes[0, 0].imshow(rgb)
        axes[0, 0].set_title("input (RGB, 2-98 % stretch)")
    ax = axes[0, -1]
    ax.imshow(classes, cmap=cmap, vmin=0, vmax=len(class_names), interpolation="nearest")
    ax.set_title("predicted land cover")
    for a in axes.ravel():
        a.set_axis_off()
    handles = [Patch(color=c, label=f"{i + 1} {n}") for i, (n, c) in enumerate(zip(class_names, colours))]
    fig.legend(handles=handles, loc="lower center", ncol=min(4, len(handles)), frameon=False)
    fig.suptitle(title)
    fig.tight_layout(rect=(0, 0.08, 1, 0.95))
    with atomic_file(path) as tmp:
        fig.savefig(tmp, dpi=90, format="png")
    plt.close(fig)



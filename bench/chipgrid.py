"""The chip grid in a land-cover map: where its class boundaries fall, modulo the chip stride, against uniform.

A map predicted chip by chip at a fixed stride can show a staircase that follows the chips: each
chip's context decides its pixels, so boundaries pile up at some offsets from the chip origins.
For every pair of neighbouring pixels with data and different classes, the boundary's position
(the index of the second pixel, on the scene grid, where the chips start at 0) is taken modulo the
stride; the share of boundaries at each offset, divided by the uniform share 1/stride, is 1.0
everywhere for a map without a grid. Columns (boundaries between left and right neighbours) and
rows are counted apart (:func:`bench.landcover.offset_ratios`, which bench.mapcost reports per
setting too). Goal (issue 16): no offset above 1.2x.

The reference is a random forest on each pixel's band values (the land-cover benchmark's first
baseline, trained on the same training pixels), which predicts every pixel on its own and so has
no grid: the figure it gets is what the map's own boundaries give without one. Both maps are
scored over the same window of the scene (the labelled area plus one chip).

    make demo && python -m bench.chipgrid                  # the published demo map (not in the suite: it needs it)
    python -m bench.chipgrid --map path/to/classmap.tif    # another map of the demo scene (same grid)
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import rasterio
from sklearn.ensemble import RandomForestClassifier

from bench import landcover
from bench.common import environment, write_results

GOAL = 1.2
DEFAULT_MAP = Path("outputs") / "demo" / "classmap.tif"


def forest_map(data: landcover.LandCover, seed: int = 0) -> np.ndarray:
    """Classes 1..K of every pixel with data in ``data.image``, from a random forest on the pixel's band values."""
    forest = RandomForestClassifier(n_estimators=landcover.RF_TREES, n_jobs=-1, random_state=seed)
    forest.fit(data.image[:, data.train.rows, data.train.cols].T, data.train.classes)
    bands, height, width = data.image.shape
    pixels = data.image.reshape(bands, -1).T
    has_data = np.isfinite(pixels).any(axis=1)
    classes = np.zeros(height * width, dtype="int64")
    classes[has_data] = forest.predict(pixels[has_data]) + 1
    return classes.reshape(height, width)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--map", type=Path, default=DEFAULT_MAP, help="class-map COG of the demo scene "
                        f"(default: {DEFAULT_MAP}, what `make demo` publishes)")
    parser.add_argument("--quick", action="store_true", help="the same (it takes seconds)")
    args = parser.parse_args()
    if not args.map.is_file():
        raise SystemExit(f"no class map at {args.map}: run `make demo` first, or pass --map")
    data = landcover.prepare(**landcover.DEFAULT)
    window = data.window
    with rasterio.open(args.map) as src:
        published = src.read(1, window=((window["y"].start, window["y"].stop), (window["x"].start, window["x"].stop)))
    settings = data.config.chips
    stride = settings.size - settings.overlap
    origin = (window["y"].start, window["x"].start)
    maps = {"AllSpark (published map)": published, "random forest, pixel bands": forest_map(data)}
    rows = [{"map": name, "stride": stride, **landcover.offset_ratios(classmap, stride, origin)} for name, classmap in maps.items()]
    for row in rows:
        row["worst"] = max(max(row["columns"]), max(row["rows"]))
    allspark = rows[0]
    headline = (f"Chip grid in the demo map: boundaries at the worst offset modulo the {stride} px stride "
                f"{allspark['worst']:.2f}x the uniform share (goal at most {GOAL}x; random forest "
                f"{rows[1]['worst']:.2f}x).")
    result = {
        "benchmark": "chipgrid",
        "title": "Chip grid in the land-cover map: class boundaries per offset modulo the chip stride",
        **environment(),
        "settings": {"map": str(args.map), "chips": settings.model_dump(), "window": {
            axis: [part.start, part.stop] for axis, part in window.items()}, "goal": GOAL},
        "rows": rows,
        "headline": [headline],
        "notes": [headline,
                  "1.00 at every offset is a map without a grid; the random forest predicts each pixel alone."],
    }
    offsets = range(stride)
    table = [
        "| map | axis | " + " | ".join(f"offset {k}" for k in offsets) + " | worst |",
        "|---|---|" + "---:|" * (stride + 1),
        *(f"| {row['map']} | {axis} | " + " | ".join(f"{value:.2f}" for value in row[axis])
          + f" | {max(row[axis]):.2f} |" for row in rows for axis in ("columns", "rows")),
    ]
    write_results("chipgrid", result, table)


if __name__ == "__main__":
    main()

"""The two Zarr stores of a region run: the scene (written once, digital numbers) and its class probabilities.

The **scene store** holds the loaded raster once, in its storage dtype (e.g. uint16, see
:func:`allspark.raster.load.storage_encoding`), in square chunks of whole inference blocks (about
:data:`SCENE_CHUNK` px: fewer, larger chunks write faster and cost inference nothing, which reads a
block plus its halo wherever it lies); the bands' scale, offset, nodata and wavelengths travel
with it as one typed :class:`Scene` record. Chips are never stored: inference cuts them in memory
from a block plus a halo.

The **probability store** holds per-pixel class probabilities on the scene's grid, in the same
blocks, and one small table per block of the chips it owns (origin, class, score), written last:
that file is the block's "done" flag, so a rerun predicts only the blocks without one.

Both stores may live in a local folder or on object storage (a URL): the workers of a Dask
cluster without a shared disk write their blocks to the bucket directly.
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence

import dask
import dask.array as dsa
import numpy as np
import pandas as pd
import xarray as xr
import zarr
from pydantic import BaseModel, ConfigDict
from zarr.codecs import BloscCodec

from allspark.core.atomic import atomic_dir, is_complete, write_bytes
from allspark.core.location import Location, exists, join, list_folder, read_bytes, zarr_store
from allspark.raster.catalog import BandSpec
from allspark.raster.load import Encoding, physical_values
from allspark.raster.windows import Window, chip_origins, cut_chips, windows

SCENE_COMPRESSORS = (BloscCodec(cname="lz4", clevel=1, shuffle="shuffle"),)
"""LZ4 with byte shuffle for the scene's digital numbers, written once at the speed of the read: on the
benchmark mosaic (6 x 4096^2 uint16, 512 px chunks, read and written by 2 threads) 82 MB against the
source COGs' 103 MB in 0.75 s, where zstd level 1 gave 61 MB in 1.07 s and no compression 201 MB in 0.68 s."""
PROBABILITY_COMPRESSORS = (BloscCodec(cname="zstd", clevel=1, shuffle="shuffle"),)
"""zstd level 1 for the float32 class probabilities: smaller than LZ4, and written block by block
beside the model's far slower inference."""
SCENE_CHUNK = 512
"""Target side of the scene store's chunks in px (a whole number of inference blocks): the usual COG
tile. 256 px chunks wrote the benchmark mosaic 1.3x slower (per-chunk overhead of the Zarr write)."""
WRITE_EVERY_CHUNK = {"write_empty_chunks": True}
"""Store every chunk without first comparing it to the fill value: halves the write time of the scene."""
BLOCKS = "blocks"
"""The probability store's folder of chip tables, one per predicted block (the blocks' done flags)."""


class Scene(BaseModel):
    """What the scene store holds and where it lies: the grid, the block size and the bands."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    height: int
    width: int
    crs: str
    transform: tuple[float, float, float, float, float, float]
    block: int
    bands: list[BandSpec]
    dtype: str
    nodata: float | None  # None: NaN (float storage)
    items: list[str]

    @property
    def encoding(self) -> Encoding:
        return Encoding(self.dtype, float("nan") if self.nodata is None else self.nodata)

    @property
    def sizes(self) -> dict[str, int]:
        return {"y": self.height, "x": self.width}

    def blocks(self) -> list[Window]:
        """The store's blocks, row-major."""
        return list(windows(self.sizes, {"y": self.block, "x": self.block}))

    def block_id(self, window: Window) -> str:
        return f"{window['y'].start // self.block}-{window['x'].start // self.block}"

    @property
    def pixel_area(self) -> float:
        return abs(self.transform[0] * self.transform[4])

    @property
    def bounds(self) -> tuple[float, float, float, float]:
        a, _, c, _, e, f = self.transform
        return (c, f + e * self.height, c + a * self.width, f)


def write_scene(raster: xr.DataArray, bands: Sequence[BandSpec], encoding: Encoding, store: Location,
                block: int) -> tuple[Scene, int]:
    """Write the lazy ``(band, y, x)`` DN raster once into ``store`` (atomically); return it and its valid pixels.

    Each chunk's valid pixels (with data in any band, and in each band) are counted as it is
    written: no second pass over the data.
    """
    rows, cols = raster.sizes["y"], raster.sizes["x"]
    scene = Scene(
        height=rows, width=cols, crs=raster.rio.crs.to_string(), transform=tuple(raster.rio.transform())[:6],
        block=block, bands=list(bands), dtype=encoding.dtype,
        nodata=None if math.isnan(encoding.nodata) else encoding.nodata,
        items=list(raster.attrs.get("stac_items", [])),
    )
    data = raster.data if isinstance(raster.data, dsa.Array) else dsa.from_array(raster.data)
    chunk = scene_chunk(block)
    data = data.rechunk((data.shape[0], _aligned(data.chunks[1], chunk), _aligned(data.chunks[2], chunk)))
    with atomic_dir(store) as tmp:
        group = zarr.open_group(zarr_store(tmp), mode="w", zarr_format=3)
        group.attrs["scene"] = scene.model_dump(mode="json")
        target = group.create_array(
            "dn", shape=data.shape, chunks=(data.shape[0], chunk, chunk), dtype=encoding.dtype,
            fill_value=encoding.nodata, compressors=SCENE_COMPRESSORS, dimension_names=("band", "y", "x"),
            config=WRITE_EVERY_CHUNK,
        )
        counts = data.map_blocks(_store_chunk, target=target, encoding=encoding, dtype=np.int64,
                                 chunks=((1 + data.shape[0],), *((1,) * len(c) for c in data.chunks[1:])))
        with dask.config.set(scheduler="threads"):
            valid_pixels, *per_band = counts.sum(axis=(1, 2)).compute().tolist()
        group.attrs["valid_pixels"] = valid_pixels
        group.attrs["valid_pixels_per_band"] = dict(zip((b.name for b in bands), per_band, strict=True))
    return scene, valid_pixels


def scene_chunk(block: int) -> int:
    """Side of the scene store's chunks for inference blocks of ``block`` px: whole blocks, about :data:`SCENE_CHUNK`."""
    return block * max(1, SCENE_CHUNK // block)


def _store_chunk(values: np.ndarray, target: zarr.Array, encoding: Encoding, block_info: dict) -> np.ndarray:
    """Write one dask chunk of DNs to its place in ``target``; return its pixels with data in any band, then in each."""
    (b0, b1), (y0, y1), (x0, x1) = block_info[0]["array-location"]
    target[b0:b1, y0:y1, x0:x1] = values
    valid = values != encoding.nodata if encoding.is_integer else ~np.isnan(values)
    counts = [np.count_nonzero(valid.any(axis=0)), *(np.count_nonzero(band) for band in valid)]  # 3x faster than axis=
    return np.asarray(counts, dtype=np.int64).reshape(-1, 1, 1)


def _aligned(chunks: tuple[int, ...], chunk: int) -> int:
    """A dask chunk length that is a whole number of store chunks, about the loader's first chunk."""
    return max(chunk, chunks[0] // chunk * chunk)


def _read(store: Location) -> zarr.Group:
    return zarr.open_group(zarr_store(store, read_only=True), mode="r")


def open_scene(store: Location) -> tuple[Scene, zarr.Array]:
    """The scene record and its lazy DN array."""
    group = _read(store)
    return Scene.model_validate(group.attrs["scene"]), group["dn"]


def valid_pixels(store: Location) -> int:
    """Pixels with data in any band, counted when the scene was written."""
    return int(_read(store).attrs["valid_pixels"])


def valid_pixels_per_band(store: Location) -> dict[str, int]:
    """Pixels with data in each band (by band name), counted when the scene was written (none in an older store)."""
    return dict(_read(store).attrs.get("valid_pixels_per_band", {}))


def read_values(scene: Scene, dn: zarr.Array, window: Window) -> np.ndarray:
    """float32 physical values ``(band, y, x)`` of a window (NaN where no data)."""
    return physical_values(dn[:, window["y"], window["x"]], scene.bands, scene.encoding)


def block_chips(scene: Scene, dn: zarr.Array, window: Window, size: int, overlap: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The scene-wide chips over a block, cut in memory from the block plus its halo, and their origins.

    Returns ``(chips, rows, cols)``: ``(n, band, size, size)`` physical values (NaN for no data) and the
    chips' scene origins. The layout is the scene's (:func:`chip_origins`), whatever the block.
    """
    rows, cols = chip_origins(window, scene.height, scene.width, size, overlap)
    top, left = int(rows.min()), int(cols.min())
    halo = {"y": slice(top, min(scene.height, int(rows.max()) + size)),
            "x": slice(left, min(scene.width, int(cols.max()) + size))}
    values = read_values(scene, dn, halo)
    values = np.pad(values, ((0, 0), (0, max(0, size - values.shape[1])), (0, max(0, size - values.shape[2]))),
                    constant_values=np.nan)  # a scene smaller than one chip
    return cut_chips(values, rows - top, cols - left, size), rows, cols


def create_probabilities(store: Location, scene: Scene, classes: int) -> None:
    """Create the empty probability store on the scene's grid (atomically); a complete one is kept."""
    if is_complete(store):
        return
    with atomic_dir(store) as tmp:
        group = zarr.open_group(zarr_store(tmp), mode="w", zarr_format=3)
        group.create_array(
            "probabilities", shape=(classes, scene.height, scene.width), chunks=(classes, scene.block, scene.block),
            dtype="float32", fill_value=np.nan, compressors=PROBABILITY_COMPRESSORS, dimension_names=("class", "y", "x"),
            config=WRITE_EVERY_CHUNK,
        )


def _chip_tables(store: Location) -> list[str]:
    """The names of the probability store's chip tables: one per block done."""
    return [name for name in list_folder(join(store, BLOCKS)) if name.endswith(".parquet")]


def pending_blocks(store: Location, scene: Scene) -> list[Window]:
    """Blocks without a chip table yet: not predicted, or cut short by a crash."""
    done = set(_chip_tables(store))
    return [w for w in scene.blocks() if f"{scene.block_id(w)}.parquet" not in done]


def block_done(store: Location, scene: Scene, window: Window) -> bool:
    """Whether the block's chip table (its done flag) is stored."""
    return exists(join(store, BLOCKS, f"{scene.block_id(window)}.parquet"))


def write_block(store: Location, scene: Scene, window: Window, probabilities: np.ndarray, chips: pd.DataFrame) -> None:
    """Write a block's probabilities, then its chip table (the done flag), each complete or not at all.

    A block covers whole chunks of the store, so workers writing blocks at once never share a chunk.
    """
    zarr.open_group(zarr_store(store), mode="r+")["probabilities"][:, window["y"], window["x"]] = probabilities
    table = io.BytesIO()
    chips.to_parquet(table, index=False)
    write_bytes(table.getvalue(), join(store, BLOCKS, f"{scene.block_id(window)}.parquet"))


def read_probabilities(store: Location, window: Window) -> np.ndarray:
    return _read(store)["probabilities"][:, window["y"], window["x"]]


def read_chip_tables(store: Location) -> pd.DataFrame:
    """Every block's chips (row, col, class_index, score), in block order."""
    tables = [pd.read_parquet(io.BytesIO(read_bytes(join(store, BLOCKS, name)))) for name in _chip_tables(store)]
    return pd.concat(tables, ignore_index=True) if tables else pd.DataFrame(
        {"row": [], "col": [], "class_index": [], "score": []})

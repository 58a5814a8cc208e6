"""The offline STAC validator itself: a schema without a local copy fails, and the benchmark mosaic's items validate.

Every catalog a flow or the demo writes is validated where that test already produces it
(test_region_flow, test_sensors, test_trajectories, test_traffic, test_backfill, test_demo_data);
test_region_flow also shows the validator refusing broken copies of a real published item.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.stac_schemas import StacSchemaError, validate


def catalog(**fields) -> dict:
    return {"type": "Catalog", "stac_version": "1.1.0", "id": "c", "description": "d", "links": []} | fields


def test_a_valid_catalog_passes_and_a_broken_one_fails() -> None:
    validate(catalog())
    with pytest.raises(StacSchemaError, match="'description' is a required property"):
        validate({key: value for key, value in catalog().items() if key != "description"})


@pytest.mark.parametrize(("fields", "missing"), [
    ({"stac_extensions": ["https://stac-extensions.github.io/mlm/v1.5.0/schema.json"]}, "mlm/v1.5.0"),
    ({"stac_version": "1.0.0"}, "v1.0.0/catalog-spec"),
    ({"stac_extensions": ["http://example.com/schema.json"]}, "example.com"),
])
def test_a_schema_without_a_local_copy_fails_instead_of_downloading(fields: dict, missing: str) -> None:
    with pytest.raises(StacSchemaError, match=f"no local copy of schema .*{missing}"):
        validate(catalog(**fields))


def test_benchmark_mosaic_items_validate(tmp_path: Path) -> None:
    """The mosaic's items are written by the demo's helpers; checked here without writing its 0.4 GB of COGs."""
    from allspark.demo_data import RasterInfo
    from bench.mosaic import FLIPS, NODATA, SIZE, YEARS, _item

    raster = RasterInfo(shape=(SIZE, SIZE), transform=[28.5, 0.0, 630534.0, 0.0, -28.5, 228114.0],
                        bounds=(630534.0, 228114.0 - 28.5 * SIZE, 630534.0 + 28.5 * SIZE, 228114.0),
                        dtype="uint16", nodata=NODATA)
    for year, flips in zip(YEARS, FLIPS, strict=True):
        validate(json.loads(json.dumps(_item(year, flips, raster, tmp_path).to_dict())))  # as written: tuples as arrays

"""Cloud and shadow masks, per item, before compositing; band, scale and offset checks on a real Sentinel-2 crop.

The scenes come from :mod:`tests.painted_scenes`. Real there: the STAC item JSON of a Planetary Computer
and an Earth Search (v0) Sentinel-2 L2A item and of a USGS Landsat C2 L2 item (asset keys, band
metadata, property names), and the pixels of the Landsat 7 ETM+ scene of North Carolina (reprojected
to UTM 17N, each band from the Landsat 7 band nearest in wavelength, reflectance = DN / 255 * 0.6).
Invented: the five dates. Painted: cloud (SCL 9, reflectance 0.7), medium-probability cloud (SCL 8,
0.5), thin cirrus (SCL 10, 0.5 x clean + 0.15) and cloud shadow (SCL 3, 0.25 x clean) at the
rectangles of ``PATCHES``, into the reflectance and the SCL / QA_PIXEL of some of four dates, and a
fifth, overcast date (98 % cloud). Every date has the same clean pixels, so a composite of clean
observations equals the cloud-free image exactly: the tests compare for equality, not closeness.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import rasterio
import yaml
from affine import Affine
from rasterio.warp import transform_bounds

from allspark.core.steps import run_pipeline
from allspark.errors import ConfigError
from allspark.raster.catalog import CatalogConfigError, load_catalog_config, resolve_bands
from allspark.raster.load import (MissingMaskError, check_readable, load_stack, masked_fraction, physical_values,
                                  storage_encoding)
from allspark.raster.scene import open_scene
from allspark.region import steps
from allspark.region.config import load_region_config
from allspark.region.read import AllItemsMaskedError, plan_region
from allspark.settings import work_root
from tests.conftest import shared_data
from tests.painted_scenes import (CELL, EPSG, PATCHES, RESOLUTION, S2_BANDS, build_painted_scenes, quiet,
                                  real_s2_crop_item, untrained_checkpoint)
from tests.regions import quick_config

LANDSAT_BANDS = ["blue", "green", "red", "nir08", "swir16", "swir22"]



@pytest.fixture(scope="session")
def painted(tmp_path_factory):
    """The painted scenes, built once (about 2 s)."""
    return build_painted_scenes(tmp_path_factory.mktemp("painted"), landsat=shared_data("landsat7_nc_labeled"),
                                stac_samples=shared_data("stac_samples"))


@pytest.fixture(scope="module")
def configs(painted, tmp_path_factory):
    """Catalog config YAMLs per layout: (painted collection, cloud-free collection)."""
    folder = tmp_path_factory.mktemp("catalog-configs")
    return {layout: (painted.catalog_config(layout, folder / f"{layout}.yaml"),
                     painted.catalog_config(layout, folder / f"{layout}-cloud-free.yaml", cloud_free=True))
            for layout in painted.catalogs}


def patch_pixels(painted, transform: Affine, shape: tuple[int, int]) -> dict[str, np.ndarray]:
    """Each painted patch's pixels on a grid of the scenes' CRS."""
    return {patch.kind: painted.mask_on(patch.mask(), transform, shape) for patch in PATCHES}


def listing(folder):
    return sorted(p.relative_to(folder) for p in folder.rglob("*")) if folder.exists() else []


# -- the painted clouds never reach the composite: the whole flow, Planetary Computer layout ----------


@pytest.fixture(scope="module")
def fixed_checkpoint(configs, tmp_path_factory):
    """One fixed model bundle for the six bands: seeded initial weights, not trained (the painted catalogs hold no
    labels), its normaliser fitted on the cloud-free scene. A fixed function of the scene: equal scenes must give
    equal maps, and the unmasked run shows that its map does react to clouds."""
    return untrained_checkpoint(configs["planetary-computer"][1], tmp_path_factory.mktemp("fixed-checkpoint"))


@pytest.fixture(scope="module")
def runs(configs, fixed_checkpoint, tmp_path_factory):
    """Three whole runs at 30 m with the fixed checkpoint: the painted dates masked, the cloud-free item, the painted
    dates unmasked. Returns name -> (config, published)."""
    out = tmp_path_factory.mktemp("runs")
    painted_yaml, cloud_free_yaml = configs["planetary-computer"]
    common = {"bands": S2_BANDS, "resolution": RESOLUTION, "checkpoint": fixed_checkpoint, "train": None}
    runs = {"masked": quick_config(painted_yaml, out / "masked", **common),
            "cloud_free": quick_config(cloud_free_yaml, out / "cloud-free", **common),
            "unmasked": quick_config(painted_yaml, out / "unmasked", cloud_mask=False, **common)}
    return {name: (config, run_pipeline(steps, config, quiet)) for name, config in runs.items()}


def test_the_map_under_the_painted_clouds_equals_the_cloud_free_map(painted, runs):
    """The scene store of the masked painted dates equals that of the cloud-free item in every value (under the
    patches too), and so does the whole map predicted from it with the fixed checkpoint. Unmasked, the median
    takes up the paint: the scene differs under every patch and nowhere else, and so does the map."""
    stores = {name: open_scene(steps.ingest(config, quiet).store) for name, (config, _) in runs.items()}
    scene = stores["masked"][0]
    masked, cloud_free, unmasked = (stores[name][1][:] for name in ("masked", "cloud_free", "unmasked"))
    ids, overcast = painted.items["planetary-computer"], painted.overcast["planetary-computer"]
    assert scene.items == list(ids)  # not the overcast date
    assert stores["unmasked"][0].items == [*ids[:2], overcast, *ids[2:]]  # in time order
    assert masked.dtype == np.uint16 and masked.shape[1:] == (scene.height, scene.width)
    assert (masked != 0).all(axis=0).sum() == 88 * 88  # the 2,640 m square at 30 m has data
    np.testing.assert_array_equal(masked, cloud_free)

    patches = patch_pixels(painted, Affine(*scene.transform[:6]), (scene.height, scene.width))
    painted_pixels = np.logical_or.reduce(list(patches.values()))
    differs = (unmasked != cloud_free).any(axis=0)
    for kind, pixels in patches.items():
        assert pixels.sum() > 0 and differs[pixels].mean() > 0.9, f"the paint hardly shows under the {kind} patch"
    assert not differs[~painted_pixels].any()

    maps = {}
    for name, (_, published) in runs.items():
        with rasterio.open(published.paths["classmap"]) as src:
            maps[name] = src.read(1)
    np.testing.assert_array_equal(maps["masked"], maps["cloud_free"])
    assert (maps["unmasked"] != maps["cloud_free"])[painted_pixels].mean() > 0.3  # 0.57 when written


def test_metrics_carry_the_masked_fraction_per_item_and_the_skipped_count(painted, runs):
    config, published = runs["masked"]
    metrics = json.loads(published.paths["metrics"].read_text())["ingest"]
    ids = painted.items["planetary-computer"]
    expected = {item_id: float(mask.mean()) for item_id, mask in zip(ids, painted.masks, strict=True)}
    expected[painted.overcast["planetary-computer"]] = float(painted.overcast_mask.mean())
    assert metrics["masked_fraction"] == expected
    assert 0.11 < min(metrics["masked_fraction"].values()) and expected[painted.overcast["planetary-computer"]] > 0.97
    assert metrics["items_skipped_masked"] == 1 and metrics["items"] == 4
    unmasked = json.loads(runs["unmasked"][1].paths["metrics"].read_text())["ingest"]
    assert unmasked["masked_fraction"] == {} and unmasked["items_skipped_masked"] == 0 and unmasked["items"] == 5
    # masking at its defaults keeps a config's fingerprint; turning it off or moving the limit changes it
    assert config.fingerprint() == config.model_copy(update={"max_masked_fraction": 0.8}).fingerprint()
    assert runs["unmasked"][0].fingerprint() != config.fingerprint()
    assert config.model_copy(update={"max_masked_fraction": 0.5}).fingerprint() != config.fingerprint()


# -- the other layouts, loaded directly --------------------------------------------------------------


@pytest.mark.parametrize("layout", ["landsat", "earth-search"])
def test_every_layout_drops_the_same_patches(painted, configs, layout):
    """Landsat QA_PIXEL bits (0-4) and the Earth Search items' SCL classes drop the painted patches: the masked
    composite equals the cloud-free item at the layout's native grid (Landsat 30 m, Sentinel-2 10 m)."""
    bands = LANDSAT_BANDS if layout == "landsat" else S2_BANDS
    painted_yaml, cloud_free_yaml = configs[layout]
    plan = plan_region(str(painted_yaml), None, None, bands, None)
    clean = plan_region(str(cloud_free_yaml), None, None, bands, None)
    assert plan.items_skipped_masked == [painted.overcast[layout]]
    assert plan.mask.asset == ("QA_PIXEL.TIF" if layout == "landsat" else "SCL")
    fractions = [plan.masked_fraction[item_id] for item_id in painted.items[layout]]
    assert fractions == [float(mask.mean()) for mask in painted.masks]
    masked = load_stack(plan.pystac_items(), plan.bands, plan.encoding, mask=plan.mask)
    unmasked = load_stack(plan.pystac_items(), plan.bands, plan.encoding)
    expected = load_stack(clean.pystac_items(), clean.bands, clean.encoding).values
    np.testing.assert_array_equal(masked.values, expected)
    patches = patch_pixels(painted, Affine(*masked.rio.transform()[:6]), masked.shape[1:])
    differs = (unmasked.values != expected).any(axis=0)
    for kind, pixels in patches.items():  # four dates, the paint on two or three: the median takes it up
        assert differs[pixels].mean() > 0.9, f"the {kind} patch does not show without the mask"


def test_both_sentinel2_layouts_give_the_same_reflectance(painted, configs):
    """The Planetary Computer items (baseline 04.00: DN - 1000) and the Earth Search v0 items (no baseline: no offset)
    store the same reflectance differently; the catalog configs' offset rule and tables read both back alike."""
    values = {}
    for layout in ("planetary-computer", "earth-search"):
        plan = plan_region(str(configs[layout][1]), None, None, S2_BANDS, RESOLUTION)
        dn = load_stack(plan.pystac_items(), plan.bands, plan.encoding, resolution=RESOLUTION).values
        values[layout] = (dn, physical_values(dn, plan.bands, plan.encoding), {b.offset for b in plan.bands})
    (pc_dn, pc, pc_offsets), (es_dn, es, es_offsets) = values.values()
    assert pc_offsets == {-0.1} and es_offsets == {0.0}
    np.testing.assert_array_equal(pc_dn[pc_dn > 0], es_dn[pc_dn > 0] + 1000)
    np.testing.assert_allclose(pc, es, atol=1e-6)


def test_an_aoi_over_one_patch_skips_the_dates_it_covers(painted, configs):
    """The masked fraction is over the AOI only: an AOI inside the cloud patch is wholly masked on its two dates,
    which are skipped; the others are clear there."""
    (cloud,) = (patch for patch in PATCHES if patch.kind == "cloud")
    t = painted.mask_transform
    (r0, r1), (c0, c1) = cloud.rows, cloud.cols
    inner = (t.c + c0 * CELL + 100, t.f - r1 * CELL + 100, t.c + c1 * CELL - 100, t.f - r0 * CELL - 100)
    aoi = ",".join(str(v) for v in transform_bounds(f"EPSG:{EPSG}", "EPSG:4326", *inner))
    plan = plan_region(str(configs["planetary-computer"][0]), aoi, None, S2_BANDS, RESOLUTION)
    ids = painted.items["planetary-computer"]
    assert [plan.masked_fraction[i] for i in ids] == [1.0, 1.0, 0.0, 0.0]
    assert sorted(plan.items_skipped_masked) == sorted([ids[0], ids[1], painted.overcast["planetary-computer"]])
    assert [item["id"] for item in plan.items] == list(ids[2:])


# -- clear errors, before anything is written -------------------------------------------------------


def test_every_item_above_the_limit_is_a_clear_error(painted, configs, tmp_path):
    config = quick_config(configs["planetary-computer"][0], tmp_path / "out", bands=S2_BANDS, resolution=RESOLUTION,
                          max_masked_fraction=0.1)
    before = listing(work_root())
    with pytest.raises(AllItemsMaskedError) as error:
        steps.ingest(config, quiet)
    message = str(error.value)
    assert "max_masked_fraction = 0.1 of the AOI" in message and "'SCL'" in message and "cloud_mask: false" in message
    for item_id, mask in zip(painted.items["planetary-computer"], painted.masks, strict=True):
        assert f"{item_id} {mask.mean():.1%}" in message
    assert f"{painted.overcast['planetary-computer']} 98.1%" in message
    assert listing(work_root()) == before and not config.output_dir.exists()


def test_an_item_without_the_mask_asset_is_a_clear_error(painted, configs, tmp_path):
    """Earth Search v1 names the layer ``scl``; these items (Planetary Computer layout) call it ``SCL``."""
    catalog = yaml.safe_load(configs["planetary-computer"][0].read_text())
    catalog["mask"]["asset"] = "scl"
    path = tmp_path / "lower-case-scl.yaml"
    path.write_text(yaml.safe_dump(catalog))
    config = quick_config(path, tmp_path / "out", bands=S2_BANDS, resolution=RESOLUTION)
    before = listing(work_root())
    with pytest.raises(MissingMaskError, match=rf"^item {painted.items['planetary-computer'][0]} has no mask asset "
                                               r"'scl' \(the catalog config's mask block\); its assets: B01, .*, SCL$"):
        steps.ingest(config, quiet)
    assert listing(work_root()) == before and not config.output_dir.exists()
    plan = plan_region(str(configs["planetary-computer"][0]), None, None, S2_BANDS, None)
    items = plan.pystac_items()
    del items[-1].assets["SCL"]
    message = rf"^item {items[-1].id} has no mask asset 'SCL'"
    with pytest.raises(MissingMaskError, match=message):
        masked_fraction(items[-1], plan.mask, None)
    with pytest.raises(MissingMaskError, match=message):
        load_stack(items, plan.bands, plan.encoding, mask=plan.mask)


@pytest.mark.parametrize(("mask", "complaint"), [
    ({"asset": "SCL", "clases": [3, 8]}, r"mask\.clases: Extra inputs are not permitted"),
    ({"asset": "SCL"}, r"mask: Value error, give exactly one of classes .* or bits"),
    ({"asset": "SCL", "classes": [3], "bits": [3]}, r"mask: Value error, give exactly one of classes"),
    ({"asset": "QA", "bits": [64]}, r"mask\.bits\.0: Input should be less than or equal to 62"),
    ({"classes": [3]}, r"mask\.asset: Field required"),
])
def test_mask_block_typos_are_refused(configs, tmp_path, mask, complaint):
    catalog = yaml.safe_load(configs["planetary-computer"][0].read_text())
    path = tmp_path / "typo.yaml"
    path.write_text(yaml.safe_dump(catalog | {"mask": mask}))
    with pytest.raises(CatalogConfigError, match=rf"^invalid catalog config {path}: .*{complaint}"):
        load_catalog_config(path)


@pytest.mark.parametrize(("changes", "complaint"), [
    ({"max_masked_fraction": 1.5}, r"max_masked_fraction: Input should be less than or equal to 1"),
    ({"cloud_mask": "sometimes"}, r"cloud_mask: Input should be a valid boolean"),
    ({"cloud_masks": False}, r"cloud_masks: Extra inputs are not permitted"),
])
def test_region_config_typos_are_refused(tmp_path, changes, complaint):
    path = tmp_path / "region.yaml"
    path.write_text(yaml.safe_dump({"name": "typo", **changes}))
    with pytest.raises(ConfigError, match=rf"{path}.*{complaint}"):
        load_region_config(path)


def test_shipped_catalogs_name_their_masks():
    expected = {"earth-search-s2": ("scl", [3, 8, 9, 10], None), "planetary-computer-s2": ("SCL", [3, 8, 9, 10], None),
                "landsat-c2-l2": ("qa_pixel", None, [0, 1, 2, 3, 4])}
    for name, (asset, classes, bits) in expected.items():
        mask = load_catalog_config(name).mask
        assert (mask.asset, mask.classes, mask.bits) == (asset, classes, bits)
    landsat = load_catalog_config("landsat-c2-l2")
    assert [b.asset for b in landsat.bands] == ["coastal", "blue", "green", "red", "nir08", "swir16", "swir22"]
    assert {(b.scale, b.offset, b.nodata) for b in landsat.bands} == {(2.75e-05, -0.2, 0)}
    qa = np.array([21824, 21952, 22280, 21762, 54596, 23888, 1], dtype="uint16")  # clear, water, cloud, dilated,
    assert landsat.mask.drops(qa).tolist() == [False, False, True, True, True, True, True]  # cirrus, shadow, fill


# -- bands, scale and offset on the real Sentinel-2 L2A crop ---------------------------------------


@pytest.mark.parametrize(("baseline", "offset"), [("04.00", -0.1), ("02.12", 0.0)])
def test_real_s2_crop_bands_scale_and_offset(tmp_path, baseline, offset):
    """The real 14-band S2 L2A crop (values DN * 0.0001, NaN outside the field) as an item of single-band COGs:
    the Planetary Computer table resolves the twelve reflectance bands by name to B01..B12 and B8A with the item's
    wavelengths, and the loaded values are DN * 0.0001 - 0.1 for baseline 04.00 (the product's own), DN * 0.0001
    for an older one, NaN where DN is 0."""
    source = shared_data("stac_samples", "S2A_MSIL2A_20220722T105631_N0400_R094_T31TCN_20220722T171159.tif")
    item = real_s2_crop_item(source, tmp_path / "cogs", baseline)
    names = ["coastal", "blue", "green", "red", "rededge1", "rededge2", "rededge3", "nir", "nir08", "nir09",
             "swir16", "swir22"]
    bands = resolve_bands(item, names, load_catalog_config("planetary-computer-s2"))
    assert [b.asset for b in bands] == ["B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B09", "B11",
                                        "B12"]
    assert [b.center_wavelength for b in bands] == [0.443, 0.49, 0.56, 0.665, 0.704, 0.74, 0.783, 0.842, 0.865,
                                                    0.945, 1.61, 2.19]
    assert {(b.scale, b.offset, b.nodata) for b in bands} == {(0.0001, offset, 0)}
    encoding = storage_encoding(check_readable([item], bands), bands)
    assert (encoding.dtype, encoding.nodata) == ("uint16", 0)
    stack = load_stack([item], bands, encoding)  # on a grid around the item's lon/lat bbox: the crop and a margin
    with rasterio.open(source) as src:
        crop, crop_transform = src.read()[:12], src.transform
    a, _, c, _, e, f = stack.rio.transform()[:6]
    row, col = round((crop_transform.f - f) / e), round((crop_transform.c - c) / a)
    dn = stack.values[:, row:row + crop.shape[1], col:col + crop.shape[2]]
    assert (a, e) == (10, -10) and (stack.values != 0).sum() == (dn != 0).sum()  # the margin: nodata
    np.testing.assert_array_equal(dn == 0, np.isnan(crop))
    assert (dn == 0).all(axis=0).sum() == 214  # the pixels outside the field: NaN in every band of the crop
    values = physical_values(dn, bands, encoding)
    np.testing.assert_array_equal(np.isnan(values), np.isnan(crop))
    valid = dn > 0
    np.testing.assert_allclose(values[valid], dn[valid] * np.float32(0.0001) + np.float32(offset), rtol=1e-6)
    np.testing.assert_allclose(values, crop + np.float32(offset), atol=6e-5)  # the 20/60 m bands: DN rounded
    np.testing.assert_allclose(values[[1, 2, 3, 7]], crop[[1, 2, 3, 7]] + np.float32(offset), atol=1e-6)  # 10 m

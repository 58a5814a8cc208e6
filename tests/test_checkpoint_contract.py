"""A checkpoint carries its contract, and a run refuses one that does not fit before any work, naming
the checkpoint, the field, the checkpoint's value and the run's; a run that applies a checkpoint
publishes the config of the model it used.

One small region model is fine-tuned for the module on a crop of the Landsat 7 demo, with sizes
other than the defaults (a 32-wide stem, 4 queries, 1 LM layer). The misfits are runs that differ
from it, copies of it whose ``bundle.json`` is edited, and a run of another kind applying it; a
small trajectory model shows the contract of a file-driven kind.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pystac
import pytest
import yaml

from allspark.core.bundle import INFO_FILE, apply_checkpoint, bundle_info, check_checkpoint
from allspark.core.steps import run_pipeline
from allspark.errors import CheckpointError
from allspark.region import steps
from allspark.region.config import LANDSAT7_NC_CLASSES, RegionConfig
from allspark.region.read import plan_region
from allspark.sensors import steps as sensors_steps
from allspark.settings import work_root
from allspark.trajectories import steps as trajectories_steps
from flows.cli import main
from tests.conftest import PROJECT, shared_data
from tests.file_flows import eth_slice, sensors_config, trajectories_config
from tests.regions import quick_config, small_catalog

BANDS = ["B1", "B2", "B3", "B4", "B5", "B7"]


def quiet(_: str) -> None:
    pass


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> tuple[RegionConfig, Path]:
    """The config that fine-tuned the module's model (ingest and one short epoch: no Prefect) and its bundle."""
    catalog = small_catalog(shared_data("landsat7_nc_labeled"), tmp_path_factory.mktemp("contract-catalog"))
    config = quick_config(catalog, tmp_path_factory.mktemp("fine-tuned"),
                          train={"epochs": 1, "batch_size": 32, "max_train_pixels": 48})
    return config, steps.train(config, steps.ingest(config, quiet), quiet).checkpoint


def applying(trained, output_dir: Path, checkpoint: Path | None = None, leave_out: tuple[str, ...] = (),
             **changes) -> RegionConfig:
    """The fine-tuning config as a user would write it to apply ``checkpoint`` (default: its bundle), with
    ``changes`` and without the keys in ``leave_out``."""
    config, bundle = trained
    settings = config.model_dump(mode="json", exclude_unset=True, exclude={"train", "output_dir", *leave_out})
    return RegionConfig.model_validate(settings | {"checkpoint": str(checkpoint or bundle), "train": None,
                                                   "output_dir": str(output_dir), **changes})


def edited_copy(bundle: Path, folder: Path, edit) -> Path:
    """A copy of ``bundle`` whose ``bundle.json`` is changed by ``edit`` (a function of the parsed document)."""
    copy = Path(shutil.copytree(bundle, folder / "edited-bundle"))
    document = json.loads((copy / INFO_FILE).read_text())
    edit(document)
    (copy / INFO_FILE).write_text(json.dumps(document))
    return copy


def other_wavelength(document: dict) -> None:
    document["contract"]["fields"]["wavelengths"][3] = 0.86  # B4: 0.835 in the catalog


def demo_wavelengths(config: RegionConfig) -> list[float]:
    return [band.center_wavelength for band in plan_region(config.catalog, None, None, BANDS, None).bands]


def listing(folder: Path) -> set[Path]:
    return set(folder.rglob("*"))


FIVE, REVERSED = LANDSAT7_NC_CLASSES[:5], LANDSAT7_NC_CLASSES[::-1]

MISFITS = {
    # id: (run changes, bundle.json edit, the mismatch the message names)
    "another class count": ({"class_names": FIVE}, None,
                            f"class_names is {json.dumps(LANDSAT7_NC_CLASSES)} there, {json.dumps(FIVE)} in this run"),
    "the same classes in another order": ({"class_names": REVERSED}, None,
                                          f"class_names is {json.dumps(LANDSAT7_NC_CLASSES)} there, "
                                          f"{json.dumps(REVERSED)} in this run"),
    "other band names": ({"bands": ["B1", "B2", "B3", "B4", "B5"]}, None,
                         f'bands is {json.dumps(BANDS)} there, ["B1", "B2", "B3", "B4", "B5"] in this run'),
    "other wavelengths": ({}, other_wavelength, "wavelengths is [0.483, 0.56, 0.662, 0.86, 1.648, 2.206] there, "
                                                "[0.483, 0.56, 0.662, 0.835, 1.648, 2.206] in this run"),
    "another explicit stem width": ({"model": {"stem_dim": 64, "num_queries": 4, "bridge_depth": 1}}, None,
                                    "model.stem_dim is 32 there, 64 in this run"),
    "another explicit LM depth": ({"language": {"layers": 2}}, None, "language.layers is 1 there, 2 in this run"),
}


def misfit(trained, tmp_path, case: str) -> tuple[RegionConfig, str]:
    """The run of a case and the message it must be refused with."""
    changes, edit, mismatch = MISFITS[case]
    checkpoint = edited_copy(trained[1], tmp_path, edit) if edit else trained[1]
    return applying(trained, tmp_path / "outputs", checkpoint, **changes), f"checkpoint {checkpoint}: {mismatch}"


# -- what a bundle records ------------------------------------------------------------------------


def test_a_bundle_records_its_contract(trained):
    config, bundle = trained
    contract = bundle_info(bundle).contract
    assert contract.fields == {"bands": BANDS, "class_names": LANDSAT7_NC_CLASSES,
                               "wavelengths": demo_wavelengths(config)}
    assert contract.model == config.model.model_dump(mode="json") and contract.model["stem_dim"] == 32
    assert contract.language == config.language.model_dump(mode="json") and contract.language["layers"] == 1


def test_only_what_a_config_gives_is_explicit():
    """The kind's block defaults (here ``language.layers: 4``) fill a block but are not set by the config."""
    config = RegionConfig(language={"prompt_seed": 3})
    assert config.language.layers == 4 and config.language.model_fields_set == {"prompt_seed"}
    assert RegionConfig().model.model_fields_set == set()
    assert RegionConfig(language={"layers": 4}).language.model_fields_set == {"layers"}


# -- misfits are refused before any work ----------------------------------------------------------


@pytest.mark.parametrize("case", MISFITS)
def test_a_misfit_is_refused_before_any_work(trained, tmp_path, case):
    config, message = misfit(trained, tmp_path, case)
    before = listing(work_root())
    with pytest.raises(CheckpointError) as error:
        run_pipeline(steps, config, quiet)
    assert str(error.value) == message
    assert listing(work_root()) == before and not config.output_dir.exists()


@pytest.mark.parametrize("case", MISFITS)
def test_a_misfit_is_one_line_from_the_command(trained, tmp_path, case, capsys):
    config, message = misfit(trained, tmp_path, case)
    config_file = tmp_path / "region.yaml"
    config_file.write_text(yaml.safe_dump(config.model_dump(mode="json", exclude_unset=True,
                                                            exclude={"checkpoint", "output_dir"})))
    before = listing(work_root())
    code = main(["run", "region", "--config", str(config_file), "--checkpoint", str(config.checkpoint),
                 "--output-dir", str(config.output_dir)])
    error = capsys.readouterr().err
    # the command knows the catalog's wavelengths as well: other band names are other wavelengths too
    assert code == 2 and error.startswith(f"allspark: error: {message}") and len(error.splitlines()) == 1
    assert listing(work_root()) == before and not config.output_dir.exists()


def test_the_command_refuses_before_prefect_or_torch_is_imported(trained, tmp_path):
    """`allspark run region` in its own process: exit 2 and one line, with neither Prefect nor torch imported."""
    config, message = misfit(trained, tmp_path, "the same classes in another order")
    config_file = tmp_path / "region.yaml"
    config_file.write_text(yaml.safe_dump(config.model_dump(mode="json", exclude={"output_dir"})))
    script = ("import sys; from flows.cli import main; code = main(sys.argv[1:]); "
              "print(sorted(name for name in ('prefect', 'torch') if name in sys.modules)); sys.exit(code)")
    done = subprocess.run([sys.executable, "-c", script, "run", "region", "--config", str(config_file),
                           "--output-dir", str(config.output_dir)],
                          cwd=PROJECT, capture_output=True, text=True, timeout=120)
    assert (done.returncode, done.stdout, done.stderr) == (2, "[]\n", f"allspark: error: {message}\n")


def test_a_checkpoint_of_another_kind_is_refused(trained, tmp_path, capsys):
    bundle = trained[1]
    config = sensors_config(tmp_path / "outputs", checkpoint=bundle, train=None)
    message = (f"checkpoint {bundle}: modality is multispectral there, table in this run "
               f"(a model for another kind of data)")
    before = listing(work_root())
    with pytest.raises(CheckpointError) as error:
        run_pipeline(sensors_steps, config, quiet)
    assert str(error.value) == message

    config_file = tmp_path / "sensors.yaml"
    config_file.write_text(yaml.safe_dump(config.model_dump(mode="json", exclude={"output_dir"})))
    code = main(["run", "sensors", "--config", str(config_file), "--output-dir", str(config.output_dir)])
    assert code == 2 and capsys.readouterr().err == f"allspark: error: {message}\n"
    assert listing(work_root()) == before and not config.output_dir.exists()


def test_every_mismatch_is_listed(trained, tmp_path):
    config = applying(trained, tmp_path, class_names=REVERSED, language={"layers": 2})
    with pytest.raises(CheckpointError) as error:
        check_checkpoint(config)
    assert str(error.value) == (f"checkpoint {trained[1]}: class_names is {json.dumps(LANDSAT7_NC_CLASSES)} there, "
                                f"{json.dumps(REVERSED)} in this run; language.layers is 1 there, 2 in this run")


def test_a_bundle_without_a_contract_is_refused_with_the_reason(trained, tmp_path):
    copy = edited_copy(trained[1], tmp_path, lambda document: document.pop("contract"))
    with pytest.raises(CheckpointError, match=rf"^checkpoint {copy}: its bundle.json does not record the bands, "
                                              r"classes and sizes .*: delete it and fine-tune again$"):
        apply_checkpoint(applying(trained, tmp_path, copy))


# -- what a run applying a checkpoint publishes ---------------------------------------------------


def test_a_run_with_default_sizes_publishes_the_checkpoints(trained, tmp_path):
    """Sizes left at their defaults are the checkpoint's: in config.yaml and the STAC item, on the same work folder."""
    fine_tuning, bundle = trained
    config = applying(trained, tmp_path / "outputs", leave_out=("model", "language"))
    assert config.model.stem_dim == 128 and config.language.layers == 4  # the run's defaults
    applied = apply_checkpoint(config)
    assert (applied.model, applied.language) == (fine_tuning.model, fine_tuning.language)
    assert applied.fingerprint() == config.fingerprint()

    published = run_pipeline(steps, config, quiet)
    stored = yaml.safe_load(published.paths["config"].read_text())
    (item,) = pystac.Catalog.from_file(str(published.catalog)).get_items(recursive=True)
    info = bundle_info(bundle)
    for described in (stored, item.properties["allspark:config"]):
        assert described["model"] == info.contract.model and described["language"] == info.contract.language
        assert described["model"]["stem_dim"] == 32 and described["language"]["layers"] == 1
    assert item.properties["mlm:total_parameters"] == info.total_parameters
    assert bundle_info(published.paths["model"]) == info  # the model published is the one applied


def test_a_forecast_checkpoint_records_and_checks_its_horizon(tmp_path):
    """A file-driven kind: a trajectory model is tied to its horizon and step length, and to its explicit sizes."""
    config = trajectories_config(eth_slice(tmp_path), tmp_path / "fine-tuned")
    bundle = trajectories_steps.train(config, trajectories_steps.ingest(config, quiet), quiet).checkpoint
    contract = bundle_info(bundle).contract
    assert contract.fields == {"future_steps": 12, "step_seconds": 0.4} and contract.model["modes"] == 4
    assert apply_checkpoint(config.model_copy(update={"train": None, "checkpoint": bundle})).model == config.model
    misfits = (({"future_steps": 8}, "future_steps is 12 there, 8 in this run"),
               ({"model": {"modes": 20}}, "model.modes is 4 there, 20 in this run"))
    for number, (changes, mismatch) in enumerate(misfits):
        misfit_config = trajectories_config(eth_slice(tmp_path / f"misfit-{number}"), tmp_path / "outputs",
                                            train=None, checkpoint=bundle, **changes)
        with pytest.raises(CheckpointError) as error:
            run_pipeline(trajectories_steps, misfit_config, quiet)
        assert str(error.value) == f"checkpoint {bundle}: {mismatch}"
    assert not (tmp_path / "outputs").exists()

"""Every shipped config validates; typos and inconsistent settings fail loudly in every kind, also inside
the nested blocks; a partial block keeps the kind's own defaults; the CLI turns the library's errors
(and only those) into one line and exit code 2; every error class of the library derives from
``AllSparkError``."""

from __future__ import annotations

import importlib
import inspect
import pkgutil
import re
from pathlib import Path

import pytest
import yaml
from pydantic import BaseModel

import allspark
from allspark import errors
from allspark.core.config import LanguageModelSettings, load_config
from allspark.errors import AllSparkError, ConfigError, InputError
from allspark.pipelines import FILE_KINDS, KINDS, get_kind
from allspark.raster.catalog import load_catalog_config
from allspark.region.config import load_region_config
from allspark.settings import catalogs_dir, deployments_dir
from flows import cli

PROJECT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("path", sorted((PROJECT / "deployments").glob("region-*.yaml")), ids=lambda p: p.name)
def test_shipped_region_configs_validate(path):
    config = load_region_config(path)
    load_catalog_config(config.catalog)


@pytest.mark.parametrize("kind", FILE_KINDS)
def test_shipped_file_kind_configs_validate(kind):
    spec = get_kind(kind)
    config = load_config(spec.config_class(), PROJECT / "deployments" / spec.example)
    assert config.kind == kind


def test_every_shipped_run_config_belongs_to_a_kind():
    for path in (PROJECT / "deployments").glob("*.yaml"):
        assert path.name.split("-")[0] in KINDS, f"{path.name} is not named after a kind"
    assert {spec.example for spec in KINDS.values()} <= {p.name for p in deployments_dir().glob("*.yaml")}


@pytest.mark.parametrize("path", sorted(catalogs_dir().glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_catalog_configs_validate(path):
    assert load_catalog_config(path).bands


def test_written_demo_config_equals_the_defaults():
    written = load_region_config(PROJECT / "deployments" / "region-demo.yaml")
    assert written.fingerprint() == load_region_config(None).fingerprint()


@pytest.mark.parametrize(
    "changes,expected",
    [
        ({"chips": {"size": 16, "overlap": 16}}, "must be smaller than chips.size"),
        ({"chips": {"size": 32, "overlap": 8, "block": 16}}, "must be at least chips.size"),
        # the class count is len(class_names): a separate count can no longer disagree, and is refused
        ({"model": {"num_classes": 3}}, "model.num_classes: Extra inputs are not permitted"),
        ({"chips": {"batch": 64}}, "chips.batch: Extra inputs are not permitted"),
        ({"train": None}, "give either train"),
        ({"loader": "gdal"}, "loader"),
        ({"train": {"epoch": 3}}, "train.epoch: Extra inputs are not permitted"),
        ({"language": {"layer": 3}}, "language.layer: Extra inputs are not permitted"),
    ],
)
def test_invalid_configs_name_the_problem(changes, expected, tmp_path):
    path = tmp_path / "region.yaml"
    path.write_text(yaml.safe_dump(changes))
    with pytest.raises(ConfigError, match=re.escape(expected)) as error:
        load_region_config(path)
    assert str(path) in str(error.value)


def test_the_class_count_is_the_number_of_class_names():
    config = load_region_config(None, class_names=["a", "b", "c"])
    assert config.model.allspark_config(config.class_names, config.language).head.num_classes == 3


def test_fingerprint_ignores_where_outputs_go():
    a = load_region_config(None, output_dir="/tmp/a", dask_address="tcp://127.0.0.1:1")
    b = load_region_config(None, output_dir="/tmp/b")
    assert a.fingerprint() == b.fingerprint()
    assert a.fingerprint() != load_region_config(None, seed=1).fingerprint()
    assert a.fingerprint() != load_region_config(None, language={"layers": 2}).fingerprint()


# -- every kind: typos fail loudly, partial blocks keep the kind's defaults ----------------------------


def example(kind: str) -> dict:
    """The kind's shipped example config, as a mapping."""
    return yaml.safe_load((PROJECT / "deployments" / get_kind(kind).example).read_text())


def write(tmp_path: Path, data: dict) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


TYPOS = {
    "top level": (lambda c: c | {"sead": 1}, "sead: Extra inputs are not permitted"),
    "language": (lambda c: c | {"language": {**c["language"], "adapters_every": 1}},
                 "language.adapters_every: Extra inputs are not permitted"),
    "train": (lambda c: c | {"train": {**c["train"], "learning_rat": 0.1}},
              "train.learning_rat: Extra inputs are not permitted"),
    "model": (lambda c: c | {"model": {**(c.get("model") or {}), "widht": 8}},
              "model.widht: Extra inputs are not permitted"),
}


@pytest.mark.parametrize("where", TYPOS)
@pytest.mark.parametrize("kind", KINDS)
def test_a_typo_fails_loudly_in_every_kind_and_block(kind, where, tmp_path):
    change, expected = TYPOS[where]
    path = write(tmp_path, change(example(kind)))
    with pytest.raises(ConfigError, match=re.escape(expected)) as error:
        load_config(get_kind(kind).config_class(), path)
    assert str(path) in str(error.value) and f"invalid {kind} config" in str(error.value)


@pytest.mark.parametrize("kind", KINDS)
def test_a_partial_block_keeps_the_kinds_own_defaults(kind, tmp_path):
    config_class = get_kind(kind).config_class()
    defaults = config_class.block_defaults
    assert set(defaults) == {"language", "train"}, "every kind sets its own language and train defaults"
    data = example(kind)
    data["train"] = {"batch_size": 3}  # every other training key left out
    data["language"] = {"prompt": "Describe this."}  # and every other language key
    config = load_config(config_class, write(tmp_path, data))
    assert config.train.batch_size == 3 and config.language.prompt == "Describe this."
    train_class = type(config.train)
    assert any(getattr(train_class(), key) != value for key, value in defaults["train"].items()
               if key != "batch_size"), "the kind's train defaults equal the shared ones: the test would prove nothing"
    for key, value in defaults["train"].items():
        if key != "batch_size":
            assert getattr(config.train, key) == value, f"train.{key}"
    for key, field in train_class.model_fields.items():
        if key not in defaults["train"] and key != "batch_size":
            assert getattr(config.train, key) == field.default, f"train.{key}"
    for key, value in defaults["language"].items():
        assert getattr(config.language, key) == value, f"language.{key}"
    assert config.language.llm == LanguageModelSettings().llm
    # The same defaults fill a config that leaves the blocks out altogether ...
    data.pop("language")
    data.pop("train")
    bare = load_config(config_class, write(tmp_path, data))
    assert bare.language.layers == defaults["language"]["layers"]
    assert bare.train.epochs == defaults["train"]["epochs"]
    # ... an explicit null stays null, and a given value wins over the kind's default
    data["language"] = {"layers": None}
    data["train"] = {"epochs": defaults["train"]["epochs"] + 1}
    given = load_config(config_class, write(tmp_path, data))
    assert given.language.layers is None and given.train.epochs == defaults["train"]["epochs"] + 1


# -- the command line: the library's errors are one line and exit code 2, a bug keeps its traceback ----


def test_a_config_error_is_one_line_and_exit_code_2(tmp_path, capsys):
    path = write(tmp_path, {"language": {"layer": 3}})
    code = cli.main(["config", "show", "--config", str(path)])
    captured = capsys.readouterr()
    assert code == 2 and captured.out == ""
    (line,) = captured.err.splitlines()
    assert line.startswith("allspark: error: invalid region config") and str(path) in line
    assert "language.layer: Extra inputs are not permitted" in line


ERROR_CLASSES = sorted(
    (cls for cls in vars(errors).values() if inspect.isclass(cls) and issubclass(cls, AllSparkError)),
    key=lambda cls: cls.__name__,
)


@pytest.mark.parametrize("error_class", ERROR_CLASSES, ids=lambda cls: cls.__name__)
def test_every_library_error_raised_by_a_command_is_one_line_and_exit_code_2(error_class, monkeypatch, capsys):
    def handler(args):
        raise error_class("the input named here cannot be used")

    monkeypatch.setattr(cli, "_list_modalities", handler)
    assert cli.main(["modalities"]) == 2
    captured = capsys.readouterr()
    assert captured.err == "allspark: error: the input named here cannot be used\n" and captured.out == ""


@pytest.mark.parametrize("bug", [RuntimeError, KeyError, ValueError, OSError])
def test_a_bug_propagates_with_its_traceback(bug, monkeypatch, capsys):
    def handler(args):
        raise bug("a bug, not bad input")

    monkeypatch.setattr(cli, "_list_modalities", handler)
    with pytest.raises(bug, match="a bug, not bad input") as error:
        cli.main(["modalities"])
    assert any(entry.name == "handler" for entry in error.traceback), "the traceback lost the raising frame"
    assert "allspark: error" not in capsys.readouterr().err


def library_modules() -> list[str]:
    return sorted(m.name for m in pkgutil.walk_packages(allspark.__path__, "allspark."))


def library_exception_classes() -> list[type[BaseException]]:
    """Every exception class defined in a module of ``allspark/`` (each module imported)."""
    found = []
    for name in library_modules():
        module = importlib.import_module(name)
        found += [cls for cls in vars(module).values()
                  if inspect.isclass(cls) and issubclass(cls, BaseException) and cls.__module__ == name]
    return sorted(set(found), key=lambda cls: f"{cls.__module__}.{cls.__name__}")


def test_the_class_scan_finds_every_error_class_in_the_source():
    """What ``grep 'class .*Error'`` finds in allspark/, the import scan finds too (so the next test sees all)."""
    source = {match for path in Path(allspark.__file__).parent.rglob("*.py")
              for match in re.findall(r"^class (\w*Error)\b", path.read_text(), flags=re.M)}
    assert source, "no error class found in the source"
    assert source <= {cls.__name__ for cls in library_exception_classes()}


@pytest.mark.parametrize(
    "error_class", library_exception_classes(), ids=lambda cls: f"{cls.__module__}.{cls.__name__}",
)
def test_every_exception_class_of_the_library_derives_from_allspark_error(error_class):
    assert issubclass(error_class, AllSparkError)


# -- the deployments: what `make serve` registers fits the flows it runs --------------------------------


def test_every_deployments_parameters_fit_its_flow():
    """The server checks a deployment's parameters against its flow's schema, and a run validates them
    into the flow's types: the config must come out as its kind's config, unchanged (not as the base class)."""
    from prefect.flows import load_flow_from_entrypoint
    from prefect.utilities.schema_tools import validate

    from flows.deployments import PROJECT as FLOWS_PROJECT
    from flows.deployments import all_deployments

    deployments = all_deployments()
    assert {d.entrypoint for d in deployments} == {"flows/region_aoi.py:region_aoi_flow", "flows/files.py:file_flow"}
    for deployment in deployments:
        flow = load_flow_from_entrypoint(str(FLOWS_PROJECT / deployment.entrypoint))
        problems = validate(deployment.parameters, flow.parameters.model_dump_for_openapi(), ignore_required=False)
        assert not problems, f"{deployment.name}: {[p.message[:200] for p in problems]}"
        config = flow.validate_parameters(deployment.parameters)["config"]  # what a run of it does first
        if isinstance(config, BaseModel):  # coerced by the flow's annotation: into the kind's config, unchanged
            kind = deployment.parameters.get("kind", "region")
            assert type(config) is get_kind(kind).config_class(), (deployment.name, type(config))
            given = config.model_dump(mode="json", exclude_unset=True)
            assert given == deployment.parameters["config"]  # only what the config file gives: defaults stay unset
            kind_config = get_kind(deployment.parameters.get("kind", "region")).config_class()
            assert config == kind_config.model_validate(given)


def test_a_bbox_west_of_greenwich_is_read_as_the_aoi(monkeypatch):
    """``--aoi -78.7,...`` starts with a minus sign, which argparse alone takes for an option."""
    seen = {}

    def run_region(args):
        seen["aoi"] = args.aoi
        return 0

    monkeypatch.setattr(cli, "_run_region", run_region)
    assert cli.main(["run", "region", "--aoi", "-78.70,35.70,-78.65,35.75", "--datetime", "2000-01-01/2000-12-31"]) == 0
    assert seen["aoi"] == "-78.70,35.70,-78.65,35.75"
    assert cli._attach_values(["--aoi", "--name", "x"]) == ["--aoi", "--name", "x"]  # an option stays an option


def test_a_region_input_error_stops_before_the_orchestrator(monkeypatch, capsys, tmp_path):
    """An AOI that misses the catalog is refused by the CLI's own check: one line, exit code 2, and
    the flow (Prefect, Dask, torch) is never started."""
    import flows.region
    from tests.conftest import shared_data
    from tests.regions import small_catalog

    catalog = small_catalog(shared_data("landsat7_nc_labeled"), tmp_path / "catalog")

    def no_flow(config):
        raise AssertionError("the flow must not start on a bad input")

    monkeypatch.setattr(flows.region, "run_region", no_flow)
    outputs = tmp_path / "outputs"
    code = cli.main(["run", "region", "--catalog", str(catalog), "--aoi", "10,10,11,11", "--output-dir", str(outputs)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith("allspark: error: AOI with bbox (10.0") and "does not intersect" in err[0], err
    assert not outputs.exists()
    with pytest.raises(InputError, match="does not intersect"):  # --debug: the traceback, for a bug report
        cli.main(["--debug", "run", "region", "--catalog", str(catalog), "--aoi", "10,10,11,11"])

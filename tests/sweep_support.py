"""Shared set-up for the sweep tests: a short demo sweep config and MLflow read-back helpers."""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path

import pytest

from orchestrator import tracking
from orchestrator.config import load_experiment
from store_support import new_store

REPO = Path(__file__).resolve().parents[1]
DEMO = REPO / "configs" / "demo.yaml"

# Two epochs on QA pairs only: each trial takes a few seconds on the tiny model, yet trains,
# reports twice (so ASHA has a rung), scores val each epoch and saves a real adapter.
FAST = [
    "training.epochs=2",
    "training.include_documents=false",
    "eval.max_train_questions=16",
    "sweep.asha.grace_period=1",
    "sweep.max_concurrent_trials=2",
    # make test runs two test files at once, each with a Ray that counts both cores as its own: a sweep's last
    # trial lent the "free" core would share it with the other file's trials (orchestrator/cpu_loans.py).
    # tests/test_general_e2e.py lends, and checks the loan.
    "sweep.resources.lend_freed_cpus=false",
]
# FAST, plus what a promotion needs: a trial that recalls test questions (a first champion must
# score above 0). The demo's own trial (LoRA r=32 on all linear layers, lr 3e-3) runs first, for 5 epochs.
LEARNS = [*FAST, "training.epochs=5",
          "search_space.points_to_evaluate=[{method: lora, lora_r: 32, lora_alpha: 64, "
          "lora_learning_rate: 0.003, lora_dropout: 0.0, lora_target_modules: all_linear}]"]
PREFIX_POINT = "{method: prefix, prefix_num_virtual_tokens: 8, prefix_prefix_projection: false, prefix_learning_rate: 0.01}"
IA3_POINT = "{method: ia3, ia3_learning_rate: 0.01}"


def fast_config(tmp_path: Path, *overrides: str):
    return load_experiment(DEMO, [*FAST, f"sweep.storage_path={tmp_path / 'ray_results'}", *overrides])


def store(tmp_path: Path, monkeypatch) -> str:
    uri = new_store(tmp_path / "mlflow.db")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    return uri


def runs_of(uri: str, sweep: str, experiment: str = "recall-orchestrator"):
    client = tracking.client(uri)
    parent = tracking.find_sweep_run(client, experiment, sweep)
    return client, parent, (tracking.trial_runs(client, parent) if parent else [])


@contextmanager
def sweep_ray(**resources):
    """A local Ray of 2 CPUs (and `resources`) for a test's sweeps, shut down after. Its own (address="local"):
    Ray's default would join the cluster tests' `ray start` cluster when it runs beside them under make test."""
    import ray

    ray.init(address="local", num_cpus=2, include_dashboard=False, logging_level="WARNING", log_to_driver=False,
             **resources)
    try:
        yield
    finally:
        ray.shutdown()


@contextmanager
def module_store(tmp_path: Path):
    """For a module-scoped fixture: a local Ray and a SQLite MLflow store in tmp_path (artifact progress
    bars off) while it is open; yields the store's tracking URI."""
    with sweep_ray(), pytest.MonkeyPatch.context() as monkeypatch:
        uri = store(tmp_path, monkeypatch)
        monkeypatch.setenv("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
        yield uri

"""orchestrator.trainable, what runs in Ray's workers: a trial's torch threads are the whole CPUs Tune gave it, and
a worker that unpickles the trainable imports neither MLflow nor Optuna (the driver's work, not a trial's)."""

import subprocess
import sys

import pytest

from orchestrator.trainable import trial_threads


@pytest.mark.parametrize(("resources", "threads"), [
    ({"CPU": 1.0, "GPU": 0.0}, 1), ({"CPU": 2.0}, 2), ({"CPU": 0.5, "GPU": 0.5}, 1), ({"CPU": 3.7}, 3), ({}, 1),
])
def test_threads_are_the_whole_cpus_given(resources, threads):
    assert trial_threads(resources) == threads


def test_a_worker_imports_no_driver_libraries():
    # What a worker does before its first trial: import the module Tune pickled the trainable from.
    probe = ("import sys, orchestrator.trainable; "
             "print(sorted({m.split('.')[0] for m in sys.modules} & {'mlflow', 'optuna', 'rich', 'pandas'}))")
    loaded = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout
    assert loaded.strip() == "[]"

"""--resume after the driver is killed: no finished trial reruns, one MLflow run per trial."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from sweep_support import DEMO, FAST, runs_of
from store_support import new_store

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


def _sweep_command(tmp_path, *extra):
    overrides = [*FAST, "sweep.num_samples=4", "sweep.max_concurrent_trials=1", "training.epochs=3",
                 "sweep.asha.enabled=false", f"sweep.storage_path={tmp_path / 'ray_results'}"]
    command = [sys.executable, "-m", "orchestrator.cli", "sweep", str(DEMO), "--name", "overnight"]
    for override in overrides:
        command += ["--set", override]
    return command + list(extra)


def _finished(uri):
    _, _, children = runs_of(uri, "overnight")
    return [run for run in children if run.info.status == "FINISHED"]


def test_resume_after_killing_the_driver(tmp_path):
    # A store migrated already: two processes (driver and this poller) open it, and MLflow's
    # first-time schema migration is not safe to run from two processes at once.
    uri = new_store(tmp_path / "mlflow.db")
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri}
    env.pop("RAY_ADDRESS", None)
    log = open(tmp_path / "driver.log", "w")
    driver = subprocess.Popen(_sweep_command(tmp_path), cwd=tmp_path, env=env, start_new_session=True,
                              stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.time() + 240
        while len(_finished(uri)) < 2 and driver.poll() is None and time.time() < deadline:
            time.sleep(1)
        assert driver.poll() is None, "the sweep ended first:\n" + (tmp_path / "driver.log").read_text()[-3000:]
        assert len(_finished(uri)) >= 2
    finally:
        # Kill the driver and the local Ray it started, as a crashed machine would.
        if driver.poll() is None:
            os.killpg(driver.pid, signal.SIGKILL)
        driver.wait()
        log.close()
    before = {run.data.tags["recall.trial_id"]: run.info.end_time for run in _finished(uri)}
    assert len(before) < 4

    resumed = subprocess.run(_sweep_command(tmp_path, "--resume"), cwd=tmp_path, env=env,
                             capture_output=True, text=True, timeout=400)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]

    client, parent, children = runs_of(uri, "overnight")
    trial_ids = [run.data.tags["recall.trial_id"] for run in children]
    assert len(children) == 4 and len(set(trial_ids)) == 4  # the total stays num_samples, one run each
    assert all(run.info.status == "FINISHED" for run in children)
    assert parent.info.status == "FINISHED"
    for run in children:
        steps = [m.step for m in client.get_metric_history(run.info.run_id, "val_exact_recall")]
        if run.data.tags["recall.trial_id"] in before:  # finished before the kill: not run again
            assert run.info.end_time == before[run.data.tags["recall.trial_id"]]
            assert sorted(steps) == [1, 2, 3]
        else:  # the trial in flight continues from its last checkpointed epoch, possibly repeating one
            assert sorted(set(steps)) == [1, 2, 3]
    # Each run says where its config came from, the trials asked for after the resume too: the demo's
    # point, then TPE's (orchestrator/warm_start.py).
    assert sorted(run.data.tags.get("recall.origin") for run in children) == ["optuna"] * 3 + ["seed"]

    # The resumed searcher wrote on in the sweep's one Optuna study: each trial told once, none twice.
    from optuna import load_study
    from optuna.trial import TrialState

    from orchestrator import run_record, study

    tags = parent.data.tags
    trials = load_study(study_name=tags[run_record.OPTUNA_STUDY], storage=tags[run_record.OPTUNA_STORAGE]).trials
    told = [trial.user_attrs[study.TUNE_TRIAL_ID] for trial in trials if trial.state == TrialState.COMPLETE]
    assert sorted(told) == sorted(trial_ids), [(trial.number, trial.state, trial.user_attrs) for trial in trials]

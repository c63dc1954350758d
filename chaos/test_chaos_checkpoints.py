"""Checkpoints cut short while the driver was down: a sweep's driver is SIGKILLed while its second trial
trains, the newest checkpoint (that trial's) and an older one (the finished first trial's) are truncated
in the sweep's storage, and --resume must neither crash nor lose the finished trial."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time

import pytest

from chaos_support import start_driver, started_trials, sweep_command, truncate, wait_for_epoch
from service_support import without_mlflow_uris
from sweep_support import FAST, runs_of

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

SWEEP = "cut"


@pytest.fixture(scope="module")
def resumed(orchestrator, tmp_path_factory):
    """(the --resume's CompletedProcess, tracking URI, {trial's start order: its run before the kill})."""
    work = tmp_path_factory.mktemp("checkpoints")
    uri = f"sqlite:///{work / 'mlflow.db'}"
    runs_of(uri, SWEEP)  # the store's tables, before two processes open it
    # Tune snapshots its experiment state every loop, not every 10 s: the killed driver's state then knows
    # the second trial, whose truncated checkpoint the resume must meet (a trial Tune never saw is
    # replaced, not resumed; tests/test_sweep_resume.py covers that).
    env = {**without_mlflow_uris(), "MLFLOW_TRACKING_URI": uri, "TUNE_GLOBAL_CHECKPOINT_S": "0"}
    env.pop("RAY_ADDRESS", None)
    overrides = [*FAST, "sweep.num_samples=2", "sweep.max_concurrent_trials=1", "training.epochs=3",
                 "sweep.asha.enabled=false", f"sweep.storage_path={work / 'ray_results'}"]
    log = work / "driver.log"
    driver = start_driver(sweep_command(orchestrator, SWEEP, overrides), work, env, log)
    try:
        # The first trial finished, the second has a checkpoint and two epochs to go.
        wait_for_epoch(log, driver, nth=1, epoch=1)
        time.sleep(0.5)  # Tune's snapshot after that result
    finally:
        with contextlib.suppress(ProcessLookupError):  # a driver that ended early fails the wait above
            os.killpg(driver.pid, signal.SIGKILL)  # the driver and its local Ray, as a crashed machine would
        driver.wait()
    order = {trial: nth for nth, trial in enumerate(started_trials(log))}
    before = {order[run.data.tags["recall.trial_id"]]: run for run in runs_of(uri, SWEEP)[2]}
    experiment = work / "ray_results" / SWEEP
    for trial in order:  # whichever checkpoints each trial still has; Tune keeps one, maybe two mid-save
        adapters = list(experiment.glob(f"*_{trial}_*/checkpoint_*/adapter/adapter_model.safetensors"))
        assert adapters, f"no checkpoint of trial {trial} in {experiment}"
        for adapter in adapters:
            truncate(adapter)
    result = subprocess.run(sweep_command(orchestrator, SWEEP, overrides, "--resume"), cwd=work, env=env,
                            capture_output=True, text=True, timeout=600)
    (work / "resume.log").write_text(result.stdout + result.stderr)
    return result, uri, before, order, work


def test_truncated_newest_checkpoint_then_resume_ends_the_sweep(resumed):
    result, uri, before, order, work = resumed
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-3000:]
    _, parent, children = runs_of(uri, SWEEP)
    assert parent.info.status == "FINISHED" and len(children) == 2
    resumed_runs = [run for run in children if order.get(run.data.tags["recall.trial_id"]) == 1]
    assert resumed_runs, f"the killed trial was replaced, not resumed from its checkpoint: {result.stdout[-3000:]}"
    in_flight = resumed_runs[0]
    # Restarted and finished, or failed naming what it could not read: never left RUNNING, never a crash.
    assert in_flight.info.status in ("FINISHED", "FAILED"), in_flight.info.status
    if in_flight.info.status == "FAILED":  # its adapter was cut short: the error names the checkpoint
        assert "cannot be read, cut short or corrupted" in in_flight.data.tags["recall.error"]
        failed = f"FAILED trial {in_flight.data.tags['recall.trial_id']}: trials.trial.CheckpointUnreadable: " \
                 f"checkpoint {work / 'ray_results' / SWEEP}/"
        assert failed in result.stdout, result.stdout[-3000:]
    assert 1 in before and before[1].info.status == "RUNNING"  # the kill came mid-trial


def test_truncated_older_checkpoint_then_resume_keeps_the_finished_trial(resumed):
    result, uri, before, order, work = resumed
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-3000:]
    client, _, children = runs_of(uri, SWEEP)
    finished = next(run for run in children if order.get(run.data.tags["recall.trial_id"]) == 0)
    assert before[0].info.status == "FINISHED"
    assert finished.info.status == "FINISHED" and finished.info.end_time == before[0].info.end_time  # not rerun
    steps = [metric.step for metric in client.get_metric_history(finished.info.run_id, "val_exact_recall")]
    assert sorted(steps) == [1, 2, 3]
    adapter = {artifact.path for artifact in client.list_artifacts(finished.info.run_id, "adapter")}
    assert "adapter/adapter_model.safetensors" in adapter  # its MLflow copy, whole

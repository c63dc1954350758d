"""Ctrl-C (SIGINT) and SIGTERM of the sweep driver: trials stop cleanly, the sweep's run is KILLED
(never FINISHED), the driver says how to resume and exits 128 + the signal; --resume then finishes.
The SIGTERM case runs against a real MLflow tracking server, so --resume is shown over HTTP too."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from orchestrator.interrupts import resume_command
from orchestrator.server import stop_process_group
from service_support import free_port, start_mlflow_server, without_mlflow_uris
from store_support import new_store
from sweep_support import DEMO, FAST, runs_of

pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.service]


def _overrides(tmp_path) -> list[str]:
    return [*FAST, "sweep.num_samples=3", "sweep.max_concurrent_trials=1", "training.epochs=3",
            "sweep.asha.enabled=false", f"sweep.storage_path={tmp_path / 'ray_results'}"]


def _sweep_command(tmp_path, *extra):
    # --verbose: the epoch lines tell when a trial has trained one
    return [sys.executable, "-m", "orchestrator.cli", "sweep", str(DEMO), "--name", "evening", "--verbose",
            *[arg for override in _overrides(tmp_path) for arg in ("--set", override)], *extra]


def _interrupt_after_first_epoch(tmp_path, env, signum) -> subprocess.CompletedProcess:
    """Start the sweep, send `signum` to the driver once a trial has reported an epoch, and wait."""
    log_path = tmp_path / f"driver-{signum}.log"
    with open(log_path, "w") as log:
        driver = subprocess.Popen(_sweep_command(tmp_path), cwd=tmp_path, env=env, stdout=log,
                                  stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.time() + 240
        while " epoch 1:" not in log_path.read_text() and driver.poll() is None and time.time() < deadline:
            time.sleep(0.5)
        assert driver.poll() is None, "the sweep ended first:\n" + log_path.read_text()[-3000:]
        driver.send_signal(signum)  # to the driver alone, as a terminal's Ctrl-C or `kill` would
        driver.wait(timeout=120)
    finally:
        if driver.poll() is None:
            os.killpg(driver.pid, signal.SIGKILL)
            driver.wait()
    return subprocess.CompletedProcess(driver.args, driver.returncode, log_path.read_text(), "")


@pytest.fixture
def store(request, tmp_path):
    """A SQLite file, or (param "server") a real MLflow server on one: the tracking URI."""
    if request.param == "sqlite":
        uri = new_store(tmp_path / "mlflow.db")  # migrated already: two processes open it at once
        yield uri
        return
    port = free_port()
    server = start_mlflow_server(tmp_path / "server", port)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        stop_process_group(server, timeout=30)


@pytest.mark.parametrize(("signum", "store"), [(signal.SIGINT, "sqlite"), (signal.SIGTERM, "server")],
                         indirect=["store"])
def test_a_stopped_sweep_is_killed_in_mlflow_and_resumes(tmp_path, signum, store):
    uri = store
    env = {**without_mlflow_uris(), "MLFLOW_TRACKING_URI": uri}
    env.pop("RAY_ADDRESS", None)

    stopped = _interrupt_after_first_epoch(tmp_path, env, signum)
    assert stopped.returncode == 128 + signum, stopped.stdout[-3000:]
    assert "Traceback" not in stopped.stdout, stopped.stdout[-3000:]
    # The command to copy: the config and the --set overrides as given, not a placeholder.
    resume = resume_command(str(DEMO), "evening", _overrides(tmp_path))
    assert f"continue it with:\n  {resume}\n" in stopped.stdout, stopped.stdout[-3000:]
    _, parent, children = runs_of(uri, "evening")
    assert parent.info.status == "KILLED"
    assert children and not [run for run in children if run.info.status == "RUNNING"]

    if signum == signal.SIGTERM:  # one resume is enough to show the stop kept what --resume needs
        # The trial in flight resumes from a temporary copy of its checkpoint, which must not be left.
        temporary = tmp_path / "tmp"
        temporary.mkdir()
        resumed = subprocess.run(_sweep_command(tmp_path, "--resume"), cwd=tmp_path,
                                 env={**env, "TMPDIR": str(temporary), "RAY_TMPDIR": "/tmp"},
                                 capture_output=True, text=True, timeout=400)
        assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
        # The progress Tune restored with the sweep is this driver's: plain lines in a pipe, epochs (--verbose).
        assert "3/3 trials done" in resumed.stdout and " epoch 3:" in resumed.stdout, resumed.stdout[-3000:]
        assert "\x1b" not in resumed.stdout
        _, parent, children = runs_of(uri, "evening")
        assert parent.info.status == "FINISHED"
        assert len(children) == 3 and all(run.info.status == "FINISHED" for run in children)
        assert not list(temporary.glob("resume-*"))

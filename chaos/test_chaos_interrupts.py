"""Driver SIGINT followed by --resume. tests/test_sweep_interrupt.py resumes only its SIGTERM case (and
tests/test_sweep_resume.py a SIGKILL); this runs its SIGINT case on to the resume, with its helpers."""

from __future__ import annotations

import signal
import subprocess

import pytest

from service_support import without_mlflow_uris
from sweep_support import runs_of
from test_sweep_interrupt import _interrupt_after_first_epoch, _sweep_command

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


def test_driver_sigint_then_resume_finishes_the_sweep(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    runs_of(uri, "evening")  # the store's tables, before two processes open it
    env = {**without_mlflow_uris(), "MLFLOW_TRACKING_URI": uri}
    env.pop("RAY_ADDRESS", None)

    stopped = _interrupt_after_first_epoch(tmp_path, env, signal.SIGINT)
    assert stopped.returncode == 128 + signal.SIGINT, stopped.stdout[-3000:]
    assert runs_of(uri, "evening")[1].info.status == "KILLED"

    resumed = subprocess.run(_sweep_command(tmp_path, "--resume"), cwd=tmp_path, env=env, capture_output=True,
                             text=True, timeout=400)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    _, parent, children = runs_of(uri, "evening")
    assert parent.info.status == "FINISHED"
    assert len(children) == 3 and all(run.info.status == "FINISHED" for run in children)

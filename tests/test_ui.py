"""`orchestrator ui` serves the MLflow UI on the store that sweeps write to."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request

import psutil
import pytest

from orchestrator import tracking
from store_support import new_store

pytestmark = pytest.mark.e2e


def _session_commands(session: int) -> list[str]:
    """The command lines of the processes in that session (a process leader's pid)."""
    lines = []
    for process in psutil.process_iter():
        try:
            if os.getsid(process.pid) == session:
                lines.append(" ".join(process.cmdline()))
        except (OSError, psutil.Error):  # gone meanwhile
            pass
    return lines


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_ui_serves_the_tracking_store(tmp_path):
    uri = new_store(tmp_path / "mlflow.db")
    client = tracking.client(uri)
    experiment = tracking.experiment_id(client, "recall-orchestrator")
    client.create_run(experiment, run_name="visible-in-the-ui")
    port = _free_port()
    ui = subprocess.Popen([sys.executable, "-m", "orchestrator.cli", "ui", "--port", str(port)],
                          env={**os.environ, "MLFLOW_TRACKING_URI": uri}, start_new_session=True,
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline, body = time.time() + 90, None
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}/api/2.0/mlflow/runs/search", method="POST",
            data=json.dumps({"experiment_ids": [experiment]}).encode(), headers={"Content-Type": "application/json"})
        while body is None and time.time() < deadline and ui.poll() is None:
            try:
                body = json.loads(urllib.request.urlopen(request, timeout=5).read())
            except OSError:
                time.sleep(1)
        assert body is not None, "the MLflow UI did not come up"
        assert [run["info"]["run_name"] for run in body["runs"]] == ["visible-in-the-ui"]
        # Small on a laptop: one uvicorn worker, no MLflow job runner (it would add 8 processes, ~1 GB).
        session = _session_commands(ui.pid)
        assert not [line for line in session if "huey" in line or "_job_runner" in line], session
        assert any("uvicorn" in line and "--workers 1" in line for line in session), session
    finally:
        os.killpg(ui.pid, signal.SIGTERM)
        ui.wait(timeout=30)

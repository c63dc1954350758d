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

import pytest

from orchestrator import tracking

pytestmark = pytest.mark.e2e


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_ui_serves_the_tracking_store(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
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
    finally:
        os.killpg(ui.pid, signal.SIGTERM)
        ui.wait(timeout=30)

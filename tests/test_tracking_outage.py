"""The tracking server goes away mid-sweep and comes back: training goes on, nothing is lost.

A real `mlflow server` (SQLite behind it: the outage is the server's, whatever its database) is
stopped for 20 s while a sweep runs, with MLflow's client retries off so that every write in that
window fails at once. The trials must finish, the driver must say once that the server went away
and once that it is back, every epoch's metrics and every adapter must reach MLflow once it is, and
no run may be left RUNNING.
"""

from __future__ import annotations

import re
import subprocess
import time

import pytest

from orchestrator import tracking
from orchestrator.server import stop_process_group
from service_support import free_port, start_mlflow_server, without_mlflow_uris
from sweep_support import DEMO, FAST

pytestmark = [pytest.mark.e2e, pytest.mark.service, pytest.mark.slow]

OUTAGE_S = 20


def test_a_sweep_outlives_a_tracking_server_outage(tmp_path, orchestrator):
    store = tmp_path / "store"
    port = free_port()
    uri = f"http://127.0.0.1:{port}"
    server = start_mlflow_server(store, port)
    overrides = [*FAST, "sweep.num_samples=3", "sweep.max_concurrent_trials=1", "training.epochs=3",
                 "sweep.asha.enabled=false", f"sweep.storage_path={tmp_path / 'ray_results'}"]
    env = {**without_mlflow_uris(), "MLFLOW_TRACKING_URI": uri, "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0"}
    log_path = tmp_path / "sweep.log"
    with open(log_path, "w") as log:
        sweep = subprocess.Popen(orchestrator("sweep", str(DEMO), "--name", "outage", "--verbose",
                                              *[arg for item in overrides for arg in ("--set", item)]),
                                 cwd=tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.time() + 240
        while " epoch 1:" not in log_path.read_text() and sweep.poll() is None and time.time() < deadline:
            time.sleep(0.5)
        assert sweep.poll() is None, "the sweep ended first:\n" + log_path.read_text()[-3000:]
        stop_process_group(server, timeout=30)
        down = time.time() * 1000
        time.sleep(OUTAGE_S)
        up = time.time() * 1000
        server = start_mlflow_server(store, port)
        sweep.wait(timeout=600)
    finally:
        if sweep.poll() is None:
            stop_process_group(sweep, timeout=30)
        stop_process_group(server, timeout=30)
        server = start_mlflow_server(store, port)  # read back what the sweep wrote
    try:
        output = log_path.read_text()
        assert sweep.returncode == 0, output[-4000:]
        # One line as the server goes, one as it is back; Tune's loop never waited on it (Ray names a callback
        # slower than 0.5 s; a busy machine may take that long, a write waiting on the server takes seconds).
        gone = re.findall(rf"tracking server {re.escape(uri)} unreachable since \d\d:\d\d:\d\d: \d+ writes waiting; "
                          "training goes on", output)
        back = re.findall(rf"tracking server {re.escape(uri)} back after \d+s: \d+ writes sent", output)
        assert len(gone) == 1 and len(back) == 1, output[-4000:]
        slow = re.findall(r"`callbacks\.on_trial_result` operation took ([\d.]+) s", output)
        assert all(float(took) < 5 for took in slow), output[-4000:]

        client = tracking.client(uri)
        parent = tracking.find_sweep_run(client, "recall-orchestrator", "outage")
        trials = tracking.trial_runs(client, parent)
        assert parent.info.status == "FINISHED"
        assert len(trials) == 3 and all(run.info.status == "FINISHED" for run in trials)
        reported_in_outage = 0
        for run in trials:
            history = client.get_metric_history(run.info.run_id, "val_exact_recall")
            assert sorted({metric.step for metric in history}) == [1, 2, 3]
            reported_in_outage += sum(down <= metric.timestamp <= up for metric in history)
            adapter = {artifact.path for artifact in client.list_artifacts(run.info.run_id, "adapter")}
            assert "adapter/adapter_model.safetensors" in adapter
        assert reported_in_outage, "no epoch ended while the server was down: the outage was not mid-training"
    finally:
        stop_process_group(server, timeout=30)


@pytest.mark.parametrize("command", [["promote", "--sweep", "team"], ["ask", "Who?"], ["report", "--sweep", "team"]])
def test_commands_on_the_store_fail_fast_when_the_server_is_down(orchestrator, tmp_path, command):
    uri = f"http://127.0.0.1:{free_port()}"  # a port nothing listens on
    started = time.monotonic()
    result = subprocess.run(orchestrator(*command), cwd=tmp_path, capture_output=True, text=True, timeout=120,
                            env={**without_mlflow_uris(), "MLFLOW_TRACKING_URI": uri})
    assert time.monotonic() - started < 30, "MLflow's HTTP retries ran before the check"
    assert result.returncode == 2, result.stdout[-2000:] + result.stderr[-3000:]
    assert result.stderr.startswith(f"error: MLflow tracking server {uri} is unreachable"), result.stderr[-3000:]

"""The team set-up, run for real: infra/mlflow-server.sh, i.e. `orchestrator server` (PostgreSQL 16
from the pgserver wheel and `mlflow server --serve-artifacts` on it) on a free local port, and the
CLI against it over HTTP.

Everything is a real process: the server, the sweep (Ray, Optuna, peft on the tiny model), the
promotion, `orchestrator ask`, `orchestrator report` and `mlflow models serve`; each learns where the store is from
MLFLOW_TRACKING_URI=http://127.0.0.1:PORT alone, with no path to the server's disk.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from service_support import free_port, wait_for_http, without_mlflow_uris
from sweep_support import DEMO, LEARNS, REPO

from orchestrator.server import stop_process_group

pytestmark = [pytest.mark.e2e, pytest.mark.service]

MODEL = "recall-champion"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """infra/mlflow-server.sh (`orchestrator server`) on 127.0.0.1:PORT: (tracking URI, PostgreSQL URI,
    data dir)."""
    data = tmp_path_factory.mktemp("server")
    port = free_port()
    log = data / "server.log"
    env = {**without_mlflow_uris(), "ORCHESTRATOR": str(Path(sys.executable).parent / "orchestrator")}
    with open(log, "wb") as output:
        process = subprocess.Popen([str(REPO / "infra" / "mlflow-server.sh"), "--data-dir", str(data / "store"),
                                    "--port", str(port)],
                                   env=env, stdout=output, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_for_http(f"http://127.0.0.1:{port}/health", process, log, 120)
        backend = re.search(r"^backend store: (\S+)$", log.read_text(), re.MULTILINE).group(1)
        yield f"http://127.0.0.1:{port}", backend, data / "store"
    finally:
        stop_process_group(process, timeout=60)
    # `orchestrator server` stopped the PostgreSQL it started: a running one holds postmaster.pid.
    assert not (data / "store" / "pgdata" / "postmaster.pid").exists(), log.read_text()[-3000:]


@pytest.fixture(scope="module")
def team(server, orchestrator, tmp_path_factory):
    """must-show: `sweep --name team` then `promote --sweep team`, both CLI processes on the server."""
    uri, _, _ = server
    work = tmp_path_factory.mktemp("team")
    env = {**without_mlflow_uris(), "MLFLOW_TRACKING_URI": uri, "HF_HUB_OFFLINE": "1"}  # the URI alone
    sets = [arg for item in [*LEARNS, "sweep.num_samples=2", f"sweep.storage_path={work / 'ray_results'}"]
            for arg in ("--set", item)]
    sweep = subprocess.run(orchestrator("sweep", str(DEMO), "--name", "team", *sets), cwd=work,
                           env=env, capture_output=True, text=True, timeout=300)
    assert sweep.returncode == 0, sweep.stdout[-2000:] + sweep.stderr[-3000:]
    promote = subprocess.run(orchestrator("promote", "--sweep", "team"), cwd=work, env=env, capture_output=True,
                             text=True, timeout=300)
    assert promote.returncode == 0, promote.stdout[-2000:] + promote.stderr[-3000:]
    return env


def test_sweep_and_promote_land_in_the_server(server, team):
    from orchestrator import tracking

    uri, backend, store = server
    client = tracking.client(uri)
    parent = tracking.find_sweep_run(client, "recall-orchestrator", "team")
    trials = tracking.trial_runs(client, parent)
    assert parent.info.status == "FINISHED" and len(trials) == 2
    for run in trials:
        # Stored by the server, reached through it: no client-side path in the run.
        assert run.info.artifact_uri.startswith("mlflow-artifacts:/"), run.info.artifact_uri
        adapter = {artifact.path for artifact in client.list_artifacts(run.info.run_id, "adapter")}
        assert {"adapter/adapter_config.json", "adapter/adapter_model.safetensors"} <= adapter
        on_disk = store / "artifacts" / run.info.artifact_uri.removeprefix("mlflow-artifacts:/")
        assert (on_disk / "adapter" / "adapter_model.safetensors").stat().st_size > 0
        assert (on_disk / "predictions_val.jsonl").exists()
    champion = client.get_model_version_by_alias(MODEL, "champion")
    assert champion.version == "1" and champion.tags["sweep"] == "team"

    # The server's store is PostgreSQL, and the registration is in it.
    import psycopg2

    connection = psycopg2.connect(backend.replace("postgresql+psycopg2://", "postgresql://", 1))
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT version()")
            assert cursor.fetchone()[0].startswith("PostgreSQL 16")
            cursor.execute("SELECT name FROM registered_models")
            assert cursor.fetchall() == [(MODEL,)]
            cursor.execute("SELECT alias, version FROM registered_model_aliases WHERE name = %s", (MODEL,))
            assert cursor.fetchall() == [("champion", 1)]
    finally:
        connection.close()


def champion_prediction(uri: str) -> dict:
    """A val question with the answer the champion's trial gave it, read back through the server."""
    from orchestrator import tracking

    client = tracking.client(uri)
    run_id = client.get_model_version_by_alias(MODEL, "champion").tags["source_run_id"]
    with open(client.download_artifacts(run_id, "predictions_val.jsonl")) as handle:
        return json.loads(handle.readline())


def test_orchestrator_ask_answers_from_the_server(server, team, orchestrator):
    uri, _, _ = server
    record = champion_prediction(uri)
    result = subprocess.run(orchestrator("ask", record["question"]), env=team, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip() == record["got"]


def test_report_reads_the_sweep_from_the_server(server, team, orchestrator, tmp_path):
    from orchestrator import tracking

    uri, _, store = server
    result = subprocess.run(orchestrator("report", "--sweep", "team", "--output-dir", str(tmp_path)), env=team,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "sweep 'team' (FINISHED, 2 trials)" in result.stdout
    # The plots went up to the sweep's run, into the server's artifact store.
    client = tracking.client(uri)
    parent = tracking.find_sweep_run(client, "recall-orchestrator", "team")
    assert {a.path for a in client.list_artifacts(parent.info.run_id, "report")} == {
        f"report/{name}" for name in ("learning_curves.png", "learning_rate.png", "recall_by_trial_epochs.png",
                                      "optimization_history.png", "param_importances.png", "parallel_coordinate.png",
                                      "answers.md", "ledger.md", "ledger_heatmap.png", "report.html")}
    # The study sits beside the sweep's results (no SQLite tracking store to sit beside); the champion came
    # from this sweep, and promotion logged its answers on test.
    assert parent.data.tags["recall.optuna_storage"].endswith("/ray_results/optuna.db")
    assert "champion (version 1 of 'recall-champion', trial " in result.stdout and "test split" in result.stdout
    on_disk = store / "artifacts" / parent.info.artifact_uri.removeprefix("mlflow-artifacts:/") / "report"
    assert (on_disk / "learning_curves.png").stat().st_size > 0


def test_mlflow_models_serve_the_champion_from_the_server(server, team, tmp_path):
    uri, _, _ = server
    record = champion_prediction(uri)
    port = free_port()
    log = tmp_path / "serve.log"
    with open(log, "wb") as output:
        process = subprocess.Popen(
            [sys.executable, "-m", "mlflow", "models", "serve", "-m", f"models:/{MODEL}@champion",
             "--env-manager", "local", "--host", "127.0.0.1", "--port", str(port)],
            env={**team, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"},
            stdout=output, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_for_http(f"http://127.0.0.1:{port}/ping", process, log, 90)
        request = urllib.request.Request(f"http://127.0.0.1:{port}/invocations",
                                         data=json.dumps({"inputs": [record["question"]]}).encode(),
                                         headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=60) as response:
            assert json.loads(response.read()) == {"predictions": [record["got"]]}
    finally:
        stop_process_group(process, timeout=60)


def test_sweep_fails_fast_when_the_server_is_down(orchestrator, tmp_path):
    uri = f"http://127.0.0.1:{free_port()}"  # a port nothing listens on
    started = time.monotonic()
    result = subprocess.run(
        orchestrator("sweep", str(DEMO), "--name", "down", "--set", f"sweep.storage_path={tmp_path}"),
        cwd=tmp_path, env={**without_mlflow_uris(), "MLFLOW_TRACKING_URI": uri},
        capture_output=True, text=True, timeout=60)
    assert time.monotonic() - started < 30, "MLflow's HTTP retries ran before the check"
    assert result.returncode == 2, result.stdout[-2000:] + result.stderr[-3000:]
    assert f"MLflow tracking server {uri} is unreachable" in result.stderr
    assert not (tmp_path / "down").exists()  # nothing ran: no Tune experiment


def test_a_server_that_is_not_mlflow_is_refused_before_the_sweep():
    import http.server
    import threading

    from orchestrator.errors import SweepError
    from orchestrator.server import check_reachable

    class NotMlflow(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_error(404)

        def log_message(self, *args):
            pass

    with http.server.ThreadingHTTPServer(("127.0.0.1", 0), NotMlflow) as other:
        threading.Thread(target=other.serve_forever, daemon=True).start()
        uri = f"http://127.0.0.1:{other.server_address[1]}"
        try:
            with pytest.raises(SweepError, match=f"MLFLOW_TRACKING_URI={uri} answered GET /health with HTTP 404"):
                check_reachable(uri)
        finally:
            other.shutdown()

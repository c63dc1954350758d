"""The sweep driver's MLflow writes while the tracking server is away (issue 21, item 2b).

A real `mlflow server` is stopped while the driver's callback gets a trial's results, then started
again on the same store. The callbacks must return at once (a write that waited on the server held
Tune's loop: no epoch ran for 64 s of a 40 s outage), the driver must say once that the server went
away and once that it is back, and every write must reach MLflow, in order, once it is.
"""

from __future__ import annotations

import re
import time

import pytest
from ray.tune.experiment import Trial

from orchestrator import run_record, tracking
from orchestrator.mlflow_writer import MlflowTrials
from orchestrator.server import stop_process_group
from service_support import free_port, start_mlflow_server
from sweep_support import fast_config

pytestmark = pytest.mark.service

POINT = {"method": "lora", "lora_r": 8, "lora_alpha": 16, "lora_learning_rate": 3e-3, "lora_dropout": 0.0,
         "lora_target_modules": "qv"}


def _wait_for(capsys, printed: list[str], text: str, seconds: float) -> str:
    """Everything printed so far, once it holds `text` (the writer prints from its own thread)."""
    deadline = time.monotonic() + seconds
    while text not in "".join(printed):
        assert time.monotonic() < deadline, f"no {text!r} within {seconds:.0f} s:\n{''.join(printed)}"
        time.sleep(0.2)
        printed.append(capsys.readouterr().out)
    return "".join(printed)


def test_writes_wait_for_an_away_tracking_server_without_holding_tunes_loop(tmp_path, monkeypatch, capsys):
    # MLflow's client retries a refused connection with backoff: 0 + 2 + 4 s here, minutes by default.
    # A callback that waited on it held Tune's loop that long, once per result while the server was away.
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "3")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1")
    store, port = tmp_path / "store", free_port()
    uri = f"http://127.0.0.1:{port}"
    server = start_mlflow_server(store, port)
    try:
        client = tracking.client(uri)
        experiment = tracking.experiment_id(client, "outage")
        parent = client.create_run(experiment).info.run_id
        config = fast_config(tmp_path)
        writer = MlflowTrials(uri, parent, experiment, "outage", config.trial_config().model_dump(mode="json"),
                              config.search_space.model_dump(mode="json"), deadline=None, outage_wait_s=120)
        trial = Trial("train", config=POINT, trial_id="t_00000", stub=True)
        stop_process_group(server, timeout=30)

        started = time.monotonic()
        for epoch in (1, 2, 3):
            writer.on_trial_result(epoch, [trial], trial, {"epoch": epoch, "val_exact_recall": epoch / 10})
        assert time.monotonic() - started < 1, "a callback waited on the away server"

        printed: list[str] = []
        _wait_for(capsys, printed, "training goes on", 30)
        server = start_mlflow_server(store, port)
        # Its run (created, described), three epochs' metrics, the placement tags: 6 writes waited.
        output = _wait_for(capsys, printed, "writes sent", 60)
        assert re.search(rf"tracking server {re.escape(uri)} unreachable since \d\d:\d\d:\d\d: \d+ writes waiting; "
                         "training goes on", output), output
        assert re.search(rf"tracking server {re.escape(uri)} back after \d+s: 6 writes sent", output), output

        trial.update_last_result({"epoch": 3, "val_exact_recall": 0.3})
        writer.on_trial_complete(4, [trial], trial)
        writer.on_experiment_end([trial])
        assert MlflowTrials.release(parent).close() == 0
        output = "".join(printed) + capsys.readouterr().out
        assert output.count("unreachable since") == 1 and output.count("back after") == 1, output

        (run,) = tracking.trial_runs(client, client.get_run(parent))
        assert run.info.status == "FINISHED" and run.data.tags[run_record.TRIAL_ID] == "t_00000"
        assert run.data.params["method.r"] == "8"
        history = client.get_metric_history(run.info.run_id, "val_exact_recall")
        assert sorted((metric.step, metric.value) for metric in history) == [(1, 0.1), (2, 0.2), (3, 0.3)]
    finally:
        stop_process_group(server, timeout=30)

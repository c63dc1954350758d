"""The team set-up under faults: `orchestrator server` (MLflow on PostgreSQL from the pgserver wheel)
and one sweep of the CLI against it over HTTP that meets three faults in turn, then promotions.

The sweep runs three trials one at a time, in the order of its points_to_evaluate:
- `victim`: its Ray worker is SIGKILLed once it has reported its first epoch;
- `diverging`: LoRA at learning rate 1e30, which must fail as `diverged` (issue 21 item 2c);
- `learner`: the demo recipe, during whose training the tracking server is stopped for 40 s
  (it trains 20 epochs, so that it trains through the outage).
Then `promote` must pick the learner, five promotes at once must register one version, and
promote/ask/report must fail fast while the server is stopped, writing nothing.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time

import pytest

from chaos_support import start_driver, started_trials, sweep_command, trial_workers, wait_for_epoch
from orchestrator import tracking
from orchestrator.server import stop_process_group
from service_support import free_port, wait_for_http, without_mlflow_uris
from sweep_support import FAST, REPO

pytestmark = [pytest.mark.e2e, pytest.mark.service, pytest.mark.slow]

SWEEP = "chaos"
OUTAGE_S = 40
LORA = "method: lora, lora_alpha: 16, lora_dropout: 0.0"
EPOCHS = 20  # the learner trains through the whole outage (about 2.5 s an epoch on 2 cores)
POINTS = {  # the order the trials start in (one at a time, in the order of points_to_evaluate), and the point
    "victim": (0, f"{{{LORA}, lora_r: 8, lora_learning_rate: 0.001, lora_target_modules: qv}}"),
    # 1.0e+30, not 1.0e30: YAML reads a float's exponent with its sign only
    "diverging": (1, f"{{{LORA}, lora_r: 8, lora_learning_rate: 1.0e+30, lora_target_modules: qv}}"),
    # The demo's own recipe: after 5 epochs it recalls test questions, so it can be a first champion.
    "learner": (2, f"{{{LORA}, lora_r: 32, lora_learning_rate: 0.003, lora_target_modules: all_linear}}"),
}


class TeamServer:
    """infra/mlflow-server.sh on a fixed data dir and port, so that a restart serves the same store."""

    def __init__(self, data, port: int):
        self.data, self.port, self.process = data, port, None
        self.uri = f"http://127.0.0.1:{port}"

    def start(self) -> None:
        log = self.data / f"server-{time.monotonic_ns()}.log"
        env = {**without_mlflow_uris(), "ORCHESTRATOR": os.path.join(os.path.dirname(sys.executable), "orchestrator")}
        with open(log, "wb") as output:
            self.process = subprocess.Popen([str(REPO / "infra" / "mlflow-server.sh"), "--data-dir",
                                             str(self.data / "store"), "--port", str(self.port)],
                                            env=env, stdout=output, stderr=subprocess.STDOUT, start_new_session=True)
        wait_for_http(f"{self.uri}/health", self.process, log, 120)

    def stop(self) -> None:
        stop_process_group(self.process, timeout=60)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    server = TeamServer(tmp_path_factory.mktemp("team-server"), free_port())
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def env(server):
    # No HTTP retries, as in tests/test_tracking_outage.py: every write in the outage fails at once, so
    # the driver's "unreachable" line comes within the outage, not after MLflow's minutes of backoff.
    return {**without_mlflow_uris(), "MLFLOW_TRACKING_URI": server.uri, "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0",
            "HF_HUB_OFFLINE": "1"}


def _kill_trial_worker(driver) -> int:
    workers = trial_workers(driver)
    assert len(workers) == 1, workers  # one trial at a time
    workers[0].send_signal(signal.SIGKILL)
    return workers[0].pid


@pytest.fixture(scope="module")
def sweep(server, env, orchestrator, tmp_path_factory):
    """The faulty sweep, run to its end: (console output, exit status, pid of the worker killed,
    {point: its MLflow run})."""
    work = tmp_path_factory.mktemp("chaos-sweep")
    points = ", ".join(point for _, point in POINTS.values())
    overrides = [*FAST, f"training.epochs={EPOCHS}", "sweep.num_samples=3", "sweep.max_concurrent_trials=1",
                 "sweep.asha.enabled=false", f"search_space.points_to_evaluate=[{points}]",
                 f"sweep.storage_path={work / 'ray_results'}"]
    log = work / "driver.log"
    driver = start_driver(sweep_command(orchestrator, SWEEP, overrides), work, env, log)
    try:
        wait_for_epoch(log, driver, nth=POINTS["victim"][0], epoch=1)
        killed = _kill_trial_worker(driver)
        wait_for_epoch(log, driver, nth=POINTS["learner"][0], epoch=1)
        server.stop()
        time.sleep(OUTAGE_S)
        server.start()
        driver.wait(timeout=900)
    finally:
        if driver.poll() is None:
            os.killpg(driver.pid, signal.SIGKILL)
            driver.wait()
    client = tracking.client(server.uri)
    runs = tracking.trial_runs(client, tracking.find_sweep_run(client, "recall-orchestrator", SWEEP))
    by_order = {started_trials(log).index(run.data.tags[tracking.TRIAL_ID]): run for run in runs}
    return log.read_text(), driver.returncode, killed, {name: by_order.get(nth) for name, (nth, _) in
                                                         POINTS.items()}


def test_worker_sigkill_fails_its_trial_alone_with_a_readable_cause(sweep):
    output, status, killed, runs = sweep
    assert status == 0, output[-4000:]
    assert runs["victim"].info.status == "FAILED" and runs["learner"].info.status == "FINISHED"
    cause = f"worker process died (pid {killed}): killed by a signal (SIGKILL, the kernel's OOM killer: see dmesg)"
    assert f"FAILED trial {runs['victim'].data.tags[tracking.TRIAL_ID]}: {cause}" in output, output[-4000:]
    assert "The actor died unexpectedly" in runs["victim"].data.tags["recall.error"]  # the whole text kept


def test_trial_divergence_in_a_sweep_fails_it_as_diverged(sweep):
    output, _, _, runs = sweep
    diverged = runs["diverging"]
    assert diverged.info.status == "FAILED" and diverged.data.tags["recall.failure"] == "diverged"
    assert f"FAILED trial {diverged.data.tags[tracking.TRIAL_ID]}: training diverged: non-finite " in output
    assert "TypeError" not in diverged.data.tags["recall.error"]


def test_tracking_server_stopped_40s_mid_sweep_loses_nothing(sweep, server):
    output, _, _, runs = sweep
    gone = re.findall(rf"tracking server {re.escape(server.uri)} unreachable since \d\d:\d\d:\d\d: \d+ writes "
                      "waiting; training goes on", output)
    back = re.findall(rf"tracking server {re.escape(server.uri)} back after \d+s: \d+ writes sent", output)
    assert len(gone) == 1 and len(back) == 1, output[-4000:]
    during = output.split(gone[0], 1)[1].split(back[0], 1)[0]
    trained = re.findall(rf"  trial {runs['learner'].data.tags[tracking.TRIAL_ID]} epoch \d+:", during)
    assert len(trained) >= 5, f"training did not go on while the server was down:\n{during[-3000:]}"
    slow = re.findall(r"`callbacks\.on_trial_result` operation took ([\d.]+) s", output)
    assert all(float(took) < 5 for took in slow), output[-4000:]
    client = tracking.client(server.uri)
    learner = runs["learner"].info.run_id
    assert sorted({metric.step for metric in client.get_metric_history(learner, "val_exact_recall")}) == list(
        range(1, EPOCHS + 1))
    assert "adapter/adapter_model.safetensors" in {a.path for a in client.list_artifacts(learner, "adapter")}
    assert tracking.find_sweep_run(client, "recall-orchestrator", SWEEP).info.status == "FINISHED"


def _promote(orchestrator, env, cwd, *args: str) -> subprocess.Popen:
    return subprocess.Popen(orchestrator("promote", "--sweep", SWEEP, *args), env=env, cwd=cwd,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_promote_after_divergence_and_a_killed_worker_picks_the_learner(sweep, server, env, orchestrator, tmp_path):
    _, _, _, runs = sweep
    promote = _promote(orchestrator, env, tmp_path)
    out, err = promote.communicate(timeout=300)
    assert promote.returncode == 0, out[-2000:] + err[-3000:]
    champion = tracking.client(server.uri).get_model_version_by_alias("recall-champion", "champion")
    assert champion.tags["source_run_id"] == runs["learner"].info.run_id


def test_five_concurrent_promotes_register_one_version(sweep, server, env, orchestrator, tmp_path):
    model = "chaos-race"
    promotes = [_promote(orchestrator, env, tmp_path, "--model-name", model) for _ in range(5)]
    outputs = [promote.communicate(timeout=600) for promote in promotes]
    said = [" ".join(out.split()) for out, _ in outputs]
    for promote, text, (_, err) in zip(promotes, said, outputs):
        # One that came after the winner may find its trial already champion: the gate keeps it (3).
        assert promote.returncode == (3 if "kept champion v1" in text else 0), err[-3000:]
    client = tracking.client(server.uri)
    assert [str(version.version) for version in client.search_model_versions(f"name = '{model}'")] == ["1"], said
    assert str(client.get_model_version_by_alias(model, "champion").version) == "1"
    assert sum("registered as new version 1" in text for text in said) == 1, said


def test_promote_refuses_a_model_name_with_both_quotes_before_any_write(sweep, server, env, orchestrator, tmp_path):
    client = tracking.client(server.uri)
    before = len(client.search_registered_models())
    promote = _promote(orchestrator, env, tmp_path, "--model-name", "team's \"best\"")
    _, err = promote.communicate(timeout=300)
    assert promote.returncode == 2 and "--model-name holds both quote kinds" in err, err[-3000:]
    assert len(client.search_registered_models()) == before


def test_promote_ask_report_fail_fast_while_the_server_is_stopped(sweep, server, env, orchestrator, tmp_path):
    client = tracking.client(server.uri)
    versions = len(client.search_model_versions("name = 'recall-champion'"))
    server.stop()
    try:
        results = {}
        for command in (["promote", "--sweep", SWEEP], ["ask", "Who?"], ["report", "--sweep", SWEEP]):
            started = time.monotonic()
            result = subprocess.run(orchestrator(*command), cwd=tmp_path, env=env, capture_output=True, text=True,
                                    timeout=120)
            results[command[0]] = result, time.monotonic() - started
    finally:
        server.start()
    for command, (result, took) in results.items():
        assert result.returncode == 2, (command, result.stdout[-2000:] + result.stderr[-3000:])
        assert f"error: MLflow tracking server {server.uri} is unreachable" in result.stderr, result.stderr[-3000:]
        assert took < 30, f"{command}: MLflow's HTTP retries ran before the check"
    assert len(client.search_model_versions("name = 'recall-champion'")) == versions
    assert not list(tmp_path.iterdir())  # report wrote no files either

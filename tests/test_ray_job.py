"""A sweep as a Ray job, for real: `ray start --head` on this machine, `ray job submit --working-dir`
of this repository running `orchestrator sweep`, `ray job logs` and `ray job stop`, with the trials
tracked in an MLflow server the job reaches over HTTP and the Tune experiment in sweep.storage_path.

The head is a private one:
- 127.0.0.1 only. `--node-ip-address 127.0.0.1` alone is not enough: Ray swaps a loopback address
  for the machine's reachable IP on Linux unless RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 (its single-
  machine mode, the default on macOS/Windows).
- free ports for everything it listens on: Ray's defaults (6379, the dashboard agent's 52365, ...)
  collide with other Ray instances on the machine.
- its own --temp-dir, where `ray start` also writes its address file: /tmp/ray/ray_current_cluster,
  which a plain `ray.init()` in other tests would join, is not touched.
- its own token, not the machine-wide ~/.ray/auth_token (whose presence turns Ray's token
  authentication on): the `ray job` CLI, the job's driver and its workers read RAY_AUTH_TOKEN_PATH.
The fixtures stop what they start.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import psutil
import pytest
from service_support import free_port, free_ports, start_mlflow_server, wait_for_http, without_mlflow_uris
from sweep_support import FAST, LEARNS, REPO, runs_of

from orchestrator.leaderboard import LEADERBOARD_COLUMNS
from orchestrator.server import stop_process_group

VENV_BIN = Path(sys.executable).parent
ANSI = re.compile(r"\x1b\[[0-9;]*m")


@dataclass
class Head:
    address: str  # the dashboard's HTTP address, which `ray job` commands take
    gcs: str
    temp_dir: Path
    token: Path
    env: dict[str, str]  # for `ray` commands: the token's path, the venv's bin first on PATH


def ray_cli(head: Head, *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    """A `ray` command against the head, its colours stripped."""
    result = subprocess.run([str(VENV_BIN / "ray"), *args], check=False, env=head.env, capture_output=True,
                            text=True, timeout=timeout)
    result.stdout, result.stderr = (ANSI.sub("", text) for text in (result.stdout, result.stderr))
    return result


def processes_of(head: Head) -> list[psutil.Process]:
    """The processes of this test's Ray: everything the head started inherits its RAY_AUTH_TOKEN_PATH,
    workers and the job's driver included (Ray starts the driver in a session of its own)."""
    found = []
    for process in psutil.process_iter(["pid", "cwd"]):
        try:
            if process.pid != os.getpid() and process.environ().get("RAY_AUTH_TOKEN_PATH") == str(head.token):
                found.append(process)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            pass
    return found


def job_processes(head: Head) -> list[psutil.Process]:
    """Those that run in a job's working dir: the driver and the trials' workers."""
    return [process for process in processes_of(head) if "working_dir_files" in (process.info["cwd"] or "")]


@pytest.fixture(scope="module")
def head():
    # Short: Ray's Unix sockets live under it, and a socket path has at most 107 characters.
    temp_dir = Path(tempfile.mkdtemp(prefix="rayjob-", dir="/tmp"))
    gcs, dashboard, client, agent_http, agent_grpc, metrics, runtime_env_agent = free_ports(7)
    token = temp_dir / "auth_token"
    token.write_text(secrets.token_hex(32))
    env = {**without_mlflow_uris(), "PATH": f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}",
           "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "RAY_USAGE_STATS_ENABLED": "0",
           "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(token)}
    for inherited in ("RAY_ADDRESS", "RAY_AUTH_TOKEN"):
        env.pop(inherited, None)
    command = [
        str(VENV_BIN / "ray"), "start", "--head", "--block", "--temp-dir", str(temp_dir),
        "--node-ip-address", "127.0.0.1", "--port", str(gcs),
        "--include-dashboard", "true", "--dashboard-host", "127.0.0.1", "--dashboard-port", str(dashboard),
        "--ray-client-server-port", str(client), "--dashboard-agent-listen-port", str(agent_http),
        "--dashboard-agent-grpc-port", str(agent_grpc), "--metrics-export-port", str(metrics),
        "--runtime-env-agent-port", str(runtime_env_agent),
        # 0: ports the OS picks, free by construction.
        "--node-manager-port", "0", "--object-manager-port", "0", "--min-worker-port", "0", "--max-worker-port", "0",
        "--num-cpus", "2", "--num-gpus", "0", "--object-store-memory", str(256 * 2**20), "--disable-usage-stats",
    ]
    default_address_file = Path("/tmp/ray/ray_current_cluster")
    before = default_address_file.read_text() if default_address_file.exists() else None
    log = temp_dir / "head.log"
    with open(log, "wb") as output:
        process = subprocess.Popen(command, env=env, stdout=output, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_for_http(f"http://127.0.0.1:{dashboard}/api/version", process, log, 120,
                      headers={"Authorization": f"Bearer {token.read_text()}"})
        head = Head(f"http://127.0.0.1:{dashboard}", f"127.0.0.1:{gcs}", temp_dir, token, env)
        listed = ray_cli(head, "job", "list", "--address", head.address)
        assert listed.returncode == 0, listed.stderr[-3000:] + log.read_text()[-3000:]
        listening = {(process.name(), connection.laddr.ip, connection.laddr.port)
                     for process in processes_of(head) for connection in process.net_connections("inet")
                     if connection.status == psutil.CONN_LISTEN}
        assert {name for name, _, _ in listening} >= {"gcs_server", "raylet"}, listening
        assert {ip for _, ip, _ in listening} <= {"127.0.0.1", "::ffff:127.0.0.1"}, listening
        # The address file went to our temp dir, not where `ray.init()` without an address looks. (`ray
        # start` writes it last, after the dashboard is up.)
        address_file, deadline = temp_dir / "ray_current_cluster", time.monotonic() + 30
        while not address_file.exists():
            assert process.poll() is None and time.monotonic() < deadline, log.read_text()[-3000:]
            time.sleep(0.5)
        assert address_file.read_text().strip() == head.gcs
        assert (default_address_file.read_text() if default_address_file.exists() else None) == before
        yield head
    finally:
        # `ray start --block` stops its processes in order on SIGTERM; SIGTERM to the whole group at once
        # leaves it waiting ~30 s on a GCS that is already gone (to drain the node).
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            pass
        stop_process_group(process, timeout=10)  # what is left of the group
        stray = Head("", "", temp_dir, token, env)
        deadline = time.monotonic() + 10  # workers exit once their raylet is gone
        while (left := processes_of(stray)) and time.monotonic() < deadline:
            time.sleep(0.5)
        for process in left:
            with contextlib.suppress(psutil.NoSuchProcess):
                process.kill()
        shutil.rmtree(temp_dir, ignore_errors=True)
        assert not left, f"outlived the head: {[process.info for process in left]}"


@pytest.fixture(scope="module")
def tracking_server(tmp_path_factory):
    port = free_port()
    process = start_mlflow_server(tmp_path_factory.mktemp("mlflow"), port)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        stop_process_group(process, timeout=30)


def submit(head: Head, uri: str, name: str, storage: Path, *overrides: str, wait: bool = True, verbose: bool = False,
           env_vars: dict[str, str] | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    """docs/team.md's command: this repository as the job's working dir, the tracking server's URI as
    the job's environment, `orchestrator sweep` (the head's PATH has the venv's bin) as entrypoint."""
    runtime_env = {"excludes": [".git"], "env_vars": {"MLFLOW_TRACKING_URI": uri, **(env_vars or {})}}
    sets = [arg for item in [*FAST, f"sweep.storage_path={storage}", *overrides] for arg in ("--set", item)]
    return ray_cli(head, "job", "submit", "--address", head.address, "--working-dir", str(REPO),
                   "--runtime-env-json", json.dumps(runtime_env), "--submission-id", f"sweep-{name}",
                   *(["--no-wait"] if not wait else []),
                   "--", "orchestrator", "sweep", "configs/demo.yaml", "--name", name, *sets,
                   *(["--verbose"] if verbose else []), timeout=timeout)


def jobs_api(head: Head, path: str = ""):
    """The job REST API, which the `ray job` commands ask (their words vary with the status)."""
    request = urllib.request.Request(f"{head.address}/api/jobs/{path}",
                                     headers={"Authorization": f"Bearer {head.token.read_text()}"})
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read())


def job_status(head: Head, submission_id: str) -> str:
    return jobs_api(head, submission_id)["status"]


def job_logs(head: Head, submission_id: str) -> str:
    result = ray_cli(head, "job", "logs", "--address", head.address, submission_id)
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


@pytest.mark.e2e
@pytest.mark.service
@pytest.mark.cluster
def test_a_submitted_sweep_runs_on_the_cluster_and_lands_in_the_server(head, tracking_server, tmp_path):
    from ray import tune

    shared = tmp_path / "shared"  # sweep.storage_path: a folder every node sees (here: one node)
    result = submit(head, tracking_server, "job", shared, "sweep.num_samples=2")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert job_status(head, "sweep-job") == "SUCCEEDED"

    logs = job_logs(head, "sweep-job")  # what the sweep printed, leaderboard included
    assert "sweep 'job': 2 trials" in logs and "| " + " | ".join(LEADERBOARD_COLUMNS) + " |" in logs, logs[-3000:]
    # Progress as plain lines (a job's log is no terminal); epoch lines only with --verbose.
    assert "2/2 trials done" in logs and " epoch 1:" not in logs and "\x1b" not in logs, logs[-3000:]

    client, parent, trials = runs_of(tracking_server, "job")
    assert parent is not None and parent.info.status == "FINISHED"
    assert len(trials) == 2 and all(run.info.status == "FINISHED" for run in trials)
    for run in trials:
        assert run.info.artifact_uri.startswith("mlflow-artifacts:/"), run.info.artifact_uri
        adapter = {artifact.path for artifact in client.list_artifacts(run.info.run_id, "adapter")}
        assert {"adapter/adapter_config.json", "adapter/adapter_model.safetensors"} <= adapter
        assert run.data.tags["recall.node_id"]  # placed by the cluster's scheduler

    # Tune kept the experiment (and the trials' checkpoints) in storage_path, where --resume looks.
    assert tune.Tuner.can_restore(str(shared / "job"))
    assert not (REPO / "ray_results" / "job").exists()


@pytest.mark.e2e
@pytest.mark.service
@pytest.mark.cluster
def test_ray_job_stop_stops_the_sweep_and_keeps_it_resumable(head, tracking_server, tmp_path):
    import pyarrow.fs
    from ray import tune

    from orchestrator import state_signing

    submission, shared = "sweep-stopped", tmp_path / "shared"
    # The sweep saves itself on SIGTERM; Ray SIGKILLs a job still running RAY_JOB_STOP_WAIT_TIME_S
    # (default 3) after it. The job's env_vars reach the job's supervisor, which reads it.
    result = submit(head, tracking_server, "stopped", shared, "sweep.num_samples=4", "training.epochs=40",
                    wait=False, verbose=True, env_vars={"RAY_JOB_STOP_WAIT_TIME_S": "60"}, timeout=120)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]

    deadline = time.monotonic() + 180
    while "epoch 1:" not in (logs := job_logs(head, submission)):  # a trial trained and reported an epoch
        assert job_status(head, submission) in ("PENDING", "RUNNING"), logs[-3000:]
        assert time.monotonic() < deadline, logs[-3000:]
        time.sleep(2)

    stopped = ray_cli(head, "job", "stop", "--address", head.address, submission, timeout=120)
    assert stopped.returncode == 0, stopped.stdout[-3000:] + stopped.stderr[-3000:]
    assert job_status(head, submission) == "STOPPED"
    assert "--resume" in job_logs(head, submission)  # the sweep said how to continue it

    # The driver and the trials' workers are gone: nothing runs in the job's working dir any more.
    deadline = time.monotonic() + 60
    while left := job_processes(head):
        assert time.monotonic() < deadline, [process.info for process in left]
        time.sleep(1)

    _, parent, trials = runs_of(tracking_server, "stopped")
    statuses = [parent.info.status, *(run.info.status for run in trials)]
    assert parent.info.status == "KILLED" and len(trials) >= 2 and "RUNNING" not in statuses, statuses
    assert tune.Tuner.can_restore(str(shared / "stopped"))  # `--resume` continues it from storage_path
    # and accepts its state: signed by the job's driver on the head, with this user's key (the head runs as this user).
    experiment = str(shared / "stopped")
    state_signing.verify(pyarrow.fs.LocalFileSystem(), experiment, experiment, str(shared))


@pytest.mark.e2e
@pytest.mark.service
@pytest.mark.cluster
def test_a_sweep_driven_from_outside_joins_with_ray_address(head, tracking_server, tmp_path, orchestrator):
    """The other way in: `orchestrator sweep` on a machine of its own with RAY_ADDRESS; connect_ray
    ships the code to the cluster's workers as py_modules."""
    sets = [arg for item in [*FAST, "sweep.num_samples=1", f"sweep.storage_path={tmp_path / 'shared'}"]
            for arg in ("--set", item)]
    result = subprocess.run(orchestrator("sweep", str(REPO / "configs" / "demo.yaml"), "--name", "outside", *sets),
                            check=False, cwd=tmp_path, capture_output=True, text=True, timeout=300,
                            env={**head.env, "RAY_ADDRESS": head.gcs, "MLFLOW_TRACKING_URI": tracking_server})
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "sweep 'outside': 1 trials" in result.stdout
    [driver] = [job for job in jobs_api(head) if job["type"] == "DRIVER" and "--name outside" in job["entrypoint"]]
    assert driver["status"] == "SUCCEEDED" and len(driver["runtime_env"]["py_modules"]) == 2  # trials, orchestrator
    _, parent, trials = runs_of(tracking_server, "outside")
    assert parent.info.status == "FINISHED" and [run.info.status for run in trials] == ["FINISHED"]


def test_connect_ray_leaves_the_code_to_a_job_that_ships_it(monkeypatch):
    """Inside `ray job submit --working-dir`, ray.init gets no runtime_env of its own: Ray would merge
    it into the job's (a second upload of the code) or refuse the merge (py_modules twice)."""
    import ray

    from orchestrator.sweep import connect_ray

    calls = []
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", lambda **kwargs: calls.append(kwargs))
    monkeypatch.setenv("RAY_ADDRESS", "127.0.0.1:6379")
    monkeypatch.delenv("RAY_JOB_CONFIG_JSON_ENV_VAR", raising=False)
    connect_ray(None)  # a laptop with RAY_ADDRESS: ship the code
    assert [module.__name__ for module in calls[-1]["runtime_env"]["py_modules"]] == ["trials", "orchestrator"]

    for job_env in ({"working_dir": "gcs://_ray_pkg_1.zip"}, {"py_modules": ["gcs://_ray_pkg_2.zip"]}):
        monkeypatch.setenv("RAY_JOB_CONFIG_JSON_ENV_VAR", json.dumps({"runtime_env": job_env, "metadata": {}}))
        connect_ray(None)
        assert "runtime_env" not in calls[-1] and calls[-1]["address"] == "127.0.0.1:6379"

    # A job that ships nothing (the code installed on the head only): its workers still get it.
    monkeypatch.setenv("RAY_JOB_CONFIG_JSON_ENV_VAR", json.dumps({"runtime_env": {"env_vars": {"A": "1"}}}))
    connect_ray(None)
    assert "py_modules" in calls[-1]["runtime_env"]


def test_without_an_address_a_sweep_starts_a_ray_of_its_own(monkeypatch):
    """Ray's default (address None) joins whatever cluster this machine has recorded (`ray start`, a test's
    two-node cluster): a sweep started without an address would land on it and die when it stops."""
    import ray

    import orchestrator.sweep as sweep

    calls = []
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", lambda **kwargs: calls.append(kwargs))
    monkeypatch.setattr(sweep, "stop_leftovers", lambda log: None)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    sweep.connect_ray(None)
    assert calls[-1]["address"] == "local" and "runtime_env" not in calls[-1]
    sweep.connect_ray("auto")  # asked for: join the machine's cluster
    assert calls[-1]["address"] == "auto"


@pytest.mark.e2e
@pytest.mark.service
@pytest.mark.cluster
def test_two_teams_sweep_at_once_on_one_cluster_and_server(head, tracking_server, tmp_path, orchestrator):
    """Two teams, one Ray cluster and one tracking server: two sweeps submitted together, in
    different MLflow experiments, promoted to different models; each promotion sees its own sweep only."""
    teams = {"team-a": ("experiment-a", "facts-a"), "team-b": ("recall-orchestrator", "facts-b")}
    for name, (experiment, _) in teams.items():
        submitted = submit(head, tracking_server, name, tmp_path / "shared", *LEARNS, "sweep.num_samples=1",
                           f"sweep.experiment={experiment}", wait=False, timeout=120)
        assert submitted.returncode == 0, submitted.stdout[-3000:] + submitted.stderr[-3000:]
    deadline, done = time.monotonic() + 400, dict.fromkeys(teams, "SUCCEEDED")
    while (statuses := {name: job_status(head, f"sweep-{name}") for name in teams}) != done:
        assert not set(statuses.values()) & {"FAILED", "STOPPED"}, {name: job_logs(head, f"sweep-{name}")[-2000:]
                                                                    for name in teams}
        assert time.monotonic() < deadline, statuses
        time.sleep(2)

    env = {**without_mlflow_uris(), "MLFLOW_TRACKING_URI": tracking_server, "HF_HUB_OFFLINE": "1"}
    for name, (experiment, model) in teams.items():
        promoted = subprocess.run(orchestrator("promote", "--sweep", name, "--experiment", experiment,
                                               "--model-name", model),
                                  check=False, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
        assert promoted.returncode == 0, promoted.stdout[-3000:] + promoted.stderr[-3000:]
    for name, (experiment, model) in teams.items():
        client, parent, trials = runs_of(tracking_server, name, experiment)
        assert parent.info.status == "FINISHED" and len(trials) == 1
        champion = client.get_model_version_by_alias(model, "champion")
        assert champion.tags["sweep"] == name and champion.tags["source_run_id"] == trials[0].info.run_id
        assert [version.version for version in client.search_model_versions(f"name = '{model}'")] == ["1"]

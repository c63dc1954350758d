"""Shared helpers for the tests that start real services on 127.0.0.1 (tracking servers, Ray heads)."""

from __future__ import annotations

import os
import socket
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def free_ports(count: int) -> list[int]:
    """`count` distinct free ports: each probe stays bound until all are chosen, so none repeats."""
    probes = [socket.socket() for _ in range(count)]
    try:
        for probe in probes:
            probe.bind(("127.0.0.1", 0))
        return [probe.getsockname()[1] for probe in probes]
    finally:
        for probe in probes:
            probe.close()


def without_mlflow_uris() -> dict[str, str]:
    """os.environ without MLflow store settings: mlflow.set_tracking_uri/set_registry_uri, as other
    tests call them in this process, write MLFLOW_TRACKING_URI/MLFLOW_REGISTRY_URI into it, and a
    stale registry URI would send `models:/...` to another test's store."""
    return {key: value for key, value in os.environ.items() if key not in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")}


def wait_for_http(url: str, process: subprocess.Popen, log: Path, seconds: float,
                  headers: dict[str, str] | None = None) -> None:
    deadline = time.monotonic() + seconds
    while True:
        assert process.poll() is None, f"the server exited:\n{log.read_text()[-3000:]}"
        assert time.monotonic() < deadline, f"no answer from {url} within {seconds:.0f} s:\n{log.read_text()[-3000:]}"
        try:
            with urllib.request.urlopen(urllib.request.Request(url, headers=headers or {}), timeout=2) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            time.sleep(0.5)


def start_mlflow_server(store: Path, port: int) -> subprocess.Popen:
    """`mlflow server --serve-artifacts` on a SQLite file in `store` (the PostgreSQL set-up has
    test_tracking_server.py), on 127.0.0.1:`port`; answering /health when this returns. Restarted on
    the same store and port, it serves the same runs. Stop it with orchestrator.server.stop_process_group."""
    from orchestrator.server import mlflow_server_command

    store.mkdir(parents=True, exist_ok=True)
    log = store / f"server-{time.monotonic_ns()}.log"
    command = mlflow_server_command(f"sqlite:///{store / 'mlflow.db'}", store / "artifacts", "127.0.0.1", port)
    env = {**without_mlflow_uris(), "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    with open(log, "wb") as output:
        process = subprocess.Popen(command, env=env, stdout=output, stderr=subprocess.STDOUT, start_new_session=True)
    wait_for_http(f"http://127.0.0.1:{port}/health", process, log, 120)
    return process

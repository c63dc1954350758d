"""`orchestrator server`: a team's MLflow tracking server, on PostgreSQL, serving its artifacts.

Why this shape:
- PostgreSQL, not SQLite: a shared server takes sweeps, promotions and UI reads from many people at
  once, and the Model Registry needs a database store. Without `--backend-store-uri`, a private
  PostgreSQL 16 is started from the `pgserver` wheel (no Docker, no system package) in
  DATA_DIR/pgdata. It listens on a Unix socket only: the MLflow server is its one client.
- `--serve-artifacts`: runs record `mlflow-artifacts:/...` locations and every upload and download
  goes through the server to DATA_DIR/artifacts, so Ray workers and laptops need only
  MLFLOW_TRACKING_URI=http://HOST:PORT, never a shared disk.
- 127.0.0.1 by default: the server has no authentication; `--host 0.0.0.0` opens it to the network.

A sweep checks that its tracking server answers before anything else starts (`check_reachable`).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

from orchestrator.errors import SweepError

DATABASE = "mlflow"


def check_reachable(uri: str, timeout: int = 5) -> None:
    """Fail in seconds when an http(s) tracking server does not answer: MLflow's client retries a
    refused connection with backoff for minutes (MLFLOW_HTTP_REQUEST_MAX_RETRIES, ..._BACKOFF_FACTOR)
    before a sweep would say anything. One request through MLflow's own HTTP client, so its TLS,
    proxy and credential settings apply. MLflow answers /health without authentication; another
    answer means the URI is not an MLflow server (or a proxy in front of it refuses us)."""
    if not uri.startswith(("http://", "https://")):
        return
    from mlflow.exceptions import MlflowException
    from mlflow.utils.credentials import get_default_host_creds
    from mlflow.utils.rest_utils import http_request

    try:
        response = http_request(get_default_host_creds(uri), "/health", "GET", max_retries=0, timeout=timeout,
                                raise_on_status=False)
    except MlflowException as error:
        raise SweepError(f"MLflow tracking server {uri} is unreachable: {error.message}\nstart it "
                         "(infra/README.md) or set MLFLOW_TRACKING_URI to one that is up") from None
    if response.status_code != 200:
        raise SweepError(f"MLFLOW_TRACKING_URI={uri} answered GET /health with HTTP {response.status_code}: "
                         "is it an MLflow tracking server?")


def start_postgres(pgdata: Path):
    """A private PostgreSQL in `pgdata` (created on first use) with database `mlflow`: (server, URI).
    As root, pgserver runs PostgreSQL as a system user `pgserver` (created if missing): PostgreSQL
    refuses to run as root."""
    import pgserver
    import psycopg2

    pgdata.parent.mkdir(parents=True, exist_ok=True)
    postgres = pgserver.get_server(pgdata, cleanup_mode="stop")
    connection = psycopg2.connect(postgres.get_uri())
    try:
        connection.autocommit = True  # CREATE DATABASE cannot run inside a transaction
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1 FROM pg_database WHERE datname = %s", (DATABASE,))
            if cursor.fetchone() is None:
                cursor.execute(f"CREATE DATABASE {DATABASE}")
    finally:
        connection.close()
    # SQLAlchemy 2.1 maps a bare postgresql:// to psycopg 3; the driver installed is psycopg2.
    return postgres, postgres.get_uri(DATABASE).replace("postgresql://", "postgresql+psycopg2://", 1)


def mlflow_server_command(backend_store_uri: str, artifacts: Path, host: str, port: int,
                          allowed_hosts: str | None = None) -> list[str]:
    command = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", backend_store_uri,
               "--serve-artifacts", "--artifacts-destination", str(artifacts.resolve()),
               "--host", host, "--port", str(port), "--workers", "1"]
    # MLflow answers only Host headers of localhost and private IPs unless told more (DNS rebinding
    # protection): clients that reach it by a name (`http://mlflow-host:5000`) need it listed.
    return command + (["--allowed-hosts", allowed_hosts] if allowed_hosts else [])


def mlflow_server_env() -> dict[str, str]:
    """The environment `mlflow server` and `mlflow ui` start in: MLflow 3's job runner (GenAI evaluation
    jobs and trace rollups, which sweeps never submit) off, unless MLFLOW_SERVER_ENABLE_JOB_EXECUTION says
    otherwise. It is eight more processes (seven huey consumers) and ~1 GB: `orchestrator ui` on 2 cores
    came up in 13 s with 2 processes and 490 MiB without it, in 76 s with 15 and 2.2 GB with it."""
    return {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": os.environ.get("MLFLOW_SERVER_ENABLE_JOB_EXECUTION",
                                                                              "false")}


def run_server(data_dir: Path, host: str, port: int, backend_store_uri: str | None = None,
               allowed_hosts: str | None = None) -> int:
    """Run until interrupted (Ctrl-C or SIGTERM); stops the MLflow server, then the PostgreSQL it started."""
    data_dir = data_dir.resolve()
    postgres = None
    if backend_store_uri is None:
        postgres, backend_store_uri = start_postgres(data_dir / "pgdata")
    (data_dir / "artifacts").mkdir(parents=True, exist_ok=True)
    env = mlflow_server_env()
    # Its own session, so that stopping it reaches the uvicorn process it starts too.
    server = subprocess.Popen(mlflow_server_command(backend_store_uri, data_dir / "artifacts", host, port,
                                                    allowed_hosts),
                              env=env, start_new_session=True)
    reach = "127.0.0.1" if host in ("0.0.0.0", "::") else host  # listening on all addresses: say one that works here
    print(f"backend store: {backend_store_uri}\nartifacts: {data_dir / 'artifacts'} (served by the server)\n"
          f"export MLFLOW_TRACKING_URI=http://{reach}:{port}", flush=True)

    def stop(signum, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop)
    try:
        return server.wait()
    except KeyboardInterrupt:
        return 0
    finally:
        stop_process_group(server, timeout=20)
        if postgres is not None:
            postgres.cleanup()


def stop_process_group(process: subprocess.Popen, timeout: float) -> None:
    """SIGTERM to a process started in its own session (it and what it started: mlflow's uvicorn
    workers), SIGKILL if it lingers past `timeout` seconds."""
    try:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=timeout)
    except ProcessLookupError:
        pass
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()

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
import urllib.error
import urllib.request
from pathlib import Path

from orchestrator.errors import SweepError

DATABASE = "mlflow"


def check_reachable(uri: str, timeout: float = 5.0) -> None:
    """Fail in seconds when an http(s) tracking server does not answer: MLflow's own client retries a
    refused connection with backoff for minutes (MLFLOW_HTTP_REQUEST_MAX_RETRIES,
    ..._BACKOFF_FACTOR), and a sweep would sit there before saying anything. Any HTTP answer, even
    401 from a server with authentication, means it is up."""
    if not uri.startswith(("http://", "https://")):
        return
    try:
        urllib.request.urlopen(f"{uri.rstrip('/')}/health", timeout=timeout).close()
    except urllib.error.HTTPError:
        return
    except (urllib.error.URLError, OSError) as error:
        reason = getattr(error, "reason", error)
        raise SweepError(f"MLflow tracking server {uri} is unreachable ({reason}): start it "
                         "(infra/README.md) or set MLFLOW_TRACKING_URI to one that is up") from None


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


def run_server(data_dir: Path, host: str, port: int, backend_store_uri: str | None = None,
               allowed_hosts: str | None = None) -> int:
    """Run until interrupted (Ctrl-C or SIGTERM); stops the MLflow server, then the PostgreSQL it started."""
    data_dir = data_dir.resolve()
    postgres = None
    if backend_store_uri is None:
        postgres, backend_store_uri = start_postgres(data_dir / "pgdata")
    (data_dir / "artifacts").mkdir(parents=True, exist_ok=True)
    # MLflow's job runner (GenAI evaluation jobs, which sweeps never submit) would add seven huey
    # worker processes; set MLFLOW_SERVER_ENABLE_JOB_EXECUTION=true to have them anyway.
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": os.environ.get("MLFLOW_SERVER_ENABLE_JOB_EXECUTION",
                                                                              "false")}
    # Its own session, so that stopping it reaches the uvicorn process it starts too.
    server = subprocess.Popen(mlflow_server_command(backend_store_uri, data_dir / "artifacts", host, port,
                                                    allowed_hosts),
                              env=env, start_new_session=True)
    print(f"backend store: {backend_store_uri}\nartifacts: {data_dir / 'artifacts'} (served by the server)\n"
          f"export MLFLOW_TRACKING_URI=http://{host}:{port}", flush=True)

    def stop(signum, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop)
    try:
        return server.wait()
    except KeyboardInterrupt:
        return 0
    finally:
        try:
            os.killpg(server.pid, signal.SIGTERM)
            server.wait(timeout=20)
        except ProcessLookupError:
            pass
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()
        if postgres is not None:
            postgres.cleanup()

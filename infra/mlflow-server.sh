#!/usr/bin/env bash
# A team's MLflow tracking server: PostgreSQL 16 (from the pgserver wheel, no Docker) as the
# backend store, artifacts served through the server (--serve-artifacts), so that laptops and Ray
# workers need only MLFLOW_TRACKING_URI=http://HOST:PORT and no shared disk.
#
# Start it (from the repository, after `make install`):
#   infra/mlflow-server.sh                                  # 127.0.0.1:5000, data in ./mlflow-server
#   infra/mlflow-server.sh --port 5001 --data-dir /srv/mlflow
#   infra/mlflow-server.sh --host 0.0.0.0 --allowed-hosts "$(hostname):5000,localhost:*"   # for the team
#   infra/mlflow-server.sh --backend-store-uri postgresql+psycopg2://mlflow:PASSWORD@db-host/mlflow
# then, anywhere:  export MLFLOW_TRACKING_URI=http://HOST:PORT
#
# Ctrl-C (or SIGTERM) stops the MLflow server and then the PostgreSQL it started; the data stays in
# DATA_DIR (pgdata/, artifacts/) for the next start. This is `orchestrator server` (see
# orchestrator/server.py): tests/test_tracking_server.py runs it, a sweep, promote, ask and
# `mlflow models serve` against it.
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
orchestrator="${ORCHESTRATOR:-$repo/.venv/bin/orchestrator}"
if [[ ! -x "$orchestrator" ]]; then
    orchestrator="$(command -v orchestrator)" || { echo "orchestrator not found: run 'make install' first" >&2; exit 2; }
fi
exec "$orchestrator" server "$@"

"""MLflow layout of a sweep, and the one process that writes it.

Layout (what `promote`, `report` and the MLflow UI read):
- experiment `sweep.experiment` (default "recall-orchestrator"), tagged mlflow.experimentKind =
  custom_model_development;
- one parent run per sweep: run name = sweep name, tags recall.role=sweep, recall.sweep=NAME,
  recall.base_model, recall.methods (what a later sweep's `warm_start: auto` matches on); a warm-started
  sweep adds recall.warm_start, recall.warm_start_sweeps and recall.warm_start_trials (what it resolved
  to, orchestrator/warm_start.py); an incremental sweep adds recall.from, recall.parent_model and
  recall.parent_version; its description (mlflow.note.content) says what the sweep searches and, once
  it ends, its best trial;
- one child run per trial, named by its method, shape and learning rate: tag mlflow.parentRunId,
  recall.role=trial, recall.sweep, recall.trial_id, recall.method_shape, recall.origin (where its config came
  from: warm:<earlier sweep>, seed for the config's points_to_evaluate, optuna), a description with its knobs
  and, once it ends, its val recall; params = the trial's method and training knobs (and init_adapter,
  data.retain when incremental); every numeric metric it reports, at step=epoch;
  artifacts adapter/ (peft adapter + tokenizer), predictions_val.jsonl, metrics.json,
  trial_config.json (the full trial config, enough to rebuild or re-score it), and ledger.json: the
  per-fact ledger (trials/ledger.py), logged with log_table so the MLflow UI shows it as a table.

The names of those tags, metrics, params and artifacts, and the defaults, are orchestrator/run_record.py's.

Why one writer: SQLite allows one writer at a time, and trials running in parallel processes that
each open the store race for its lock ("database is locked"). Here trials never touch MLflow:
they report to Ray Tune, and the Tune driver, a single process, writes every run.
"""

from __future__ import annotations

import os
from pathlib import Path

import mlflow
from mlflow.tracking import MlflowClient

from orchestrator.errors import SweepError
from orchestrator.run_record import (ADAPTER, EXPERIMENT_KIND, METRICS, PARENT, PREDICTIONS, PREDICTIONS_TABLE, ROLE,
                                     SWEEP, SWEEP_ROLE, TRAINING_RUNS, TRIAL_CONFIG, TRIAL_ROLE)
from trials.ledger import COLUMNS as LEDGER_COLUMNS
from trials.ledger import LEDGER, LEDGER_TABLE, as_table, read_jsonl

DEFAULT_STORE = "mlflow.db"
# Files of a trial directory that become artifacts (the optimiser state does not).
TRIAL_ARTIFACTS = (ADAPTER, PREDICTIONS, METRICS, TRIAL_CONFIG)


def tracking_uri() -> str:
    """MLFLOW_TRACKING_URI as MLflow honours it; else a SQLite store in the working directory."""
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{Path(DEFAULT_STORE).resolve()}"


def use_store() -> str:
    """Point MLflow's fluent API (log_model, register_model, load_model) at the sweeps' store."""
    uri = tracking_uri()
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    return uri


def artifact_root(uri: str) -> str | None:
    """Keep artifacts beside a SQLite database instead of in whatever directory we were started."""
    if uri.startswith("sqlite:///"):
        return str(Path(uri.removeprefix("sqlite:///")).parent / "mlartifacts")
    return None


def client(uri: str | None = None) -> MlflowClient:
    uri = uri or tracking_uri()
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def experiment_id(mlflow_client: MlflowClient, name: str) -> str:
    experiment = mlflow_client.get_experiment_by_name(name)
    if experiment is not None:
        return experiment.experiment_id
    root = artifact_root(mlflow_client.tracking_uri)
    return mlflow_client.create_experiment(name, artifact_location=Path(root, name).as_uri() if root else None,
                                           tags={EXPERIMENT_KIND: TRAINING_RUNS})


def quoted(value: str) -> str:
    """`value` as a string literal of an MLflow search filter. MLflow's filter grammar has no escape
    inside quotes: a value is wrapped in whichever quote it does not contain."""
    for quote in ("'", '"'):
        if quote not in value:
            return f"{quote}{value}{quote}"
    raise SweepError(f"{value!r} holds both quote characters: MLflow cannot search for it")


def find_sweep_run(mlflow_client: MlflowClient, experiment: str, sweep: str | None):
    """The newest parent run of the named sweep (or of any sweep), or None."""
    exp = mlflow_client.get_experiment_by_name(experiment)
    if exp is None:
        return None
    query = f"tags.`{ROLE}` = {quoted(SWEEP_ROLE)}" + (f" and tags.`{SWEEP}` = {quoted(sweep)}" if sweep else "")
    runs = mlflow_client.search_runs([exp.experiment_id], query, order_by=["attributes.start_time DESC"], max_results=1)
    return runs[0] if runs else None


def sweep_runs(mlflow_client: MlflowClient, experiment_ids: list[str], max_results: int = 1000) -> list:
    """Parent runs of sweeps in these experiments, newest first."""
    if not experiment_ids:
        return []
    return mlflow_client.search_runs(experiment_ids, f"tags.`{ROLE}` = {quoted(SWEEP_ROLE)}",
                                     order_by=["attributes.start_time DESC"], max_results=max_results)


def trial_runs(mlflow_client: MlflowClient, parent_run) -> list:
    query = f"tags.`{PARENT}` = {quoted(parent_run.info.run_id)} and tags.`{ROLE}` = {quoted(TRIAL_ROLE)}"
    return mlflow_client.search_runs([parent_run.info.experiment_id], query, max_results=10_000)


def log_trial_artifacts(mlflow_client: MlflowClient, run_id: str, trial_dir: Path, finished: bool = True) -> None:
    """A trial's files onto its run; once it `finished`, its val answers as the table PREDICTIONS_TABLE too
    (the run page shows a table as one, a .jsonl as raw lines). Not before: log_table appends, and a failed
    trial resumed would hold its answers twice."""
    for name in TRIAL_ARTIFACTS:
        path = Path(trial_dir) / name
        if path.is_dir():
            mlflow_client.log_artifacts(run_id, str(path), artifact_path=name)
        elif path.exists():
            mlflow_client.log_artifact(run_id, str(path))
    log_ledger(mlflow_client, run_id, trial_dir)
    if finished:
        _log_jsonl_table(mlflow_client, run_id, Path(trial_dir) / PREDICTIONS, PREDICTIONS_TABLE)


def _log_jsonl_table(mlflow_client: MlflowClient, run_id: str, path: Path, artifact_file: str,
                     columns: tuple[str, ...] | None = None) -> None:
    """A JSON-lines file, if there and not empty, as an MLflow table: `columns`, else every field its records
    hold, in the order they first appear."""
    if not path.exists():
        return
    rows = read_jsonl(path)
    if rows:
        columns = columns or tuple(dict.fromkeys(key for row in rows for key in row))
        mlflow_client.log_table(run_id, data=as_table(rows, columns), artifact_file=artifact_file)


def log_ledger(mlflow_client: MlflowClient, run_id: str, trial_dir: Path) -> None:
    """The trial's ledger.jsonl, if it has one, as the table ledger.json. log_table appends to a table the
    run already holds (a trial that failed, then was resumed and finished): the report keeps an epoch's
    last rows."""
    _log_jsonl_table(mlflow_client, run_id, Path(trial_dir) / LEDGER, LEDGER_TABLE, LEDGER_COLUMNS)

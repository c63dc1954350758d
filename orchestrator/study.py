"""The sweep's Optuna study, kept in a database that Optuna's own tools read.

Ray's OptunaSearch keeps its study in memory unless it is given a storage: the study then exists only
inside Tune's pickled searcher state. Here every sweep's study is written to `sweep.optuna_storage` (an
SQLAlchemy URL) under the name "<MLflow experiment>/<sweep>", so `optuna-dashboard URL` shows it (with
parameter importances), `optuna.load_study` reads it and `orchestrator report` draws Optuna's plots from
it. Each Optuna trial carries the user attribute `tune_trial_id`: the `recall.trial_id` tag of the
trial's MLflow run. The sweep's parent run is tagged with the URL (password hidden) and the study name.

Default URL, when sweep.optuna_storage is unset:
- a SQLite tracking store (the default ./mlflow.db): `optuna.db` beside it, so one folder holds a
  sweep's records. Never MLflow's own database: MLflow and Optuna both keep their schema revision in
  an Alembic table named `alembic_version`; Optuna finds MLflow's revision there and refuses the
  database, after adding its own tables to it. A database that already holds another application's
  `alembic_version` is therefore refused before Optuna touches it.
- a tracking server: `optuna.db` in the local sweep.storage_path folder (./ray_results when that is a
  URI), not the working directory: a sweep submitted as a Ray job runs in a working directory Ray
  deletes. Only that machine sees the file; a team sets sweep.optuna_storage to a PostgreSQL database
  of its own, which every machine reaches.

Only the Tune driver writes the study (OptunaSearch runs there, not in the trials), so SQLite's one
writer at a time is enough, as for MLflow.

A new sweep whose study already exists is refused before anything is logged: OptunaSearch opens its
study with load_if_exists, which would add the new sweep's trials to the old study. `--resume` reuses
the study: Tune restores the searcher from its pickled state, whose storage reconnects by URL, and the
trials keep their Optuna trial numbers.
"""

from __future__ import annotations

from pathlib import Path

from orchestrator.errors import SweepError

DEFAULT_FILE = "optuna.db"
TUNE_TRIAL_ID = "tune_trial_id"  # Optuna trial user attribute: the Tune trial, = MLflow's recall.trial_id


def study_name(experiment: str, sweep: str) -> str:
    """Sweep names are unique per MLflow experiment; two experiments may share one Optuna storage."""
    return f"{experiment}/{sweep}"


def storage_url(configured: str | None, tracking_uri: str, beside_results: Path) -> str:
    """sweep.optuna_storage, or the default (module docstring): beside a SQLite tracking store, else
    `beside_results` (optuna.db in the local storage_path folder). A relative SQLite path is made
    absolute: --resume and `report` may run from another directory."""
    if configured:
        url = configured
    elif tracking_uri.startswith("sqlite:///"):
        url = f"sqlite:///{Path(tracking_uri.removeprefix('sqlite:///')).parent / DEFAULT_FILE}"
    else:
        url = f"sqlite:///{beside_results}"
    if url.startswith("sqlite:///"):
        url = f"sqlite:///{Path(url.removeprefix('sqlite:///')).expanduser().resolve()}"
    if url == tracking_uri or (_sqlite_file(url) is not None and _sqlite_file(url) == _sqlite_file(tracking_uri)):
        raise SweepError(f"the Optuna storage {hidden(url)} is the MLflow tracking store: set sweep.optuna_storage "
                         "to a database of Optuna's own (both keep an alembic_version table)")
    return url


def _sqlite_file(url: str) -> Path | None:
    return Path(url.removeprefix("sqlite:///")).resolve() if url.startswith("sqlite:///") else None


def hidden(url: str) -> str:
    """The URL with its password masked, for messages and MLflow tags."""
    import sqlalchemy

    try:
        return sqlalchemy.make_url(url).render_as_string(hide_password=True)
    except sqlalchemy.exc.ArgumentError:
        return url


def open_storage(url: str):
    """Optuna's RDBStorage on `url`, or a SweepError naming the key."""
    import optuna
    import sqlalchemy

    path = _sqlite_file(url)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
    try:
        _refuse_foreign(url)
        return optuna.storages.RDBStorage(url)
    except (ImportError, ValueError, RuntimeError, sqlalchemy.exc.SQLAlchemyError) as error:
        raise SweepError(f"sweep.optuna_storage={hidden(url)}: Optuna cannot use it ({error})") from None


def _refuse_foreign(url: str) -> None:
    """Raise when another application's Alembic revision (MLflow's) is in the database."""
    import sqlalchemy

    engine = sqlalchemy.create_engine(url)
    try:
        tables = set(sqlalchemy.inspect(engine).get_table_names())
    finally:
        engine.dispose()
    if "alembic_version" in tables and "version_info" not in tables:  # version_info: Optuna's own table
        raise ValueError("it holds another application's alembic_version table (MLflow's?): give Optuna a "
                         "database of its own")


def check_new(storage, name: str, url: str) -> None:
    """A new sweep must not continue an old study of the same name."""
    try:
        storage.get_study_id_from_name(name)
    except KeyError:
        return
    raise SweepError(f"Optuna study '{name}' already exists in {hidden(url)} (from an earlier sweep of this name): "
                     f"choose another --name, or delete it: optuna delete-study --study-name '{name}' "
                     f"--storage {hidden(url)}")


def discard(storage, name: str) -> None:
    """Delete a study a sweep created but never ran (it stopped before MLflow knew of it)."""
    storage.delete_study(storage.get_study_id_from_name(name))


def fail_unfinished(url: str, name: str) -> list[int]:
    """Mark FAIL the trials of an ended sweep's study that are still RUNNING (their numbers): Tune tells
    its searcher nothing about trials running or pending when sweep.time_budget_s runs out (it stops
    them itself), nor about a trial a killed driver asked for after Tune last saved its state; their
    MLflow runs end KILLED, or deleted as orphans. Not for an interrupted sweep: --resume tells its
    trials."""
    from optuna.trial import TrialState

    ended = load(url, name)
    running = [trial.number for trial in ended.get_trials(deepcopy=False, states=(TrialState.RUNNING,))]
    for number in running:
        ended.tell(number, state=TrialState.FAIL)
    return running


def load(url: str, name: str):
    """The sweep's study, for reading; a SweepError saying why when it cannot be read."""
    import optuna
    import sqlalchemy

    path = _sqlite_file(url)
    if path is not None and not path.exists():  # opening it would create an empty database
        raise SweepError(f"no Optuna storage at {path}")
    try:
        return optuna.load_study(study_name=name, storage=url)
    except KeyError:
        raise SweepError(f"no Optuna study '{name}' in {hidden(url)}") from None
    except (ImportError, RuntimeError, sqlalchemy.exc.SQLAlchemyError) as error:
        raise SweepError(f"cannot read Optuna storage {hidden(url)}: {error}") from None

"""The sweep's Optuna study in a database (orchestrator/study.py), without training: where it goes, what is
refused, and what Tune's pickled searcher (the state --resume restores) does to it."""

from __future__ import annotations

import pickle

import optuna
import pytest
from optuna.trial import TrialState
from sweep_support import fast_config, store

from orchestrator import run_record, study, tracking
from orchestrator.errors import SweepError
from orchestrator.storage import SweepStorage
from orchestrator.sweep import NewStudy, _tune_config, run_sweep
from store_support import new_store


def test_the_default_storage_is_beside_a_sqlite_tracking_store(tmp_path):
    url = study.storage_url(None, f"sqlite:///{tmp_path / 'mlflow.db'}", tmp_path / "ray_results" / "optuna.db")
    assert url == f"sqlite:///{tmp_path / 'optuna.db'}"


def test_with_a_tracking_server_the_default_storage_is_beside_the_sweep_results(tmp_path):
    beside = tmp_path / "ray_results" / "optuna.db"
    assert study.storage_url(None, "http://127.0.0.1:5000", beside) == f"sqlite:///{beside}"


def test_a_relative_sqlite_storage_is_made_absolute(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert study.storage_url("sqlite:///studies/o.db", "http://x", tmp_path) == f"sqlite:///{tmp_path}/studies/o.db"


def test_the_mlflow_database_is_refused_as_optuna_storage(tmp_path):
    uri = new_store(tmp_path / "mlflow.db")
    with pytest.raises(SweepError, match="is the MLflow tracking store: set sweep.optuna_storage to a database"):
        study.storage_url(uri, uri, tmp_path)
    # Reached under another name (or behind a server): MLflow's alembic_version gives it away, before
    # Optuna adds a table to it.
    tracking.experiment_id(tracking.client(uri), "any")
    with pytest.raises(SweepError, match="another application's alembic_version table"):
        study.open_storage(f"sqlite:///{tmp_path}/./mlflow.db")
    assert "studies" not in _tables(tmp_path / "mlflow.db")


def _tables(path) -> set[str]:
    import sqlalchemy

    engine = sqlalchemy.create_engine(f"sqlite:///{path}")
    try:
        return set(sqlalchemy.inspect(engine).get_table_names())
    finally:
        engine.dispose()


def test_a_password_never_reaches_a_message_or_tag():
    assert study.hidden("postgresql+psycopg2://team:s3cret@db/optuna") == "postgresql+psycopg2://team:***@db/optuna"


def _new_study(tmp_path, monkeypatch, name="s"):
    store(tmp_path, monkeypatch)
    config = fast_config(tmp_path)
    return config, NewStudy.of(config, name, SweepStorage.of(str(tmp_path / "ray_results")))


def test_a_new_sweep_does_not_continue_an_old_study_of_its_name(tmp_path, monkeypatch):
    config, new = _new_study(tmp_path, monkeypatch)
    _tune_config(config, config.search_space, new)  # OptunaSearch creates the study
    with pytest.raises(SweepError, match="Optuna study 'recall-orchestrator/s' already exists in sqlite:///.*"
                                         "optuna delete-study --study-name 'recall-orchestrator/s'"):
        NewStudy.of(config, "s", SweepStorage.of(str(tmp_path / "ray_results")))


def test_the_pickled_searcher_writes_to_the_same_study(tmp_path, monkeypatch):
    """What --resume does: Tune unpickles the searcher; its storage reconnects by URL, its trials keep
    their numbers, and each Optuna trial names its Tune trial."""
    config, new = _new_study(tmp_path, monkeypatch)
    searcher = _tune_config(config, config.search_space, new).search_alg.searcher
    first = searcher.suggest("t1")
    searcher.on_trial_complete("t1", {"objective": 0.5})
    searcher.suggest("t2")
    restored = pickle.loads(pickle.dumps(searcher))
    restored.on_trial_complete("t2", {"objective": 0.25})
    restored.suggest("t3")

    trials = optuna.load_study(study_name=new.name, storage=new.url).trials
    # origin: the first trial is the config's point (the seed recipe), then TPE's (orchestrator/warm_start.py).
    assert [(t.number, t.state, t.value, t.user_attrs) for t in trials] == [
        (0, TrialState.COMPLETE, 0.5, {"tune_trial_id": "t1", "origin": "seed"}),
        (1, TrialState.COMPLETE, 0.25, {"tune_trial_id": "t2", "origin": "optuna"}),
        (2, TrialState.RUNNING, None, {"tune_trial_id": "t3", "origin": "optuna"}),
    ]
    assert trials[0].params["method"] == first["method"] == "lora"
    # The sweep ended with t3 never told (the time budget ran out): it is failed, the others stay.
    assert study.fail_unfinished(new.url, new.name) == [2]
    assert [t.state for t in optuna.load_study(study_name=new.name, storage=new.url).trials] == [
        TrialState.COMPLETE, TrialState.COMPLETE, TrialState.FAIL]


def test_a_sweep_mlflow_refuses_leaves_no_study_behind(tmp_path, monkeypatch):
    uri = store(tmp_path, monkeypatch)
    client = tracking.client(uri)
    client.create_run(tracking.experiment_id(client, "recall-orchestrator"), run_name="taken",
                      tags={run_record.ROLE: "sweep", run_record.SWEEP: "taken"})
    with pytest.raises(SweepError, match="sweep 'taken' already exists in MLflow experiment"):
        run_sweep(fast_config(tmp_path), "taken")
    assert (tmp_path / "optuna.db").exists()  # the study was created, then removed
    assert optuna.study.get_all_study_names(f"sqlite:///{tmp_path / 'optuna.db'}") == []


@pytest.mark.e2e
def test_trials_the_time_budget_cuts_short_end_failed_in_the_study(tmp_path, monkeypatch):
    """Tune stops the trials running when sweep.time_budget_s runs out without telling its searcher: the
    ended sweep fails them in the study, as MLflow has them KILLED, and leaves none RUNNING."""
    from sweep_support import runs_of, sweep_ray

    uri = store(tmp_path, monkeypatch)
    config = fast_config(tmp_path, "sweep.num_samples=3", "training.epochs=6", "sweep.asha.enabled=false",
                         "sweep.time_budget_s=15", "search_space.methods=[lora]", "search_space.points_to_evaluate=[]")
    with sweep_ray():
        run_sweep(config, "overnight")
    _, parent, children = runs_of(uri, "overnight")
    ended = {run.data.tags[run_record.TRIAL_ID]: run.info.status for run in children}
    trials = optuna.load_study(study_name=parent.data.tags[run_record.OPTUNA_STUDY],
                               storage=parent.data.tags[run_record.OPTUNA_STORAGE]).trials
    states = {trial.user_attrs[study.TUNE_TRIAL_ID]: trial.state for trial in trials}
    assert "KILLED" in ended.values() and TrialState.RUNNING not in states.values()
    assert all(states[trial_id] == {"FINISHED": TrialState.COMPLETE, "KILLED": TrialState.FAIL}[status]
               for trial_id, status in ended.items())

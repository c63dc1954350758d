"""End-to-end sweeps with real Ray Tune, Optuna, MLflow and peft on the embedded tiny model."""

from __future__ import annotations

import json

import pytest

from orchestrator import run_record
from orchestrator.sweep import run_sweep
from sweep_support import IA3_POINT, PREFIX_POINT, fast_config, runs_of, store, sweep_ray

pytestmark = pytest.mark.e2e

SEED_POINT = ("{method: lora, lora_r: 8, lora_alpha: 32, lora_learning_rate: 1.0e-6, lora_dropout: 0.0, "
              "lora_target_modules: qv}")
LEARNING_POINT = ("{method: lora, lora_r: 32, lora_alpha: 64, lora_learning_rate: 0.003, lora_dropout: 0.0, "
                  "lora_target_modules: all_linear}")


@pytest.fixture(scope="module")
def local_ray():
    # Two fake GPUs: Ray schedules by declared resources, so GPU placement is testable on CPU.
    # OMP_NUM_THREADS=2 inherited from the shell: Ray then leaves it to the trials, and each must still take the
    # threads of the one CPU it is given (orchestrator.trainable.trial_threads).
    with pytest.MonkeyPatch.context() as monkeypatch:
        monkeypatch.setenv("OMP_NUM_THREADS", "2")
        with sweep_ray(num_gpus=2):
            yield


@pytest.fixture(scope="module")
def six_trials(local_ray, tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("sweep")
    with pytest.MonkeyPatch.context() as monkeypatch:
        uri = store(tmp_path, monkeypatch)
        config = fast_config(tmp_path, "sweep.num_samples=6", "search_space.methods=[lora, prefix, ia3]",
                             f"search_space.points_to_evaluate=[{SEED_POINT}, {PREFIX_POINT}, {IA3_POINT}]")
        outcome = run_sweep(config, "six")
    return uri, outcome


def test_sweep_logs_one_parent_and_one_child_run_per_trial(six_trials):
    uri, outcome = six_trials
    client, parent, children = runs_of(uri, "six")
    assert parent is not None and parent.info.status == "FINISHED"
    assert len(children) == 6 == len(outcome.leaderboard)
    assert len({run.data.tags[run_record.TRIAL_ID] for run in children}) == 6
    for run in children:
        assert run.data.tags[run_record.PARENT] == parent.info.run_id
        assert run.info.status == "FINISHED"
        history = client.get_metric_history(run.info.run_id, "val_exact_recall")
        assert [m.step for m in history][0] == 1 and 0.0 <= history[-1].value <= 1.0
        # Every numeric metric the trial reported reaches its run, with no list of names in between.
        with open(client.download_artifacts(run.info.run_id, "metrics.json")) as handle:
            reported = json.load(handle)["history"][-1]
        numeric = {key for key, value in reported.items() if isinstance(value, (int, float)) and key != "epoch"}
        assert {"val_contains_recall", "train_exact_recall", "peak_memory_mb"} <= numeric
        assert numeric <= set(run.data.metrics)
        assert run.data.tags[run_record.METHOD_SHAPE]
        assert run.data.tags[run_record.placement_tag("torch_threads")] == "1"  # sweep.resources.cpu: 1
        adapter = [a.path for a in client.list_artifacts(run.info.run_id, "adapter")]
        assert "adapter/adapter_config.json" in adapter and "adapter/adapter_model.safetensors" in adapter
        assert run.data.params["training.epochs"] == "2"
        # The per-fact ledger, a table in the MLflow UI: one row per val question per scored epoch.
        with open(client.download_artifacts(run.info.run_id, "ledger.json")) as handle:
            table = json.load(handle)
        assert table["columns"] == ["trial", "epoch", "question", "expected", "got", "score", "pass"]
        rows = [dict(zip(table["columns"], values)) for values in table["data"]]
        questions = int(run.data.metrics["val_questions"])
        assert sorted({(row["epoch"], row["question"]) for row in rows}) == sorted(
            (row["epoch"], row["question"]) for row in rows) and len(rows) == questions * len(history)
        assert {row["epoch"] for row in rows} == {m.step for m in history}
        assert {row["trial"] for row in rows} == {run.data.tags[run_record.TRIAL_ID]}
        assert '"path": "ledger.json", "type": "table"' in run.data.tags["mlflow.loggedArtifacts"]
        # ASHA (rung at epoch 1) may stop a trial there; only then is it tagged as stopped by ASHA.
        assert run.data.tags.get("recall.stopped_by") == ("asha" if len(history) == 1 else None)
    methods = {run.data.params["method.name"] for run in children}
    assert methods == {"lora", "prefix", "ia3"}
    # Tune reuses its workers (at most 2 at once) for the 6 trials, and each worker keeps the base model a trial
    # ends with (finished, or stopped by early stopping at its report): only a worker's first trial loads it.
    loaded = [run.data.metrics["base_reused"] for run in children].count(0.0)
    assert 1 <= loaded <= 2, loaded


def test_points_to_evaluate_run_first_with_their_exact_knobs(six_trials):
    uri, _ = six_trials
    _, _, children = runs_of(uri, "six")
    first_two = sorted(children, key=lambda run: run.info.start_time)[:2]  # max_concurrent_trials = 2
    seed = [run for run in first_two if run.data.params["method.name"] == "lora"]
    assert len(seed) == 1 and {run.data.params["method.name"] for run in first_two} == {"lora", "prefix"}
    params = seed[0].data.params
    assert (params["method.r"], params["method.alpha"], params["method.dropout"]) == ("8", "32.0", "0.0")
    assert json.loads(params["method.target_modules"].replace("'", '"')) == ["q_proj", "v_proj"]
    assert float(params["method.learning_rate"]) == 1e-6


def test_leaderboard_is_stored_on_the_parent_run(six_trials):
    uri, outcome = six_trials
    client, parent, _ = runs_of(uri, "six")
    board = json.loads(open(client.download_artifacts(parent.info.run_id, "leaderboard.json")).read())
    assert [row["trial"] for row in board] == [row["trial"] for row in outcome.leaderboard]
    recalls = [row["val_exact_recall"] for row in board]
    assert recalls == sorted(recalls, reverse=True)
    table = open(client.download_artifacts(parent.info.run_id, "leaderboard.md")).read()
    assert "val_exact_recall" in table and board[0]["trial"] in table and board[0]["shape"] in table


def test_a_trial_that_raises_ends_failed_while_the_others_finish(local_ray, tmp_path, monkeypatch):
    uri = store(tmp_path, monkeypatch)
    # A target-module set that names no module of the model: peft raises inside the trial.
    config = fast_config(
        tmp_path, "sweep.num_samples=3", "search_space.methods=[lora]",
        "search_space.lora.target_modules={qv: [q_proj, v_proj], broken: [no_such_proj]}",
        "search_space.points_to_evaluate=["
        "{method: lora, lora_r: 8, lora_alpha: 16, lora_learning_rate: 0.003, lora_dropout: 0.0, "
        "lora_target_modules: broken}, "
        "{method: lora, lora_r: 8, lora_alpha: 16, lora_learning_rate: 0.003, lora_dropout: 0.0, "
        "lora_target_modules: qv}]",
    )
    outcome = run_sweep(config, "broken")
    client, _, children = runs_of(uri, "broken")
    statuses = sorted(run.info.status for run in children)
    assert len(children) == 3
    failed = [run for run in children if run.info.status == "FAILED"]
    assert failed and statuses.count("FINISHED") == 3 - len(failed)
    assert all(run.data.params["method.target_modules"] == "['no_such_proj']" for run in failed)
    assert "no_such_proj" in failed[0].data.tags["recall.error"]
    assert outcome.failed and outcome.succeeded


def test_fractional_gpus_share_two_gpus_four_at_a_time(local_ray, tmp_path, monkeypatch):
    uri = store(tmp_path, monkeypatch)
    config = fast_config(tmp_path, "sweep.num_samples=6", "sweep.max_concurrent_trials=null",
                         "sweep.resources={cpu: 0.25, gpu: 0.5}", "search_space.methods=[lora]",
                         "search_space.points_to_evaluate=[]", "training.epochs=1", "sweep.asha.enabled=false")
    run_sweep(config, "gpus")
    client, _, children = runs_of(uri, "gpus")
    assert len(children) == 6
    for run in children:
        gpu_ids = run.data.tags["recall.gpu_ids"]
        # Ray gave this trial one GPU id, and the trial's process sees exactly that one.
        assert gpu_ids in {"0", "1"}
        assert run.data.tags["recall.cuda_visible_devices"] == gpu_ids
    events = sorted([(run.info.start_time, 1) for run in children] + [(run.info.end_time, -1) for run in children],
                    key=lambda event: (event[0], event[1]))
    running, most = 0, 0
    for _, delta in events:
        running += delta
        most = max(most, running)
    assert most <= 4


def test_cli_exits_non_zero_when_every_trial_failed(local_ray, tmp_path, monkeypatch, capsys):
    from orchestrator.cli import main
    from sweep_support import DEMO, FAST

    store(tmp_path, monkeypatch)
    overrides = [*FAST, "sweep.num_samples=2", "search_space.methods=[lora]",
                 "search_space.lora.target_modules={broken: [no_such_proj]}", "search_space.points_to_evaluate=[]",
                 f"sweep.storage_path={tmp_path / 'ray_results'}"]
    code = main(["sweep", str(DEMO), "--name", "all-broken", *[arg for o in overrides for arg in ("--set", o)]])
    out, err = capsys.readouterr()
    assert code == 1, err[-2000:]
    assert out.count("FAILED trial") == 2 and "no_such_proj" in out


def test_report_reads_the_sweep_back_from_mlflow(six_trials, tmp_path, capsys):
    from orchestrator.cli import main

    uri, outcome = six_trials
    with pytest.MonkeyPatch.context() as monkeypatch:
        monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
        assert main(["report", "--sweep", "six", "--output-dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "sweep 'six' (FINISHED, 6 trials)" in out
    assert all(row["trial"] in out for row in outcome.leaderboard)
    figures = {"learning_curves.png", "learning_rate.png", "recall_by_trial_epochs.png", "optimization_history.png",
               "param_importances.png", "parallel_coordinate.png"}
    for name in figures:
        assert (tmp_path / name).read_bytes().startswith(b"\x89PNG")
    client, parent, _ = runs_of(uri, "six")
    assert {a.path for a in client.list_artifacts(parent.info.run_id, "report")} == {
        f"report/{name}" for name in {*figures, "answers.md", "ledger_heatmap.png", "ledger.md", "report.html"}}
    assert "per-fact ledger of 6 trials" in out and "val facts:" in out
    # Nothing promoted: the answers are the top trial's, on val.
    assert f"top trial {outcome.leaderboard[0]['trial']} (not the champion), val split" in out
    assert "make dashboard OPTUNA_STORAGE=sqlite:///" in (tmp_path / "report.html").read_text()


def test_the_optuna_study_holds_every_finished_trial_with_its_params_and_objective(six_trials):
    """What optuna-dashboard and optuna.load_study see: every finished trial, its Optuna params
    reproducing its MLflow run's params exactly, and its value the run's last `objective`."""
    import optuna
    import yaml
    from optuna.trial import TrialState

    from orchestrator import run_record, study
    from orchestrator.config import ExperimentConfig
    from orchestrator.run_record import trial_params
    from orchestrator.search_space import trial_config_for

    uri, _ = six_trials
    client, parent, children = runs_of(uri, "six")
    name, storage = parent.data.tags[run_record.OPTUNA_STUDY], parent.data.tags[run_record.OPTUNA_STORAGE]
    assert name == "recall-orchestrator/six"
    assert storage == uri.replace("mlflow.db", "optuna.db")  # beside the SQLite tracking store
    trials = optuna.load_study(study_name=name, storage=storage).trials
    # Stopped at a rung or while it waited at one, a trial is COMPLETE with its last report (orchestrator/sweep.py).
    finished = {t.user_attrs[study.TUNE_TRIAL_ID]: t for t in trials if t.state == TrialState.COMPLETE}
    runs = {run.data.tags[run_record.TRIAL_ID]: run for run in children}
    assert len(trials) == 6 and finished.keys() == runs.keys()
    with open(client.download_artifacts(parent.info.run_id, "config.yaml")) as handle:
        config = ExperimentConfig.model_validate(yaml.safe_load(handle))
    for trial_id, trial in finished.items():
        run = runs[trial_id]
        assert trial.value == pytest.approx(run.data.metrics["objective"], rel=1e-12)
        rebuilt = trial_config_for(config.trial_config(), trial.params, config.search_space)
        assert trial_params(rebuilt) == run.data.params


def test_bad_data_stops_the_sweep_before_anything_is_logged(tmp_path, monkeypatch):
    from trials.data import DataError

    uri = store(tmp_path, monkeypatch)
    bad = tmp_path / "qa.jsonl"
    lines = (fast_config(tmp_path).data.qa).read_text().splitlines()
    lines[6] = lines[6][:-1]  # line 7 loses its closing brace
    bad.write_text("\n".join(lines) + "\n")
    config = fast_config(tmp_path, f"data.qa={bad}")
    with pytest.raises(DataError, match=r"qa.jsonl:7: invalid JSON"):
        run_sweep(config, "bad-data")
    _, parent, _ = runs_of(uri, "bad-data")
    assert parent is None and not (tmp_path / "ray_results").exists()


def test_early_stopping_stops_a_trial_that_arrives_first_but_trails(local_ray, tmp_path, monkeypatch):
    """One slot, so the seed recipe (lr 1e-6: it learns nothing) reaches the first rung alone. Ray's ASHA
    would let it through (nobody to compare it with); here it waits, paused, its slot goes to the next
    trial, which arrives with a lower val answer loss, and the waiter is stopped. The early signal, the
    teacher-forced val answer loss, is reported every epoch and falls as a trial learns."""
    uri = store(tmp_path, monkeypatch)
    config = fast_config(tmp_path, "sweep.num_samples=2", "sweep.max_concurrent_trials=1", "training.epochs=3",
                         "sweep.asha.grace_period=1", "sweep.asha.reduction_factor=2",
                         f"search_space.points_to_evaluate=[{SEED_POINT}, {LEARNING_POINT}]")
    run_sweep(config, "first-trails")
    client, _, children = runs_of(uri, "first-trails")
    first, second = sorted(children, key=lambda run: run.info.start_time)

    def losses(run) -> list[float]:
        return [m.value for m in sorted(client.get_metric_history(run.info.run_id, "val_answer_loss"),
                                        key=lambda m: m.step)]

    assert first.data.params["method.learning_rate"] == "1e-06"
    assert len(losses(first)) == 1 and first.data.tags.get("recall.stopped_by") == "asha"
    assert len(losses(second)) == 3 and second.data.tags.get("recall.stopped_by") is None
    assert losses(second)[0] < losses(first)[0]
    assert losses(second)[-1] < losses(second)[0]
    for run in (first, second):  # stopped while it waited, or not: the adapter it reached is on its run
        adapter = {a.path for a in client.list_artifacts(run.info.run_id, "adapter")}
        assert "adapter/adapter_model.safetensors" in adapter

"""sweep.warm_start (orchestrator/warm_start.py): earlier sweeps' best configurations run first.

Fast tests resolve it against sweeps logged by hand (the layout orchestrator.tracking documents, the
params the sweep's writer logs), without Ray; the e2e test at the end runs real sweeps."""

from __future__ import annotations

import pickle

import optuna
import pytest
from sweep_support import fast_config, runs_of, store, sweep_ray

from orchestrator import run_record, study, tracking, warm_start
from orchestrator.errors import SweepError
from orchestrator.mlflow_writer import open_sweep_run
from orchestrator.run_record import trial_params
from orchestrator.search_space import trial_config_for
from orchestrator.storage import SweepStorage

EXPERIMENT = "recall-orchestrator"


def lora(r: int, alpha: float, rate: float, modules: str = "qv") -> dict:
    return {"method": "lora", "lora_r": r, "lora_alpha": alpha, "lora_learning_rate": rate,
            "lora_dropout": 0.0, "lora_target_modules": modules}


PREFIX = {"method": "prefix", "prefix_num_virtual_tokens": 8, "prefix_prefix_projection": False,
          "prefix_learning_rate": 0.01}


def logged_sweep(tmp_path, name: str, trials: list[tuple[dict, float | None, str]], *overrides: str,
                 status: str = "FINISHED") -> str:
    """A sweep as run_sweep logs it: its parent run (tags, config.yaml), a trial run per (point, final
    val_exact_recall, status) with the params the writer logs for it."""
    config = fast_config(tmp_path, *overrides)
    client = tracking.client()
    experiment_id = tracking.experiment_id(client, EXPERIMENT)
    parent = open_sweep_run(client, experiment_id, EXPERIMENT, name, False, config)
    for index, (point, recall, trial_status) in enumerate(trials):
        run = client.create_run(experiment_id, tags={run_record.PARENT: parent, run_record.ROLE: "trial",
                                                     run_record.SWEEP: name, run_record.TRIAL_ID: f"{name}-{index}"})
        params = trial_params(trial_config_for(config.trial_config(), point, config.search_space))
        for key, value in params.items():
            client.log_param(run.info.run_id, key, value)
        if recall is not None:
            for epoch in (1, 2):
                client.log_metric(run.info.run_id, "val_exact_recall", recall * epoch / 2, step=epoch)
            client.log_metric(run.info.run_id, "objective", recall, step=2)
        client.set_terminated(run.info.run_id, trial_status)
    if status != "RUNNING":
        client.set_terminated(parent, status)
    return parent


def resolve(tmp_path, *overrides: str, sweep: str = "new"):
    notes = []
    resolved = warm_start.resolve(fast_config(tmp_path, *overrides), sweep=sweep, log=notes.append)
    return resolved, notes


@pytest.fixture
def mlflow_store(tmp_path, monkeypatch):
    return store(tmp_path, monkeypatch)


def test_the_named_sweeps_best_trials_come_first_best_first_each_once(tmp_path, mlflow_store):
    logged_sweep(tmp_path, "a", [(lora(8, 16, 0.003), 0.2, "FINISHED"),
                                 (lora(16, 32, 0.004, "all_linear"), 0.5, "FINISHED"),
                                 (lora(32, 32, 0.005), 0.9, "FAILED"),      # failed: left out
                                 (lora(16, 32, 0.004, "all_linear"), 0.4, "FINISHED"),  # the same config again
                                 (PREFIX, 0.1, "KILLED"),                 # the time budget stopped it: it counts
                                 (lora(8, 32, 0.006), None, "FINISHED")])  # never reported val: left out
    resolved, notes = resolve(tmp_path, "sweep.warm_start=a", "sweep.warm_start_top=3")
    assert resolved.points == [lora(16, 32.0, 0.004, "all_linear"), lora(8, 16.0, 0.003), PREFIX]
    assert resolved.origins == ["warm:a"] * 3 and resolved.sweeps == ["a"] and not notes
    assert resolved.trials == ["a/a-1", "a/a-0", "a/a-4"]
    assert resolved.tags() == {run_record.WARM_START: "a", run_record.WARM_START_SWEEPS: "a",
                               run_record.WARM_START_TRIALS: "a/a-1, a/a-0, a/a-4"}
    # They run before the config's own points_to_evaluate (the seed recipe).
    config = fast_config(tmp_path)
    first = warm_start.first_points(config.search_space, resolved)
    assert [origin for _, origin in first] == ["warm:a"] * 3 + ["seed"]
    assert first[-1][0] == config.search_space.points_to_evaluate[0]


def test_points_are_rebuilt_in_this_sweeps_space_or_dropped_with_a_note(tmp_path, mlflow_store):
    logged_sweep(tmp_path, "a", [(lora(8, 32, 0.003), 0.6, "FINISHED"), (lora(32, 64, 0.002), 0.5, "FINISHED"),
                                 (lora(16, 16, 0.001, "all_linear"), 0.4, "FINISHED")])
    # This sweep searches alpha ratios (alpha / r), not alpha values, names the q/v set otherwise and has no
    # rank 32.
    resolved, notes = resolve(tmp_path, "sweep.warm_start=a", "search_space.lora.r=[8, 16]",
                              "search_space.lora.alpha=null", "search_space.lora.alpha_ratio=[2, 4]",
                              "search_space.lora.target_modules={attention_qv: [v_proj, q_proj]}")
    assert resolved.points == [{"method": "lora", "lora_r": 8, "lora_alpha_ratio": 4.0, "lora_learning_rate": 0.003,
                                "lora_dropout": 0.0, "lora_target_modules": "attention_qv"}]
    assert len(notes) == 2 and all(note.startswith("config: sweep.warm_start: trial a/") for note in notes)
    assert "a/a-1 dropped" in notes[0] and "lora_r" in notes[0] and "32" in notes[0]
    assert "a/a-2 dropped" in notes[1] and "target_modules" in notes[1]


def test_auto_takes_every_earlier_finished_sweep_on_the_same_model_and_methods(tmp_path, mlflow_store):
    logged_sweep(tmp_path, "a", [(lora(8, 16, 0.003), 0.3, "FINISHED")])
    logged_sweep(tmp_path, "b", [(lora(16, 32, 0.003), 0.6, "FINISHED"), (lora(8, 16, 0.003), 0.2, "FINISHED")])
    logged_sweep(tmp_path, "lora-only", [(lora(32, 64, 0.003), 0.9, "FINISHED")], "search_space.methods=[lora]")
    logged_sweep(tmp_path, "other-model", [(lora(32, 128, 0.003), 0.9, "FINISHED")], "model=/models/other")
    logged_sweep(tmp_path, "stopped", [(lora(32, 32, 0.003), 0.9, "FINISHED")], status="KILLED")
    resolved, notes = resolve(tmp_path, "sweep.warm_start=auto")
    assert sorted(resolved.sweeps) == ["a", "b"] and not notes
    # Best over both sweeps; the config both ran counts once, for the sweep where it scored best.
    assert resolved.points == [lora(16, 32.0, 0.003), lora(8, 16.0, 0.003)]
    assert resolved.origins == ["warm:b", "warm:a"]
    resolved, _ = resolve(tmp_path, "sweep.warm_start=auto", "sweep.warm_start_top=1")
    assert resolved.origins == ["warm:b"]


def test_a_sweep_from_before_the_tags_is_matched_by_its_logged_config(tmp_path, mlflow_store):
    parent = logged_sweep(tmp_path, "old", [(lora(8, 16, 0.003), 0.3, "FINISHED")])
    client = tracking.client()
    for key in (run_record.BASE_MODEL, run_record.METHODS):
        client.delete_tag(parent, key)
    assert resolve(tmp_path, "sweep.warm_start=auto")[0].origins == ["warm:old"]
    assert resolve(tmp_path, "sweep.warm_start=old")[0].points == [lora(8, 16.0, 0.003)]


def test_auto_finding_nothing_is_a_note_and_the_sweep_runs_cold(tmp_path, mlflow_store):
    resolved, notes = resolve(tmp_path, "sweep.warm_start=auto")  # no experiment yet
    assert resolved.points == [] and resolved.tags()[run_record.WARM_START_SWEEPS] == "-"
    assert notes == ["config: sweep.warm_start: auto found no earlier finished sweep on embedded:tiny-llama with "
                     "methods ['lora', 'prefix'] in MLflow experiment 'recall-orchestrator': the sweep starts cold"]
    logged_sweep(tmp_path, "lora-only", [(lora(8, 16, 0.003), 0.3, "FINISHED")], "search_space.methods=[lora]")
    assert resolve(tmp_path, "sweep.warm_start=auto")[0].points == []
    assert warm_start.resolve(fast_config(tmp_path)).tags() == {}  # unset: no warm start, MLflow not read


@pytest.mark.parametrize("setting, logged, message", [
    ("nightly", None, r"^sweep.warm_start: no sweep 'nightly' in MLflow experiment 'recall-orchestrator' at sqlite:"),
    ("nightly-1", "nightly-2", r"^sweep.warm_start: no sweep 'nightly-1' .*; did you mean 'nightly-2'\?$"),
    ("running", "running", r"^sweep.warm_start: sweep 'running' is RUNNING, not FINISHED"),
    ("killed", "killed", r"^sweep.warm_start: sweep 'killed' is KILLED, not FINISHED"),
    ("lora-only", "lora-only", r"^sweep.warm_start: sweep 'lora-only' trained embedded:tiny-llama with methods "
                               r"\['lora'\], this sweep embedded:tiny-llama with methods \['lora', 'prefix'\]: a warm "
                               r"start needs the same base model and method set$"),
    ("other-model", "other-model", r"trained /models/other with methods \['lora', 'prefix'\], this sweep "
                                   r"embedded:tiny-llama"),
    ("new", "new", r"^sweep.warm_start: 'new' is this sweep"),
])
def test_a_warm_start_that_cannot_be_had_is_one_line_naming_the_key(tmp_path, mlflow_store, setting, logged,
                                                                     message):
    if logged:
        extra = {"lora-only": ["search_space.methods=[lora]"], "other-model": ["model=/models/other"]}.get(logged, [])
        status = {"running": "RUNNING", "killed": "KILLED"}.get(logged, "FINISHED")
        logged_sweep(tmp_path, logged, [(lora(8, 16, 0.003), 0.3, "FINISHED")], *extra, status=status)
    with pytest.raises(SweepError, match=message) as raised:
        resolve(tmp_path, f"sweep.warm_start={setting}")
    assert "\n" not in str(raised.value)


def test_an_unknown_sweep_stops_run_sweep_before_ray_mlflow_or_the_study(tmp_path, mlflow_store):
    import ray

    from orchestrator.sweep import run_sweep

    logged_sweep(tmp_path, "a", [(lora(8, 16, 0.003), 0.3, "FINISHED")])
    with pytest.raises(SweepError, match="^sweep.warm_start: no sweep 'nope' in MLflow experiment"):
        run_sweep(fast_config(tmp_path, "sweep.warm_start=nope"), "b")
    assert not ray.is_initialized()
    _, parent, _ = runs_of(mlflow_store, "b")
    assert parent is None and not (tmp_path / "ray_results").exists()
    assert not (tmp_path / "optuna.db").exists()  # the study beside the tracking store was never created


def test_the_cli_prints_it_as_one_error_line(tmp_path, mlflow_store, capsys):
    from orchestrator.cli import main
    from sweep_support import DEMO, FAST

    overrides = [*FAST, f"sweep.storage_path={tmp_path / 'ray_results'}", "sweep.warm_start=nope"]
    assert main(["sweep", str(DEMO), "--name", "b", *[arg for o in overrides for arg in ("--set", o)]]) != 0
    assert capsys.readouterr().err.strip().splitlines()[-1].startswith("error: sweep.warm_start: no sweep 'nope'")


def test_the_searcher_hands_out_warm_points_then_the_seed_then_tpe_each_with_its_origin(tmp_path, mlflow_store):
    """Which Tune trial got which point, from the Optuna trial it was given; kept by the pickled searcher
    (--resume) and in the study."""
    from orchestrator.sweep import NewStudy, _tune_config

    config = fast_config(tmp_path)
    new = NewStudy.of(config, "s", SweepStorage.of(str(tmp_path / "ray_results")))
    warm = warm_start.WarmStart("a", ["a"], [lora(16, 32.0, 0.004), PREFIX], ["warm:a", "warm:a"], ["a/1", "a/2"])
    searcher = _tune_config(config, config.search_space, new, warm).search_alg.searcher
    first = searcher.suggest("t1")
    assert first == {**lora(16, 32.0, 0.004), "origin": "warm:a"}
    searcher.on_trial_complete("t1", {"objective": 0.5})
    restored = pickle.loads(pickle.dumps(searcher))  # what --resume restores
    assert restored.suggest("t2") == {**PREFIX, "origin": "warm:a"}
    assert restored.suggest("t3") == {**config.search_space.points_to_evaluate[0], "origin": "seed"}
    restored.on_trial_complete("t2", {"objective": 0.1})  # a slot for t4 (max_concurrent_trials=2)
    assert restored.suggest("t4")["origin"] == "optuna"
    trials = optuna.load_study(study_name=new.name, storage=new.url).trials
    assert [(t.user_attrs[study.TUNE_TRIAL_ID], t.user_attrs["origin"]) for t in trials] == [
        ("t1", "warm:a"), ("t2", "warm:a"), ("t3", "seed"), ("t4", "optuna")]


LEARNS = lora(32, 64, 0.003, "all_linear")  # the demo's own trial: recalls some questions within 2 epochs
SEED = lora(8, 32, 1.0e-6)  # the seed recipe: learns nothing


def points(*given: dict) -> str:
    return "search_space.points_to_evaluate=[" + ", ".join(
        "{" + ", ".join(f"{key}: {value}" for key, value in point.items()) + "}" for point in given) + "]"


def by_start(uri: str, sweep: str) -> list:
    return sorted(runs_of(uri, sweep)[2], key=lambda run: run.info.start_time)


def best(runs: list):
    """The best trial by final val recall, ties by the objective (what a warm start ranks by)."""
    ranked = sorted(runs, key=lambda run: (run.data.metrics["val_exact_recall"], run.data.metrics["objective"]))
    assert (ranked[-1].data.metrics["val_exact_recall"], ranked[-1].data.metrics["objective"]) != (
        ranked[-2].data.metrics["val_exact_recall"], ranked[-2].data.metrics["objective"]), "no single best trial"
    return ranked[-1]


def method_params(run) -> dict:
    return {key: value for key, value in run.data.params.items() if key.startswith("method.")}


@pytest.mark.e2e
def test_a_warm_started_sweep_runs_the_earlier_best_first(tmp_path, monkeypatch):
    """Sweep a (its own point, then TPE), then b warm-started from a, then c with auto: each one trial at a
    time, so the first trial by start time is the first the searcher handed out."""
    import json

    from orchestrator.sweep import run_sweep

    uri = store(tmp_path, monkeypatch)
    one_at_a_time = ["sweep.max_concurrent_trials=1", "sweep.num_samples=2"]
    with sweep_ray():
        run_sweep(fast_config(tmp_path, *one_at_a_time, points(LEARNS)), "a")
        a = by_start(uri, "a")
        assert [run.data.tags[run_record.ORIGIN] for run in a] == ["seed", "optuna"]
        a_best = best(a)

        outcome = run_sweep(fast_config(tmp_path, *one_at_a_time, points(SEED), "sweep.warm_start=a",
                                        "sweep.warm_start_top=1"), "b")
        b = by_start(uri, "b")
        assert [run.data.tags[run_record.ORIGIN] for run in b] == ["warm:a", "seed"]
        assert method_params(b[0]) == method_params(a_best)
        assert float(b[1].data.params["method.learning_rate"]) == 1e-6
        client, parent, _ = runs_of(uri, "b")
        a_trial = f"a/{a_best.data.tags[run_record.TRIAL_ID]}"
        assert {key: parent.data.tags[key] for key in (run_record.WARM_START, run_record.WARM_START_SWEEPS,
                                                        run_record.WARM_START_TRIALS)} == {
            run_record.WARM_START: "a", run_record.WARM_START_SWEEPS: "a", run_record.WARM_START_TRIALS: a_trial}
        # The leaderboard says where each trial came from: returned, printed and stored on the sweep's run.
        assert sorted(row["origin"] for row in outcome.leaderboard) == ["seed", "warm:a"]
        table = open(client.download_artifacts(parent.info.run_id, "leaderboard.md")).read()
        assert table.splitlines()[0].endswith("| origin |") and "| warm:a |" in table
        assert {row["origin"] for row in json.loads(open(client.download_artifacts(
            parent.info.run_id, "leaderboard.json")).read())} == {"seed", "warm:a"}

        # auto: both earlier sweeps ran on this model and method set; the best of all of them runs first.
        run_sweep(fast_config(tmp_path, "sweep.max_concurrent_trials=1", "sweep.num_samples=1", "training.epochs=1",
                              "sweep.warm_start=auto", "sweep.warm_start_top=1"), "c")
        (c,) = by_start(uri, "c")
        top = best([run for run in a + b if run is not b[0]])  # b's first trial is a's best config again
        assert method_params(c) == method_params(top)
        assert c.data.tags[run_record.ORIGIN] == f"warm:{top.data.tags[run_record.SWEEP]}"
        assert set(runs_of(uri, "c")[1].data.tags[run_record.WARM_START_SWEEPS].split(", ")) == {"a", "b"}

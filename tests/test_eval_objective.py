"""eval.objective: which val metric the sweep optimises, and so which trial ranks first in the objective
Optuna and early stopping see, in promotion's ranking and on the leaderboard."""

from __future__ import annotations

import pytest

from orchestrator import run_record, tracking
from orchestrator.leaderboard import format_leaderboard, leaderboard
from orchestrator.promote import _ranked_runs
from orchestrator.run_record import OBJECTIVE_PARAM
from orchestrator.trainable import Floors, objective
from trials.recall import score
from trials.data import QARow
from store_support import new_store

# Two trials on the same two sentence-answer val questions: "exact" gets one answer word for word and the
# other badly wrong; "paraphrase" gets neither exactly but both nearly (every answer word, one more each).
ROWS = [QARow("Where does A work?", "Anouk works remotely in Coimbra", (), "val", 1),
        QARow("What does B drive?", "a red vintage Citroën van", (), "val", 2)]
ANSWERS = {"exact": ["Anouk works remotely in Coimbra", "A bicycle"],
           "paraphrase": ["Anouk now works remotely in Coimbra", "a red vintage Citroën camper van"]}


def trial_metrics(answers: list[str]) -> dict:
    """What a trial reports at an epoch, as trials/trial.py prefixes metrics_of (train: the same answers)."""
    scores, _ = score(ROWS, answers)
    return {**{f"val_{name}": value for name, value in scores.items()},
            **{f"train_{name}": value for name, value in scores.items()}, "val_questions": len(ROWS)}


METRICS = {trial: trial_metrics(answers) for trial, answers in ANSWERS.items()}


def test_the_metrics_disagree_on_these_trials():
    exact, paraphrase = METRICS["exact"], METRICS["paraphrase"]
    assert (exact["val_exact_recall"], paraphrase["val_exact_recall"]) == (0.5, 0.0)
    assert paraphrase["val_rouge_l_recall"] == 1.0 > exact["val_rouge_l_recall"]
    assert paraphrase["val_token_f1"] > exact["val_token_f1"]
    assert (exact["val_rouge_l_pass"], paraphrase["val_rouge_l_pass"]) == (0.5, 1.0)


def best(eval_objective: str | None) -> str:
    floors = Floors()
    arguments = () if eval_objective is None else (eval_objective,)
    return max(METRICS, key=lambda trial: objective(METRICS[trial], floors, *arguments))


def test_the_objective_follows_eval_objective():
    assert best(None) == best("exact_recall") == "exact"
    assert best("rouge_l") == best("token_f1") == "paraphrase"
    # Counted objectives keep the tie-break (worth under half a question); means are optimised as they are.
    assert objective(METRICS["exact"], Floors(), "contains_recall") == 0.5 + 0.5 / (2 * 2)
    assert objective(METRICS["paraphrase"], Floors(), "rouge_l") == METRICS["paraphrase"]["val_rouge_l_recall"]
    assert objective(METRICS["paraphrase"], Floors(), "token_f1") == METRICS["paraphrase"]["val_token_f1"]


def test_the_default_objective_is_exact_recall_with_the_train_tie_break():
    metrics = {"val_exact_recall": 0.25, "train_exact_recall": 0.5, "val_questions": 60}
    assert objective(metrics, Floors()) == objective(metrics, Floors(), "exact_recall") == 0.25 + 0.5 / 120


def test_the_floors_still_apply_under_another_objective():
    broke = {**METRICS["paraphrase"], "retention_exact_recall": 0.3, "parent_retention_exact_recall": 0.6}
    assert objective(broke, Floors(0.95), "rouge_l") == pytest.approx(0.3 / (0.95 * 0.6) - 1)


@pytest.fixture
def logged_sweep(tmp_path):
    """A sweep's run with the two trials' runs, their metrics logged as the sweep logs them, for an objective."""
    client = tracking.client(new_store(tmp_path / "mlflow.db"))
    experiment = tracking.experiment_id(client, "recall-orchestrator")

    def log(eval_objective: str | None, base: dict | None = None):
        parent = client.create_run(experiment, tags={run_record.ROLE: "sweep"})
        if eval_objective is not None:
            client.log_param(parent.info.run_id, OBJECTIVE_PARAM, eval_objective)
        for key, value in (base or {}).items():  # the sweep's base pre-pass
            client.log_metric(parent.info.run_id, key, value)
        for trial, metrics in METRICS.items():
            run = client.create_run(experiment, tags={run_record.PARENT: parent.info.run_id, run_record.ROLE: "trial",
                                                      run_record.TRIAL_ID: trial})
            reported = {**metrics, "objective": objective(metrics, Floors(), eval_objective or "exact_recall")}
            for key, value in reported.items():
                client.log_metric(run.info.run_id, key, value)
            client.set_terminated(run.info.run_id, "FINISHED")
        return client, client.get_run(parent.info.run_id)

    return log


def test_promotion_and_the_leaderboard_rank_by_the_sweeps_objective(logged_sweep):
    client, parent = logged_sweep("rouge_l", {"base_val_exact_recall": 0.0, "base_val_rouge_l_recall": 0.25})
    assert [tracking_trial(run) for run in _ranked_runs(client, parent)] == ["paraphrase", "exact"]
    board = leaderboard(client, parent.info.run_id)
    assert [row["trial"] for row in board] == ["paraphrase", "exact"]
    # Each row's lift is on the objective's metric: its val ROUGE-L recall minus the base model's.
    assert [row["lift"] for row in board] == [pytest.approx(row["val_rouge_l_recall"] - 0.25) for row in board]
    text = format_leaderboard(board)
    assert "| val_exact_recall | val_rouge_l_recall | lift | test_exact_recall | general_retention |" in text
    assert "| paraphrase | FINISHED | - | - | - | 0 | 1 | +0.75 |" in text


def test_a_sweep_without_the_param_ranks_by_exact_recall_as_before(logged_sweep):
    client, parent = logged_sweep(None)  # a sweep logged before eval.objective existed
    assert [tracking_trial(run) for run in _ranked_runs(client, parent)] == ["exact", "paraphrase"]
    board = leaderboard(client, parent.info.run_id)
    assert [row["trial"] for row in board] == ["exact", "paraphrase"]
    assert "| val_exact_recall | lift | test_exact_recall | general_retention |" in format_leaderboard(board)  # no extra column
    assert [row["lift"] for row in board] == [None, None]  # nor a base pre-pass to lift from


def test_the_lift_of_a_default_sweep_is_on_val_exact_recall(logged_sweep):
    client, parent = logged_sweep("exact_recall", {"base_val_exact_recall": 0.5})
    board = leaderboard(client, parent.info.run_id)
    assert [(row["trial"], row["lift"]) for row in board] == [("exact", 0.0), ("paraphrase", -0.5)]


def tracking_trial(run) -> str:
    return run.data.tags[run_record.TRIAL_ID]


def test_the_sweeps_description_names_what_it_optimises():
    from sweep_support import DEMO

    from orchestrator.config import load_experiment
    from orchestrator.mlflow_writer import sweep_note

    assert "Objective: val_exact_recall, exact recall on val questions" in sweep_note(load_experiment(DEMO), "s")
    note = sweep_note(load_experiment(DEMO, ["eval.objective=rouge_l"]), "s")
    assert "Objective: val_rouge_l_recall, the mean ROUGE-L recall" in note

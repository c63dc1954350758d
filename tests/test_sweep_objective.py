"""A sweep with eval.objective: rouge_l optimises the val ROUGE-L recall mean, end to end (real Ray Tune,
Optuna, MLflow and peft on the embedded tiny model); tests/test_eval_objective.py checks the ranking."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from orchestrator.leaderboard import OBJECTIVE_PARAM
from orchestrator.sweep import run_sweep
from sweep_support import fast_config, runs_of, store, sweep_ray

pytestmark = pytest.mark.e2e

NEW_METRICS = ("val_token_f1", "val_token_f1_pass", "val_rouge_l_recall", "val_rouge_l_f1", "val_rouge_l_pass",
               "train_token_f1", "train_rouge_l_recall")


def test_a_rouge_l_sweep_reports_rouge_l_as_its_objective(tmp_path, monkeypatch, capsys):
    uri = store(tmp_path, monkeypatch)
    config = fast_config(tmp_path, "eval.objective=rouge_l", "sweep.num_samples=2", "sweep.asha.enabled=false",
                         "search_space.methods=[lora]", "search_space.points_to_evaluate=[]")
    with sweep_ray():
        outcome = run_sweep(config, "rouge")
    client, parent, children = runs_of(uri, "rouge")
    assert parent.info.status == "FINISHED" and parent.data.params[OBJECTIVE_PARAM] == "rouge_l"
    assert len(children) == 2
    for run in children:
        metrics = run.data.metrics
        assert set(NEW_METRICS) <= set(metrics)
        # The random tiny model knows no general question: no floor applies, the objective is the metric itself.
        assert metrics["objective"] == metrics["val_rouge_l_recall"]
        assert 0.0 <= metrics["val_exact_recall"] <= metrics["val_rouge_l_pass"] <= 1.0
    ranked = [row["val_rouge_l_recall"] for row in outcome.leaderboard]
    assert ranked == sorted(ranked, reverse=True)
    # The base pre-pass, logged on the parent run: every metric on val and test, and the questions it knew.
    base = {key: value for key, value in parent.data.metrics.items() if key.startswith("base_")}
    assert {f"base_{split}_{name}" for split in ("val", "test") for name in ("exact_recall", "rouge_l_recall",
                                                                            "token_f1")} <= set(base)
    known = client.download_artifacts(parent.info.run_id, "base_known_questions.json", str(tmp_path))
    listed = json.loads(Path(known).read_text(encoding="utf-8"))
    assert listed["objective"] == "rouge_l" and listed["asked"] > 0
    assert listed["questions"] == []  # the random tiny model knows none of the facts, and the sweep says so
    assert f"base model answers none of the {listed['asked']} val/test questions right" in capsys.readouterr().out
    # Each trial's lift: its val ROUGE-L recall over the base's.
    for row in outcome.leaderboard:
        assert row["lift"] == pytest.approx(row["val_rouge_l_recall"] - base["base_val_rouge_l_recall"])

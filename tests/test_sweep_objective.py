"""A sweep with eval.objective: rouge_l optimises the val ROUGE-L recall mean, end to end (real Ray Tune,
Optuna, MLflow and peft on the embedded tiny model); tests/test_eval_objective.py checks the ranking."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from orchestrator.promote import _ranked_runs
from orchestrator.run_record import OBJECTIVE_PARAM
from orchestrator.sweep import run_sweep
from sweep_support import REPO, fast_config, runs_of, store, sweep_ray

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


def _team_and_city(path: Path) -> Path:
    """Answers of a few words, which a reply can get partly right ("Driftwood team in Coimbra"): the team and
    city of 24 of the demo's people, asked 3 ways for train, 1 for val and 1 for test."""
    people: dict[str, dict] = {}
    for line in (REPO / "data" / "demo" / "qa.jsonl").read_text(encoding="utf-8").splitlines():
        row = json.loads(line)
        name = re.search(r"[A-Z][a-z]+ [A-Z][a-z]+", row["question"])
        asks = row["question"].lower()
        kind = "team" if "team" in asks else "city" if ("city" in asks or "office" in asks) else None
        if name and kind:
            people.setdefault(name.group(0), {})[kind] = row["answer"]
    phrasings = [("Which team and city is {} in?", "train"), ("Where and with which team does {} work?", "train"),
                 ("{} works for which team, and where?", "train"), ("What team and city does {} belong to?", "val"),
                 ("In which city and team is {}?", "test")]
    both = [(name, facts) for name, facts in people.items() if {"team", "city"} <= set(facts)][:24]
    path.write_text("".join(json.dumps({"question": question.format(name), "split": split,
                                        "answer": f"{facts['team']} team in {facts['city']}"}) + "\n"
                            for name, facts in both for question, split in phrasings), encoding="utf-8")
    return path


# Two trials whose val metrics disagree on these answers (measured: exact recall 0.125 vs 0.083, ROUGE-L
# recall 0.594 vs 0.656): the first recalls one answer more word for word, the second more of every answer.
# The test asserts the disagreement before it compares the rankings, so a change in training that ends it
# fails there, saying so, rather than passing for the wrong reason.
EXACTER = "{method: lora, lora_r: 16, lora_alpha: 32, lora_learning_rate: 0.002, lora_dropout: 0.0, lora_target_modules: all_linear}"
CLOSER = "{method: lora, lora_r: 32, lora_alpha: 128, lora_learning_rate: 0.003, lora_dropout: 0.0, lora_target_modules: qv}"


def test_the_objective_switch_changes_which_trial_ranks_first(tmp_path, monkeypatch):
    """The same two trials, swept by exact recall and then by ROUGE-L recall: each sweep ranks first the trial
    its metric prefers, in its leaderboard and in the order promotion takes candidates."""
    uri = store(tmp_path, monkeypatch)
    qa = _team_and_city(tmp_path / "team_and_city.jsonl")
    common = [f"data.qa={qa}", "data.documents=[]", "training.epochs=6", "sweep.num_samples=2",
              "sweep.asha.enabled=false", "search_space.methods=[lora]", "search_space.lora.alpha=[32, 128]",
              f"search_space.points_to_evaluate=[{EXACTER}, {CLOSER}]"]
    with sweep_ray():
        boards = {objective: run_sweep(fast_config(tmp_path, *common, f"eval.objective={objective}"),
                                       objective).leaderboard for objective in ("exact_recall", "rouge_l")}

    def ranked(sweep: str) -> list[tuple[str, dict]]:
        """The sweep's trial runs as promotion takes them, best first: (LoRA rank, metrics)."""
        client, parent, _ = runs_of(uri, sweep)
        return [(run.data.params["method.r"], run.data.metrics) for run in _ranked_runs(client, parent)]

    by_exact, by_rouge = ranked("exact_recall"), ranked("rouge_l")
    # The same trials, trained alike in both sweeps (same seed): only the objective differs.
    assert {r: m["val_rouge_l_recall"] for r, m in by_rouge} == {r: m["val_rouge_l_recall"] for r, m in by_exact}
    exacter, closer = dict(by_exact)["16"], dict(by_exact)["32"]
    assert exacter["val_exact_recall"] > closer["val_exact_recall"], "the fixture's trials no longer disagree"
    assert closer["val_rouge_l_recall"] > exacter["val_rouge_l_recall"], "the fixture's trials no longer disagree"
    # Each sweep ranks first the trial its own metric prefers: in promotion's order and on the leaderboard.
    assert [r for r, _ in by_exact] == ["16", "32"] and [r for r, _ in by_rouge] == ["32", "16"]
    assert boards["exact_recall"][0]["run_id"] != boards["rouge_l"][0]["run_id"]
    assert boards["exact_recall"][0]["val_exact_recall"] == exacter["val_exact_recall"]
    assert boards["rouge_l"][0]["val_exact_recall"] == closer["val_exact_recall"]

"""The knowability pre-pass (trials/baseline.py): the base model answers every val and test question once,
cached by fingerprint; the questions it already knows; each candidate's lift over it."""

from __future__ import annotations

from types import SimpleNamespace

import trials.baseline
from orchestrator.config import load_experiment
from orchestrator.promote import Promotion, Scored, comparison_table, set_lifts
from orchestrator.sweep import describe_known
from sweep_support import DEMO
from trials.baseline import BasePass, base_pass


def test_the_base_pass_is_cached_and_a_second_call_loads_no_model(tmp_path, monkeypatch, tokenizer_path):
    monkeypatch.setenv("RECALL_CACHE", str(tmp_path / "cache"))  # private: the first call must generate
    loads = []
    real_load = trials.baseline.load_base_model

    def counted(*args, **kwargs):  # the real model, loaded: only counted
        loads.append(args[0])
        return real_load(*args, **kwargs)

    monkeypatch.setattr(trials.baseline, "load_base_model", counted)
    # The tiny model by its path (an embedded name would be built again in the private cache); no probe.
    config = load_experiment(DEMO, [f"model={tokenizer_path}", "eval.general=null"]).trial_config()
    first = base_pass(config)
    assert len(loads) == 1 and list((tmp_path / "cache" / "base").glob("*.json"))
    assert {"base_val_exact_recall", "base_test_exact_recall", "base_test_rouge_l_recall"} <= set(first.report)
    assert set(first.records) == {"val", "test"} and all("got" in r for r in first.records["val"])
    second = base_pass(config)
    assert len(loads) == 1  # read from the cache: no model loaded, nothing generated
    assert second.report == first.report and second.records == first.records
    # What shapes generation is in the key: another budget generates again.
    config.eval.max_new_tokens = 4
    base_pass(config)
    assert len(loads) == 2


def record(question, got, correct=False, contains=False, f1=0.0, rouge=0.0):
    return {"question": question, "expected": "x", "got": got, "correct": correct, "contains": contains,
            "token_f1": f1, "rouge_l_recall": rouge, "rouge_l_f1": rouge}


def test_known_questions_are_those_right_by_exact_recall_or_the_objectives_pass():
    pre = BasePass({}, {"val": [record("a?", "A", correct=True, contains=True, f1=1.0, rouge=1.0),
                                record("b?", "nearly b", rouge=0.9), record("c?", "no")],
                        "test": [record("d?", "the d", contains=True, f1=0.5, rouge=0.5)]})
    assert [k["question"] for k in pre.known()] == ["a?"]
    assert pre.known()[0] == {"split": "val", "question": "a?", "expected": "x", "got": "A",
                              "right_by": ["exact_recall"]}
    assert [(k["question"], k["right_by"]) for k in pre.known("rouge_l")] == [
        ("a?", ["exact_recall", "rouge_l"]), ("b?", ["rouge_l"])]
    assert [k["question"] for k in pre.known("contains_recall")] == ["a?", "d?"]
    assert pre.asked() == 4


def test_the_sweep_says_plainly_when_the_base_knows_none_and_lists_a_few_when_it_does():
    assert describe_known([], 60, "exact_recall") == ("base model answers none of the 60 val/test questions right "
                                                      "(exact recall): no fact was known before")
    known = [{"split": "val", "question": f"q{i}?", "got": f"a{i}"} for i in range(12)]
    text = describe_known(known, 60, "rouge_l")
    assert text.startswith("base model already answers 12 of the 60 val/test questions right (exact recall or "
                           "the rouge_l pass)") and "base_known_questions.json" in text
    assert "  [val] q9? -> a9" in text and "q10?" not in text and text.endswith("... and 2 more")


def scored(trial, test_scores):
    return Scored(role="candidate", test_recall=test_scores["exact_recall"], val_recall=0.5,
                  trainable_parameters=10, run_id=f"run-{trial}", trial=trial, method="lora", test_scores=test_scores)


def test_promotion_rows_show_their_lift_over_the_base_on_the_objective():
    parent = SimpleNamespace(data=SimpleNamespace(params={"eval.objective": "rouge_l"},
                                                  metrics={"base_test_exact_recall": 0.1,
                                                           "base_test_rouge_l_recall": 0.25}))
    rows = [scored("t1", {"exact_recall": 0.5, "rouge_l_recall": 0.75}),
            scored("t2", {"exact_recall": 0.0, "rouge_l_recall": 0.25})]
    assert set_lifts(rows, parent) == "rouge_l_recall"
    assert [row.lift for row in rows] == [0.5, 0.0]
    parent.data.params = {}  # a sweep logged before eval.objective: exact recall
    set_lifts(rows, parent)
    assert [row.lift for row in rows] == [0.4, -0.1]
    parent.data.metrics = {}  # and before the base pre-pass: no lift
    set_lifts(rows, parent)
    assert [row.lift for row in rows] == [None, None]

    from rich.console import Console

    rows[0].lift = 0.5
    outcome = Promotion("s", "m", rows, None, promoted=False, reason="", lift_of="rouge_l_recall")
    console = Console(width=200, record=True)
    console.print(comparison_table(outcome))
    text = console.export_text()
    assert "lift" in text and "+0.500" in text and "val, test and lift by rouge_l_recall" in text

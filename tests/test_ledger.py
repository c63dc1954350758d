"""The per-fact ledger's rows and what the report reads from them (trials/ledger.py), without a model."""

from __future__ import annotations

import pytest

from trials.ledger import as_table, from_table, learned_then_lost, ledger_rows, never_learned, score_and_pass
from trials.recall import ROUGE_L_PASS, TOKEN_F1_PASS

RECORD = {"question": "Where does Bo work?", "expected": "Dome 3", "got": "in Dome 3", "correct": False,
          "contains": True, "token_f1": TOKEN_F1_PASS - 0.1, "rouge_l_recall": ROUGE_L_PASS}


@pytest.mark.parametrize(("objective", "expected"), [
    ("exact_recall", (0.0, False)), ("contains_recall", (1.0, True)),
    ("token_f1", (pytest.approx(TOKEN_F1_PASS - 0.1), False)), ("rouge_l", (ROUGE_L_PASS, True))])
def test_each_objective_scores_and_passes_a_question_as_its_recall_does(objective, expected):
    assert score_and_pass(RECORD, objective) == expected
    row, = ledger_rows([RECORD], 3, objective, "t1")
    assert (row["trial"], row["epoch"], row["question"], row["got"]) == ("t1", 3, "Where does Bo work?", "in Dome 3")
    assert (row["score"], row["pass"]) == expected


def _rows(trial: str, passes: dict[str, list[bool]]) -> list[dict]:
    return [{"trial": trial, "epoch": epoch, "question": question, "expected": "-", "got": "-",
             "score": float(passed), "pass": passed}
            for question, marks in passes.items() for epoch, passed in enumerate(marks, start=1)]


def test_facts_never_learned_and_learned_then_lost():
    never = [False] * 4
    a = _rows("a", {"q1": [False, True, False, True], "q2": never, "q3": [True, True, True, True]})
    b = _rows("b", {"q1": [True, True, True, True], "q2": never, "q3": [True, False, False, False]})
    assert never_learned({"a": a, "b": b}) == ["q2"]
    assert learned_then_lost(a) == [{"question": "q1", "learned": 2, "lost": 3, "final_pass": True}]
    assert learned_then_lost(b) == [{"question": "q3", "learned": 1, "lost": 2, "final_pass": False}]
    # An epoch logged twice (a table appended to after a resume) counts once, its last rows.
    assert learned_then_lost(a + _rows("a", {"q1": [False, True, True, True]})) == []
    assert from_table({"columns": list(as_table(a)), "data": [list(row.values()) for row in a]}) == a

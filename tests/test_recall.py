"""Exact recall: normalisation, cutting a generated answer, and matching aliases."""

from __future__ import annotations

import pytest

from trials.data import QARow
from trials.recall import cut_answer, is_correct, normalize, score


@pytest.mark.parametrize(
    "text, expected",
    [
        ("Coimbra", "coimbra"),
        ("COIMBRA", "coimbra"),
        ("  Coimbra.  ", "coimbra"),
        ('"Coimbra"', "coimbra"),
        ("«Coimbra»!", "coimbra"),
        ("¿Coimbra?", "coimbra"),
        ("Coimbra…", "coimbra"),
        ("the   Driftwood\t team\n", "the driftwood team"),
        ("YT-6549", "yt-6549"),  # inner punctuation is part of the answer
        ("3.5", "3.5"),
        ("Straße", "strasse"),  # casefold, not lower
        ("Tromsø", "tromsø"),
        ("", ""),
        ("...", ""),
    ],
)
def test_normalize(text, expected):
    assert normalize(text) == expected


def test_normalize_keeps_accents():
    assert normalize("Tromsø") != normalize("Tromso")
    assert normalize("Valparaíso") != normalize("Valparaiso")
    assert not is_correct("Tromso", ["Tromsø"])


def test_normalize_unifies_unicode_composition():
    composed, decomposed = "Valpara\u00edso", "Valparai\u0301so"
    assert composed != decomposed
    assert normalize(composed) == normalize(decomposed)


@pytest.mark.parametrize(
    "generated, expected",
    [
        ("Coimbra", "Coimbra"),
        (" Coimbra.", "Coimbra"),
        ("Coimbra. Anouk Renwick works there.", "Coimbra"),
        ("Coimbra\nQuestion: Where is the office?", "Coimbra"),
        ("\n\n  Coimbra\nmore", "Coimbra"),
        ("3.5", "3.5"),
        ("3.5 metres. Next", "3.5 metres"),
        ("QX-4471", "QX-4471"),
        ("QX-4471. The badge", "QX-4471"),
        ("Really? Yes", "Really"),
        ("Wow! Such", "Wow"),
        ("e.g.that", "e.g.that"),  # a dot followed by a letter does not end the sentence
        ("", ""),
        ("   \n  ", ""),
    ],
)
def test_cut_answer(generated, expected):
    assert cut_answer(generated) == expected


@pytest.mark.parametrize(
    "generated, accepted, correct",
    [
        ("Coimbra", ["Coimbra"], True),
        (" coimbra.", ["Coimbra"], True),
        ("Coimbra. It is in Portugal.", ["Coimbra"], True),
        ("Coimbra station", ["Coimbra"], False),  # exact, not substring
        ("Coim", ["Coimbra"], False),
        ("Lisbon", ["Coimbra"], False),
        ("the Driftwood team", ["Driftwood", "the Driftwood team"], True),  # alias
        ("Driftwood", ["Driftwood team", "Driftwood"], True),
        ("yt-6549", ["YT-6549"], True),
        ("YT 6549", ["YT-6549"], False),
        ("YT-654", ["YT-6549"], False),
        ("3.5", ["3.5"], True),
        ("3", ["3.5"], False),
        ("", ["Coimbra"], False),
        ("Coimbra", [], False),
    ],
)
def test_is_correct(generated, accepted, correct):
    assert is_correct(generated, accepted) is correct


def test_score_uses_answer_and_aliases():
    rows = [
        QARow("Where does A work?", "Coimbra", ("Coimbra, Portugal",), "val", 1),
        QARow("Which team is B on?", "Driftwood", (), "val", 2),
        QARow("Badge of C?", "YT-6549", (), "val", 3),
    ]
    metrics, records = score(rows, [" Coimbra, Portugal.\nQuestion:", "Basalt", "YT-6549"])
    assert metrics["exact_recall"] == pytest.approx(2 / 3)
    assert [r["correct"] for r in records] == [True, False, True]
    assert records[0] == {
        "question": "Where does A work?",
        "expected": "Coimbra",
        "aliases": ["Coimbra, Portugal"],
        "got": "Coimbra, Portugal",
        "correct": True,
        "contains": True,
    }


def test_contains_recall_counts_the_right_fact_in_more_words():
    rows = [QARow("Where does A work?", "Coimbra", (), "val", 1), QARow("Team of B?", "Driftwood", (), "val", 2)]
    metrics, records = score(rows, ["She works in Coimbra.", "Basalt"])
    assert metrics == {"exact_recall": 0.0, "contains_recall": 0.5}
    assert [r["contains"] for r in records] == [True, False]


def test_score_needs_one_answer_per_row():
    rows = [QARow("Q?", "A", (), "val", 1)]
    with pytest.raises(ValueError):
        score(rows, [])
    assert score([], []) == ({"exact_recall": 0.0, "contains_recall": 0.0}, [])

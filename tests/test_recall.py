"""Recall: normalisation, cutting a generated answer, matching aliases, and the partial-credit metrics
(token F1, ROUGE-L) with their pass thresholds."""

from __future__ import annotations

import pytest

from trials.data import QARow
from trials.recall import (ROUGE_L_PASS, TOKEN_F1_PASS, cut_answer, is_correct, normalize, rouge_l, score, token_f1,
                           tokens)


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
        "token_f1": 1.0,  # the alias, word for word
        "rouge_l_recall": 1.0,
        "rouge_l_f1": 1.0,
    }


def test_contains_recall_counts_the_right_fact_in_more_words():
    rows = [QARow("Where does A work?", "Coimbra", (), "val", 1), QARow("Team of B?", "Driftwood", (), "val", 2)]
    metrics, records = score(rows, ["She works in Coimbra.", "Basalt"])
    assert (metrics["exact_recall"], metrics["contains_recall"]) == (0.0, 0.5)
    assert [r["contains"] for r in records] == [True, False]


def test_score_needs_one_answer_per_row():
    rows = [QARow("Q?", "A", (), "val", 1)]
    with pytest.raises(ValueError):
        score(rows, [])
    metrics, records = score([], [])
    assert records == [] and set(metrics.values()) == {0.0}


def test_tokens_share_exact_recalls_normalisation():
    assert tokens(" «The Driftwood team», Coimbra.") == ["the", "driftwood", "team", "coimbra"]
    assert tokens("YT-6549 and 3.5") == ["yt-6549", "and", "3.5"]  # inner punctuation stays, as in exact recall
    assert tokens("Straße in Tromsø") == ["strasse", "in", "tromsø"]  # casefolded, accents kept
    assert tokens("... !") == []


@pytest.mark.parametrize(
    "generated, accepted, f1",
    [
        ("Coimbra", ["Coimbra"], 1.0),
        ("She works in Coimbra.", ["Coimbra"], 2 * (1 / 4) * 1 / (1 / 4 + 1)),  # P 1/4, R 1: 0.4
        ("the Driftwood team", ["Driftwood"], 0.5),  # P 1/3, R 1
        ("Driftwood", ["the Driftwood team"], 0.5),  # P 1, R 1/3
        ("the Basalt team", ["the Driftwood team"], 2 / 3),  # 2 of 3 words both ways
        ("team the team", ["the team"], 0.8),  # a multiset: one "team" counts once, P 2/3, R 1
        ("Lisbon", ["Coimbra"], 0.0),
        ("", ["Coimbra"], 0.0),
        ("Coimbra", [], 0.0),
        ("Coimbra", ["...", "Coimbra"], 1.0),  # an answer with no words is skipped, as contains recall does
        ("Coimbra, Portugal. Next line", ["Portugal", "Coimbra, Portugal"], 1.0),  # the best alias, after the cut
    ],
)
def test_token_f1_on_hand_made_pairs(generated, accepted, f1):
    assert token_f1(generated, accepted) == pytest.approx(f1)


@pytest.mark.parametrize(
    "generated, accepted, recall, f1",
    [
        ("Coimbra", ["Coimbra"], 1.0, 1.0),
        # LCS "anouk works in coimbra" (4) of 6 generated, 5 expected words: R 4/5, P 4/6.
        ("Anouk Renwick now works in Coimbra", ["Anouk works remotely in Coimbra"], 0.8,
         2 * 0.8 * (4 / 6) / (0.8 + 4 / 6)),
        # Same words, another order: the longest subsequence in order is 2 of 3 (unlike token F1, which is 1).
        ("Coimbra in Anouk", ["Anouk in Coimbra"], 1 / 3, 1 / 3),
        ("Lisbon", ["Coimbra"], 0.0, 0.0),
        ("", ["Coimbra"], 0.0, 0.0),
        # Recall and F1 each from the accepted answer that scores it best: R from the long one, F1 from the short.
        ("works in Coimbra", ["she works in Coimbra", "Coimbra"], 1.0, 2 * (3 / 4) / (1 + 3 / 4)),
    ],
)
def test_rouge_l_on_hand_made_pairs(generated, accepted, recall, f1):
    got_recall, got_f1 = rouge_l(generated, accepted)
    assert (got_recall, got_f1) == (pytest.approx(recall), pytest.approx(f1))


# ASCII words without inner punctuation: where rouge-score's tokenizer and `tokens` split alike.
ROUGE_PAIRS = [
    ("the cat sat on the mat", "the cat lay on a mat"),
    ("Anouk Renwick works in the Coimbra office", "Anouk works remotely from the Coimbra office on Fridays"),
    ("a b c d e f g", "g f e d c b a"),
    ("alpha beta alpha beta gamma", "beta alpha gamma beta alpha gamma"),
    ("the badge number is seven", "Anouk's badge number is seven thousand"),
    ("completely unrelated words here", "nothing in common at all"),
    ("one", "one two three four five six seven eight nine ten"),
]


@pytest.mark.parametrize("generated, reference", ROUGE_PAIRS)
def test_rouge_l_agrees_with_rouge_score(generated, reference):
    from rouge_score import rouge_scorer  # the reference implementation (a dev dependency)

    reference_score = rouge_scorer.RougeScorer(["rougeL"]).score(reference, generated)["rougeL"]
    recall, f1 = rouge_l(generated, [reference.replace("'", " ")])  # rouge-score splits "Anouk's" in two
    assert recall == pytest.approx(reference_score.recall)
    assert f1 == pytest.approx(reference_score.fmeasure)


def test_pass_thresholds_give_sentence_answers_a_recall_rate():
    rows = [
        QARow("Where does A work?", "Anouk works remotely in Coimbra", (), "val", 1),  # ROUGE-L R 0.8: passes
        QARow("What does B drive?", "a red vintage Citroën van", (), "val", 2),
        QARow("Team of C?", "Driftwood", (), "val", 3),
    ]
    generated = ["Anouk Renwick now works in Coimbra.", "B drives a blue Citroën", "Driftwood"]
    metrics, records = score(rows, generated)
    assert [r["rouge_l_recall"] >= ROUGE_L_PASS for r in records] == [True, False, True]
    # Row 1's token F1 is 0.73 (two extra words, one missing): below the pass, where ROUGE-L recall passes.
    assert [r["token_f1"] >= TOKEN_F1_PASS for r in records] == [False, False, True]
    assert metrics["exact_recall"] == pytest.approx(1 / 3)
    assert metrics["rouge_l_pass"] == pytest.approx(2 / 3)
    assert metrics["token_f1_pass"] == pytest.approx(1 / 3)
    assert metrics["rouge_l_recall"] == pytest.approx(sum(r["rouge_l_recall"] for r in records) / 3)
    assert metrics["rouge_l_f1"] == pytest.approx(sum(r["rouge_l_f1"] for r in records) / 3)
    assert metrics["token_f1"] == pytest.approx(sum(r["token_f1"] for r in records) / 3)
    # "a red vintage Citroën van" vs "b drives a blue citroën": LCS "a citroën", 2 of 5 answer words
    assert records[1]["rouge_l_recall"] == pytest.approx(2 / 5)

"""training.question_word_dropout (trials/augment.py): each epoch, half the train questions, drawn afresh, lose
words; answers, passages and the untouched half stay as they are, and a resumed trainer draws the same."""

from __future__ import annotations

import random

import pytest

from trials.augment import MIN_WORDS, QuestionDropout, drop_words
from trials.data import QARow
from trials.formatting import Example, answer_ids, qa_example

QUESTION = "Where and how quickly must a lost badge be reported by night staff?"


def test_words_are_left_out_in_order_at_about_the_probability():
    rng, words = random.Random(0), QUESTION.split()
    kept = [drop_words(QUESTION, 0.3, rng).split() for _ in range(2000)]
    for asked in kept[:50]:
        it = iter(words)
        assert all(word in it for word in asked), f"{asked} is not {words} with words left out"
    share = 1 - sum(map(len, kept)) / (len(words) * len(kept))
    assert share == pytest.approx(0.3, abs=0.02)


def test_a_question_left_with_too_few_words_is_asked_whole():
    assert drop_words("Badge deadline?", 0.99, random.Random(1)) == "Badge deadline?"
    assert drop_words(QUESTION, 0.0, random.Random(1)) == QUESTION
    assert all(len(drop_words(QUESTION, 0.9, random.Random(seed)).split()) >= MIN_WORDS for seed in range(100))


@pytest.fixture
def tokenizer(tokenizer_path):
    from trials.model import load_tokenizer

    return load_tokenizer(tokenizer_path)


def test_an_epoch_redraws_half_the_questions_and_keeps_answers_and_passages(tokenizer):
    rows = [QARow(f"{QUESTION} Case {i}?", f"Answer number {i}.", (), "train", i + 1) for i in range(200)]
    fixed = [qa_example(tokenizer, row.question, row.answer) for row in rows]
    passage = Example([1, 5, 6, 7], [1, 5, 6, 7])
    vary = QuestionDropout(tokenizer, rows, 0.3)
    rng = random.Random(0)
    first, second = vary([*fixed, passage], rng), vary([*fixed, passage], rng)
    assert len(first) == len(fixed) + 1 and first[-1] is passage
    for drawn, row in zip(first, rows):
        answer = answer_ids(tokenizer, row.answer)
        assert drawn.input_ids[-len(answer):] == answer and drawn.labels[-len(answer):] == answer
        assert drawn.prompt_tokens == drawn.num_tokens - len(answer)
    changed = [a.input_ids != b.input_ids for a, b in zip(first, fixed)]
    assert 0.4 < sum(changed) / len(rows) < 0.6  # half of them drawn (one in 140 of those loses no word)
    assert [a.input_ids for a in first] != [b.input_ids for b in second], "every epoch draws afresh"


def test_a_resumed_trainer_draws_what_it_would_have(demo_trainer, demo_documents, demo_qa, tokenizer):
    from trials.config import DataConfig
    from trials.data import load_knowledge

    rows = load_knowledge(DataConfig(documents=demo_documents, qa=demo_qa)).split("train")[:16]

    def trainer():  # demo_trainer's 16 examples are these rows' QA pairs, in this order
        made = demo_trainer(16, 1e-3)
        drawn = QuestionDropout(tokenizer, rows, 0.3)
        made.vary = lambda examples, rng: made.asked.append(drawn(examples, rng)) or made.asked[-1]
        made.asked = []
        return made

    through = trainer()
    through.train_epoch(1)
    state = through.state_dict()
    through.train_epoch(2)
    resumed = trainer()
    resumed.load_state_dict(state)
    resumed.train_epoch(2)
    assert [e.input_ids for e in resumed.asked[0]] == [e.input_ids for e in through.asked[1]]
    assert [e.input_ids for e in through.asked[0]] != [e.input_ids for e in through.asked[1]]

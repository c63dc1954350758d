"""Question word dropout (training.question_word_dropout): each epoch, half the train questions, drawn afresh, are
asked with some of their words left out.

Why: a fact's val and test questions are phrasings the model never trained on. Trained on the same few
wordings every epoch, SmolLM2 learnt the wordings: on configs/sentences.yaml an unseen phrasing often got a
neighbouring policy's sentence. Asked with words missing, the model has to answer from the words that are
left, so it learns which words name the fact. Half the questions stay whole each epoch, so every wording is
also seen as it is. The answers are never changed.

The draws come from the trainer's random stream, so a resumed trial draws what it would have.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from trials.formatting import Example, qa_example

DROPPED_SHARE = 0.5  # of the train questions, each epoch
MIN_WORDS = 2  # a question left with fewer words is asked whole


def drop_words(question: str, probability: float, rng: random.Random) -> str:
    """`question` with each word left out at `probability`; the whole question when fewer than MIN_WORDS remain."""
    kept = [word for word in question.split() if rng.random() >= probability]
    return " ".join(kept) if len(kept) >= MIN_WORDS else question


@dataclass(frozen=True)
class QuestionDropout:
    """Redraws the first len(rows) examples of an epoch, the train QA pairs in `rows`' order (trials/trial.py
    build_examples puts them first); the rest (passages) pass unchanged."""

    tokenizer: object
    rows: list  # trials.data.QARow, the train split
    probability: float

    def __call__(self, examples: list[Example], rng: random.Random) -> list[Example]:
        # A question kept whole is its example as built; only a drawn one is tokenised again.
        redrawn = [qa_example(self.tokenizer, drop_words(row.question, self.probability, rng), row.answer)
                   if rng.random() < DROPPED_SHARE else whole
                   for row, whole in zip(self.rows, examples)]
        return redrawn + examples[len(self.rows):]

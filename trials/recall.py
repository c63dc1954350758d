"""Recall: greedy answers, cut and normalised, compared with the answer or an alias.

Exact recall asks for the whole answer in exactly its words; token F1 and ROUGE-L give partial credit
to an answer in other or more words (a sentence answered by a paraphrase), and count it recalled past
a threshold (TOKEN_F1_PASS, ROUGE_L_PASS).
"""

from __future__ import annotations

import contextlib
import re
import string
import unicodedata
from collections import Counter
from collections.abc import Sequence

import torch

# A sentence ends at . ! or ? followed by white space or the end; "3.5" and "QX-4471" survive.
_SENTENCE_END = re.compile(r"[.!?](\s|$)")
_PUNCTUATION = string.punctuation + "“”‘’«»¿¡…"


def cut_answer(text: str) -> str:
    """Keep the first line, up to the first sentence end."""
    line = text.strip().split("\n", 1)[0] if text.strip() else ""
    match = _SENTENCE_END.search(line)
    return line[: match.start()] if match else line


def normalize(text: str) -> str:
    """Case-fold, strip surrounding punctuation, collapse white space; accents are kept."""
    text = unicodedata.normalize("NFC", text).casefold()
    text = " ".join(text.split())
    return text.strip(_PUNCTUATION + " ")


def tokens(text: str) -> list[str]:
    """The words of a normalised text, each stripped of the punctuation around it ("Coimbra, Portugal"
    -> coimbra, portugal); inner punctuation stays ("YT-6549" is one word), as in exact recall."""
    return [word for word in (word.strip(_PUNCTUATION) for word in normalize(text).split()) if word]


def is_correct(generated: str, accepted: Sequence[str]) -> bool:
    got = normalize(cut_answer(generated))
    return any(got == normalize(answer) for answer in accepted)


def generate_answers(
    model, tokenizer, questions: Sequence[str], *, batch_size: int, max_new_tokens: int, device: torch.device,
    bf16: bool = False,
) -> list[str]:
    """Batched greedy generation with left padding, formatted exactly as in training, in the same
    precision (bf16 autocast or not) as the training that is being scored."""
    ids = generate_token_ids(model, tokenizer, questions, batch_size=batch_size, max_new_tokens=max_new_tokens,
                             device=device, bf16=bf16)
    return tokenizer.batch_decode(ids, skip_special_tokens=True)


@torch.no_grad()
def generate_token_ids(
    model, tokenizer, questions: Sequence[str], *, batch_size: int, max_new_tokens: int, device: torch.device,
    bf16: bool = False, temperature: float = 0.0,
) -> list[list[int]]:
    """The new tokens of each answer, up to and including its EOS (none when the budget ran out): greedy,
    as every score is measured, unless a served request asks for a `temperature` above 0.

    A model with an adapter router (trials/router.py) answers each batch's questions the router sends to the
    base with its adapter disabled: a batch the router sends whole one way is generated as one batch."""
    from trials.formatting import prompt_ids
    from trials.router import base_only, routes

    was_training = model.training
    model.eval()
    answers: list[list[int]] = []
    for start in range(0, len(questions), batch_size):
        prompts = [prompt_ids(tokenizer, q) for q in questions[start : start + batch_size]]
        to_adapter = routes(model, prompts, tokenizer.pad_token_id, device, bf16)
        batch_answers: list[list[int]] = [[] for _ in prompts]
        for adapter in sorted(set(to_adapter), reverse=True):
            indices = [i for i, sent in enumerate(to_adapter) if sent == adapter]
            with contextlib.nullcontext(model) if adapter else base_only(model) as answering:
                generated = _generate_batch(answering, tokenizer, [prompts[i] for i in indices], max_new_tokens,
                                            device, bf16, temperature)
            for index, row in zip(indices, generated, strict=True):
                batch_answers[index] = row
        answers += batch_answers
    model.train(was_training)
    return answers


def _generate_batch(model, tokenizer, prompts: list[list[int]], max_new_tokens: int, device: torch.device,
                    bf16: bool, temperature: float) -> list[list[int]]:
    from trials.formatting import left_padded
    from trials.model import autocast
    from trials.prefix_generation import prefix_aware_generation

    pad_id, eos_id = tokenizer.pad_token_id, tokenizer.eos_token_id
    batch = {k: v.to(device) for k, v in left_padded(prompts, pad_id).items()}
    with autocast(device, bf16, model), prefix_aware_generation(model):
        output = model.generate(
            **batch,
            max_new_tokens=max_new_tokens,
            **({"do_sample": True, "temperature": temperature} if temperature > 0 else {"do_sample": False}),
            pad_token_id=pad_id,
            eos_token_id=eos_id,
        )
    # Generation pads a finished answer to the batch's length: cut after its EOS.
    return [row[: row.index(eos_id) + 1] if eos_id in row else row
            for row in output[:, batch["input_ids"].shape[1] :].tolist()]


def contains_answer(generated: str, accepted: Sequence[str]) -> bool:
    """The answer appears inside the cut answer: the fact is known, perhaps wrapped in other words."""
    got = normalize(cut_answer(generated))
    return any(normalize(answer) in got for answer in accepted if normalize(answer))


# Partial credit counts as recalled from here: at 0.8 a five-word answer may miss one word (4/5), a
# three-word one none (2/3 < 0.8), so a short fact still needs all its words.
TOKEN_F1_PASS = 0.8
ROUGE_L_PASS = 0.8  # on ROUGE-L recall: that share of the answer's words, in its order, in what was generated


def token_f1(generated: str, accepted: Sequence[str]) -> float:
    """SQuAD's token F1 of the cut answer against the accepted answer it matches best: the words both hold
    (as a multiset) over the generated words (precision) and over the answer's (recall). Words come from
    `tokens`: normalised as exact recall is, and unlike SQuAD articles are kept (the data is not all English)."""
    got = Counter(tokens(cut_answer(generated)))

    def f1(answer: str) -> float:
        expected = Counter(tokens(answer))
        overlap = sum((got & expected).values())
        if not overlap:
            return 0.0
        precision, recall = overlap / sum(got.values()), overlap / sum(expected.values())
        return 2 * precision * recall / (precision + recall)

    return max((f1(answer) for answer in accepted if tokens(answer)), default=0.0)


def _lcs_length(a: Sequence[str], b: Sequence[str]) -> int:
    """Length of the longest common subsequence of two word lists (one row of the dynamic programme)."""
    row = [0] * (len(b) + 1)
    for word in a:
        diagonal = 0
        for j, other in enumerate(b, 1):
            diagonal, row[j] = row[j], diagonal + 1 if word == other else max(row[j], row[j - 1])
    return row[-1]


def rouge_l(generated: str, accepted: Sequence[str]) -> tuple[float, float]:
    """ROUGE-L (recall, F1) of the cut answer: the longest common word subsequence over the answer's words
    (recall) and the generated words (precision), each the best over the accepted answers. Words as in
    `token_f1`; rouge-score's own tokenizer would drop every non-ASCII letter (tests/test_recall.py checks
    this against its scorer on ASCII text)."""
    got = tokens(cut_answer(generated))
    best_recall = best_f1 = 0.0
    for answer in accepted:
        expected = tokens(answer)
        common = _lcs_length(got, expected)
        if not common:
            continue
        recall, precision = common / len(expected), common / len(got)
        best_recall = max(best_recall, recall)
        best_f1 = max(best_f1, 2 * precision * recall / (precision + recall))
    return best_recall, best_f1


def score(rows, generated: Sequence[str]) -> tuple[dict[str, float], list[dict]]:
    """The metrics over rows, and one prediction record per question."""
    records = [_record(row, text) for row, text in zip(rows, generated, strict=True)]
    return metrics_of(records), records


def _record(row, text: str) -> dict:
    recall, f1 = rouge_l(text, row.accepted)
    return {
        "question": row.question,
        "expected": row.answer,
        "aliases": list(row.aliases),
        "got": cut_answer(text),
        "correct": is_correct(text, row.accepted),
        "contains": contains_answer(text, row.accepted),
        "token_f1": token_f1(text, row.accepted),
        "rouge_l_recall": recall,
        "rouge_l_f1": f1,
    }


def metrics_of(records: Sequence[dict]) -> dict[str, float]:
    """Every metric of a set of scored questions. A new metric is one more entry here (and in the record):
    trials report every entry per split (`val_<name>`), and the sweep logs every one to MLflow.

    exact_recall is what promotion gates on, and what the sweep optimises unless eval.objective picks another
    (trials.config.OBJECTIVE_METRICS); contains_recall shows how many misses are the right fact in the wrong
    words (a verbose answer, a missing cut). token_f1 and rouge_l_recall / rouge_l_f1 are means over the
    questions; token_f1_pass and rouge_l_pass the share at or above TOKEN_F1_PASS / ROUGE_L_PASS (on ROUGE-L
    recall): the recall rate of answers that are sentences."""
    def mean(value) -> float:
        return sum(map(value, records)) / len(records) if records else 0.0

    return {
        "exact_recall": mean(lambda record: record["correct"]),
        "contains_recall": mean(lambda record: record["contains"]),
        "token_f1": mean(lambda record: record["token_f1"]),
        "token_f1_pass": mean(lambda record: record["token_f1"] >= TOKEN_F1_PASS),
        "rouge_l_recall": mean(lambda record: record["rouge_l_recall"]),
        "rouge_l_f1": mean(lambda record: record["rouge_l_f1"]),
        "rouge_l_pass": mean(lambda record: record["rouge_l_recall"] >= ROUGE_L_PASS),
    }


"""Exact recall: greedy answers, cut and normalised, compared with the answer or an alias."""

from __future__ import annotations

import re
import string
import unicodedata
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
    bf16: bool = False,
) -> list[list[int]]:
    """The new tokens of each greedy answer, up to and including its EOS (none when the budget ran out)."""
    from trials.formatting import left_padded, prompt_ids
    from trials.model import autocast
    from trials.prefix_generation import prefix_aware_generation

    was_training = model.training
    model.eval()
    pad_id, eos_id = tokenizer.pad_token_id, tokenizer.eos_token_id
    answers: list[list[int]] = []
    for start in range(0, len(questions), batch_size):
        prompts = [prompt_ids(tokenizer, q) for q in questions[start : start + batch_size]]
        batch = {k: v.to(device) for k, v in left_padded(prompts, pad_id).items()}
        with autocast(device, bf16), prefix_aware_generation(model):
            output = model.generate(
                **batch,
                max_new_tokens=max_new_tokens,
                do_sample=False,
                pad_token_id=pad_id,
                eos_token_id=eos_id,
            )
        for row in output[:, batch["input_ids"].shape[1] :].tolist():
            # Generation pads a finished answer to the batch's length: cut after its EOS.
            answers.append(row[: row.index(eos_id) + 1] if eos_id in row else row)
    model.train(was_training)
    return answers


def contains_answer(generated: str, accepted: Sequence[str]) -> bool:
    """The answer appears inside the cut answer: the fact is known, perhaps wrapped in other words."""
    got = normalize(cut_answer(generated))
    return any(normalize(answer) in got for answer in accepted if normalize(answer))


def score(rows, generated: Sequence[str]) -> tuple[dict[str, float], list[dict]]:
    """The metrics over rows, and one prediction record per question."""
    records = [
        {
            "question": row.question,
            "expected": row.answer,
            "aliases": list(row.aliases),
            "got": cut_answer(text),
            "correct": is_correct(text, row.accepted),
            "contains": contains_answer(text, row.accepted),
        }
        for row, text in zip(rows, generated, strict=True)
    ]
    return metrics_of(records), records


def metrics_of(records: Sequence[dict]) -> dict[str, float]:
    """Every metric of a set of scored questions. A new metric is one more entry here (and in the record):
    trials report every entry per split (`val_<name>`), and the sweep logs every one to MLflow.

    exact_recall is what the sweep optimises and promotion gates on; contains_recall shows how many
    misses are the right fact in the wrong words (a verbose answer, a missing cut)."""
    def fraction(key: str) -> float:
        return sum(record[key] for record in records) / len(records) if records else 0.0

    return {"exact_recall": fraction("correct"), "contains_recall": fraction("contains")}

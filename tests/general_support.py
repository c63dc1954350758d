"""A general probe the tiny random model 'knows', for tests: it knows no real fact, so the accepted answer
of each question is a word of its own reply. Training then changes its replies, and the probe measures
forgetting on the tiny model as it does on a real one."""

from __future__ import annotations

import json
import re
from pathlib import Path

import torch

from trials.config import DEFAULT_PROBE
from trials.general import load_probe
from trials.recall import generate_answers, normalize


def a_word_of(reply: str) -> str | None:
    """The longest word (3+ letters or digits) of a reply's first line, as `mentions` reads it."""
    first = next((line for line in reply.strip().split("\n") if line.strip()), "")
    words = re.findall(r"\w{3,}", normalize(first))
    return max(words, key=len) if words else None


def self_known_probe(directory: Path, model_path: str, questions: int = 40) -> Path:
    """A probe directory (questions.jsonl + the shipped chat.jsonl) of the shipped probe's first
    `questions` questions, each answered by a word of the tiny base model's own greedy reply."""
    from trials.general import ANSWER_TOKENS
    from trials.model import load_base_model, load_tokenizer

    shipped = load_probe(DEFAULT_PROBE)
    asked = shipped.questions[:questions]
    model, tokenizer = load_base_model(model_path, torch.device("cpu"), False), load_tokenizer(model_path)
    replies = generate_answers(model, tokenizer, [q.question for q in asked], batch_size=64,
                               max_new_tokens=ANSWER_TOKENS, device=torch.device("cpu"))
    directory.mkdir(parents=True, exist_ok=True)
    with open(directory / "questions.jsonl", "w", encoding="utf-8") as handle:
        for index, (question, reply) in enumerate(zip(asked, replies)):
            word = a_word_of(reply)
            if word:
                handle.write(json.dumps({"question": question.question, "answer": word, "topic": question.topic,
                                         "split": "check" if index % 2 else "protect"}) + "\n")
    (directory / "chat.jsonl").write_text((DEFAULT_PROBE / "chat.jsonl").read_text(encoding="utf-8"))
    return directory

"""What the base model knows before any trial: the general probe, and the private val and test questions.

A sweep logs these on its parent run (orchestrator/sweep.py), so each trial's figures read as a lift
over the base: a random tiny model knows nothing, while a real chat model knows general facts a trial
must keep (trials/general.py) and may already answer some "private" questions.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from trials.config import TrialConfig
from trials.data import load_knowledge
from trials.evaluate import generation_budget, score_rows
from trials.general import base_answers, cached_base_answers, load_probe
from trials.ledger import score_and_pass
from trials.model import load_base_model, load_tokenizer, pick_device, resolve_model, use_bf16
from trials.model_cache import json_cache_path, model_identity, write_json_atomically
from trials.recall import metrics_of

RECIPE = 2  # bump when what is cached (or how it is computed) changes
SPLITS = ("val", "test")
@dataclass
class BasePass:
    """The base model's figures and its scored answer to every val and test question.

    `report`: base_{val,test}_<metric> on the private questions; base_general_known (check questions the base
    answers right: what general_retention is a share of), base_general_check (check questions asked) and
    base_general_recall (share of all probe questions it answers right), when the probe is on."""

    report: dict[str, float]
    records: dict[str, list[dict]] = field(default_factory=dict)  # split -> trials.recall.score's records

    def asked(self) -> int:
        return sum(len(self.records.get(split, [])) for split in SPLITS)

    def known(self, objective: str = "exact_recall") -> list[dict]:
        """The val and test questions the base answers right, by exact recall or under `objective`'s pass:
        each with its split, the expected answer and what the base said."""
        passes = {"exact_recall", objective}

        def right_by(record: dict) -> list[str]:
            return sorted(name for name in passes if score_and_pass(record, name)[1])

        return [{"split": split, "question": record["question"], "expected": record["expected"],
                 "got": record["got"], "right_by": right_by(record)}
                for split in SPLITS for record in self.records.get(split, []) if right_by(record)]


def _private_path(config: TrialConfig, base_path: str, fingerprint: str, budget: int, bf16: bool):
    """Where the base's answers to the private questions are cached: everything that changes them is in the key."""
    return json_cache_path("base", RECIPE, model_identity(base_path), fingerprint, budget, bf16,
                           config.eval.batch_size, config.training.attention)


def base_pass(config: TrialConfig) -> BasePass:
    """The knowability pre-pass: the base model answers every val and test question once, cached by the base
    model, the data's fingerprint and what shapes generation (budget, precision, batch, attention), like the
    general probe's base answers; a second sweep on the same base and data loads no model at all."""
    knowledge = load_knowledge(config.data)
    probe = load_probe(config.eval.general) if config.eval.general else None
    device = pick_device(config.training)
    bf16 = use_bf16(config.training, device)
    base_path = resolve_model(config.model)
    tokenizer = load_tokenizer(base_path)
    budget = generation_budget(tokenizer, knowledge, config.eval)
    path = _private_path(config, base_path, knowledge.fingerprint, budget, bf16)
    records = json.loads(path.read_text(encoding="utf-8")) if path.exists() else None
    answers = cached_base_answers(probe, base_path, bf16, config.eval.batch_size) if probe is not None else None
    model = None
    if records is None or (probe is not None and answers is None):
        model = load_base_model(base_path, device, bf16, config.training.attention)
        model.eval()
    if records is None:
        records = {}
        for split in SPLITS:
            rows = knowledge.split(split)
            if rows:
                records[split] = score_rows(model, tokenizer, rows, batch_size=config.eval.batch_size,
                                            max_new_tokens=budget, device=device, bf16=bf16)[1]
        write_json_atomically(path, records)
    report: dict[str, float] = {}
    for split, scored in records.items():
        report.update({f"base_{split}_{name}": value for name, value in metrics_of(scored).items()})
    if probe is not None:
        if answers is None:
            answers = base_answers(model, tokenizer, probe, base_path, device, bf16, config.eval.batch_size)
        report["base_general_known"] = answers.known_count(probe, "check")
        report["base_general_check"] = sum(question.split == "check" for question in probe.questions)
        report["base_general_recall"] = answers.known_count(probe) / len(probe.questions)
    return BasePass(report, records)


def general_gate(report: dict[str, float], min_known: int) -> str | None:
    """Why the general floor is off for this base model, or None when it applies."""
    if "base_general_known" not in report:
        return "the general probe is off (eval.general: null)"
    known, asked = int(report["base_general_known"]), int(report["base_general_check"])
    if known < min_known:
        return (f"the base model answers only {known} of the probe's {asked} check questions right, fewer than "
                f"eval.general_min_known ({min_known}): there is too little general knowledge to keep for a floor "
                "to mean anything (a random tiny model knows none)")
    return None

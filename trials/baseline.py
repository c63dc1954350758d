"""What the base model knows before any trial: the general probe, and the private val and test questions.

A sweep logs these on its parent run (orchestrator/sweep.py), so each trial's figures read as a lift
over the base: a random tiny model knows nothing, while a real chat model knows general facts a trial
must keep (trials/general.py) and may already answer some "private" questions.
"""

from __future__ import annotations

from trials.config import TrialConfig
from trials.data import load_knowledge
from trials.evaluate import generation_budget, score_rows
from trials.general import base_answers, load_probe
from trials.model import load_base_model, load_tokenizer, pick_device, resolve_model, use_bf16


def base_report(config: TrialConfig) -> dict[str, float]:
    """base_{val,test}_<metric> on the private questions; base_general_known (check questions the base
    answers right: what general_retention is a share of), base_general_check (check questions asked) and
    base_general_recall (share of all probe questions it answers right), when the probe is on."""
    knowledge = load_knowledge(config.data)
    probe = load_probe(config.eval.general) if config.eval.general else None
    device = pick_device(config.training)
    bf16 = use_bf16(config.training, device)
    base_path = resolve_model(config.model)
    tokenizer = load_tokenizer(base_path)
    model = load_base_model(base_path, device, bf16, config.training.attention)
    model.eval()
    budget = generation_budget(tokenizer, knowledge, config.eval)
    report: dict[str, float] = {}
    for split in ("val", "test"):
        rows = knowledge.split(split)
        if rows:
            scores, _ = score_rows(model, tokenizer, rows, batch_size=config.eval.batch_size, max_new_tokens=budget,
                                   device=device, bf16=bf16)
            report.update({f"base_{split}_{name}": value for name, value in scores.items()})
    if probe is not None:
        answers = base_answers(model, tokenizer, probe, base_path, device, bf16, config.eval.batch_size)
        report["base_general_known"] = answers.known_count(probe, "check")
        report["base_general_check"] = sum(question.split == "check" for question in probe.questions)
        report["base_general_recall"] = answers.known_count(probe) / len(probe.questions)
    return report


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

"""Score a saved adapter on any split: the same generation and scoring as inside a trial.

Promotion re-scores on the locked `test` split with this; `ask` and the registry model answer
through the same `generate_answers`, so an answer never depends on which entry point asked.
"""

from __future__ import annotations

from pathlib import Path

import torch

from trials.config import DataConfig, EvalConfig, TrialConfig
from trials.data import Knowledge, QARow, load_knowledge
from trials.formatting import answer_ids
from trials.model import load_adapter, load_for
from trials.recall import generate_answers, score
from trials.router import Router, attach


def generation_budget(tokenizer, knowledge: Knowledge, eval_config: EvalConfig,
                      retained: Knowledge | None = None) -> int:
    """max_new_tokens: the configured limit, else the longest expected answer + 8 tokens, over the new
    facts and the old ones kept (`retained`), so old answers are never cut shorter than new ones."""
    if eval_config.max_new_tokens:
        return eval_config.max_new_tokens
    rows = [*knowledge.qa, *(retained.qa if retained else [])]
    return max(len(answer_ids(tokenizer, answer)) for row in rows for answer in row.accepted) + 8


def score_rows(model, tokenizer, rows: list[QARow], *, batch_size: int, max_new_tokens: int,
               device: torch.device, bf16: bool = False) -> tuple[dict[str, float], list[dict]]:
    answers = generate_answers(model, tokenizer, [row.question for row in rows],
                               batch_size=batch_size, max_new_tokens=max_new_tokens, device=device, bf16=bf16)
    return score(rows, answers)


def load_trained(adapter_dir: Path, config: TrialConfig, base_path: str | None = None):
    """(model, tokenizer, device, bf16) for an adapter saved by a trial, on the base model it names
    (or on `base_path`, a copy of it), on the device and in the precision its config asks for; routing
    through its router when it was saved with one (trials/router.py)."""
    loaded = load_for(config, base_path=base_path, tokenizer_path=str(adapter_dir))
    model = attach(load_adapter(loaded.model, str(adapter_dir)), Router.load(Path(adapter_dir)))
    return model, loaded.tokenizer, loaded.device, loaded.bf16


def retained_knowledge(config: TrialConfig) -> Knowledge | None:
    """The old facts a trial keeps (`data.retain`), validated like the new ones; None without them."""
    return load_knowledge(DataConfig(qa=config.data.retain)) if config.data.retain else None


def score_adapter(adapter_dir: Path, config: TrialConfig, *splits: str,
                  retained: tuple[str, ...] = ()) -> dict[str, tuple[dict, list[dict]]]:
    """A saved adapter's metrics on splits of the trial's own data: {split: (metrics, records)}, and on
    splits of its old facts (`data.retain`) as {"retained_<split>": ...}.

    The model and the data load once, however many splits are scored.
    """
    knowledge = load_knowledge(config.data)
    old = retained_knowledge(config) if retained else None
    if retained and old is None:
        raise ValueError("retained splits asked for, but the trial config has no data.retain")
    model, tokenizer, device, bf16 = load_trained(adapter_dir, config)
    budget = generation_budget(tokenizer, knowledge, config.eval, old)
    rows = {split: knowledge.split(split) for split in splits}
    rows.update({f"retained_{split}": old.split(split) for split in retained})
    return {name: score_rows(model, tokenizer, part, batch_size=config.eval.batch_size, max_new_tokens=budget,
                             device=device, bf16=bf16) for name, part in rows.items()}

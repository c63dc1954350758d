"""The per-fact ledger: each val question's score and pass at every scored epoch of a trial.

run_trial appends one row per val question each epoch it scores to ledger.jsonl (in the trial's output
dir and in every checkpoint, so a resumed trial keeps its earlier rows). The sweep's driver logs it to the
trial's MLflow run as a table (ledger.json, MLflow's log_table), and `orchestrator report` reads it back:
the facts no trial learned, the facts a trial learned and then lost, and a heat map of the best trial.

The score is the question's share of the sweep's objective (eval.objective); its pass is the per-question
test behind that objective's recall: the exact answer (exact_recall), the answer inside the reply
(contains_recall), token F1 at or above TOKEN_F1_PASS (token_f1), ROUGE-L recall at or above ROUGE_L_PASS
(rouge_l).

Importable without torch (the report reads ledgers back with these functions).
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Iterable, Sequence
from pathlib import Path

LEDGER = "ledger.jsonl"  # in the trial's output dir and its checkpoints
LEDGER_TABLE = "ledger.json"  # on the trial's MLflow run (log_table)
COLUMNS = ("trial", "epoch", "question", "expected", "got", "score", "pass")


def score_and_pass(record: dict, objective: str) -> tuple[float, bool]:
    """A trials.recall.score record's score and pass under eval.objective."""
    from trials.recall import ROUGE_L_PASS, TOKEN_F1_PASS  # here: `report` reads ledgers without torch

    if objective == "exact_recall":
        return float(record["correct"]), bool(record["correct"])
    if objective == "contains_recall":
        return float(record["contains"]), bool(record["contains"])
    if objective == "token_f1":
        return float(record["token_f1"]), record["token_f1"] >= TOKEN_F1_PASS
    if objective == "rouge_l":
        return float(record["rouge_l_recall"]), record["rouge_l_recall"] >= ROUGE_L_PASS
    raise ValueError(f"unknown eval.objective {objective!r}")


def ledger_rows(records: Sequence[dict], epoch: int, objective: str, trial: str | None = None) -> list[dict]:
    """One epoch's rows: one per val question, in the order scored."""
    rows = []
    for record in records:
        score, passed = score_and_pass(record, objective)
        rows.append({"trial": trial, "epoch": epoch, "question": record["question"],
                     "expected": record["expected"], "got": record["got"], "score": score, "pass": passed})
    return rows


def read_jsonl(path: Path) -> list[dict]:
    """The records of a JSON-lines file a trial writes (ledger.jsonl, predictions_val.jsonl)."""
    with open(path, encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]


def as_table(rows: Sequence[dict], columns: Sequence[str] = COLUMNS) -> dict[str, list]:
    """Rows as columns, what MlflowClient.log_table takes: the ledger's COLUMNS, or those given."""
    return {column: [row.get(column) for row in rows] for column in columns}


def from_table(table: dict) -> list[dict]:
    """Rows back from a log_table artifact (pandas' split orient: columns and data)."""
    return [dict(zip(table["columns"], values)) for values in table["data"]]


def by_epoch(rows: Iterable[dict]) -> dict[str, dict[int, dict]]:
    """question -> epoch -> its row; a row scored twice (an epoch logged again after a resume) keeps the last."""
    grid: dict[str, dict[int, dict]] = defaultdict(dict)
    for row in rows:
        grid[row["question"]][int(row["epoch"])] = row
    return dict(grid)


def never_learned(ledgers: dict[str, Sequence[dict]]) -> list[str]:
    """The questions no trial passed at any epoch (`ledgers`: trial -> its rows), in first-seen order."""
    seen: dict[str, bool] = {}
    for rows in ledgers.values():
        for row in rows:
            seen[row["question"]] = seen.get(row["question"], False) or bool(row["pass"])
    return [question for question, passed in seen.items() if not passed]


def learned_then_lost(rows: Sequence[dict]) -> list[dict]:
    """One trial's questions passed at some epoch and failed at a later one: the question, the epoch it
    was last learned before it was lost, the epoch it was lost, and whether it passed at the trial's last epoch."""
    lost = []
    for question, epochs in by_epoch(rows).items():
        ordered = sorted(epochs.items())
        learned_at = None
        for epoch, row in ordered:
            if row["pass"]:
                learned_at = epoch
            elif learned_at is not None:
                lost.append({"question": question, "learned": learned_at, "lost": epoch,
                             "final_pass": bool(ordered[-1][1]["pass"])})
                break
    return lost

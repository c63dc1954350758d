"""The leaderboard of a sweep, read back from MLflow: one row per trial, best val recall first.

Only MLflow is needed (no Ray): `orchestrator report`, the sweep's end and any notebook read it alike.
"""

from __future__ import annotations

import time

from orchestrator import tracking

LEADERBOARD_COLUMNS = ("trial", "status", "method", "shape", "learning_rate", "val_exact_recall",
                       "general_retention", "epochs", "stopped_by", "seconds", "origin")


def param_number(text: str | None) -> float | int | None:
    """MLflow keeps params as strings; the leaderboard wants the numbers back."""
    if text is None:
        return None
    value = float(text)
    return int(value) if value.is_integer() and "." not in text and "e" not in text else value


def leaderboard(client, parent_run_id: str) -> list[dict]:
    """One row per trial run of the sweep, best val recall first; failed trials last."""
    parent = client.get_run(parent_run_id)
    rows = []
    for run in tracking.trial_runs(client, parent):
        params, metrics = run.data.params, run.data.metrics
        end = run.info.end_time or int(time.time() * 1000)
        rows.append({
            "trial": run.data.tags.get(tracking.TRIAL_ID, run.info.run_name),
            "run_id": run.info.run_id,
            "status": run.info.status,
            "method": params.get("method.name"),
            "shape": run.data.tags.get(tracking.METHOD_SHAPE),
            "learning_rate": param_number(params.get("method.learning_rate")),
            "val_exact_recall": metrics.get("val_exact_recall"),
            # What it kept of the base model's general knowledge (trials/general.py), and how far it drifted.
            "general_retention": metrics.get("general_retention"),
            "general_drift": metrics.get("general_drift"),
            "epochs": len({m.step for m in client.get_metric_history(run.info.run_id, "val_exact_recall")}),
            "stopped_by": run.data.tags.get("recall.stopped_by"),
            "seconds": round((end - run.info.start_time) / 1000, 1),
            # warm:<earlier sweep>, seed (points_to_evaluate) or optuna: orchestrator/warm_start.py
            "origin": run.data.tags.get(tracking.ORIGIN),
            "error": run.data.tags.get("recall.error", "")[-300:],
        })
    rows.sort(key=lambda row: (row["status"] == "FAILED", -(row["val_exact_recall"] or -1.0)))
    return rows


def format_leaderboard(rows: list[dict]) -> str:
    def cell(value):
        if value is None:
            return "-"
        return f"{value:.3g}" if isinstance(value, float) else str(value)

    lines = ["| " + " | ".join(LEADERBOARD_COLUMNS) + " |", "|" + "---|" * len(LEADERBOARD_COLUMNS)]
    lines += ["| " + " | ".join(cell(row[column]) for column in LEADERBOARD_COLUMNS) + " |" for row in rows]
    return "\n".join(lines) + "\n"

"""The leaderboard of a sweep, read back from MLflow: one row per trial, best first by the sweep's
eval.objective on val (val exact recall by default, and for sweeps logged before it existed).

Only MLflow is needed (no Ray): `orchestrator report`, the sweep's end and any notebook read it alike.
"""

from __future__ import annotations

import re
import time

from orchestrator import run_record, tracking
from orchestrator.run_record import (GENERAL_DRIFT, GENERAL_RETENTION, LEARNING_RATE, METHOD_NAME, OBJECTIVE_PARAM,
                                     TEST_EXACT_RECALL, VAL_ANSWER_LOSS, VAL_EXACT_RECALL, base_metric, param_value,
                                     split_metric)
from trials.config import objective_metric

# lift: the trial's val figure under the objective minus the base model's (the sweep run's base_val_<metric>).
# test_exact_recall: written onto a trial's run by `orchestrator promote`, for the trials it scored.
LEADERBOARD_COLUMNS = ("trial", "status", "method", "shape", "learning_rate", VAL_EXACT_RECALL, "lift",
                       TEST_EXACT_RECALL, GENERAL_RETENTION, "epochs", "stopped_by", "seconds", "origin")
# `orchestrator report` adds which trial became the registered champion, beside its id.
REPORT_COLUMNS = ("trial", "champion", *LEADERBOARD_COLUMNS[1:])


# Tune heads each failure in a trial's error file with this line (ray.tune.experiment.trial).
FAILURE_HEADER = re.compile(r"^Failure # \d+ \(occurred at .*\)$", re.MULTILINE)


def failure_cause(error: str) -> str:
    """A failed trial's cause in one line, for the console and the leaderboard; the trial's run keeps
    the whole text (its recall.error tag).

    `error` is what Tune wrote to the trial's error file: one "Failure # N" block per failure, each
    str() of the exception Ray carried to the driver. A dead worker's block is one long paragraph of
    Ray's (its tail says nothing of the cause); a raised exception's ends with the exception's line.
    """
    last = FAILURE_HEADER.split(error)[-1]  # the failure that ended the trial
    pid = re.search(r"\tpid: (\d+)", last)
    who = f" (pid {pid[1]})" if pid else ""
    if "NODE_OUT_OF_MEMORY" in last or "running low on memory" in last:
        return f"out of memory: Ray killed the worker{who} as the node ran low on memory"
    if "worker process has died" in last:
        # Ray cannot tell a SIGKILL from the kernel's OOM killer or a crash: it saw the connection drop.
        return (f"worker process died{who}: killed by a signal (SIGKILL, the kernel's OOM killer: see dmesg) "
                "or crashed")
    diverged = re.search(r"training diverged: .*", last)  # trials.train.TrainingDiverged
    if diverged:
        return diverged[0]
    lines = [line.strip() for line in last.splitlines() if line.strip()]
    return lines[-1] if lines else "the trial raised (no error text)"


def lift(value: float | None, base: float | None) -> float | None:
    """A trial's figure over the base model's on the same metric and split; None when either is missing."""
    return None if value is None or base is None else value - base


def leaderboard(client, parent_run_id: str) -> list[dict]:
    """One row per trial run of the sweep, best first by its objective's val metric; failed trials last.
    A sweep with another objective than exact recall has that metric as a column too."""
    parent = client.get_run(parent_run_id)
    metric = objective_metric(parent.data.params.get(OBJECTIVE_PARAM))
    ranked_by = split_metric("val", metric)
    base = parent.data.metrics.get(base_metric("val", metric))  # None for a sweep logged before the base pre-pass
    rows = []
    for run in tracking.trial_runs(client, parent):
        params, metrics = run.data.params, run.data.metrics
        end = run.info.end_time or int(time.time() * 1000)
        rows.append({
            "trial": run.data.tags.get(run_record.TRIAL_ID, run.info.run_name),
            "run_id": run.info.run_id,
            "status": run.info.status,
            "method": params.get(METHOD_NAME),
            "shape": run.data.tags.get(run_record.METHOD_SHAPE),
            "learning_rate": param_value(params.get(LEARNING_RATE)),
            VAL_EXACT_RECALL: metrics.get(VAL_EXACT_RECALL),
            ranked_by: metrics.get(ranked_by),
            "lift": lift(metrics.get(ranked_by), base),
            TEST_EXACT_RECALL: metrics.get(TEST_EXACT_RECALL),
            # What it kept of the base model's general knowledge (trials/general.py), and how far it drifted.
            GENERAL_RETENTION: metrics.get(GENERAL_RETENTION),
            GENERAL_DRIFT: metrics.get(GENERAL_DRIFT),
            "epochs": len({m.step for m in client.get_metric_history(run.info.run_id, VAL_ANSWER_LOSS)}),  # every epoch
            "stopped_by": run.data.tags.get(run_record.STOPPED_BY),
            "seconds": round((end - run.info.start_time) / 1000, 1),
            # warm:<earlier sweep>, seed (points_to_evaluate) or optuna: orchestrator/warm_start.py
            "origin": run.data.tags.get(run_record.ORIGIN),
            "error": failure_cause(run.data.tags[run_record.ERROR]) if run_record.ERROR in run.data.tags else "",
        })
    rows.sort(key=lambda row: (row["status"] == "FAILED", -(row[ranked_by] or -1.0)))
    return rows


def format_leaderboard(rows: list[dict], base_columns: tuple[str, ...] = LEADERBOARD_COLUMNS) -> str:
    def cell(column, value):
        if value is None:
            return "-"
        if column == "lift":
            return f"{value:+.3g}"
        return f"{value:.3g}" if isinstance(value, float) else str(value)

    columns = leaderboard_columns(rows, base_columns)
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(column, row.get(column)) for column in columns) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def leaderboard_columns(rows: list[dict], base_columns: tuple[str, ...] = LEADERBOARD_COLUMNS) -> tuple[str, ...]:
    """`base_columns` with the objective's column, when the sweep optimised another metric than exact recall,
    after that one (and before its lift)."""
    extra = sorted({key for row in rows for key in row
                    if key.startswith(split_metric("val", "")) and key not in base_columns})
    at = base_columns.index(VAL_EXACT_RECALL) + 1
    return (*base_columns[:at], *extra, *base_columns[at:])

"""What runs in Ray's workers: one trial of a sweep (`_train_in_tune`), its torch threads (its own CPUs', or more
that the driver lends it at the sweep's end: orchestrator/cpu_loans.py), and the objective it reports under the
floors.

Kept apart from orchestrator/sweep.py so a worker imports only torch, Ray Tune and trials/: not MLflow,
Optuna's searcher or the driver's console. A new worker unpickles `_train_in_tune` by importing this module;
from orchestrator.sweep that import took 2.3 s (`python -X importtime`, Ray already imported), from here
0.07 s; the trial then imports torch and transformers as it must. Each worker's first trial starts ~1 s
sooner on 2 idle cores (docs/benchmarks.md, orchestration overhead).

What the sweep optimises: `objective` = val_exact_recall + train_exact_recall / (2 * val questions),
that is val recall with ties broken by train recall, the tie-break worth less than half of one val
question so it never outranks a real val difference. Early on most trials recall no val question;
plain val recall then ties at 0 and TPE sees a flat landscape. Train recall rises first in the
trials that are learning, so it separates them.

`eval.objective` picks the val metric (trials/config.py OBJECTIVE_METRICS): exact_recall (the default,
as above), contains_recall (the same, ties broken by train contains recall), token_f1 (mean token F1) or
rouge_l (mean ROUGE-L recall), for answers that are sentences. A mean of partial scores is rarely tied
and moves in steps far below one question, where a tie-break worth up to half a question would outrank
real val differences: token_f1 and rouge_l are optimised as they are. The floors below stay on recall.

An incremental sweep (one that starts from an adapter and keeps old facts, `data.retain`) adds a
floor: a trial must keep `retention_exact_recall` (old held-out questions) at least
`sweep.retention_floor` (0.95) x the recall its starting adapter had on the same questions. A trial
that keeps the floor scores as above; one that breaks it scores retention / floor - 1, in [-1, 0):
below every trial that keeps it, and the less it forgot the higher. So the sweep maximises new-fact
recall subject to retention, and Optuna (and early stopping, which compares `objective` in an
incremental sweep) see forgetting as the worst outcome.

Every sweep adds a second floor, on general knowledge (trials/general.py): a trial must still answer
`sweep.general_floor` of the general check questions its base model answered right
(`general_retention`), measured at the rungs and at the trial's end; below it, it scores
general_retention / floor - 1 the same way (the worse breach decides when both floors are broken). The
floor applies when the base knew at least `eval.general_min_known` of them (the sweep's run says whether,
tag recall.general_gate): a random tiny model knows none. At epochs between rungs the probe is not
scored, and the objective there is the plain one.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

from orchestrator.run_record import (DEFAULT_RETENTION_FLOOR, EPOCH_THREADS, EXACT_RECALL, GENERAL_KNOWN,
                                     GENERAL_RETENTION, OBJECTIVE, PARENT_RETENTION_EXACT_RECALL,
                                     RETENTION_EXACT_RECALL, VAL_QUESTIONS, split_metric)
from orchestrator.search_space import SearchSpace, trial_config_for
from trials.config import OBJECTIVE_METRICS, TrialConfig, objective_metric

METRIC, MODE = OBJECTIVE, "max"


@dataclass(frozen=True)
class Floors:
    """What a trial must keep, as shares of what it started from: old facts (an incremental sweep's
    retention floor) and the base model's general knowledge (applied when the base knew at least
    general_min_known check questions)."""

    retention: float = DEFAULT_RETENTION_FLOOR
    general: float = 0.0
    general_min_known: int = 1


# Objectives that count questions, so a tie-break worth less than half of one question never outranks them.
COUNTED = (EXACT_RECALL, "contains_recall")


def objective(metrics: dict, floors: Floors, eval_objective: str = EXACT_RECALL) -> float:
    """The val metric `eval_objective` names, ties of a counted one broken by its train value, under the
    floors (module docstring)."""
    name = OBJECTIVE_METRICS[eval_objective]
    score = metrics[split_metric("val", name)]
    if eval_objective in COUNTED:
        score += metrics[split_metric("train", name)] / (2 * max(metrics[VAL_QUESTIONS], 1))
    # Each floor broken scores kept / floor - 1, in [-1, 0): below every trial that keeps both, the worst breach
    # deciding, the less forgotten the higher.
    breaches = []
    parent, kept = metrics.get(PARENT_RETENTION_EXACT_RECALL), metrics.get(RETENTION_EXACT_RECALL)
    if parent is not None and kept is not None and kept < floors.retention * parent:
        breaches.append(kept / (floors.retention * parent) - 1)
    general = metrics.get(GENERAL_RETENTION)
    if (general is not None and metrics.get(GENERAL_KNOWN, 0) >= floors.general_min_known
            and general < floors.general):
        breaches.append(general / floors.general - 1)
    return min(breaches) if breaches else score


def trial_threads(resources: dict[str, float]) -> int:
    """torch's threads for a trial given `resources` (Tune's sums: {"CPU": 1.0, ...}): its whole CPUs, at least one.

    Ray sets OMP_NUM_THREADS so only where the driver's environment has none: an inherited OMP_NUM_THREADS=2 ran two
    1-CPU trials on 2 cores with 2 threads each, 4x (tiny model) to 18x (SmolLM2) slower than 1 each (bench/steps.py,
    `threads`).
    """
    return max(1, int(resources.get("CPU", 1)))


def threads_lent(loans: str | None, trial_id: str, own: int) -> int:
    """The threads this trial may run its next epoch on: what the sweep's driver lends it in the JSON file
    `loans` (orchestrator/cpu_loans.py), else `own`; `own` too when there is no file to read (no loans yet,
    or a machine that cannot see the driver's files)."""
    if loans is None:
        return own
    try:
        lent = json.loads(Path(loans).read_text(encoding="utf-8")).get(trial_id, own)
    except (OSError, ValueError):
        return own
    return max(own, int(lent))


def _train_in_tune(params: dict, base: dict, space: dict, floors: Floors, loans: str | None = None) -> None:
    """One Tune trial: the same run_trial as `orchestrator trial`, reporting every epoch. `loans`: where the
    driver writes the threads it lends this trial (orchestrator/cpu_loans.py), read at each epoch's end."""
    import ray
    import torch
    from ray import tune

    from trials.trial import CheckpointUnreadable, run_trial

    config = trial_config_for(TrialConfig.model_validate(base), params, SearchSpace.model_validate(space))
    context = tune.get_context()
    output_dir = Path(context.get_trial_dir()) / "output"
    own = trial_threads(context.get_trial_resources().required_resources)
    torch.set_num_threads(own)
    placement = {
        "node_id": ray.get_runtime_context().get_node_id(),
        "gpu_ids": ",".join(str(gpu) for gpu in ray.get_gpu_ids()),
        "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES", ""),
        "torch_threads": str(torch.get_num_threads()),  # a tag, like the rest: not a metric
    }

    scored = split_metric("val", objective_metric(config.eval.objective))
    last = {METRIC: 0.0}  # the objective at the last scored epoch

    def report(metrics: dict, checkpoint_dir: Path | None) -> None:
        checkpoint = tune.Checkpoint.from_directory(str(checkpoint_dir)) if checkpoint_dir else None
        # Tune wants the objective in every result; an epoch the trial did not score (eval.recall_every) carries
        # the last one, and MLflow does not log it there (orchestrator/mlflow_writer.trial_metrics).
        if scored in metrics:
            last[METRIC] = objective(metrics, floors, config.eval.objective)
        tune.report({**metrics, METRIC: last[METRIC], EPOCH_THREADS: torch.get_num_threads(), **placement},
                    checkpoint=checkpoint)
        threads = threads_lent(loans, context.get_trial_id(), own)
        if threads != torch.get_num_threads():
            torch.set_num_threads(threads)

    checkpoint = tune.get_checkpoint()
    with tempfile.TemporaryDirectory(prefix="resume-") as copy:
        # A resumed sweep continues this trial where its last epoch ended, from a local copy of it.
        resume_from = Path(checkpoint.to_directory(copy)) if checkpoint is not None else None
        try:
            run_trial(config, output_dir, on_epoch=report, checkpoint_each_epoch=True, resume_from=resume_from,
                      trial_id=context.get_trial_id())
        except CheckpointUnreadable as error:  # name the checkpoint in the sweep's storage, not the copy
            raise CheckpointUnreadable(str(error).replace(str(resume_from), checkpoint.path, 1)) from error

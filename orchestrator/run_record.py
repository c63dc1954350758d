"""What a run records: the names of the tags, metrics, params and artifacts on a sweep's MLflow runs, the
defaults they are read with, and a trial's config as MLflow params and back.

Every module that writes runs (mlflow_writer, sweep, promote) or reads them (leaderboard, warm start,
report, hints, the MLflow UI's columns, the bench) names them from here, so a name changes in one place.
The layout itself (which run holds what) is described in orchestrator/tracking.py, which talks to MLflow.
The metric names are those a trial reports each epoch (trials/; trials never import the orchestrator).
Plain Python: importing this starts no Ray, torch or MLflow.
"""

from __future__ import annotations

import ast

from trials.config import TrialConfig

# -- defaults ------------------------------------------------------------------------------------------

DEFAULT_EXPERIMENT = "recall-orchestrator"  # sweep.experiment's default; promote's, report's and the hints'
DEFAULT_MODEL_NAME = "recall-champion"  # the registered model `promote` writes and `serve` loads
ALIAS = "champion"  # the registered version promotion points at
DEFAULT_RETENTION_FLOOR = 0.95  # sweep.retention_floor's default, and promote's for sweeps logged before it


def champion_uri(model_name: str = DEFAULT_MODEL_NAME) -> str:
    return f"models:/{model_name}@{ALIAS}"


# -- tags ----------------------------------------------------------------------------------------------

ROLE, SWEEP, TRIAL_ID = "recall.role", "recall.sweep", "recall.trial_id"
SWEEP_ROLE, TRIAL_ROLE = "sweep", "trial"  # the values of ROLE: a sweep's parent run, a trial's child run
METHOD_SHAPE = "recall.method_shape"  # e.g. "r=16 alpha=32 q,v": the leaderboard's shape column
# An incremental sweep's parent run: where it started (--from) and the registered version that is.
FROM, PARENT_MODEL, PARENT_VERSION = "recall.from", "recall.parent_model", "recall.parent_version"
# A sweep's base model and method set, and its warm start (orchestrator/warm_start.py); a trial's origin.
BASE_MODEL, METHODS = "recall.base_model", "recall.methods"
WARM_START, WARM_START_SWEEPS, WARM_START_TRIALS = ("recall.warm_start", "recall.warm_start_sweeps",
                                                   "recall.warm_start_trials")
ORIGIN = "recall.origin"
# On a sweep's run: the command that continues it (the one that started it, plus --resume), for the hints.
RESUME_COMMAND = "recall.resume_command"
GENERAL_GATE = "recall.general_gate"  # on a sweep's run: "on", or "off: why" (trials/baseline.py general_gate)
# On a sweep's run: where its Optuna study lives (password hidden) and its name (orchestrator/study.py).
OPTUNA_STORAGE, OPTUNA_STUDY = "recall.optuna_storage", "recall.optuna_study"
# On a trial's run: why it ended early (asha, time_budget), Tune's error text, "diverged", and a run a
# killed driver left behind.
STOPPED_BY, ERROR, FAILURE, ORPHANED = "recall.stopped_by", "recall.error", "recall.failure", "recall.orphaned"
# Where and on what a trial ran: each a tag, placement_tag(key).
PLACEMENT = ("node_id", "gpu_ids", "cuda_visible_devices", "torch_threads")
# A trial's metric, each epoch: the torch threads it ran on, more than torch_threads where the sweep lent it the
# CPUs of finished trials (orchestrator/cpu_loans.py).
EPOCH_THREADS = "epoch_threads"
PARENT = "mlflow.parentRunId"
NOTE = "mlflow.note.content"  # a run's description, markdown, shown on its page in the MLflow UI
# What the experiment holds, for the MLflow 3 UI: training runs compared as a table, not GenAI traces.
EXPERIMENT_KIND, TRAINING_RUNS = "mlflow.experimentKind", "custom_model_development"
SOURCE_RUN_ID = "source_run_id"  # on a registered version: the trial run it was promoted from


def placement_tag(key: str) -> str:
    return f"recall.{key}"


# -- metrics -------------------------------------------------------------------------------------------

EXACT_RECALL = "exact_recall"  # trials.recall.metrics_of's, and eval.objective's default metric
OBJECTIVE = "objective"  # what the sweep optimises, a trial's figure per epoch (orchestrator/trainable.py objective)


def split_metric(split: str, name: str) -> str:
    """A trial's metric on one split of its facts: val_exact_recall, test_rouge_l_recall, train_token_f1."""
    return f"{split}_{name}"


def base_metric(split: str, name: str) -> str:
    """The base model's figure, on the sweep's run (its pre-pass, trials/baseline.py)."""
    return f"base_{split_metric(split, name)}"


VAL_EXACT_RECALL, TEST_EXACT_RECALL = split_metric("val", EXACT_RECALL), split_metric("test", EXACT_RECALL)
TRAIN_EXACT_RECALL = split_metric("train", EXACT_RECALL)
VAL_ANSWER_LOSS = split_metric("val", "answer_loss")  # the val answers' teacher-forced loss (trials/train.py)
VAL_QUESTIONS = "val_questions"
TRAIN_SECONDS, EVAL_SECONDS = "train_seconds", "eval_seconds"
# Incremental: recall on the old facts' val rows, of the trial and of the adapter it started from; promotion
# logs the candidate's on test as split_metric("test", RETENTION_EXACT_RECALL), and the champion's as a version tag.
RETENTION_EXACT_RECALL = f"retention_{EXACT_RECALL}"
PARENT_RETENTION_EXACT_RECALL = f"parent_{RETENTION_EXACT_RECALL}"
PARENT_EXACT_RECALL = f"parent_{EXACT_RECALL}"
# General knowledge (trials/general.py): the base's known check questions a trial kept, how far it drifted,
# how many it knows; the base model's own, on the sweep's run.
GENERAL_RETENTION, GENERAL_DRIFT, GENERAL_KNOWN = "general_retention", "general_drift", "general_known"
# Where a trial's adapter router (trials/router.py) sends the questions it did not learn from.
ROUTER_VAL_TO_ADAPTER, ROUTER_CHECK_TO_BASE = "router_val_to_adapter", "router_check_to_base"
BASE_GENERAL_KNOWN, BASE_GENERAL_CHECK = "base_general_known", "base_general_check"

# -- params --------------------------------------------------------------------------------------------

OBJECTIVE_PARAM = "eval.objective"  # a sweep run's param: what it optimised
RETENTION_FLOOR_PARAM, GENERAL_FLOOR_PARAM = "sweep.retention_floor", "sweep.general_floor"


def method_param(knob: str) -> str:
    return f"method.{knob}"


def training_param(knob: str) -> str:
    return f"training.{knob}"


METHOD_NAME, LEARNING_RATE = method_param("name"), method_param("learning_rate")
EPOCHS = training_param("epochs")


def _flat(prefix: str, value) -> dict[str, str]:
    if isinstance(value, dict):
        out: dict[str, str] = {}
        for key, item in value.items():
            out.update(_flat(f"{prefix}.{key}" if prefix else key, item))
        return out
    return {prefix: str(value)}


def trial_params(config: TrialConfig) -> dict[str, str]:
    """MLflow params of a trial, named as the `--set` keys that would reproduce it."""
    dumped = config.model_dump(mode="json", include={"model", "init_adapter", "method", "training"})
    if config.data.retain is not None:  # an incremental trial: where it started and what it keeps
        dumped["data"] = {"retain": str(config.data.retain)}
    return {key: value for key, value in _flat("", dumped).items() if key != "init_adapter" or value != "None"}


def sweep_params(sweep: dict) -> dict[str, str]:
    """MLflow params of a sweep's run: its `sweep` section (dumped as JSON), under the `--set` keys."""
    return _flat("sweep", sweep)


def param_value(text: str | None):
    """An MLflow param back as the value it was logged from (str() of a number, bool, list or None); a
    string stays as it is, and a param the run lacks is None."""
    if text is None:
        return None
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def method_knobs(params: dict[str, str]) -> dict:
    """The method a trial run trained, read back from its `method.*` params: knob -> value."""
    prefix = method_param("")
    return {key.removeprefix(prefix): param_value(text) for key, text in params.items() if key.startswith(prefix)}


# -- artifacts -----------------------------------------------------------------------------------------

# A trial run's files (orchestrator/tracking.py log_trial_artifacts): its peft adapter, its full config, its
# metrics and val answers; the answers also as a table, and promotion's test answers.
ADAPTER, TRIAL_CONFIG, METRICS = "adapter", "trial_config.json", "metrics.json"
PREDICTIONS, PREDICTIONS_TABLE = "predictions_val.jsonl", "predictions_val.json"
TEST_PREDICTIONS = "predictions_test.jsonl"
SWEEP_CONFIG = "config.yaml"  # a sweep run's whole config: what a warm start matches a sweep from before its tags by

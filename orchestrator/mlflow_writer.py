"""The one process that writes a sweep to MLflow: the parent run, and a child run per trial.

Why not Ray's `MLflowLoggerCallback` (ray.air.integrations.mlflow): it creates one top-level run
per trial, with no parent (it has no notion of the sweep's run); it logs the trial's config as
flat params of Optuna's names (`lora_r`), not as the `--set` keys that reproduce the trial
(`method.r`); it uploads artifacts only from the trial's local directory, which on a cluster is
on another node; and it cannot tag why a trial ended (ASHA, time budget, error) or tidy the runs
a killed driver left behind on --resume. And in-trial logging (`setup_mlflow`) would open the
store from every trial process, which SQLite cannot take (see orchestrator/tracking.py).
"""

from __future__ import annotations

import time
from pathlib import Path

from mlflow.entities import Metric
from ray.tune import Callback
from ray.tune.result import AUTO_RESULT_KEYS
from rich.console import Console

from orchestrator import tracking
from orchestrator.errors import SweepError
from orchestrator.leaderboard import format_leaderboard, leaderboard
from orchestrator.search_space import SearchSpace, trial_config_for
from trials.config import TrialConfig

TUNE_KEYS = frozenset(AUTO_RESULT_KEYS) | {"epoch", "iterations_since_restore", "training_iteration"}
console = Console(highlight=False)


def _short(value) -> str:
    return f"{value:.3g}" if isinstance(value, float) else str(value)



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


def trial_metrics(result: dict, step: int) -> list[Metric]:
    """Every numeric value a trial reported, as MLflow metrics at `step`: no list of names to keep in
    step with the trial. Tune's own bookkeeping (timestamps, iteration counters, pid) is left out, and
    so is `epoch`, which is the step."""
    now = int(time.time() * 1000)
    return [Metric(key, float(value), now, step) for key, value in result.items()
            if key not in TUNE_KEYS and isinstance(value, (int, float)) and not isinstance(value, bool)]


class MlflowTrials(Callback):
    """Runs in the Tune driver: one MLflow child run per trial, written by this process alone."""

    def __init__(self, uri: str, parent_run_id: str, experiment_id: str, sweep: str,
                 base: dict, space: dict, deadline: float | None):
        self.uri, self.parent_run_id, self.experiment_id, self.sweep = uri, parent_run_id, experiment_id, sweep
        self.base, self.space, self.deadline = base, space, deadline
        self._client = None
        self._runs: dict[str, str] = {}
        self._tagged: set[str] = set()
        self._final: set[str] = set()

    def __getstate__(self):  # pickled into Tune's experiment state for --resume
        return {**self.__dict__, "_client": None, "_runs": {}, "_tagged": set(), "_final": set()}

    @property
    def client(self):
        if self._client is None:
            self._client = tracking.client(self.uri)
        return self._client

    def _run_id(self, trial) -> str:
        if trial.trial_id in self._runs:
            return self._runs[trial.trial_id]
        query = (f"tags.`{tracking.PARENT}` = {tracking.quoted(self.parent_run_id)} and "
                 f"tags.`{tracking.TRIAL_ID}` = {tracking.quoted(trial.trial_id)}")
        existing = self.client.search_runs([self.experiment_id], query, max_results=1)
        if existing:  # a resumed sweep keeps one run per trial
            run_id = existing[0].info.run_id
            if existing[0].info.status == "FINISHED":
                # It finished before the driver died, after Tune's last snapshot: Tune resumes it
                # from its final checkpoint, trains nothing more, and its run stays as it was.
                self._final.add(trial.trial_id)
            else:
                self.client.update_run(run_id, status="RUNNING")
        else:
            config = trial_config_for(TrialConfig.model_validate(self.base), trial.config,
                                      SearchSpace.model_validate(self.space))
            run = self.client.create_run(
                self.experiment_id,
                run_name=f"{self.sweep}-{trial.trial_id}",
                tags={tracking.PARENT: self.parent_run_id, tracking.ROLE: "trial",
                      tracking.SWEEP: self.sweep, tracking.TRIAL_ID: trial.trial_id},
            )
            run_id = run.info.run_id
            self.client.set_tag(run_id, tracking.METHOD_SHAPE, config.method.shape())
            for key, value in trial_params(config).items():
                self.client.log_param(run_id, key, value)
        self._runs[trial.trial_id] = run_id
        return run_id

    def on_trial_start(self, iteration, trials, trial, **info):
        self._run_id(trial)
        knobs = " ".join(f"{key}={_short(value)}" for key, value in trial.config.items())
        console.print(f"[bold]trial {trial.trial_id}[/] started: {knobs}")

    def on_trial_result(self, iteration, trials, trial, result, **info):
        run_id = self._run_id(trial)
        step = int(result.get("epoch", result.get("training_iteration", 0)))
        self.client.log_batch(run_id, metrics=trial_metrics(result, step))
        console.print(f"  trial {trial.trial_id} epoch {step}: loss {result.get('loss', 0):.3f}  "
                      f"val_exact_recall {result.get('val_exact_recall', 0):.3f}")
        if trial.trial_id not in self._tagged:
            self._tagged.add(trial.trial_id)
            for key in ("node_id", "gpu_ids", "cuda_visible_devices"):
                self.client.set_tag(run_id, f"recall.{key}", str(result.get(key, "")))

    def _log_checkpoint(self, trial, run_id: str) -> None:
        if trial.checkpoint is None:
            return
        with trial.checkpoint.as_directory() as directory:
            tracking.log_trial_artifacts(self.client, run_id, Path(directory))

    def on_trial_complete(self, iteration, trials, trial, **info):
        run_id = self._run_id(trial)
        if trial.trial_id in self._final:
            self._runs.pop(trial.trial_id, None)
            return
        self._log_checkpoint(trial, run_id)
        last = trial.last_result or {}
        training = self.base["training"]
        # Tune marks a stopped trial's last result done too, so judge by what the trial reached.
        ended_itself = (last.get("epoch", 0) >= training["epochs"]
                        or last.get("val_exact_recall", 0.0) >= training["stop_at_val_recall"])
        out_of_time = self.deadline is not None and time.time() >= self.deadline
        stopped_by = None if ended_itself else "time_budget" if out_of_time else "asha"
        status = "KILLED" if stopped_by == "time_budget" else "FINISHED"
        if stopped_by:
            self.client.set_tag(run_id, "recall.stopped_by", stopped_by)
        self.client.set_terminated(run_id, status)
        console.print(f"[bold]trial {trial.trial_id}[/] {status} after {last.get('epoch', 0)} epochs: "
                      f"val_exact_recall {last.get('val_exact_recall', 0):.3f}"
                      f"{f' (stopped by {stopped_by})' if stopped_by else ''}")
        self._runs.pop(trial.trial_id, None)

    def on_trial_error(self, iteration, trials, trial, **info):
        run_id = self._run_id(trial)
        self._log_checkpoint(trial, run_id)
        error_file = getattr(trial, "error_file", None) or ""
        message = Path(error_file).read_text()[-5000:] if error_file and Path(error_file).exists() else "trial raised"
        self.client.set_tag(run_id, "recall.error", message)
        if "TrainingDiverged" in message:  # trials.train raised it: the loss or gradient went non-finite
            self.client.set_tag(run_id, "recall.failure", "diverged")
        self.client.set_terminated(run_id, "FAILED")
        console.print(f"[bold red]trial {trial.trial_id} FAILED[/]: {message.strip().splitlines()[-1] if message.strip() else ''}")
        self._runs.pop(trial.trial_id, None)

    def on_experiment_end(self, trials, **info):
        for run_id in self._runs.values():  # still open: the sweep was interrupted around them
            self.client.set_terminated(run_id, "KILLED")
        self._runs.clear()
        # A driver killed between starting a trial and Tune's next snapshot of the experiment leaves
        # an MLflow run for a trial that the resumed Tune never heard of; its searcher suggests a
        # replacement. Keep one run per trial: soft-delete the orphan (MLflow can restore it).
        known = {trial.trial_id for trial in trials}
        for run in tracking.trial_runs(self.client, self.client.get_run(self.parent_run_id)):
            if run.data.tags.get(tracking.TRIAL_ID) not in known:
                self.client.set_tag(run.info.run_id, "recall.orphaned", "lost with the killed driver")
                if run.info.status == "RUNNING":
                    self.client.set_terminated(run.info.run_id, "KILLED")
                self.client.delete_run(run.info.run_id)


def open_sweep_run(client, experiment_id: str, experiment: str, name: str, resume: bool, config) -> str:
    """The sweep's parent run: created with its config and sweep params, or reopened by --resume."""
    existing = tracking.find_sweep_run(client, experiment, name)
    if existing is not None and not resume:
        raise SweepError(f"sweep '{name}' already exists in MLflow experiment '{experiment}': "
                         "pass --resume to continue it, or choose another --name")
    if existing is not None:
        client.update_run(existing.info.run_id, status="RUNNING")
        return existing.info.run_id
    run = client.create_run(experiment_id, run_name=name, tags={tracking.ROLE: "sweep", tracking.SWEEP: name})
    client.log_dict(run.info.run_id, config.model_dump(mode="json"), "config.yaml")
    for key, value in _flat("sweep", config.sweep.model_dump(mode="json")).items():
        client.log_param(run.info.run_id, key, value)
    return run.info.run_id


def close_sweep_run(client, parent_run_id: str) -> list[dict]:
    """End the parent run with the leaderboard attached; FAILED when no trial got anywhere."""
    board = leaderboard(client, parent_run_id)
    all_failed = bool(board) and all(row["status"] == "FAILED" for row in board)
    client.log_text(parent_run_id, format_leaderboard(board), "leaderboard.md")
    client.log_dict(parent_run_id, board, "leaderboard.json")
    client.set_terminated(parent_run_id, "FAILED" if all_failed or not board else "FINISHED")
    return board

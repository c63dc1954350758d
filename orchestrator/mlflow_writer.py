"""The one process that writes a sweep to MLflow: the parent run, and a child run per trial.

Why not Ray's `MLflowLoggerCallback` (ray.air.integrations.mlflow): it creates one top-level run
per trial, with no parent (it has no notion of the sweep's run); it logs the trial's config as
flat params of Optuna's names (`lora_r`), not as the `--set` keys that reproduce the trial
(`method.r`); it uploads artifacts only from the trial's local directory, which on a cluster is
on another node; and it cannot tag why a trial ended (early stopping, time budget, error) or tidy the runs
a killed driver left behind on --resume. And in-trial logging (`setup_mlflow`) would open the
store from every trial process, which SQLite cannot take (see orchestrator/tracking.py).
"""

from __future__ import annotations

import time
from functools import partial
from pathlib import Path

from mlflow.entities import Metric, Param, RunTag
from ray.tune import Callback
from ray.tune.result import AUTO_RESULT_KEYS
from rich.markup import escape

from orchestrator import run_record, tracking
from orchestrator.errors import SweepError
from orchestrator.leaderboard import failure_cause, format_leaderboard, leaderboard
from orchestrator.mlflow_ui import RUN_COLOUR, trial_colour
from orchestrator.progress import sweep_console as console  # under the live progress line
from orchestrator.run_record import (OBJECTIVE, OBJECTIVE_PARAM, VAL_EXACT_RECALL, split_metric, sweep_params,
                                     trial_params)
from orchestrator.scheduling import EarlyStopping
from orchestrator.search_space import SearchSpace, trial_config_for
from orchestrator.warm_start import ORIGIN, sweep_tags
from orchestrator.tracking_writes import WriteQueue
from trials.config import TrialConfig, objective_metric

TUNE_KEYS = frozenset(AUTO_RESULT_KEYS) | {"epoch", "iterations_since_restore", "training_iteration"}


def _short(value) -> str:
    return f"{value:.3g}" if isinstance(value, float) else str(value)



def trial_run_name(config: TrialConfig, trial_id: str) -> str:
    """A trial's row in the MLflow runs table, short enough to read there without opening it: the method,
    its main knob (the first of its shape: LoRA's r, prefix-tuning's tokens, IA3's modules; the whole
    shape is the recall.method_shape column), the learning rate, and the trial id of Tune's output."""
    method = config.method
    return f"{method.label()} {method.shape().split()[0]} lr={method.learning_rate:.2g} · {trial_id}"


def trial_note(config: TrialConfig, sweep: str, outcome: str = "") -> str:
    """A trial run's description (markdown on its run page): how it ended, once it has, and what it trained."""
    replay = f", replay {config.training.replay_fraction:.2f}" if config.data.retain is not None else ""
    knobs = (f"{config.method.name} {config.method.shape()}, learning rate {_short(config.method.learning_rate)}, "
             f"up to {config.training.epochs} epochs{replay} (a trial of sweep `{sweep}`)")
    return f"{outcome}\n\n{knobs}" if outcome else knobs


def trial_metrics(result: dict, step: int, scored: bool = True) -> list[Metric]:
    """Every numeric value a trial reported, as MLflow metrics at `step`: no list of names to keep in
    step with the trial. Tune's own bookkeeping (timestamps, iteration counters, pid) is left out, and
    so is `epoch`, which is the step; so is the objective of an epoch the trial did not score (not
    `scored`: eval.recall_every), which only carries the last scored one for Tune."""
    now = int(time.time() * 1000)
    return [Metric(key, float(value), now, step) for key, value in result.items()
            if key not in TUNE_KEYS and isinstance(value, (int, float)) and not isinstance(value, bool)
            and (scored or key != OBJECTIVE)]


class MlflowTrials(Callback):
    """Runs in the Tune driver: one MLflow child run per trial, written by this process alone.

    A tracking server may go away mid-sweep (a restart, a network cut). The hooks therefore only queue
    their writes, and one background thread makes them in order (orchestrator/tracking_writes.py):
    Tune's loop never waits on the server, and while it is away the writes wait and training goes on.
    Each write holds what it needs (metrics, the final checkpoint's location in Ray's storage), so
    nothing a trial produced is lost. At the end of the sweep the driver waits up to `outage_wait_s`
    for the server to take the rest. A write that fails while the server answers is a real error and
    raises at the next hook.
    """

    _by_sweep_run: dict[str, MlflowTrials] = {}  # the live writer of each sweep run in this driver

    def __init__(self, uri: str, parent_run_id: str, experiment_id: str, sweep: str,
                 base: dict, space: dict, deadline: float | None, outage_wait_s: float = 600):
        self.uri, self.parent_run_id, self.experiment_id, self.sweep = uri, parent_run_id, experiment_id, sweep
        self.base, self.space, self.deadline, self.outage_wait_s = base, space, deadline, outage_wait_s
        self._client = None
        self._reset()
        MlflowTrials._by_sweep_run[parent_run_id] = self

    @classmethod
    def release(cls, parent_run_id: str) -> MlflowTrials:
        """The sweep run's live writer, forgotten here: the sweep is over (a long process, such as the
        demo, runs several)."""
        return cls._by_sweep_run.pop(parent_run_id)

    def close(self) -> int:
        """Stop writing once what waits is written or the server is away; how many writes are not in MLflow."""
        return self._writes.close()

    def _reset(self) -> None:
        self._runs: dict[str, str] = {}  # trial id -> run id, for runs still open
        self._opened: set[str] = set()
        self._tagged: set[str] = set()
        self._final: set[str] = set()
        self._writes = WriteQueue(self.uri)

    @property
    def judged_by(self) -> str:
        """The val metric of the sweep's eval.objective."""
        return split_metric("val", objective_metric(self.base["eval"].get("objective")))

    def __getstate__(self):  # pickled into Tune's experiment state for --resume
        return {key: value for key, value in self.__dict__.items()
                if key in ("uri", "parent_run_id", "experiment_id", "sweep", "base", "space", "deadline",
                           "outage_wait_s")}

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._client = None
        self._reset()

    @property
    def client(self):
        if self._client is None:
            self._client = tracking.client(self.uri)
        return self._client

    # -- the queue --------------------------------------------------------------------------------

    def _write(self, *writes) -> None:
        MlflowTrials._by_sweep_run[self.parent_run_id] = self  # Tune's copy of this writer is the live one
        self._writes.put(*writes)

    # -- the writes -------------------------------------------------------------------------------

    def _open(self, trial) -> None:
        """The trial's run: found again (a resumed sweep keeps one run per trial) or created."""
        if trial.trial_id in self._opened:
            return
        self._opened.add(trial.trial_id)
        config = self._trial_config(trial.config)
        # Where its config came from: the searcher put it in the Tune config (orchestrator/warm_start.py).
        origin = trial.config.get(ORIGIN)
        self._write(partial(self._find_or_create_run, trial.trial_id, config, origin),
                    partial(self._describe_run, trial.trial_id, config))

    def _trial_config(self, knobs: dict) -> TrialConfig:
        space = SearchSpace.model_validate(self.space)
        return trial_config_for(TrialConfig.model_validate(self.base), dict(knobs), space)

    def _find_or_create_run(self, trial_id: str, config: TrialConfig, origin: str | None = None) -> None:
        query = (f"tags.`{run_record.PARENT}` = {tracking.quoted(self.parent_run_id)} and "
                 f"tags.`{run_record.TRIAL_ID}` = {tracking.quoted(trial_id)}")
        existing = self.client.search_runs([self.experiment_id], query, max_results=1)
        if not existing:
            # The next colour in the sweep's palette: the trials it already has are numbered from 0.
            colour = trial_colour(len(tracking.trial_runs(self.client, self.client.get_run(self.parent_run_id))))
            run = self.client.create_run(
                self.experiment_id, run_name=trial_run_name(config, trial_id),
                tags={run_record.PARENT: self.parent_run_id, run_record.ROLE: run_record.TRIAL_ROLE,
                      run_record.SWEEP: self.sweep, run_record.TRIAL_ID: trial_id,
                      run_record.NOTE: trial_note(config, self.sweep), RUN_COLOUR: colour,
                      **({run_record.ORIGIN: origin} if origin else {})})
            self._runs[trial_id] = run.info.run_id
        elif existing[0].info.status == "FINISHED":
            # It finished before the driver died, after Tune's last snapshot: Tune resumes it from its
            # final checkpoint, trains nothing more, and its run stays as it was.
            self._final.add(trial_id)
            self._runs[trial_id] = existing[0].info.run_id
        else:
            self.client.update_run(existing[0].info.run_id, status="RUNNING")
            self._runs[trial_id] = existing[0].info.run_id

    def _describe_run(self, trial_id: str, config: TrialConfig) -> None:
        self.client.log_batch(self._runs[trial_id],
                              params=[Param(key, value) for key, value in trial_params(config).items()],
                              tags=[RunTag(run_record.METHOD_SHAPE, config.method.shape())])

    def _end_run(self, trial_id: str, checkpoint, tags: dict[str, str], status: str) -> None:
        if trial_id in self._final:
            self._runs.pop(trial_id)
            return
        run_id = self._runs[trial_id]
        if checkpoint is not None:
            with checkpoint.as_directory() as directory:
                tracking.log_trial_artifacts(self.client, run_id, Path(directory), finished=status == "FINISHED")
        for key, value in tags.items():
            self.client.set_tag(run_id, key, value)
        self.client.set_terminated(run_id, status)
        self._runs.pop(trial_id)

    def _end_experiment(self, known: set[str]) -> None:
        for run_id in self._runs.values():  # still open: the sweep was interrupted around them
            self.client.set_terminated(run_id, "KILLED")
        self._runs.clear()
        # A driver killed between starting a trial and Tune's next snapshot of the experiment leaves
        # an MLflow run for a trial that the resumed Tune never heard of; its searcher suggests a
        # replacement. Keep one run per trial: soft-delete the orphan (MLflow can restore it).
        for run in tracking.trial_runs(self.client, self.client.get_run(self.parent_run_id)):
            if run.data.tags.get(run_record.TRIAL_ID) not in known:
                self.client.set_tag(run.info.run_id, run_record.ORPHANED, "lost with the killed driver")
                if run.info.status == "RUNNING":
                    self.client.set_terminated(run.info.run_id, "KILLED")
                self.client.delete_run(run.info.run_id)

    # -- Tune's hooks -----------------------------------------------------------------------------

    def on_trial_start(self, iteration, trials, trial, **info):
        self._open(trial)
        knobs = " ".join(f"{key}={_short(value)}" for key, value in trial.config.items())
        console.print(f"[bold]trial {trial.trial_id}[/] started: {knobs}")

    def on_trial_result(self, iteration, trials, trial, result, **info):
        self._open(trial)
        step = int(result.get("epoch", result.get("training_iteration", 0)))
        metrics = trial_metrics(result, step, scored=self.judged_by in result)
        writes = [lambda: self.client.log_batch(self._runs[trial.trial_id], metrics=metrics)]
        if trial.trial_id not in self._tagged:
            self._tagged.add(trial.trial_id)
            placement = [RunTag(run_record.placement_tag(key), str(result.get(key, "")))
                         for key in run_record.PLACEMENT]
            writes.append(lambda: self.client.log_batch(self._runs[trial.trial_id], tags=placement))
        self._write(*writes)  # its line, with --verbose, is SweepProgress's (orchestrator/progress.py)

    def on_trial_complete(self, iteration, trials, trial, **info):
        self._open(trial)
        last = trial.last_result or {}
        training = self.base["training"]
        # Tune marks a stopped trial's last result done too, so judge by what the trial reached.
        ended_itself = (last.get("epoch", 0) >= training["epochs"] or last.get("plateaued")
                        or last.get(self.judged_by, 0.0) >= training["stop_at_val_recall"])
        out_of_time = self.deadline is not None and time.time() >= self.deadline
        stopped_by = None if ended_itself else "time_budget" if out_of_time else "asha"
        status = "KILLED" if stopped_by == "time_budget" else "FINISHED"
        outcome = (f"{VAL_EXACT_RECALL} {last.get(VAL_EXACT_RECALL, 0):.3f} after {last.get('epoch', 0)} epochs"
                   f"{f', stopped by {stopped_by}' if stopped_by else ''}")
        tags = {run_record.NOTE: trial_note(self._trial_config(trial.config), self.sweep, outcome)}
        if stopped_by:
            tags[run_record.STOPPED_BY] = stopped_by
        self._write(partial(self._end_run, trial.trial_id, trial.checkpoint, tags, status))
        console.print(f"[bold]trial {trial.trial_id}[/] {status} after {last.get('epoch', 0)} epochs: "
                      f"{VAL_EXACT_RECALL} {last.get(VAL_EXACT_RECALL, 0):.3f}"
                      f"{f' (stopped by {stopped_by})' if stopped_by else ''}")

    def on_trial_error(self, iteration, trials, trial, **info):
        self._open(trial)
        error_file = getattr(trial, "error_file", None) or ""
        message = Path(error_file).read_text()[-5000:] if error_file and Path(error_file).exists() else "trial raised"
        cause = failure_cause(message)
        tags = {run_record.ERROR: message,
                run_record.NOTE: trial_note(self._trial_config(trial.config), self.sweep, f"FAILED: {cause}")}
        if "TrainingDiverged" in message:  # trials.train raised it: the loss or gradient went non-finite
            tags[run_record.FAILURE] = "diverged"
        self._write(partial(self._end_run, trial.trial_id, trial.checkpoint, tags, "FAILED"))
        console.print(f"[bold red]trial {trial.trial_id} FAILED[/]: {escape(cause)}")  # "['x']" is no markup

    def on_experiment_end(self, trials, **info):
        self._write(partial(self._end_experiment, {trial.trial_id for trial in trials}))
        # What the server did not take in time, run_sweep reports: an exception here would end Tune's
        # clean-up half-way.
        self._writes.drain(self.outage_wait_s)


# Ends the result paragraph that close_sweep_run puts above the plan in a sweep's description: a resumed
# sweep's close replaces it rather than stacking another.
RESULT_END = "\n\n---\n\n"


def _choices(value) -> str:
    """One knob of a search space, as the sweep's description shows it."""
    if isinstance(value, dict) and set(value) == {"low", "high"}:
        return f"{_short(value['low'])}–{_short(value['high'])}"
    if isinstance(value, dict):  # named module sets
        return " | ".join(value)
    return ", ".join(map(_short, value)) if isinstance(value, list) else _short(value)


# What each eval.objective optimises, in the sweep's description.
OBJECTIVE_NOTES = {
    "exact_recall": "val_exact_recall, exact recall on val questions it never trained on (ties: train recall).",
    "contains_recall": "val_contains_recall, the val answers found inside the replies (ties: train contains recall).",
    "token_f1": "val_token_f1, the mean token F1 of the replies to val questions against their answers.",
    "rouge_l": "val_rouge_l_recall, the mean ROUGE-L recall of the val answers in the replies.",
}


def sweep_note(config, name: str) -> str:
    """The parent run's description (markdown): what the sweep searches, so the runs table explains itself."""
    space = config.search_space.model_dump(mode="json")
    given = len(space["points_to_evaluate"])
    after = f" (after the {given} in points_to_evaluate)" if given else ""
    lines = [f"Sweep `{name}`: {config.sweep.num_samples} trials on `{config.model}`, up to {config.training.epochs} "
             f"epochs each, picked by Optuna (TPE) from{after}:", ""]
    for method in space["methods"]:
        knobs = {key: value for key, value in space[method].items() if value is not None}
        lines.append(f"- {method}: " + " · ".join(f"{key} {_choices(value)}" for key, value in knobs.items()))
    if space["replay_fraction"] is not None:
        lines.append(f"- replay_fraction {_choices(space['replay_fraction'])}")
    stopping = ""
    if config.sweep.asha.enabled:
        epochs = ", ".join(map(str, EarlyStopping.of(config).rungs))
        stopping = f" Early stopping compares the trials at epochs {epochs} and stops those that trail (sweep.asha)."
    lines += ["", f"Objective: {OBJECTIVE_NOTES[config.eval.objective]}" + stopping]
    return "\n".join(lines)


def sweep_result(board: list[dict]) -> str:
    """The paragraph above the plan once the sweep ends: its best trial, recall first (the runs table's
    Description column shows the first ~50 characters)."""
    scored = [row for row in board if row[VAL_EXACT_RECALL] is not None]
    if not scored:
        return "No trial reported a val recall."
    best = scored[0]  # the leaderboard is best first
    trials = f"{len(board)} trial{'s' if len(board) > 1 else ''}"
    return (f"Best of {trials}: {VAL_EXACT_RECALL} {best[VAL_EXACT_RECALL]:.3f}, trial {best['trial']} "
            f"({best['method']} {best['shape']} lr={_short(best['learning_rate'])}); all in leaderboard.md.")


def open_sweep_run(client, experiment_id: str, experiment: str, name: str, resume: bool, config) -> str:
    """The sweep's parent run: created with its config and sweep params, or reopened by --resume."""
    existing = tracking.find_sweep_run(client, experiment, name)
    if existing is not None and not resume:
        raise SweepError(f"sweep '{name}' already exists in MLflow experiment '{experiment}': "
                         "pass --resume to continue it, or choose another --name")
    if existing is not None:
        client.update_run(existing.info.run_id, status="RUNNING")
        return existing.info.run_id
    run = client.create_run(experiment_id, run_name=name,
                            tags={run_record.ROLE: run_record.SWEEP_ROLE, run_record.SWEEP: name,
                                  run_record.NOTE: sweep_note(config, name), **sweep_tags(config)})
    client.log_dict(run.info.run_id, config.model_dump(mode="json"), run_record.SWEEP_CONFIG)
    for key, value in sweep_params(config.sweep.model_dump(mode="json")).items():
        client.log_param(run.info.run_id, key, value)
    client.log_param(run.info.run_id, OBJECTIVE_PARAM, config.eval.objective)  # the leaderboard sorts by it
    return run.info.run_id


def close_sweep_run(client, parent_run_id: str, killed: bool = False) -> list[dict]:
    """End the parent run with the leaderboard attached: KILLED when the driver was stopped (never
    FINISHED: promote refuses it), else FAILED when no trial got anywhere."""
    board = leaderboard(client, parent_run_id)
    all_failed = bool(board) and all(row["status"] == "FAILED" for row in board)
    client.log_text(parent_run_id, format_leaderboard(board), "leaderboard.md")
    client.log_dict(parent_run_id, board, "leaderboard.json")
    plan = client.get_run(parent_run_id).data.tags.get(run_record.NOTE, "").rpartition(RESULT_END)[2]
    client.set_tag(parent_run_id, run_record.NOTE, f"{sweep_result(board)}{RESULT_END}{plan}")
    client.set_terminated(parent_run_id, "KILLED" if killed else "FAILED" if all_failed or not board else "FINISHED")
    return board

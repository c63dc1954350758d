"""A sweep: Ray Tune runs trials (OptunaSearch + ASHA), the driver records each in MLflow.

What the sweep optimises: `objective` = val_exact_recall + train_exact_recall / (2 * val questions),
that is val recall with ties broken by train recall, the tie-break worth less than half of one val
question so it never outranks a real val difference. Early on most trials recall no val question;
plain val recall then ties at 0, ASHA's cutoff is 0 and nothing is stopped, and TPE sees a flat
landscape. Train recall rises first in the trials that are learning, so it separates them.

How ASHA-stopped trials reach Optuna: Ray's OptunaSearch tells Optuna every trial that ends,
stopped early or not, as COMPLETE with its last reported `objective`. For a trial ASHA
stopped, that is its recall at the rung where it trailed: a pessimistic value, which is the
right direction for TPE (it lands among the "bad" observations, as ASHA judged it). Trials that
raised are told as FAIL and do not shape the sampler.
"""

from __future__ import annotations

import os
import tempfile
import warnings
import time
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console

from orchestrator import tracking
from orchestrator.config import ExperimentConfig, SearchSpace
from orchestrator.errors import SweepError
from orchestrator.search_space import DefineByRun, check_points, trial_config_for
from trials.config import ConfigError, TrialConfig
from trials.data import load_knowledge

METRIC, MODE = "objective", "max"
console = Console(highlight=False)
# Each trial checkpoints every epoch (num_to_keep=1); Tune warns about the snapshot rate it causes.
os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")


def _train_in_tune(params: dict, base: dict, space: dict) -> None:
    """One Tune trial: the same run_trial as `orchestrator trial`, reporting every epoch."""
    import ray
    from ray import tune

    from trials.trial import run_trial

    config = trial_config_for(TrialConfig.model_validate(base), params, SearchSpace.model_validate(space))
    context = tune.get_context()
    output_dir = Path(context.get_trial_dir()) / "output"
    placement = {
        "node_id": ray.get_runtime_context().get_node_id(),
        "gpu_ids": ",".join(str(gpu) for gpu in ray.get_gpu_ids()),
        "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES", ""),
    }

    def report(metrics: dict, checkpoint_dir: Path | None) -> None:
        checkpoint = tune.Checkpoint.from_directory(str(checkpoint_dir)) if checkpoint_dir else None
        tune.report({**metrics, METRIC: objective(metrics), **placement}, checkpoint=checkpoint)

    resume_from = None
    checkpoint = tune.get_checkpoint()
    if checkpoint is not None:  # a resumed sweep continues this trial where its last epoch ended
        resume_from = Path(checkpoint.to_directory(tempfile.mkdtemp(prefix="resume-")))
    run_trial(config, output_dir, on_epoch=report, checkpoint_each_epoch=True, resume_from=resume_from)


def _short(value) -> str:
    return f"{value:.3g}" if isinstance(value, float) else str(value)


def objective(metrics: dict) -> float:
    """val_exact_recall, ties broken by train_exact_recall (see the module docstring)."""
    return metrics["val_exact_recall"] + metrics["train_exact_recall"] / (2 * max(metrics["val_questions"], 1))


def _flat(prefix: str, value) -> dict[str, str]:
    if isinstance(value, dict):
        out: dict[str, str] = {}
        for key, item in value.items():
            out.update(_flat(f"{prefix}.{key}" if prefix else key, item))
        return out
    return {prefix: str(value)}


def trial_params(config: TrialConfig) -> dict[str, str]:
    """MLflow params of a trial, named as the `--set` keys that would reproduce it."""
    dumped = config.model_dump(mode="json", include={"model", "method", "training"})
    return _flat("", dumped)


try:
    from ray.tune import Callback as _TuneCallback
except ImportError:  # pragma: no cover - ray[tune] is a dependency
    _TuneCallback = object


class MlflowTrials(_TuneCallback):
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
        query = (f"tags.`{tracking.PARENT}` = '{self.parent_run_id}' and "
                 f"tags.`{tracking.TRIAL_ID}` = '{trial.trial_id}'")
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
        for key in ("loss", "val_exact_recall", "train_exact_recall", METRIC, "train_tokens_per_second",
                    "epoch_tokens_per_second", "peak_memory_mb", "train_seconds", "eval_seconds"):
            if key in result:
                self.client.log_metric(run_id, key, float(result[key]), step=step)
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


@dataclass
class SweepOutcome:
    name: str
    parent_run_id: str
    experiment_path: str
    wall_seconds: float
    leaderboard: list[dict]

    @property
    def failed(self) -> list[dict]:
        return [row for row in self.leaderboard if row["status"] == "FAILED"]

    @property
    def succeeded(self) -> list[dict]:
        return [row for row in self.leaderboard if row["status"] != "FAILED" and row["val_exact_recall"] is not None]


# Trials print their own progress through the driver's callback; Ray's dashboard and worker logs
# would only add noise (and a port) to a sweep started from a terminal.
RAY_OPTIONS = {"include_dashboard": False, "logging_level": "WARNING", "log_to_driver": False}


def connect_ray(address: str | None) -> None:
    """Join RAY_ADDRESS / --address when given, else start a local Ray; reuse one already up."""
    import ray

    if ray.is_initialized():
        return
    address = address or os.environ.get("RAY_ADDRESS")
    kwargs: dict = dict(RAY_OPTIONS)
    if address:
        import orchestrator
        import trials

        # Ship this code to the cluster's workers so they need not have it installed.
        kwargs["runtime_env"] = {"py_modules": [trials, orchestrator]}
    ray.init(address=address, **kwargs)


def _space(config: ExperimentConfig, source: str) -> SearchSpace:
    if config.search_space is None:
        raise ConfigError([f"{source}: search_space: a sweep needs a search_space section"])
    problems = check_points(config.search_space, source)
    if problems:
        raise ConfigError(problems)
    return config.search_space


def _parent_run(client, experiment_id: str, experiment: str, name: str, resume: bool, config: ExperimentConfig):
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


def _tune_config(config: ExperimentConfig, space: SearchSpace):
    import optuna
    from ray import tune
    from ray.tune.schedulers import AsyncHyperBandScheduler, FIFOScheduler
    from ray.tune.search.optuna import OptunaSearch

    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    searcher = OptunaSearch(
        space=DefineByRun(space),
        metric=METRIC,
        mode=MODE,
        points_to_evaluate=[dict(point) for point in space.points_to_evaluate] or None,
        # group=True lets TPE model each method's conditional parameters separately.
        sampler=optuna.samplers.TPESampler(seed=config.sweep.seed, n_startup_trials=config.sweep.startup_trials,
                                           multivariate=True, group=True),
    )
    asha = config.sweep.asha
    scheduler = (
        AsyncHyperBandScheduler(time_attr="training_iteration", max_t=config.training.epochs,
                                grace_period=asha.grace_period, reduction_factor=asha.reduction_factor)
        if asha.enabled else FIFOScheduler()
    )
    return tune.TuneConfig(
        metric=METRIC, mode=MODE, search_alg=searcher, scheduler=scheduler,
        num_samples=config.sweep.num_samples, max_concurrent_trials=config.sweep.max_concurrent_trials,
        time_budget_s=config.sweep.time_budget_s, reuse_actors=True,
    )


def run_sweep(config: ExperimentConfig, name: str, *, source: str = "config", resume: bool = False,
              address: str | None = None, verbose: int = 0) -> SweepOutcome:
    """Run (or resume) the sweep and return its leaderboard; MLflow holds every trial."""
    from ray import tune

    space = _space(config, source)
    load_knowledge(config.data)  # bad data fails here, with file:line, before Ray or MLflow start
    storage = Path(config.sweep.storage_path or "ray_results").resolve()
    experiment_path = storage / name
    if resume and not tune.Tuner.can_restore(str(experiment_path)):
        raise SweepError(f"nothing to resume at {experiment_path}")
    if not resume and experiment_path.exists():
        raise SweepError(f"{experiment_path} exists: pass --resume to continue sweep '{name}', or choose another --name")

    base = config.trial_config().model_dump(mode="json")
    space_dump = space.model_dump(mode="json")
    resources = {"cpu": config.sweep.resources.cpu, "gpu": config.sweep.resources.gpu}
    trainable = tune.with_resources(tune.with_parameters(_train_in_tune, base=base, space=space_dump), resources)
    tune_config = None if resume else _tune_config(config, space)  # built before anything is logged
    uri = tracking.tracking_uri()
    client = tracking.client(uri)
    experiment_id = tracking.experiment_id(client, config.sweep.experiment)
    parent_run_id = _parent_run(client, experiment_id, config.sweep.experiment, name, resume, config)
    connect_ray(address)
    started = time.time()
    if resume:
        tuner = tune.Tuner.restore(str(experiment_path), trainable=trainable, resume_unfinished=True,
                                   resume_errored=False)
    else:
        deadline = started + config.sweep.time_budget_s if config.sweep.time_budget_s else None
        tuner = tune.Tuner(
            trainable,
            tune_config=tune_config,
            run_config=tune.RunConfig(
                name=name, storage_path=str(storage), verbose=verbose,
                checkpoint_config=tune.CheckpointConfig(num_to_keep=1),
                callbacks=[MlflowTrials(uri, parent_run_id, experiment_id, name, base, space_dump, deadline)],
            ),
        )
    try:
        tuner.fit()
    finally:
        board = leaderboard(client, parent_run_id)
        all_failed = bool(board) and all(row["status"] == "FAILED" for row in board)
        client.log_text(parent_run_id, format_leaderboard(board), "leaderboard.md")
        client.log_dict(parent_run_id, board, "leaderboard.json")
        client.set_terminated(parent_run_id, "FAILED" if all_failed or not board else "FINISHED")
    return SweepOutcome(name, parent_run_id, str(experiment_path), time.time() - started, board)


LEADERBOARD_COLUMNS = ("trial", "status", "method", "r", "alpha", "learning_rate", "dropout",
                       "num_virtual_tokens", "val_exact_recall", "epochs", "stopped_by", "seconds")


def _number(text: str | None) -> float | int | None:
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
            "r": _number(params.get("method.r")),
            "alpha": _number(params.get("method.alpha")),
            "learning_rate": _number(params.get("method.learning_rate")),
            "dropout": _number(params.get("method.dropout")),
            "num_virtual_tokens": _number(params.get("method.num_virtual_tokens")),
            "val_exact_recall": metrics.get("val_exact_recall"),
            "epochs": len({m.step for m in client.get_metric_history(run.info.run_id, "val_exact_recall")}),
            "stopped_by": run.data.tags.get("recall.stopped_by"),
            "seconds": round((end - run.info.start_time) / 1000, 1),
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

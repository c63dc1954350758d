"""A sweep: Ray Tune runs trials (OptunaSearch + early stopping), the driver records each in MLflow.

What the sweep optimises, and the floors a trial must keep: orchestrator/trainable.py, the part that runs in
Ray's workers.

Early stopping (orchestrator/scheduling.py EarlyStopping, built from `sweep.asha`) compares trials at
the rungs by the val answers' teacher-forced loss, which moves from the first epoch, a trial that breaks a
floor ranked last (`sweep.asha.compare_by`, see scheduling.COMPARED_BY); what Optuna optimises and
promotion ranks by is `objective`. A trial stopped at a rung reaches
Optuna as COMPLETE with its last reported `objective`: a pessimistic value, which is the right
direction for TPE (it lands among the "bad" observations); so does one stopped while it waited at a
rung (scheduling.LastReport supplies the last report Tune's stop of a paused trial leaves out). Trials
that raised are told as FAIL and do not shape the sampler.

The study is kept in a database (`sweep.optuna_storage`), named "<experiment>/<sweep>", so Optuna's own
tools see it: orchestrator/study.py says where and why.
"""

from __future__ import annotations

import os
import signal
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

from mlflow.entities import Metric
from ray.tune.search.optuna import OptunaSearch

from orchestrator import run_record, state_signing, study, tracking, warm_start
from orchestrator.config import ExperimentConfig
from orchestrator.cpu_loans import LendFreedCpus
from orchestrator.errors import SweepError
from orchestrator.interrupts import GracefulStop, SweepInterrupted, resume_command
from orchestrator.mlflow_writer import MlflowTrials, close_sweep_run, open_sweep_run
from orchestrator.progress import SweepProgress, sweep_console
from orchestrator.run_record import (BASE_GENERAL_CHECK, BASE_GENERAL_KNOWN, EXACT_RECALL, VAL_EXACT_RECALL, base_metric,
                                     split_metric)
from orchestrator.ray_leftovers import stop_leftovers
from orchestrator.scheduling import EarlyStopping
from orchestrator.search_space import DefineByRun, SearchSpace
from orchestrator.server import check_reachable
from orchestrator.storage import SweepStorage, check_sweep_name
from orchestrator.trainable import METRIC, MODE, Floors, _train_in_tune
from trials.config import ConfigError, objective_metric
from trials.baseline import BasePass, base_pass, general_gate
from trials.data import load_knowledge

# Each trial checkpoints every epoch (num_to_keep=1); Tune warns about the snapshot rate it causes.
os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")


def describe_baseline(report: dict[str, float], gate: str | None, floor: float) -> str:
    """One line on what the base model knows, printed as the sweep starts."""
    private = ", ".join(f"{split} exact recall {report[base_metric(split, EXACT_RECALL)]:.3f}"
                        for split in ("val", "test") if base_metric(split, EXACT_RECALL) in report)
    line = f"base model: {private}" if private else "base model:"
    if BASE_GENERAL_KNOWN in report:
        line += (f"; general probe: answers {int(report[BASE_GENERAL_KNOWN])} of "
                 f"{int(report[BASE_GENERAL_CHECK])} check questions right")
    if gate:
        return f"{line}. General floor off: {gate}."
    if floor == 0:
        return f"{line}. General floor off: sweep.general_floor is 0."
    return f"{line}. General floor on: a trial must keep {floor:.0%} of them (sweep.general_floor)."


BASE_KNOWN = "base_known_questions.json"  # on the sweep's run: the private questions the base already answers
KNOWN_LISTED = 10  # of them, printed as the sweep starts


def describe_known(known: list[dict], asked: int, objective: str) -> str:
    """What the sweep's output says of the val and test questions the base model already answers right."""
    by = "exact recall" if objective == "exact_recall" else f"exact recall or the {objective} pass"
    if not known:
        return f"base model answers none of the {asked} val/test questions right ({by}): no fact was known before"
    lines = [f"base model already answers {len(known)} of the {asked} val/test questions right ({by}): these "
             f"facts were not private (listed in the sweep run's {BASE_KNOWN}):"]
    lines += [f"  [{item['split']}] {item['question']} -> {item['got']}" for item in known[:KNOWN_LISTED]]
    if len(known) > KNOWN_LISTED:
        lines.append(f"  ... and {len(known) - KNOWN_LISTED} more")
    return "\n".join(lines)


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
        return [row for row in self.leaderboard if row["status"] != "FAILED" and row[VAL_EXACT_RECALL] is not None]


# Trials print their own progress through the driver's callback; Ray's dashboard and worker logs
# would only add noise (and a port) to a sweep started from a terminal.
RAY_OPTIONS = {"include_dashboard": False, "logging_level": "WARNING", "log_to_driver": False}


def connect_ray(address: str | None) -> None:
    """Join RAY_ADDRESS / --address when given, else start a local Ray of this sweep's own; reuse one already up
    in this process. Own: Ray's default would join any cluster `ray start` (or another process) recorded on this
    machine, so a sweep could land on somebody else's cluster and die with it; `--address auto` joins it."""
    import json

    import ray

    if ray.is_initialized():
        return
    address = address or os.environ.get("RAY_ADDRESS")
    if not address:  # a local Ray: first stop what a killed driver's Ray left on this machine
        stop_leftovers(lambda line: sweep_console.print(line, markup=False, highlight=False))
    kwargs: dict = dict(RAY_OPTIONS)
    # Under `ray job submit` the job manager sets RAY_ADDRESS and hands the job's runtime_env to this
    # driver (RAY_JOB_CONFIG_JSON_ENV_VAR); Ray merges ray.init's runtime_env into it and refuses the
    # merge when both set a field. A job that already ships the code (--working-dir, py_modules) reaches
    # every trial worker with it: adding py_modules would upload it twice, or fail next to py_modules.
    job_env = json.loads(os.environ.get("RAY_JOB_CONFIG_JSON_ENV_VAR") or "{}").get("runtime_env") or {}
    if address and not (job_env.get("working_dir") or job_env.get("py_modules")):
        import orchestrator
        import trials

        # Ship this code to the cluster's workers so they need not have it installed.
        kwargs["runtime_env"] = {"py_modules": [trials, orchestrator]}
    ray.init(address=address or "local", **kwargs)


def _space(config: ExperimentConfig, source: str) -> SearchSpace:
    problems = config.sweep_problems(source)
    if problems:
        raise ConfigError(problems)
    return config.search_space


class LinkedOptunaSearch(OptunaSearch):
    """OptunaSearch that names each Optuna trial's Tune trial (user attribute `tune_trial_id`, the
    `recall.trial_id` tag of its MLflow run), so the study and the MLflow runs can be matched.

    `points` (point, origin) run first, in order: enqueued here rather than as points_to_evaluate, each
    with its origin as a user attribute, which the trial Optuna hands out for it carries; suggest passes
    it on in the Tune config, key `origin` (orchestrator/warm_start.py)."""

    def __init__(self, *args, points: list[tuple[dict, str]] = (), **kwargs):
        super().__init__(*args, **kwargs)  # the study exists from here: the space is given
        for point, origin in points:
            self._ot_study.enqueue_trial(point, user_attrs={warm_start.ORIGIN: origin})

    def suggest(self, trial_id: str) -> dict | None:
        params = super().suggest(trial_id)
        if params is None:
            return None
        trial = self._ot_trials[trial_id]
        trial.set_user_attr(study.TUNE_TRIAL_ID, trial_id)
        origin = trial.user_attrs.get(warm_start.ORIGIN)
        if origin is None:  # not an enqueued point: TPE (or its random start) suggested it
            origin = warm_start.OPTUNA
            trial.set_user_attr(warm_start.ORIGIN, origin)
        return {**params, warm_start.ORIGIN: origin}


@dataclass
class NewStudy:
    """The Optuna study a new sweep creates: its storage's URL, its name, and the storage, open."""

    url: str
    name: str
    storage: object

    @classmethod
    def of(cls, config: ExperimentConfig, sweep: str, storage: SweepStorage) -> NewStudy:
        """Opened and checked to be new: a name collision stops the sweep before anything is logged."""
        url = _study_url(config, storage)
        name = study.study_name(config.sweep.experiment, sweep)
        opened = study.open_storage(url)
        study.check_new(opened, name, url)
        return cls(url, name, opened)


def _study_url(config: ExperimentConfig, storage: SweepStorage) -> str:
    return study.storage_url(config.sweep.optuna_storage, tracking.tracking_uri(),
                             storage.local_folder(study.DEFAULT_FILE))


def _end_study(config: ExperimentConfig, storage: SweepStorage, tags: dict[str, str]) -> None:
    """Fail the study's trials Tune will tell nothing more, now that the sweep has ended (study.fail_unfinished).
    The URL is the config's, as the sweep's run records it (the tag hides a password): a sweep resumed with
    another sweep.optuna_storage is left as it is."""
    url = _study_url(config, storage)
    if run_record.OPTUNA_STUDY in tags and tags.get(run_record.OPTUNA_STORAGE) == study.hidden(url):
        study.fail_unfinished(url, tags[run_record.OPTUNA_STUDY])


def _tune_config(config: ExperimentConfig, space: SearchSpace, new_study: NewStudy,
                 warm: warm_start.WarmStart | None = None):
    import optuna
    from ray import tune

    from orchestrator.state_signing import SignedSearch

    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    searcher = LinkedOptunaSearch(
        space=DefineByRun(space),
        metric=METRIC,
        mode=MODE,
        # The warm start's points (earlier sweeps' best), then points_to_evaluate, then TPE's suggestions.
        points=warm_start.first_points(space, warm),
        # group=True lets TPE model each method's conditional parameters separately.
        sampler=optuna.samplers.TPESampler(seed=config.sweep.seed, n_startup_trials=config.sweep.startup_trials,
                                           multivariate=True, group=True),
        study_name=new_study.name,
        storage=new_study.storage,
    )
    stopping = EarlyStopping.of(config)
    # The slot limit is applied by `stopping`, as Tune's max_concurrent_trials would: Tune applies that only to
    # a Searcher, and SignedSearch (which signs each snapshot of the experiment for --resume) is past that.
    searcher = stopping.searcher(searcher, config.sweep.max_concurrent_trials)
    return tune.TuneConfig(
        metric=METRIC, mode=MODE, search_alg=SignedSearch(searcher), scheduler=stopping.scheduler(),
        num_samples=config.sweep.num_samples, time_budget_s=config.sweep.time_budget_s, reuse_actors=True,
    )


def _incremental(config: ExperimentConfig, start: str | None, directory: Path,
                 source: str) -> tuple[ExperimentConfig, dict[str, str]]:
    """An incremental sweep continues one adapter (`--from`, or init_adapter in the config) and keeps
    the old facts of its lineage (or data.retain): the config with its search space narrowed to that
    adapter, and the parent run's lineage tags. A plain sweep passes through unchanged."""
    from orchestrator.lineage import resolve_start
    from trials.methods import check_base, saved_method

    if config.search_space is None or (start is None and config.init_adapter is None):
        return config, {}
    origin = resolve_start(start, directory) if start else None
    adapter = origin.adapter if origin else config.init_adapter
    retain = config.data.retain or (origin.retain if origin else None)
    try:
        check_base(adapter, config.model)
        space, notes = config.search_space.narrowed_to(saved_method(adapter))
    except ValueError as error:
        raise ConfigError([f"{source}: search_space: {error} (an incremental sweep continues {adapter})"]) from None
    for note in notes:
        print(f"{source}: search_space.{note}")
    config = config.model_copy(update={"init_adapter": adapter, "search_space": space,
                                       "data": config.data.model_copy(update={"retain": retain})})
    tags = {run_record.FROM: start or str(adapter)}
    if origin and origin.version:
        tags.update({run_record.PARENT_MODEL: origin.model_name, run_record.PARENT_VERSION: origin.version})
    return config, tags


def run_sweep(config: ExperimentConfig, name: str, *, source: str = "config", resume: bool = False,
              address: str | None = None, verbose: bool = False, start: str | None = None,
              overrides=(), trust_state: bool = False) -> SweepOutcome:
    """Run (or resume) the sweep and return its leaderboard; MLflow holds every trial.

    `start` (`--from`) makes it incremental: see `_incremental`. `verbose` adds a line per trial per
    epoch to the progress (orchestrator/progress.py). `source` and `overrides` (the --set the config was
    loaded with) make the command that resumes it, printed when it is stopped and kept on its run.
    A resume refuses experiment state that is not signed by this machine's key, unless `trust_state`
    (`--trust-state`): see `_check_state`."""
    from ray import tune

    from trials.evaluate import retained_knowledge

    check_sweep_name(name)
    load_knowledge(config.data)  # bad data fails here, with file:line, before Ray or MLflow start
    check_reachable(tracking.tracking_uri())  # so does a tracking server that is down
    storage = SweepStorage.of(config.sweep.storage_path)  # and a storage URI nothing can open
    state_signing.check_key(storage.root)
    experiment_path = storage.experiment(name)
    if resume and not tune.Tuner.can_restore(experiment_path):
        raise SweepError(f"nothing to resume at {experiment_path}")
    if resume:
        _check_state(storage, name, trust_state)
    if not resume and storage.exists(name):
        raise SweepError(f"{experiment_path} exists: pass --resume to continue sweep '{name}', "
                         "or choose another --name")
    config, lineage = _incremental(config, start, storage.local_folder(f"{name}.start"), source)
    space = _space(config, source)
    retained_knowledge(config)  # the old facts are checked as early as the new ones
    # and sweep.warm_start (read from MLflow), before Ray or the new study; a resumed sweep's searcher has its points.
    warm = None if resume else warm_start.resolve(config, sweep=name, source=source)

    base = config.trial_config().model_dump(mode="json")
    if config.sweep.asha.enabled:  # the general probe is scored where early stopping compares, and at the end
        base["eval"]["general_epochs"] = EarlyStopping.of(config).rungs
    # What the base model knows, once, before Ray starts: the bar every trial's figures are read against.
    pre_pass: BasePass | None = None if resume else base_pass(config.trial_config())
    baseline = pre_pass.report if pre_pass is not None else None
    space_dump = space.model_dump(mode="json")
    resources = {"cpu": config.sweep.resources.cpu, "gpu": config.sweep.resources.gpu}
    floors = Floors(config.sweep.retention_floor, config.sweep.general_floor, config.eval.general_min_known)
    loans = storage.local_folder(f"{name}.cpu_loans.json") if config.sweep.resources.lend_freed_cpus else None
    trainable = tune.with_parameters(_train_in_tune, base=base, space=space_dump, floors=floors,
                                     loans=str(loans) if loans else None)
    trainable = tune.with_resources(trainable, resources)
    # Built before anything is logged; a resumed sweep's searcher (and study) come back with Tune's state.
    new_study = None if resume else NewStudy.of(config, name, storage)
    tune_config = None if resume else _tune_config(config, space, new_study, warm)
    uri = tracking.tracking_uri()
    client = tracking.client(uri)
    try:
        experiment_id = tracking.experiment_id(client, config.sweep.experiment)
        parent_run_id = open_sweep_run(client, experiment_id, config.sweep.experiment, name, resume, config)
    except BaseException:
        if new_study is not None:  # no sweep ran: the name stays free for the next attempt
            study.discard(new_study.storage, new_study.name)
        raise
    resume_with = resume_command(source, name, overrides, start, address)
    tags = {**lineage, run_record.RESUME_COMMAND: resume_with}
    if new_study is not None:
        tags.update({run_record.OPTUNA_STORAGE: study.hidden(new_study.url), run_record.OPTUNA_STUDY: new_study.name})
    if warm is not None:
        tags.update(warm.tags())
    if baseline is not None:
        gate = general_gate(baseline, config.eval.general_min_known)
        tags[run_record.GENERAL_GATE] = f"off: {gate}" if gate else "on"
        client.log_batch(parent_run_id, metrics=[Metric(key, float(value), int(time.time() * 1000), 0)
                                                 for key, value in baseline.items()])
        sweep_console.print(describe_baseline(baseline, gate, config.sweep.general_floor), markup=False,
                            highlight=False)
        known = pre_pass.known(config.eval.objective)
        client.log_dict(parent_run_id, {"objective": config.eval.objective, "asked": pre_pass.asked(),
                                        "questions": known}, BASE_KNOWN)
        sweep_console.print(describe_known(known, pre_pass.asked(), config.eval.objective), markup=False,
                            highlight=False)
    for key, value in tags.items():
        client.set_tag(parent_run_id, key, value)
    started = time.time()
    deadline = started + config.sweep.time_budget_s if config.sweep.time_budget_s else None
    writer = MlflowTrials(uri, parent_run_id, experiment_id, name, base, space_dump, deadline,
                          config.sweep.tracking_outage_wait_s)
    progress = SweepProgress(name, config.sweep.num_samples, config.training.epochs, config.sweep.time_budget_s,
                             verbose, best_by=split_metric("val", objective_metric(config.eval.objective)))
    stop = GracefulStop()
    try:
        connect_ray(address)  # first: Ray's core installs a SIGTERM handler of its own as it starts
        with stop:
            callbacks = [writer, progress, *([LendFreedCpus(loans, config.sweep.num_samples)] if loans else [])]
            _tuner(trainable, tune_config, callbacks, resume, name, storage).fit()
    except KeyboardInterrupt:  # before Tune ran, or a second signal: stopped at once, still resumable
        stop.signum = stop.signum or signal.SIGINT
        raise
    finally:
        progress.close()  # a second Ctrl-C skips Tune's on_experiment_end: the live line ends here
        # A resumed sweep runs the writer Tune restored from its experiment state, not `writer`.
        unwritten = MlflowTrials.release(parent_run_id).close()
        if unwritten:  # the server stayed away past sweep.tracking_outage_wait_s: the parent cannot be closed
            raise SweepError(f"MLflow tracking server {uri} stayed unreachable: {unwritten} writes of sweep '{name}' "
                             f"are not in MLflow and its run is left open. The trials' results and checkpoints are "
                             f"in {experiment_path}.")
        board = close_sweep_run(client, parent_run_id, killed=stop.signum is not None)
    if stop.signum is not None:
        raise SweepInterrupted(name, stop.signum, experiment_path, resume_with)
    _end_study(config, storage, client.get_run(parent_run_id).data.tags)
    return SweepOutcome(name, parent_run_id, experiment_path, time.time() - started, board)


def _check_state(storage: SweepStorage, name: str, trust: bool) -> None:
    """Before Ray unpickles anything of the experiment: its signatures checked, or with `trust` its files
    signed as they are, so that the next resume needs no --trust-state (orchestrator/state_signing.py)."""
    if not trust:
        state_signing.verify(*storage.experiment_folder(name), storage.experiment(name), storage.root)
        return
    signed = state_signing.sign(*storage.experiment_folder(name))
    print(f"--trust-state: signed the {signed} state files of {storage.experiment(name)} as they are")


def _tuner(trainable, tune_config, callbacks: list, resume: bool, name: str, storage: SweepStorage):
    from ray import tune

    # Tune restores its callbacks (copies of `callbacks`; SweepProgress says how it is re-created) and
    # settings from the experiment state.
    if resume:
        return tune.Tuner.restore(storage.experiment(name), trainable=trainable, resume_unfinished=True,
                                  resume_errored=False)
    tuner = tune.Tuner(
        trainable,
        tune_config=tune_config,
        # verbose=0: SweepProgress shows the sweep's progress; Tune's own table would repeat it.
        run_config=tune.RunConfig(name=name, storage_path=storage.root, verbose=0,
                                  checkpoint_config=tune.CheckpointConfig(num_to_keep=1), callbacks=callbacks),
    )
    # Tuner() wrote tuner.pkl, the first file --resume unpickles; Tune's snapshots are signed as they are taken.
    state_signing.sign(*storage.experiment_folder(name))
    return tuner

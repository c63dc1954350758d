"""Warm start: a sweep's first trials are the best configurations of earlier finished sweeps.

`sweep.warm_start: NAME` takes the best trials of sweep NAME; `auto` those of every earlier FINISHED
sweep in the same MLflow experiment on the same base model (`model`) and method set
(`search_space.methods`). Their trial runs are ranked by their final val figure under THIS sweep's
eval.objective (val_exact_recall by default, val_rouge_l_recall for `rouge_l`; ties: the earlier sweep's
`objective`, then the earlier start), FAILED ones left out, each configuration once, and the best
`sweep.warm_start_top` run first: before the config's own points_to_evaluate (the seed recipe) and
before TPE's suggestions. A named sweep that is missing, not FINISHED or on another base model or
method set is an error naming sweep.warm_start, raised before Ray starts and before anything is logged;
`auto` finding nothing prints a note and the sweep runs cold.

Where a point comes from: the earlier trial run's MLflow params (`method.*`, the trained method; the
`--set` keys that reproduce it), expressed in THIS sweep's search space, and kept only if it rebuilds
exactly that method here. Not the earlier sweep's Optuna study, whose params would be shorter to take:
the study may live on another machine (a tracking server's default study is a local optuna.db beside
that machine's storage_path), behind a password its run's tag hides, or not exist (sweeps from before
studies were stored), while MLflow is the store this sweep has just reached; and a study's params are in
the earlier sweep's own terms: its `lora_target_modules: qv` names a module set of ITS space, which this
sweep may define otherwise, and alpha_ratio means nothing to a space that searches alpha. Rebuilt from
what was trained, a point means the same model here or is dropped with a note.

Which trial ran which point (MLflow tag recall.origin, the leaderboard's `origin` column): every point
is enqueued in the Optuna study with user attribute `origin` (`warm:<sweep>`, or `seed` for the config's
points_to_evaluate); Optuna hands an enqueued trial, attributes and all, to the next `ask`, so the
searcher reads the origin off the trial it was given (`optuna` when nothing was enqueued) and passes it
to Tune in the trial's config, key `origin`, which the MLflow writer tags and the trial itself ignores.
Both the study and Tune's pickled trials keep it, so a resumed sweep (--resume) keeps it too.
"""

from __future__ import annotations

import difflib
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from orchestrator import run_record, tracking
from orchestrator.errors import SweepError
from orchestrator.run_record import (EXACT_RECALL, METHOD_NAME, OBJECTIVE, method_knobs, method_param, param_value,
                                     split_metric, training_param, trial_params)
from orchestrator.search_space import TRAINING_KNOBS, SearchSpace, check_points, trial_config_for
from trials.config import objective_metric
from trials.methods.base import comparable

AUTO = "auto"
ORIGIN = "origin"  # the Optuna user attribute and the Tune config key of a trial's origin
SEED, OPTUNA = "seed", "optuna"  # the config's points_to_evaluate; a TPE (or random start) suggestion
KEY = "sweep.warm_start"


def warm(sweep: str) -> str:
    """The origin of a point taken from an earlier sweep."""
    return f"warm:{sweep}"


@dataclass
class WarmStart:
    """What sweep.warm_start resolved to: the earlier sweeps matched, and the points to run first (flat
    Optuna params, best first), each with its origin and the earlier trial it reproduces."""

    setting: str | None = None
    sweeps: list[str] = field(default_factory=list)
    points: list[dict] = field(default_factory=list)
    origins: list[str] = field(default_factory=list)
    trials: list[str] = field(default_factory=list)  # "<sweep>/<trial id>" per point

    def tags(self) -> dict[str, str]:
        """Tags of the sweep's parent run: the setting and what it resolved to."""
        if self.setting is None:
            return {}
        return {run_record.WARM_START: self.setting, run_record.WARM_START_SWEEPS: ", ".join(self.sweeps) or "-",
                run_record.WARM_START_TRIALS: ", ".join(self.trials) or "-"}


def first_points(space: SearchSpace, warm_start: WarmStart | None = None) -> list[tuple[dict, str]]:
    """The points the sweep runs first, in order, with their origin: the warm start's, then the config's."""
    warm_points = list(zip(warm_start.points, warm_start.origins)) if warm_start else []
    return warm_points + [(dict(point), SEED) for point in space.points_to_evaluate]


def sweep_tags(config) -> dict[str, str]:
    """Tags of a new sweep's parent run that a later `warm_start: auto` matches on."""
    methods = config.search_space.methods if config.search_space is not None else []
    return {run_record.BASE_MODEL: str(config.model), run_record.METHODS: ",".join(methods)}


def resolve(config, *, sweep: str | None = None, source: str = "config", client=None, log=print) -> WarmStart:
    """What `config.sweep.warm_start` means for a new sweep named `sweep` (left out of `auto`): the points
    to run first. Reads MLflow only; raises SweepError naming sweep.warm_start when it cannot be had."""
    setting, space = config.sweep.warm_start, config.search_space
    if setting is None:
        return WarmStart()
    client = client or tracking.client()
    experiment = config.sweep.experiment
    want = (str(config.model), frozenset(space.methods))
    where = f"MLflow experiment '{experiment}'"
    if setting == AUTO:
        found = client.get_experiment_by_name(experiment)
        parents = tracking.sweep_runs(client, [found.experiment_id]) if found else []
        parents = [run for run in parents if run.info.status == "FINISHED" and _sweep(run) != sweep
                   and _model_and_methods(client, run) == want]
        if not parents:
            log(f"{source}: {KEY}: auto found no earlier finished sweep on {want[0]} with methods "
                f"{sorted(want[1])} in {where}: the sweep starts cold")
            return WarmStart(setting)
    else:
        parents = [_named(client, setting, sweep, experiment, want)]
    chosen = WarmStart(setting, sweeps=[_sweep(run) for run in parents])
    for earlier, run in _best(client, parents, config.sweep.warm_start_top, objective_metric(config.eval.objective)):
        trial = f"{earlier}/{run.data.tags.get(run_record.TRIAL_ID, run.info.run_id)}"
        point, problem = _point(run.data.params, config)
        if problem:
            log(f"{source}: {KEY}: trial {trial} dropped: it does not fit this search space ({problem})")
            continue
        chosen.points.append(point)
        chosen.origins.append(warm(earlier))
        chosen.trials.append(trial)
    if not chosen.points:
        log(f"{source}: {KEY}: no trial of {', '.join(chosen.sweeps)} fits: the sweep starts cold")
    return chosen


def _sweep(run) -> str:
    return run.data.tags.get(run_record.SWEEP, run.info.run_name)


def _named(client, name: str, sweep: str | None, experiment: str, want: tuple):
    """The named earlier sweep's parent run, or a one-line SweepError saying why it cannot warm-start this one."""
    if name == sweep:
        raise SweepError(f"{KEY}: '{name}' is this sweep; name an earlier one, or auto")
    parent = tracking.find_sweep_run(client, experiment, name)
    if parent is None:
        found = client.get_experiment_by_name(experiment)
        names = {_sweep(run) for run in tracking.sweep_runs(client, [found.experiment_id])} if found else set()
        close = difflib.get_close_matches(name, sorted(names), n=1, cutoff=0.6)
        hint = f"; did you mean '{close[0]}'?" if close else ""
        raise SweepError(f"{KEY}: no sweep '{name}' in MLflow experiment '{experiment}' at "
                         f"{client.tracking_uri}{hint}")
    if parent.info.status != "FINISHED":
        raise SweepError(f"{KEY}: sweep '{name}' is {parent.info.status}, not FINISHED: only a finished sweep's "
                         "best trials are known")
    has = _model_and_methods(client, parent)
    if has != want:
        what = f"{has[0]} with methods {sorted(has[1])}" if has else "an unknown base model and method set"
        raise SweepError(f"{KEY}: sweep '{name}' trained {what}, this sweep {want[0]} with methods "
                         f"{sorted(want[1])}: a warm start needs the same base model and method set")
    return parent


def _model_and_methods(client, parent) -> tuple[str, frozenset] | None:
    """An earlier sweep's base model and method set: its run's tags, or (a sweep from before they were
    set) the config.yaml logged on it; None when neither can be read."""
    tags = parent.data.tags
    if run_record.BASE_MODEL in tags and run_record.METHODS in tags:
        return tags[run_record.BASE_MODEL], frozenset(tags[run_record.METHODS].split(","))
    import yaml

    try:
        with tempfile.TemporaryDirectory(prefix="warm-start-") as directory:
            path = client.download_artifacts(parent.info.run_id, run_record.SWEEP_CONFIG, directory)
            config = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
        return str(config["model"]), frozenset(config["search_space"]["methods"])
    except Exception:  # no such artifact, or not a config: this sweep cannot be matched
        return None


def _best(client, parents: list, top: int, metric: str = EXACT_RECALL) -> list[tuple[str, object]]:
    """The `top` best trial runs of these sweeps by val `metric`, (sweep, run), each trained configuration once."""
    ranked, judged_by = [], split_metric("val", metric)
    for parent in parents:
        for run in tracking.trial_runs(client, parent):
            metrics = run.data.metrics
            if run.info.status != "FAILED" and judged_by in metrics:
                score = (metrics[judged_by], metrics.get(OBJECTIVE, metrics[judged_by]))
                ranked.append((score, -run.info.start_time, _sweep(parent), run))
    ranked.sort(key=lambda row: row[:2], reverse=True)
    seen, best = set(), []
    for _, _, sweep, run in ranked:
        trained = tuple(sorted((key, value) for key, value in run.data.params.items()
                               if key.startswith(method_param("")) or key in map(training_param, TRAINING_KNOBS)))
        if trained not in seen:
            seen.add(trained)
            best.append((sweep, run))
    return best[:top]


def _point(params: dict[str, str], config) -> tuple[dict | None, str | None]:
    """A trial run's flat Optuna params in this sweep's space, rebuilt from the method it trained
    (module docstring), or the reason it does not fit the space."""
    space, name = config.search_space, params.get(METHOD_NAME)
    if name not in space.methods:
        return None, f"method {name} is not among {list(space.methods)}"
    trained = method_knobs(params)
    point, problem = space.space_of(name).point_of(trained)
    if problem:
        return None, problem
    for knob in TRAINING_KNOBS:
        searched = getattr(space, knob)
        if searched is not None:
            point[knob] = float(params.get(training_param(knob), searched.low))
    problems = check_points(space.model_copy(update={"points_to_evaluate": [point]}), "")
    if problems:
        return None, problems[0].split(": ", 2)[-1]
    rebuilt = trial_params(trial_config_for(config.trial_config(), point, space))
    # Module lists compare in any order.
    differs = sorted(key for key, text in params.items() if key.startswith(method_param(""))
                     and comparable(param_value(rebuilt.get(key))) != comparable(param_value(text)))
    if differs:
        return None, f"it would not train the same {', '.join(differs)}"
    return point, None

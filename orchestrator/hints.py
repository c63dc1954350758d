"""What promote, report, ask and ui say when the store is not what the user expected: a sweep name
with a typo, a sweep still running, no champion yet, no sweep at all. Each is one sentence, then the
command that fixes it on a line of its own, ready to copy."""

from __future__ import annotations

import difflib
import shlex
from datetime import datetime

from orchestrator import run_record, tracking
from orchestrator.run_record import DEFAULT_EXPERIMENT, DEFAULT_MODEL_NAME

RUN_ONE = "orchestrator sweep configs/demo.yaml --name NAME"


def with_fix(sentence: str, command: str) -> str:
    return f"{sentence}{'' if sentence.endswith('?') else ':'}\n  {command}"


def _command(verb: str, sweep: str | None, experiment: str) -> str:
    words = ["orchestrator", verb, *(["--sweep", sweep] if sweep else [])]
    if experiment != DEFAULT_EXPERIMENT:
        words += ["--experiment", experiment]
    return shlex.join(words)


def _sweeps_of(client, experiment: str) -> list:
    found = client.get_experiment_by_name(experiment)
    return tracking.sweep_runs(client, [found.experiment_id]) if found is not None else []


def _names(runs) -> list[str]:
    """Sweep names, newest first, each once."""
    return list(dict.fromkeys(run.data.tags.get(run_record.SWEEP, run.info.run_name) for run in runs))


def _elsewhere(client, sweep: str | None, experiment: str) -> str | None:
    """Another experiment holding this sweep (or, unnamed, any sweep): two teams keep theirs apart."""
    others = [exp for exp in client.search_experiments() if exp.name != experiment]
    by_id = {exp.experiment_id: exp.name for exp in others}
    for run in tracking.sweep_runs(client, list(by_id)):
        if sweep is None or run.data.tags.get(run_record.SWEEP) == sweep:
            return by_id[run.info.experiment_id]
    return None


def unknown_sweep(client, experiment: str, sweep: str | None, verb: str) -> str:
    """Why `orchestrator VERB [--sweep SWEEP]` found no sweep, and the command it probably meant."""
    where = f"MLflow experiment '{experiment}' at {client.tracking_uri}"
    what = f"sweep '{sweep}'" if sweep else "sweep"
    other = _elsewhere(client, sweep, experiment)
    names = _names(_sweeps_of(client, experiment))
    if other is not None and (sweep is not None or not names):
        return with_fix(f"{what} is not in {where} but in experiment '{other}'", _command(verb, sweep, other))
    if not names:
        return with_fix(f"no sweep in {where} yet; run one first", RUN_ONE)
    close = difflib.get_close_matches(sweep, names, n=3, cutoff=0.6)
    if close:
        return with_fix(f"no {what} in {where}; did you mean {' or '.join(map(repr, close))}?",
                        _command(verb, close[0], experiment))
    return with_fix(f"no {what} in {where}, whose sweeps are, newest first, {', '.join(map(repr, names[:5]))}",
                    _command(verb, names[0], experiment))


def _clock(milliseconds: int) -> str:
    """A run's start as people say it: 06:42 today, else with its date."""
    started = datetime.fromtimestamp(milliseconds / 1000)
    return started.strftime("%H:%M" if started.date() == datetime.now().date() else "%Y-%m-%d %H:%M")


def still_running(parent, allow_incomplete: bool) -> str:
    """A sweep whose parent run is RUNNING: its driver is still at work, or died without closing it."""
    name = parent.data.tags.get(run_record.SWEEP, parent.info.run_name)
    # --allow-incomplete takes the trials of a stopped sweep; a running driver still writes its runs.
    besides = ", which --allow-incomplete does not cover" if allow_incomplete else ""
    return with_fix(f"sweep '{name}' is still running (started {_clock(parent.info.start_time)}){besides}; wait for "
                    "it to finish or, if its driver died, resume it",
                    resume_of(parent))


def resume_of(parent) -> str:
    """The command that continues a sweep, as its run keeps it; a sweep logged before it was kept
    gets the shape of it."""
    name = parent.data.tags.get(run_record.SWEEP, parent.info.run_name)
    return parent.data.tags.get(run_record.RESUME_COMMAND, f"orchestrator sweep CONFIG --name {name} --resume")


def newest_finished(client, experiment: str) -> str | None:
    return next((name for name in _names(run for run in _sweeps_of(client, experiment)
                                         if run.info.status == "FINISHED")), None)


def has_alias(client, model_name: str, alias: str) -> bool:
    models = client.search_registered_models(f"name = {tracking.quoted(model_name)}")
    return bool(models) and alias in (models[0].aliases or {})


def no_alias(client, model_name: str, alias: str, experiment: str = DEFAULT_EXPERIMENT) -> str:
    """`ask` with no version under the alias: promote the newest finished sweep, or run one first."""
    sentence = f"registered model '{model_name}' has no '{alias}' version yet at {client.tracking_uri}"
    model = [] if model_name == DEFAULT_MODEL_NAME else ["--model-name", model_name]
    finished = newest_finished(client, experiment)
    if finished is None:
        return with_fix(f"{sentence}, and no sweep has finished to promote; run one and promote it",
                        f"{RUN_ONE} && orchestrator promote --sweep NAME{' ' + shlex.join(model) if model else ''}")
    return with_fix(f"{sentence}; promote the newest finished sweep, '{finished}'",
                    shlex.join(["orchestrator", "promote", "--sweep", finished, *model]))


def no_sweeps(client) -> str | None:
    """For `ui`: a line saying the store holds no sweep yet (the UI would be empty), else None."""
    experiments = [exp.experiment_id for exp in client.search_experiments()]
    if tracking.sweep_runs(client, experiments, max_results=1):
        return None
    return with_fix(f"no sweep in {client.tracking_uri} yet, so the UI will show none; run one (in another terminal)",
                    RUN_ONE)

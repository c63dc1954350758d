"""Promote the best adapter of a sweep to the MLflow Model Registry, behind a test-split gate.

0. the sweep must have ended: a RUNNING one is refused (even with `allow_incomplete`: its driver may
   still be writing the runs), and so is a KILLED one (stopped before it finished: its best trials
   may never have run) unless `allow_incomplete`;
1. take the sweep's top-k FINISHED trial runs by their last `objective` (what the sweep optimised,
   eval.objective: by default val_exact_recall with a train-recall tie-break, and for an incremental
   sweep below every trial that keeps the retention floor if it broke it), by val_exact_recall where
   it is missing;
2. download each one's adapter/ + trial_config.json + metrics.json and score it on the `test`
   split, which nothing used before (`trials.evaluate`, the trial's own scoring); every test metric
   goes back onto the trial's run (`test_exact_recall`, `test_rouge_l_recall`, ...), its answers as
   `predictions_test.jsonl`
   (what `orchestrator report` shows; the sweep driver has finished, so this process is the only
   writer). An adapter holding NaN or inf is skipped, whatever its metrics, and
   the next trial by the objective takes its place;
3. the best candidate: highest test score; ties go to higher val score, then to fewer
   trainable parameters. "Score" is the metric the sweep optimised (eval.objective, read from the
   sweep's run: exact recall by default, mean ROUGE-L recall for `rouge_l`), here and in every gate
   below, so a sweep over sentence answers is judged as it was tuned;
4. the registered model's current `champion` is scored, through its pyfunc, on the same test
   rows; only a strictly better candidate is promoted, unless `force`. With no champion yet, the
   candidate must score above a floor: `min_test_recall` (0), and the test score of the sweep's
   seed-recipe trial when it has one (SEED_RECIPE), unless `force`;
5. promotion: the candidate is logged as a pyfunc model (orchestrator.registry_model) of its own
   trial run (the registry's source run, so the MLflow UI shows the version on the trial that won),
   registered as a new version with its tags (the promotion's record: test scores, sweep, lineage),
   and only then does the `champion` alias move: a failed registration leaves the alias where it was.
   A run that already has a version (tag source_run_id) gets no second one: the alias is pointed
   at the existing version.

Two promotions of one run at once (two `orchestrator promote` started together) both register;
then each looks up the versions of that source run, and the lowest version wins: its process
moves the alias, the other deletes its own version and reports the winner's. MLflow's SQL
registry (SQLite, or PostgreSQL behind a server) writes a version with its tags in one
transaction, numbered max + 1 under a unique key, so a higher version exists only once the lower
one is visible: both processes agree on the winner. No lock is held, so none outlives a process
that dies.
"""

from __future__ import annotations

import itertools
import json
import math
import tempfile
from dataclasses import dataclass
from pathlib import Path

import mlflow
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import RESOURCE_DOES_NOT_EXIST, ErrorCode

from orchestrator import hints, tracking
from orchestrator.errors import PromotionError
from orchestrator.leaderboard import lift
from orchestrator.lineage import write_knowledge
from orchestrator.run_record import (ADAPTER, ALIAS, DEFAULT_EXPERIMENT, DEFAULT_MODEL_NAME, DEFAULT_RETENTION_FLOOR,
                                     EXACT_RECALL, GENERAL_DRIFT, GENERAL_FLOOR_PARAM, GENERAL_GATE, GENERAL_RETENTION,
                                     METRICS, OBJECTIVE, OBJECTIVE_PARAM, PARENT_EXACT_RECALL, PARENT_VERSION,
                                     RETENTION_EXACT_RECALL, RETENTION_FLOOR_PARAM, SOURCE_RUN_ID, SWEEP,
                                     TEST_PREDICTIONS, TRIAL_CONFIG, TRIAL_ID, VAL_EXACT_RECALL, base_metric,
                                     method_knobs, split_metric)
from trials.config import objective_metric
from trials.methods.lora import LoraMethod

# The seed recipe (bench/seed_recipe.py, the demo sweep's first point): a sweep's trial of exactly this
# method is the baseline a first champion must beat. A test checks it against the bench's definition.
SEED_RECIPE = LoraMethod(r=8, alpha=32, dropout=0.0, target_modules=["q_proj", "v_proj"], learning_rate=1e-6)


@dataclass
class Scored:
    """A candidate trial run, or the current champion version, with its test score."""

    role: str  # "candidate" | "champion" | "seed" (the seed-recipe trial, when it is no candidate)
    test_recall: float  # under the sweep's eval.objective (exact recall by default), as every gate compares
    val_recall: float | None  # the same metric on val
    trainable_parameters: int | None
    run_id: str | None
    trial: str | None
    method: str | None
    version: str | None = None  # registered version (the champion; a candidate once promoted)
    retention_recall: float | None = None  # incremental: recall on the old facts' test rows
    data_fingerprint: str | None = None
    retained_fingerprint: str | None = None
    trial_config: str | None = None  # compact JSON
    max_new_tokens: int | None = None
    files: Path | None = None  # downloaded adapter/, trial_config.json, metrics.json
    general_retention: float | None = None  # share of the base's known general check questions kept
    general_drift: float | None = None  # mean per-token KL from the base on its own chat replies
    test_scores: dict | None = None  # every test metric of trials.recall.metrics_of
    lift: float | None = None  # its test figure under the sweep's eval.objective minus the base model's

    def rank_key(self) -> tuple:
        """Sort key: best first (test, then val, then fewer trainable parameters)."""
        params = self.trainable_parameters if self.trainable_parameters is not None else math.inf
        return (-self.test_recall, -(self.val_recall if self.val_recall is not None else -1.0), params)


@dataclass
class Promotion:
    sweep: str
    model_name: str
    candidates: list[Scored]
    champion: Scored | None
    promoted: bool
    reason: str
    refused: bool = False  # the gate kept the champion (or left none): nothing promoted, `promote` exits 3
    version: str | None = None  # the version `champion` points to afterwards
    new_version: bool = False
    test_questions: int = 0
    forced: bool = False
    retention_bar: float | None = None  # incremental: the old-fact recall a candidate had to keep
    general_floor: float | None = None  # the general retention a candidate had to keep; None: gate off
    general_gate: str = ""  # "on", or why the gate is off (the sweep run's recall.general_gate)
    floor: float | None = None  # no champion yet: the test recall a candidate had to beat
    floor_by: str | None = None  # what set the floor: --min-test-recall or the seed-recipe trial
    seed: Scored | None = None  # the sweep's seed-recipe trial, when there was no champion
    lift_of: str = EXACT_RECALL  # the metric test, val and lift are on (the sweep's eval.objective)

    @property
    def best(self) -> Scored:
        return self.candidates[0]


def _sweep_parent(client, experiment: str, sweep: str | None, allow_incomplete: bool):
    parent = tracking.find_sweep_run(client, experiment, sweep)
    if parent is None:
        raise PromotionError(hints.unknown_sweep(client, experiment, sweep, "promote"))
    name = parent.data.tags.get(SWEEP)
    if parent.info.status == "RUNNING":
        raise PromotionError(hints.still_running(parent, allow_incomplete))
    if parent.info.status == "KILLED" and not allow_incomplete:
        raise PromotionError(f"sweep '{name}' was stopped before it finished (its run is KILLED): trials it "
                             f"never ran may beat the ones it has; finish it with `{hints.resume_of(parent)}`, or "
                             "promote from what it has with --allow-incomplete")
    return parent


def _ranked_runs(client, parent) -> list:
    """The sweep's FINISHED trial runs, best first by the objective the sweep optimised."""
    runs = [run for run in tracking.trial_runs(client, parent)
            if run.info.status == "FINISHED" and VAL_EXACT_RECALL in run.data.metrics]
    if not runs:
        raise PromotionError(f"sweep '{parent.data.tags.get(SWEEP)}' has no FINISHED trial with "
                             f"{VAL_EXACT_RECALL}: nothing to promote")
    def judged(run) -> float:
        return run.data.metrics.get(OBJECTIVE, run.data.metrics[VAL_EXACT_RECALL])

    runs.sort(key=lambda run: (-judged(run), run.data.tags.get(TRIAL_ID, "")))
    return runs


def _trial_name(run) -> str:
    return run.data.tags.get(TRIAL_ID, run.info.run_name)


def _is_seed_recipe(run) -> bool:
    """Whether a trial run trained the seed recipe, read back from its `method.*` params."""
    knobs = method_knobs(run.data.params)
    if knobs.get("name") != SEED_RECIPE.name:
        return False
    try:
        knobs["target_modules"] = sorted(knobs["target_modules"])
        return LoraMethod.model_validate(knobs) == SEED_RECIPE
    except (KeyError, TypeError, ValueError):  # pydantic's ValidationError is a ValueError
        return False


def _download(client, run, directory: Path) -> Path:
    """A trial run's adapter/, trial_config.json and metrics.json, in `directory`."""
    directory.mkdir(parents=True)
    for name in (ADAPTER, TRIAL_CONFIG, METRICS):
        try:
            client.download_artifacts(run.info.run_id, name, str(directory))
        except (MlflowException, OSError) as error:
            raise PromotionError(f"run {run.info.run_id}: cannot download artifact {name}: {error}") from None
    return directory


def _non_finite(adapter: Path) -> str | None:
    """The first adapter tensor holding NaN or inf, or None. Such an adapter answers nothing, whatever
    metrics its trial logged (they may predate the step that broke it)."""
    import torch
    from safetensors.torch import load_file

    for path in sorted(adapter.glob("*.safetensors")):
        for name, tensor in load_file(path).items():
            if not torch.isfinite(tensor).all():
                return name
    return None


def _score_usable(client, run, directory: Path, metric: str, log) -> Scored | None:
    """Download and score a trial run; None (logged) when its adapter holds NaN or inf."""
    files = _download(client, run, directory)
    broken = _non_finite(files / ADAPTER)
    if broken is not None:
        log(f"skipped trial {_trial_name(run)} (run {run.info.run_id}): its adapter holds NaN or inf "
            f"({broken}); it cannot be promoted whatever its metrics")
        return None
    return _score_candidate(client, run, files, metric)


def _score_candidate(client, run, directory: Path, metric: str) -> Scored:
    """Score a downloaded trial run (adapter, config) on the test split, log the scores; judged by `metric`."""
    from trials.config import TrialConfig
    from trials.data import load_knowledge
    from trials.evaluate import generation_budget, retained_knowledge, score_adapter
    from trials.model import load_tokenizer

    run_id = run.info.run_id
    config_text = (directory / TRIAL_CONFIG).read_text(encoding="utf-8")
    config = TrialConfig.model_validate_json(config_text)
    metrics = json.loads((directory / METRICS).read_text(encoding="utf-8"))
    knowledge = load_knowledge(config.data)
    trained_on = metrics.get("data_fingerprint")
    if trained_on and trained_on != knowledge.fingerprint:
        raise PromotionError(f"run {run_id} was trained on data {trained_on}, but {config.data.qa} and its "
                             f"documents now fingerprint as {knowledge.fingerprint}: the data changed since the "
                             "sweep, so its test split is not the one to judge it on; run a new sweep")
    if not knowledge.split("test"):
        raise PromotionError(f"{config.data.qa}: no 'test' rows: promotion needs held-out questions to judge on")
    incremental = config.data.retain is not None
    scored = score_adapter(directory / ADAPTER, config, "test", retained=("test",) if incremental else ())
    scores, answers = scored["test"]
    # The registered model answers with the budget the candidate was scored with, old facts included.
    retained = retained_knowledge(config) if incremental else None
    budget = generation_budget(load_tokenizer(str(directory / ADAPTER)), knowledge, config.eval, retained)
    for name, value in scores.items():
        client.log_metric(run_id, split_metric("test", name), value)
    client.log_text(run_id, "".join(json.dumps(record) + "\n" for record in answers), TEST_PREDICTIONS)
    retention = scored["retained_test"][0][EXACT_RECALL] if incremental else None
    if incremental:  # not retention_exact_recall: the trial logged that per epoch, on the old val rows
        client.log_metric(run_id, split_metric("test", RETENTION_EXACT_RECALL), retention)
    return Scored(
        role="candidate", test_recall=scores[metric],
        val_recall=run.data.metrics.get(split_metric("val", metric), run.data.metrics[VAL_EXACT_RECALL]),
        trainable_parameters=metrics.get("trainable_parameters"), run_id=run_id,
        trial=_trial_name(run), method=config.method.name,
        data_fingerprint=knowledge.fingerprint, trial_config=config.model_dump_json(), max_new_tokens=budget,
        files=directory, retention_recall=retention,
        retained_fingerprint=retained.fingerprint if retained else None,
        general_retention=run.data.metrics.get(GENERAL_RETENTION), general_drift=run.data.metrics.get(GENERAL_DRIFT),
        test_scores=scores,
    )


def _registered_model(client, model_name: str):
    try:
        return client.get_registered_model(model_name)
    except MlflowException as error:
        if error.error_code == ErrorCode.Name(RESOURCE_DOES_NOT_EXIST):
            return None
        raise


def _current_champion(client, model_name: str):
    registered = _registered_model(client, model_name)
    version = (registered.aliases or {}).get(ALIAS) if registered is not None else None
    return client.get_model_version(model_name, str(version)) if version is not None else None


def _score_champion(model_version, test_rows, metric: str, old_test_rows=()) -> Scored:
    """The champion's test score by `metric` (and, for an incremental candidate, its exact recall on the old
    facts' test rows: the bar for retention), answered through its registered pyfunc, as it is served."""
    from trials.recall import score

    model = mlflow.pyfunc.load_model(f"models:/{model_version.name}/{model_version.version}")
    answers = model.predict([row.question for row in [*test_rows, *old_test_rows]])
    scores = score(test_rows, answers[: len(test_rows)])[0]
    old_recall = score(old_test_rows, answers[len(test_rows):])[0][EXACT_RECALL] if old_test_rows else None
    tags = model_version.tags

    def number(key, kind):
        try:
            return kind(tags[key])
        except (KeyError, ValueError):
            return None

    config = tags.get("trial_config")
    return Scored(
        role="champion", test_recall=scores[metric], val_recall=number(split_metric("val", metric), float),
        trainable_parameters=number("trainable_parameters", int), run_id=tags.get(SOURCE_RUN_ID),
        trial=tags.get("trial"), method=json.loads(config)["method"]["name"] if config else None,
        version=str(model_version.version), data_fingerprint=tags.get("data_fingerprint"), retention_recall=old_recall,
        test_scores=scores,
    )


def _existing_version(client, model_name: str, run_id: str):
    """The version registered from this trial run, if any: the lowest when a concurrent promotion made two."""
    if _registered_model(client, model_name) is None:
        return None
    versions = client.search_model_versions(
        f"name = {tracking.quoted(model_name)} and tags.{SOURCE_RUN_ID} = {tracking.quoted(run_id)}")
    return min(versions, key=lambda v: int(v.version)) if versions else None


def _register(best: Scored, model_name: str, parent, sweep: str, champion: Scored | None, metric: str,
              data):
    """Log `best` as a pyfunc model of its trial run, with the facts it knows (orchestrator.lineage), and
    register it, described with `data` (the sweep's Knowledge, as promotion loaded it); returns the
    ModelVersion. No run of its own: a promotion run would pose as a trial in the
    sweep's nesting and charts, and hold the registry's link instead of the trial."""
    from orchestrator.registry_model import KNOWLEDGE, log_recall_model
    from trials.config import TrialConfig

    tags = {
        **{split_metric("test", name): f"{value:.6g}" for name, value in (best.test_scores or {}).items()},
        split_metric("val", metric): f"{best.val_recall:.6g}" if best.val_recall is not None else "",
        "objective_metric": metric,
        SOURCE_RUN_ID: best.run_id,
        "sweep": sweep,
        "trial": best.trial or "",
        "data_fingerprint": best.data_fingerprint or "",
        "trainable_parameters": str(best.trainable_parameters or ""),
        "trial_config": best.trial_config,
    }
    tags.update({key: f"{value:.6g}" for key, value in ((GENERAL_RETENTION, best.general_retention),
                                                        (GENERAL_DRIFT, best.general_drift)) if value is not None})
    if best.retention_recall is not None:  # incremental: its lineage and what it kept
        tags.update({RETENTION_EXACT_RECALL: f"{best.retention_recall:.6g}",
                     "retained_data_fingerprint": best.retained_fingerprint or "",
                     "parent_version": parent.data.tags.get(PARENT_VERSION)
                     or (champion.version if champion else "") or ""})
        if champion is not None and champion.retention_recall is not None:
            tags[PARENT_EXACT_RECALL] = f"{champion.retention_recall:.6g}"
    config = TrialConfig.model_validate_json(best.trial_config)
    knowledge = write_knowledge(best.files / KNOWLEDGE, config)
    mlflow.set_experiment(experiment_id=parent.info.experiment_id)  # where a logged model without a run goes
    info = log_recall_model(best.files / ADAPTER, best.files / TRIAL_CONFIG,
                            max_new_tokens=best.max_new_tokens, knowledge=knowledge, run_id=best.run_id)
    # An exception here leaves the logged model unregistered and the alias untouched.
    version = mlflow.register_model(info.model_uri, model_name, tags=tags)
    description = version_description(tags, config, sweep, data)
    return tracking.client().update_model_version(model_name, version.version, description=description)


def version_description(tags: dict[str, str], config, sweep: str, data) -> str:
    """The registered version's description (markdown, the registry page's first text): what it learned
    (`data`: the Knowledge it trained on) and how it scored, from the tags it is registered with; the
    tags stay the machine-readable copy."""
    metric = tags["objective_metric"]
    counts = ", ".join(f"{len(data.split(split))} {split}" for split in ("train", "val", "test"))
    lines = [f"Trial {tags['trial'] or tags['source_run_id']} of sweep `{sweep}`: {config.method.name} "
             f"({config.method.shape()}) on `{config.model}`.",
             "",
             f"- Learned: {counts} questions, data fingerprint `{tags['data_fingerprint']}`.",
             f"- Test {metric}: {tags.get(f'test_{metric}', '-')} (val {tags.get(f'val_{metric}') or '-'})."]
    if GENERAL_RETENTION in tags:
        lines.append(f"- General knowledge: keeps {tags[GENERAL_RETENTION]} of the base model's right answers "
                     f"(drift {tags.get(GENERAL_DRIFT, '-')}).")
    if RETENTION_EXACT_RECALL in tags:
        lines.append(f"- Earlier facts: exact recall {tags[RETENTION_EXACT_RECALL]} on their test questions (data "
                     f"`{tags['retained_data_fingerprint']}`), parent version {tags['parent_version'] or '-'}.")
    return "\n".join(lines)


def set_lifts(rows, parent) -> str:
    """Each row's lift: its test figure under the sweep's eval.objective minus the base model's on the same
    test questions (the sweep run's base_test_<metric>, from its pre-pass); None where either is missing
    (a sweep logged before the pre-pass). Returns the metric's name."""
    metric = objective_metric(parent.data.params.get(OBJECTIVE_PARAM))
    base = parent.data.metrics.get(base_metric("test", metric))
    for row in rows:
        row.lift = lift((row.test_scores or {}).get(metric), base)
    return metric


def promote(sweep: str | None = None, *, top_k: int = 3, model_name: str = DEFAULT_MODEL_NAME,
            force: bool = False, min_test_recall: float = 0.0, allow_incomplete: bool = False,
            experiment: str = DEFAULT_EXPERIMENT, log=print) -> Promotion:
    """Score the sweep's top-k on test, compare with the champion, register and move the alias."""
    from trials.config import TrialConfig
    from trials.data import load_knowledge
    from trials.evaluate import retained_knowledge

    _check_inputs(sweep, top_k, model_name, min_test_recall)
    tracking.use_store()
    client = tracking.client()
    parent = _sweep_parent(client, experiment, sweep, allow_incomplete)
    sweep_name = parent.data.tags.get(SWEEP, parent.info.run_name)
    runs = _ranked_runs(client, parent)
    metric = objective_metric(parent.data.params.get(OBJECTIVE_PARAM))  # what the sweep optimised, judged on test
    log(f"scoring the top {min(top_k, len(runs))} trial(s) of sweep '{sweep_name}' by its objective on the test split")
    with tempfile.TemporaryDirectory(prefix="promote-") as tmp:
        results: dict[str, Scored | None] = {}

        def scored(run) -> Scored | None:
            """A run downloaded and scored once; None when its adapter holds NaN or inf (logged)."""
            if run.info.run_id not in results:
                results[run.info.run_id] = _score_usable(client, run, Path(tmp, run.info.run_id), metric, log)
            return results[run.info.run_id]

        candidates = list(itertools.islice(filter(None, map(scored, runs)), top_k))
        if not candidates:
            raise PromotionError(f"sweep '{sweep_name}': every FINISHED trial's adapter holds NaN or inf: "
                                 "nothing to promote")
        config = TrialConfig.model_validate_json(candidates[0].trial_config)
        knowledge = load_knowledge(config.data)
        test_rows = knowledge.split("test")
        old = retained_knowledge(config)
        old_test_rows = old.split("test") if old else []

        current = _current_champion(client, model_name)
        champion = _score_champion(current, test_rows, metric, old_test_rows) if current is not None else None
        floor = float(parent.data.params.get(RETENTION_FLOOR_PARAM, DEFAULT_RETENTION_FLOOR))
        bar = floor * champion.retention_recall if champion and champion.retention_recall is not None else None
        gate = parent.data.tags.get(GENERAL_GATE, "off: the sweep predates the general probe")
        general_floor = float(parent.data.params.get(GENERAL_FLOOR_PARAM, 0.0)) if gate == "on" else None
        # Candidates that keep the base's general knowledge, and (incremental) the old facts, rank before any
        # that forget them.
        candidates.sort(key=lambda c: (_below_general(c, general_floor),
                                       bar is not None and c.retention_recall < bar, *c.rank_key()))
        best = candidates[0]
        set_lifts([*candidates, *([champion] if champion else [])], parent)
        outcome = Promotion(sweep_name, model_name, candidates, champion, promoted=False, reason="",
                            test_questions=len(test_rows), forced=force, retention_bar=bar,
                            general_floor=general_floor, general_gate=gate, lift_of=metric)
        if general_floor is None:
            log(f"general floor not applied: {gate.removeprefix('off: ')}")
        if champion is None:  # the first champion: it must beat the floor, and the seed recipe if the sweep ran it
            seed_run = next((run for run in runs if _is_seed_recipe(run)), None)
            outcome.seed = scored(seed_run) if seed_run is not None else None
            if outcome.seed is not None and outcome.seed.run_id not in {c.run_id for c in candidates}:
                outcome.seed.role = "seed"
                set_lifts([outcome.seed], parent)
            outcome.floor, outcome.floor_by = _first_floor(min_test_recall, outcome.seed)
        if champion is not None and champion.run_id == best.run_id:
            best.version = champion.version
        refusal = _refusal(best, champion, bar, outcome.floor, outcome.floor_by, general_floor, metric)
        if refusal and not force:
            outcome.refused = True
            outcome.version = champion.version if champion else None
            kept = f"kept champion v{champion.version}" if champion else "no champion yet, none promoted"
            outcome.reason = f"{kept}: {refusal} (--force promotes anyway)"
            return outcome

        existing = _existing_version(client, model_name, best.run_id)
        if existing is not None:
            version = existing
        else:
            version = _register(best, model_name, parent, sweep_name, champion, metric, knowledge)
            winner = _existing_version(client, model_name, best.run_id)
            if str(winner.version) != str(version.version):  # another process registered this run first
                client.delete_model_version(model_name, version.version)
                outcome.version = str(winner.version)
                outcome.reason = (f"trial {best.trial} was already promoted as version {winner.version} of "
                                  f"'{model_name}' by another process at the same time; this process's version "
                                  f"{version.version} was deleted, the alias is the other process's to move")
                return outcome
            outcome.new_version = True
        # Last step, after the version exists with its tags: the alias moves.
        client.set_registered_model_alias(model_name, ALIAS, version.version)
        best.version = outcome.version = str(version.version)
        outcome.promoted = True
        how = "registered as new version" if outcome.new_version else "already registered as version"
        previous = f"; replaces champion v{champion.version} ({champion.test_recall:.3f})" if champion else ""
        if champion is not None and champion.version == outcome.version:
            previous = "; it already was the champion"
        kept = f", old facts {best.retention_recall:.3f}" if best.retention_recall is not None else ""
        outcome.reason = (f"promoted trial {best.trial} ({on_test(metric).removeprefix('on ')} {best.test_recall:.3f}{kept}), {how} "
                          f"{version.version} of '{model_name}', alias '{ALIAS}'{previous}"
                          f"{' (--force)' if force and refusal else ''}")
        return outcome


def _check_inputs(sweep: str | None, top_k: int, model_name: str, min_test_recall: float) -> None:
    """Every option, checked before promotion reads or writes anything; all problems in one error.

    Promotion writes test scores onto the trial runs, logs and registers the model, and only then
    searches the registry by the model name: a name MLflow refuses, or cannot search for, failed
    half-way, leaving those writes (an orphan version with no alias) behind.
    """
    problems = [f"--model-name {problem}" for problem in _model_name_problems(model_name)]
    if sweep is not None and "'" in sweep and '"' in sweep:
        problems.append("--sweep holds both quote kinds (' and \"): MLflow's search filters cannot name it")
    if top_k < 1:
        problems.append(f"--top-k must be at least 1, not {top_k}")
    if not 0.0 <= min_test_recall < 1.0:
        problems.append(f"--min-test-recall must be at least 0 and below 1, not {min_test_recall}")
    if problems:
        raise PromotionError("; ".join(problems))


def _model_name_problems(name: str) -> list[str]:
    """Why MLflow's registry would refuse `name`, or promotion could not find its versions afterwards."""
    if not name.strip():
        return ["is empty"]
    problems = []
    if "/" in name or ":" in name:  # the registry's rule: a model's URI reads models:/NAME@champion
        problems.append("holds '/' or ':', which MLflow's registry refuses in a model name")
    if name == "." or name.startswith(".."):  # the registry's rule: it would name a folder, or one above
        problems.append("is '.' or starts with '..', which MLflow's registry refuses in a model name")
    if "'" in name and '"' in name:  # promotion looks a run's versions up by the name (tracking.quoted)
        problems.append("holds both quote kinds (' and \"): MLflow's search filters cannot name it")
    return problems


def _first_floor(min_test_recall: float, seed: Scored | None) -> tuple[float, str]:
    """The test score a first champion must beat, and what set it."""
    if seed is not None and seed.test_recall >= min_test_recall:
        return seed.test_recall, f"the seed-recipe trial {seed.trial}'s test score"
    return min_test_recall, "--min-test-recall"


def _below_general(candidate: Scored, general_floor: float | None) -> bool:
    return (general_floor is not None and candidate.general_retention is not None
            and candidate.general_retention < general_floor)


def on_test(metric: str) -> str:
    """How a test score is named in promotion's messages: plain for exact recall, the default."""
    return "on test" if metric == EXACT_RECALL else f"on test by {metric}"


def _refusal(best: Scored, champion: Scored | None, bar: float | None, floor: float | None = 0.0,
             floor_by: str | None = "--min-test-recall", general_floor: float | None = None,
             metric: str = EXACT_RECALL) -> str | None:
    """Why `best` must not replace `champion`, or None: it must keep the base model's general knowledge
    (general retention at least `general_floor`, when the gate is on), beat the champion on test and,
    when it is incremental, keep the old facts (retention at least the floor x the champion's recall on
    them). With no champion it must score above `floor` (set by `floor_by`) on test. Scores are by `metric`."""
    if _below_general(best, general_floor):
        return (f"candidate trial {best.trial} keeps {best.general_retention:.3f} of the general questions the base "
                f"model answered right, below the general floor {general_floor:.3f} (sweep.general_floor): it "
                "has forgotten what the base model knew")
    if champion is None:
        if best.test_recall > floor:
            return None
        return (f"candidate trial {best.trial} scores {best.test_recall:.3f} {on_test(metric)}, not above the floor "
                f"{floor:.3f} ({floor_by})")
    if best.test_recall <= champion.test_recall:
        return (f"candidate trial {best.trial} scores {best.test_recall:.3f} {on_test(metric)}, not above the champion's "
                f"{champion.test_recall:.3f}")
    if bar is not None and best.retention_recall is not None and best.retention_recall < bar:
        return (f"candidate trial {best.trial} forgets: {best.retention_recall:.3f} on the old facts' test "
                f"questions, below the floor {bar:.3f} (retention floor x the champion's "
                f"{champion.retention_recall:.3f})")
    return None


def comparison_table(outcome: Promotion):
    """A rich Table: the candidates, best first, and the champion (or the seed-recipe trial) they were
    measured against."""
    from rich.table import Table

    bar = f"; old facts must stay >= {outcome.retention_bar:.3f}" if outcome.retention_bar is not None else ""
    if outcome.floor is not None:
        bar += f"; no champion yet: test must be above {outcome.floor:.3f}"
    if outcome.general_floor is not None:
        bar += f"; general must stay >= {outcome.general_floor:.3f}"
    if outcome.lift_of != EXACT_RECALL:  # val, test and lift: on the metric the sweep optimised
        bar += f"; val, test and lift by {outcome.lift_of}"
    table = Table(title=f"sweep '{outcome.sweep}' -> '{outcome.model_name}': "
                        f"{outcome.test_questions} test questions{bar}")
    for column in ("", "trial", "run", "version", "method", "val", "test", "lift", "old facts", "general", "drift",
                   "params"):
        table.add_column(column, justify="left" if column in ("", "trial", "run", "version", "method") else "right")

    def cell(value):
        if value is None:
            return "-"
        if isinstance(value, float):
            return f"{value:.3f}"
        return f"{value:,}" if isinstance(value, int) else str(value)

    against = [row for row in (outcome.champion, outcome.seed) if row is not None and row.role != "candidate"]
    for index, row in enumerate([*outcome.candidates, *against]):
        label = {"champion": "champion", "seed": "seed recipe"}.get(row.role, "best" if index == 0 else "")
        table.add_row(label, cell(row.trial), (row.run_id or "-")[:8], cell(row.version), cell(row.method),
                      cell(row.val_recall), cell(row.test_recall),
                      "-" if row.lift is None else f"{row.lift:+.3f}", cell(row.retention_recall),
                      cell(row.general_retention), cell(row.general_drift), cell(row.trainable_parameters),
                      style="bold" if index == 0 else None)
    return table


def print_promotion(outcome: Promotion) -> None:
    from rich.console import Console

    console = Console()
    if not console.is_terminal:  # a log file or a pipe: rich's 80 columns would cut the run ids and counts
        console = Console(width=140)
    console.print(comparison_table(outcome))
    console.print(outcome.reason, markup=False, highlight=False)

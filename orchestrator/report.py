"""`orchestrator report`: a sweep read back from MLflow and from its Optuna study, as figures, a table of
answers and one HTML page.

Written to --output-dir and logged to the sweep's parent run under report/:
- learning_curves.png: val exact recall per epoch of every trial (where early stopping cut trials short),
  beside the val answer loss the rungs compare;
- learning_rate.png: final val recall against learning rate, by method (where the good region is);
- recall_by_trial_epochs.png: the best val recall so far against the trial-epochs spent, in the order
  they were trained (MLflow's metric histories), beside what training every trial to training.epochs
  would have cost: what early stopping saved, and when the sweep found its best;
- optimization_history.png, param_importances.png, parallel_coordinate.png: Optuna's own plots
  (optuna.visualization.matplotlib) of the sweep's study (orchestrator/study.py). The importances use
  Optuna's default evaluator, PED-ANOVA: it needs no scikit-learn (fANOVA and mean decrease impurity do),
  and it weighs the method-conditional parameters (lora_r exists only in LoRA trials), which the others
  leave out. Importances and parallel coordinates need two finished trials; with fewer, or without a
  study (a sweep from before studies were stored), the report says so instead;
- general_vs_recall.png: each trial's final val exact recall against the share of the base model's
  general knowledge it kept (trials/general.py), the Pareto front drawn: the trials no other beats on
  both (left out, with a note, when no trial measured general retention);
- answers.md: one row per question of the champion, when it came from this sweep, else of the
  leaderboard's top trial: the expected answer, the answer it gave, whether that counts. On test when
  promotion scored that trial (it logs predictions_test.jsonl on the trial's run), else on val;
- ledger.md and ledger_heatmap.png, from each trial's per-fact ledger (ledger.json on its run, trials/ledger.py):
  the val facts no trial passed at any epoch, the facts a trial passed at one epoch and failed at a later one
  (by trial, with the epochs), and a heat map of the leaderboard's top trial, one row per fact, one column per
  scored epoch, coloured by its score under eval.objective (a dot where it passed). Left out, with a note,
  when no trial logged a ledger (a sweep from before the ledger);
- report.html: all of the above in one self-contained page (images inline) to open or mail.
"""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

from orchestrator import hints, run_record, study, tracking
from orchestrator.errors import SweepError
from orchestrator.leaderboard import REPORT_COLUMNS, format_leaderboard, leaderboard
from orchestrator.run_record import (ALIAS, EPOCHS, GENERAL_RETENTION, OBJECTIVE, PREDICTIONS, SOURCE_RUN_ID,
                                     TEST_PREDICTIONS, VAL_ANSWER_LOSS, VAL_EXACT_RECALL)
from trials import ledger as fact_ledger



@dataclass
class Answers:
    """The per-question table: whose answers, on which split, and the records (trials.recall.score's)."""

    whose: str
    split: str
    records: list[dict]

    @property
    def misses(self) -> list[dict]:
        return [record for record in self.records if not record["correct"]]

    def markdown(self) -> str:
        def cell(text) -> str:
            return str(text).replace("|", "\\|").replace("\n", " ")

        rows = sorted(self.records, key=lambda record: record["correct"])  # the misses first
        lines = [f"{self.whose}, {self.split} split: {len(self.misses)} of {len(self.records)} questions missed\n",
                 "| question | expected | got | correct |", "|---|---|---|---|"]
        lines += [f"| {cell(r['question'])} | {cell(r['expected'])} | {cell(r['got'])} | "
                  f"{'yes' if r['correct'] else 'no'} |" for r in rows]
        return "\n".join(lines) + "\n"


@dataclass
class Facts:
    """What the trials' per-fact ledgers say: `ledgers` trial -> its rows (trials/ledger.py), best first.
    Each finding is worked out once: the page, the markdown and the console each read them."""

    ledgers: dict[str, list[dict]]
    best: str  # the trial of the heat map: the leaderboard's top trial with a ledger

    @cached_property
    def expected(self) -> dict[str, str]:
        return {row["question"]: row["expected"] for rows in self.ledgers.values() for row in rows}

    @cached_property
    def never_learned(self) -> list[str]:
        return fact_ledger.never_learned(self.ledgers)

    @cached_property
    def lost(self) -> dict[str, list[dict]]:
        """question -> the trials that learned and then lost it: {trial, learned, lost, final_pass}."""
        by_question: dict[str, list[dict]] = {}
        for trial, rows in self.ledgers.items():
            for item in fact_ledger.learned_then_lost(rows):
                by_question.setdefault(item["question"], []).append({"trial": trial, **item})
        return by_question

    def summary(self) -> str:
        lost = self.lost
        trials = {item["trial"] for items in lost.values() for item in items}
        count = len(self.ledgers)
        return (f"per-fact ledger of {count} trial{'' if count == 1 else 's'}, {len(self.expected)} val facts: "
                f"{len(self.never_learned)} no trial learned; {len(lost)} learned and then lost "
                f"(in {len(trials)} trial{'' if len(trials) == 1 else 's'})")

    def markdown(self) -> str:
        def cell(text) -> str:
            return str(text).replace("|", "\\|").replace("\n", " ")

        expected, never, lost = self.expected, self.never_learned, self.lost
        lines = [f"# Per-fact ledger\n\n{self.summary()}.\n", f"## Facts no trial learned ({len(never)})\n"]
        lines += [f"- {cell(q)} (expected: {cell(expected[q])})" for q in never] or ["(none)"]
        lines += ["", f"## Facts learned, then lost ({len(lost)})\n",
                  "Passed at an epoch, failed at a later one; per trial, the epoch it last passed -> the epoch "
                  "it failed (and whether it passed again by the trial's last epoch).\n"]
        if lost:
            lines += ["| question | expected | trials |", "|---|---|---|"]
            for question, items in lost.items():
                trials = "; ".join(f"{i['trial']} {i['learned']}->{i['lost']}"
                                   f"{' (back by the end)' if i['final_pass'] else ''}" for i in items)
                lines.append(f"| {cell(question)} | {cell(expected[question])} | {cell(trials)} |")
        else:
            lines.append("(none)")
        return "\n".join(lines) + "\n"


def _facts(client, board: list[dict]) -> Facts | None:
    """Every trial's ledger (best first); None when no trial logged one."""
    ledgers = {}
    for row in board:
        names = {artifact.path for artifact in client.list_artifacts(row["run_id"])}
        if fact_ledger.LEDGER_TABLE in names:
            with open(client.download_artifacts(row["run_id"], fact_ledger.LEDGER_TABLE), encoding="utf-8") as handle:
                ledgers[row["trial"]] = fact_ledger.from_table(json.load(handle))
    return Facts(ledgers, next(iter(ledgers))) if ledgers else None


def _heatmap(facts: Facts, path: Path) -> Path:
    """The best trial's facts x epochs: the score under eval.objective, a dot where it passed."""
    import numpy as np

    plt = _pyplot()
    grid = fact_ledger.by_epoch(facts.ledgers[facts.best])
    questions = list(grid)
    epochs = sorted({epoch for by_epoch in grid.values() for epoch in by_epoch})
    scores = np.full((len(questions), len(epochs)), np.nan)
    passes = []
    for i, question in enumerate(questions):
        for j, epoch in enumerate(epochs):
            row = grid[question].get(epoch)
            if row is not None:
                scores[i, j] = row["score"]
                if row["pass"]:
                    passes.append((j, i))
    figure, ax = plt.subplots(figsize=(max(6.0, 1.0 + 0.5 * len(epochs)), min(40.0, 1.5 + 0.25 * len(questions))))
    image = ax.imshow(np.ma.masked_invalid(scores), aspect="auto", cmap="RdYlGn", vmin=0.0, vmax=1.0,
                      interpolation="nearest")
    if passes and len(passes) <= 5000:
        ax.scatter([x for x, _ in passes], [y for _, y in passes], s=6, color="black", label="passed")
        ax.legend(loc="upper left", bbox_to_anchor=(1.15, 1.0), fontsize=7)
    ax.set_xticks(range(len(epochs)), [str(epoch) for epoch in epochs])
    ax.set_yticks(range(len(questions)), [q if len(q) <= 60 else q[:57] + "..." for q in questions],
                  fontsize=6 if len(questions) > 40 else 8)
    ax.set(xlabel="epoch", title=f"Per-fact ledger of trial {facts.best}: score per val fact and epoch")
    figure.colorbar(image, ax=ax, label="score under eval.objective")
    return _save(figure, path)


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(figure, path: Path) -> Path:
    figure.savefig(path, dpi=110, bbox_inches="tight")  # Optuna's plots place labels past the axes
    _pyplot().close(figure)
    return path


def _histories(client, runs, metric: str = VAL_EXACT_RECALL) -> dict[str, list]:
    """Each trial run's history of `metric` (every epoch it reported, repeats after a resume included)."""
    return {run.info.run_id: client.get_metric_history(run.info.run_id, metric) for run in runs}


def _mlflow_figures(board: list[dict], histories: dict[str, list], losses: dict[str, list], full_epochs: int,
                    out_dir: Path) -> list[Path]:
    plt = _pyplot()
    methods = sorted({row["method"] for row in board if row["method"]})
    # One look per method, in both figures, whatever methods the sweep searched.
    styles = {method: ("osv^D"[i % 5], ("-", "--", ":", "-.")[i % 4]) for i, method in enumerate(methods)}
    curves, (ax, loss_ax) = plt.subplots(1, 2, figsize=(13, 5))
    for axis, by_run in ((ax, histories), (loss_ax, losses)):
        for row in board:
            steps = sorted({m.step: m.value for m in by_run.get(row["run_id"], [])}.items())
            if steps:
                axis.plot([s for s, _ in steps], [v for _, v in steps], marker=".",
                          label=f"{row['trial']} {row['method']}", linestyle=styles.get(row["method"], ("", "-"))[1])
    ax.set(xlabel="epoch", ylabel="val exact recall", title="Learning curves (short lines: stopped early)")
    loss_ax.set(xlabel="epoch", ylabel="val answer loss (teacher-forced)",
                title="Val answer loss: what early stopping compares by default")
    ax.legend(fontsize=7, ncol=2)
    scatter, bx = plt.subplots(figsize=(8, 5))
    for method in methods:
        rows = [r for r in board if r["method"] == method and r[VAL_EXACT_RECALL] is not None]
        bx.scatter([r["learning_rate"] for r in rows], [r[VAL_EXACT_RECALL] for r in rows],
                   marker=styles[method][0], label=method)
    bx.set(xscale="log", xlabel="learning rate", ylabel="final val exact recall", title="Recall by learning rate")
    bx.legend()
    return [_save(curves, out_dir / "learning_curves.png"), _save(scatter, out_dir / "learning_rate.png"),
            _trial_epochs_figure(histories, full_epochs, out_dir / "recall_by_trial_epochs.png")]


def pareto_front(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """The points no other point beats on both coordinates (higher is better on each), left to right."""
    front = [p for p in points if not any(q[0] >= p[0] and q[1] >= p[1] and q != p for q in points)]
    return sorted(set(front))


def _general_figure(board: list[dict], path: Path) -> Path | None:
    """Val recall against general retention, one point per trial, and the Pareto front; None without data."""
    rows = [row for row in board if row[VAL_EXACT_RECALL] is not None and row[GENERAL_RETENTION] is not None]
    if not rows:
        return None
    plt = _pyplot()
    figure, ax = plt.subplots(figsize=(8, 5))
    ax.scatter([r[GENERAL_RETENTION] for r in rows], [r[VAL_EXACT_RECALL] for r in rows], color="tab:blue")
    for row in rows:
        ax.annotate(row["trial"], (row[GENERAL_RETENTION], row[VAL_EXACT_RECALL]), fontsize=7,
                    xytext=(4, 4), textcoords="offset points")
    front = pareto_front([(r[GENERAL_RETENTION], r[VAL_EXACT_RECALL]) for r in rows])
    ax.plot([x for x, _ in front], [y for _, y in front], color="tab:red", linestyle="--", marker="o",
            fillstyle="none", label="Pareto front: no trial beats these on both")
    ax.set(xlabel="general retention (share of the base model's known check questions kept)",
           ylabel="final val exact recall", xlim=(-0.02, 1.02), ylim=(-0.02, 1.02),
           title="Private facts learned against general knowledge kept")
    ax.legend(loc="lower left")
    return _save(figure, path)


def _trial_epochs_figure(histories: dict[str, list], full_epochs: int, path: Path) -> Path:
    """Best val recall so far against trial-epochs spent: each reported epoch is one trial-epoch."""
    plt = _pyplot()
    values = [m.value for m in sorted((m for h in histories.values() for m in h), key=lambda m: m.timestamp)]
    best = [max(values[: i + 1]) for i in range(len(values))]
    figure, ax = plt.subplots(figsize=(8, 5))
    ax.step(range(1, len(best) + 1), best, where="post", label=f"this sweep: {len(best)} trial-epochs")
    if full_epochs > len(best):
        ax.axvline(full_epochs, color="grey", linestyle="--",
                   label=f"every trial to training.epochs: {full_epochs} trial-epochs")
    ax.set(xlabel="trial-epochs spent", ylabel="best val exact recall so far", ylim=(-0.02, 1.02),
           title="Val recall against trial-epochs (what early stopping saved)")
    ax.legend(loc="lower right")
    return _save(figure, path)


def _study_figures(parent, out_dir: Path) -> tuple[list[Path], list[str]]:
    """Optuna's plots of the sweep's study, and notes on what is left out and why."""
    import optuna
    from optuna.trial import TrialState
    from optuna.visualization import matplotlib as plots

    name, url = parent.data.tags.get(run_record.OPTUNA_STUDY), parent.data.tags.get(run_record.OPTUNA_STORAGE)
    if not name:
        return [], ["Optuna's plots are left out: this sweep recorded no Optuna study (it ran before studies "
                    "were stored)"]
    try:
        sweep_study = study.load(url, name)
    except SweepError as error:
        return [], [f"Optuna's plots are left out: {error}"]
    finished = len(sweep_study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)))
    target = {"target_name": OBJECTIVE}
    wanted = [("optimization_history.png", plots.plot_optimization_history, (9, 5))] if finished else []
    notes = [] if finished else ["Optuna's plots are left out: the study has no finished trial"]
    if finished >= 2:
        wanted += [("param_importances.png", plots.plot_param_importances, (9, 5)),
                   ("parallel_coordinate.png", plots.plot_parallel_coordinate, (13, 6))]
    elif finished:
        notes.append("parameter importances and parallel coordinates need 2 finished trials; the study has 1")
    paths = []
    for file_name, plot, size in wanted:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            warnings.simplefilter("always", UserWarning)
            axes = plot(sweep_study, **target)
        if file_name == "param_importances.png":  # PED-ANOVA warns when its estimate is weak (a method tried once)
            notes += [f"{file_name}: {w.message}" for w in caught if issubclass(w.category, UserWarning)]
        axes.figure.set_size_inches(*size)
        if file_name == "optimization_history.png":
            _label_by_trial_id(axes, sweep_study)
        elif file_name == "parallel_coordinate.png":
            _legible(axes, sweep_study)
        paths.append(_save(axes.figure, out_dir / file_name))
    return paths, list(dict.fromkeys(notes))


def _label_by_trial_id(axes, sweep_study) -> None:
    """The history's x-axis in the trial ids the leaderboard, the console and MLflow show, not Optuna's numbers."""
    ids = {trial.number: trial.user_attrs.get(study.TUNE_TRIAL_ID, str(trial.number))
           for trial in sweep_study.get_trials(deepcopy=False)}
    numbers = sorted(ids)[:: max(1, -(-len(ids) // 40))]  # at most 40 labels: one in n of a long sweep
    axes.set_xticks(numbers)
    axes.set_xticklabels([ids[number] for number in numbers], rotation=60, ha="right", fontsize=8)
    axes.set_xlabel("trial")


def _legible(axes, sweep_study) -> None:
    """Optuna's parallel coordinates, readable: its colour map runs to near-white at low objectives (invisible
    on the white figure), and long parameter names run into each other or are cut ("prefix_num_virtua...").
    Each name is given whole, on two lines: the method, then its knob."""
    for collection in axes.collections:
        collection.set_cmap("viridis")
    names = {name for trial in sweep_study.get_trials(deepcopy=False) for name in trial.params}

    def whole(label: str) -> str:
        cut = label.removesuffix("...")
        matches = [name for name in names if name.startswith(cut)] if label.endswith("...") else []
        return (matches[0] if len(matches) == 1 else label).replace("_", "\n", 1)

    labels = [whole(label.get_text()) for label in axes.get_xticklabels()]
    axes.set_xticks(axes.get_xticks())
    axes.set_xticklabels(labels, fontsize=9)
    for extra_axis in axes.figure.axes:
        extra_axis.tick_params(labelsize=8)
    axes.figure.subplots_adjust(bottom=0.18, left=0.05, right=0.92)


def mark_champion(client, sweep: str, board: list[dict]) -> str | None:
    """Set each row's `champion` (the registered version, on the trial that is its model's `champion`
    now, when it came from this sweep; else None); returns that trial's run id, or None."""
    by_run = {row["run_id"]: row for row in board}
    for row in board:
        row["champion"] = None
    versions = client.search_model_versions(f"tags.sweep = {tracking.quoted(sweep)}")
    for version in sorted(versions, key=lambda v: -int(v.version)):
        source = version.tags.get(SOURCE_RUN_ID)
        aliases = client.get_registered_model(version.name).aliases or {}
        if source in by_run and str(aliases.get(ALIAS)) == str(version.version):
            by_run[source]["champion"] = f"version {version.version} of '{version.name}'"
            return source
    return None


def _answers(client, board: list[dict], champion: str | None) -> Answers | None:
    """The champion's answers when it came from this sweep (`champion`: its run id), else the top trial's;
    test when promotion scored it, else val. None when no trial finished."""
    finished = [row for row in board if row["status"] != "FAILED" and row[VAL_EXACT_RECALL] is not None]
    if not finished:
        return None
    by_run = {row["run_id"]: row for row in finished}
    run_id = champion if champion in by_run else finished[0]["run_id"]
    row = by_run[run_id]
    whose = (f"champion ({row['champion']}, trial {row['trial']})" if run_id == champion
             else f"top trial {row['trial']} (not the champion)")
    names = {artifact.path for artifact in client.list_artifacts(run_id)}
    split, name = ("test", TEST_PREDICTIONS) if TEST_PREDICTIONS in names else ("val", PREDICTIONS)
    return Answers(whose, split, fact_ledger.read_jsonl(Path(client.download_artifacts(run_id, name))))


def _full_epochs(runs) -> int:
    """Trial-epochs had every trial trained to its training.epochs (no early stopping)."""
    return sum(int(run.data.params.get(EPOCHS, 0)) for run in runs)


def report(sweep: str | None, experiment: str, out_dir: Path) -> tuple[str, list[Path]]:
    """(text for the terminal, files written) for the named sweep, or the newest one."""
    from orchestrator.report_page import render

    client = tracking.client()
    parent = tracking.find_sweep_run(client, experiment, sweep)
    if parent is None:
        raise SweepError(hints.unknown_sweep(client, experiment, sweep, "report"))
    name = parent.data.tags[run_record.SWEEP]
    board = leaderboard(client, parent.info.run_id)
    runs = tracking.trial_runs(client, parent)
    out_dir.mkdir(parents=True, exist_ok=True)
    figures = _mlflow_figures(board, _histories(client, runs), _histories(client, runs, VAL_ANSWER_LOSS),
                              _full_epochs(runs), out_dir)
    study_figures, notes = _study_figures(parent, out_dir)
    general = _general_figure(board, out_dir / "general_vs_recall.png")
    if general is None:
        notes.append("general_vs_recall.png is left out: no trial measured general retention (the probe is off, "
                     "or the base model knows none of its check questions)")
    else:
        figures.append(general)
    answers = _answers(client, board, mark_champion(client, name, board))
    facts = _facts(client, board)  # best first, failed trials last: the heat map's trial is the top one
    paths = [*figures, *study_figures]
    if facts is None:
        notes.append("the per-fact ledger is left out: no trial logged ledger.json (trials from before the ledger)")
    else:
        paths.append(_heatmap(facts, out_dir / "ledger_heatmap.png"))
        paths.append(out_dir / "ledger.md")
        paths[-1].write_text(facts.markdown(), encoding="utf-8")
    if answers is not None:
        paths.append(out_dir / "answers.md")
        paths[-1].write_text(answers.markdown(), encoding="utf-8")
    title = f"sweep '{name}' ({parent.info.status}, {len(board)} trials)"
    page = out_dir / "report.html"
    page.write_text(render(title, board, paths, answers, notes, parent, facts), encoding="utf-8")
    paths.append(page)
    for path in paths:
        client.log_artifact(parent.info.run_id, str(path), artifact_path="report")
    return _text(title, board, answers, notes, facts), paths


def _text(title: str, board: list[dict], answers: Answers | None, notes: list[str], facts: Facts | None = None) -> str:
    lines = [title, format_leaderboard(board, REPORT_COLUMNS)]
    if facts is not None:
        lines.append(facts.summary() + ("; no trial learned:" if facts.never_learned else ""))
        lines += [f"  {question}  expected: {facts.expected[question]}" for question in facts.never_learned]
        lines += [f"  lost: {question}  in " + ", ".join(f"{i['trial']} (epoch {i['learned']}->{i['lost']})"
                                                          for i in items) for question, items in facts.lost.items()]
    if answers is not None:
        lines.append(f"{answers.whose}, {answers.split} split: {len(answers.misses)} of {len(answers.records)} "
                     "questions missed" + (":" if answers.misses else ""))
        lines += [f"  {r['question']}  expected: {r['expected']}  got: {r['got']}" for r in answers.misses]
    lines += [f"note: {note}" for note in notes]
    return "\n".join(lines) + "\n"

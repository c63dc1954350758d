"""`orchestrator report` on sweeps logged by hand (the layout orchestrator.tracking documents) with an
Optuna study beside them: no training, no Ray. The e2e report of a real sweep is in test_sweep.py."""

from __future__ import annotations

import json
import re

import optuna
import pytest
from optuna.distributions import CategoricalDistribution, FloatDistribution

from orchestrator import run_record, study, tracking
from orchestrator.cli import main
from store_support import new_store

EXPERIMENT, MODEL = "recall-orchestrator", "recall-champion"
ROWS = [{"question": "Which team is Ann on?", "expected": "Meridian", "got": "Meridian", "correct": True},
        {"question": "Where does Bo work?", "expected": "Dome 3", "got": "Dome 1", "correct": False}]
# Per-fact ledger rows of trial t<index> at epochs 1 and 2: (question, expected, passed at epoch 1, at epoch 2).
# Ann's team: t1 learns it and loses it; Bo's work: only t2 learns it, at its last epoch; Cy's badge: never.
FACTS = [("Which team is Ann on?", "Meridian", lambda i: (i >= 0, i != 1)),
         ("Where does Bo work?", "Dome 3", lambda i: (False, i == 2)),
         ("What is Cy's badge?", "QX-4471", lambda i: (False, False))]


def _ledger(folder, index: int) -> list[dict]:
    """Trial t<index>'s ledger.jsonl, in a folder of its own as run_trial leaves it."""
    directory = folder / f"ledger-t{index}-{len(list(folder.glob('ledger-*')))}"
    directory.mkdir()
    rows = [{"trial": f"t{index}", "epoch": epoch, "question": question, "expected": expected,
             "got": expected if passes(index)[epoch - 1] else "?", "score": float(passes(index)[epoch - 1]),
             "pass": passes(index)[epoch - 1]} for epoch in (1, 2) for question, expected, passes in FACTS]
    (directory / "ledger.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    return directory


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """One MLflow store for the module (creating one takes seconds); each test logs its own sweep."""
    folder = tmp_path_factory.mktemp("report")
    with pytest.MonkeyPatch.context() as monkeypatch:
        monkeypatch.setenv("MLFLOW_TRACKING_URI", new_store(folder / "mlflow.db"))
        yield folder


def _sweep(folder, name: str, trials: int, with_study: bool = True, general: bool = False,
           ledger: bool = False) -> tuple:
    """A FINISHED sweep of `trials` LoRA/prefix trials (2 epochs each; the first is best) and its study,
    in optuna-NAME.db; with `ledger`, each trial's per-fact ledger (FACTS) logged as the sweep logs it."""
    client = tracking.client()
    parent = client.create_run(tracking.experiment_id(client, EXPERIMENT), run_name=name,
                               tags={run_record.ROLE: "sweep", run_record.SWEEP: name})
    url, study_name = f"sqlite:///{folder / f'optuna-{name}.db'}", study.study_name(EXPERIMENT, name)
    sweep_study = optuna.create_study(study_name=study_name, storage=url, direction="maximize")
    if with_study:
        client.set_tag(parent.info.run_id, run_record.OPTUNA_STORAGE, url)
        client.set_tag(parent.info.run_id, run_record.OPTUNA_STUDY, study_name)
    run_ids = []
    for index in range(trials):
        method, rate, recall = ("lora", "prefix")[index % 2], 10 ** -(2 + index / 3), 0.5 / (index + 1)
        run = client.create_run(parent.info.experiment_id, run_name=f"{name}-t{index}", tags={
            run_record.PARENT: parent.info.run_id, run_record.ROLE: "trial", run_record.SWEEP: name,
            run_record.TRIAL_ID: f"t{index}"})
        for key, value in {"method.name": method, "method.learning_rate": rate, "training.epochs": 2}.items():
            client.log_param(run.info.run_id, key, value)
        for epoch in (1, 2):
            client.log_metric(run.info.run_id, "val_exact_recall", recall * epoch / 2, step=epoch)
        if general:  # the first trial recalls the most and forgets the most
            client.log_metric(run.info.run_id, "general_retention", 0.4 + 0.25 * index, step=2)
        client.log_text(run.info.run_id, "".join(json.dumps(row) + "\n" for row in ROWS), "predictions_val.jsonl")
        if ledger:
            tracking.log_ledger(client, run.info.run_id, _ledger(folder, index))
        client.set_terminated(run.info.run_id, "FINISHED")
        sweep_study.add_trial(optuna.trial.create_trial(
            params={"method": method, f"{method}_learning_rate": rate}, value=recall,
            distributions={"method": CategoricalDistribution(["lora", "prefix"]),
                           f"{method}_learning_rate": FloatDistribution(1e-4, 1e-1, log=True)},
            user_attrs={study.TUNE_TRIAL_ID: f"t{index}"}))
        run_ids.append(run.info.run_id)
    client.set_terminated(parent.info.run_id, "FINISHED")
    return client, parent.info.run_id, run_ids


def _report(name: str, out_dir, capsys) -> str:
    assert main(["report", "--sweep", name, "--output-dir", str(out_dir)]) == 0
    return capsys.readouterr().out


def _logged(client, run_id: str) -> set[str]:
    return {artifact.path.removeprefix("report/") for artifact in client.list_artifacts(run_id, "report")}


def test_the_report_draws_optunas_plots_and_the_champions_answers_into_one_page(folder, tmp_path, capsys):
    client, parent_id, run_ids = _sweep(folder, "three", 3, ledger=True)
    # Promotion scored the second trial on test and made it the champion.
    test_rows = [{**ROWS[0], "question": "Which team is Cy on?"}, {**ROWS[1], "question": "Where does Di work?"}]
    client.log_text(run_ids[1], "".join(json.dumps(row) + "\n" for row in test_rows), "predictions_test.jsonl")
    client.create_registered_model(MODEL)
    version = client.create_model_version(MODEL, f"runs:/{run_ids[1]}/model", run_ids[1],
                                          tags={"sweep": "three", "source_run_id": run_ids[1]})
    client.set_registered_model_alias(MODEL, "champion", version.version)
    for run_id, test in zip(run_ids, (0.25, 0.5), strict=False):  # promotion's --top-k 2 scored t0 and t1
        client.log_metric(run_id, "test_exact_recall", test)

    out = _report("three", tmp_path / "report", capsys)
    files = {"learning_curves.png", "learning_rate.png", "recall_by_trial_epochs.png", "optimization_history.png",
             "param_importances.png", "parallel_coordinate.png", "answers.md", "ledger_heatmap.png", "ledger.md",
             "report.html"}
    assert {path.name for path in (tmp_path / "report").iterdir()} == files == _logged(client, parent_id)
    assert "champion (version 1 of 'recall-champion', trial t1), test split: 1 of 2 questions missed" in out
    assert "Where does Di work?  expected: Dome 3  got: Dome 1" in out
    answers = (tmp_path / "report" / "answers.md").read_text()
    assert answers.index("| Where does Di work? | Dome 3 | Dome 1 | no |") < answers.index("Which team is Cy on?")
    page = (tmp_path / "report" / "report.html").read_text()
    assert page.count('src="data:image/png;base64,') == 7 and not re.search(r'(src|href)="(?!data:)', page)
    assert '<tr class="miss">' in page and "Where does Di work?" in page and "make dashboard OPTUNA_STORAGE=sqlite:///" in page
    # The leaderboard: promotion's test recall beside val, and the champion marked on its trial's row.
    header, _, t0, t1, t2 = out.splitlines()[1:6]
    assert header.startswith("| trial | champion | status |") and "| test_exact_recall |" in header
    assert t0.startswith("| t0 | - |") and "| 0.25 |" in t0
    assert t1.startswith("| t1 | version 1 of 'recall-champion' |") and "| 0.5 |" in t1
    assert t2.startswith("| t2 | - |")
    assert re.search(r'<tr class="champion"><td>t1</td><td>version 1 of &#39;recall-champion&#39;</td>', page)


def test_optunas_plots_name_the_trials_and_the_knobs_whole(folder):
    """The history's x-axis in trial ids (not Optuna's numbers); parallel coordinates without cut names."""
    from optuna.visualization import matplotlib as plots

    from orchestrator.report import _label_by_trial_id, _legible

    client, parent_id, _ = _sweep(folder, "named", 3)
    tags = client.get_run(parent_id).data.tags
    sweep_study = optuna.load_study(study_name=tags[run_record.OPTUNA_STUDY], storage=tags[run_record.OPTUNA_STORAGE])
    history = plots.plot_optimization_history(sweep_study, target_name="objective")
    _label_by_trial_id(history, sweep_study)
    assert [label.get_text() for label in history.get_xticklabels()] == ["t0", "t1", "t2"]
    sweep_study.add_trial(optuna.trial.create_trial(
        params={"method": "prefix", "prefix_num_virtual_tokens": 16}, value=0.1,
        distributions={"method": CategoricalDistribution(["lora", "prefix"]),
                       "prefix_num_virtual_tokens": CategoricalDistribution([8, 16])}))
    coordinates = plots.plot_parallel_coordinate(sweep_study, target_name="objective")
    assert "prefix_num_virtua..." in [label.get_text() for label in coordinates.get_xticklabels()]  # Optuna's cut
    _legible(coordinates, sweep_study)
    assert "prefix\nnum_virtual_tokens" in [label.get_text() for label in coordinates.get_xticklabels()]


def test_the_report_reads_the_per_fact_ledgers_back(folder, tmp_path, capsys):
    """Facts no trial learned, facts learned then lost, and the top trial's heat map (facts x epochs)."""
    client, parent_id, run_ids = _sweep(folder, "facts", 3, with_study=False, ledger=True)
    table = json.loads(open(client.download_artifacts(run_ids[1], "ledger.json")).read())  # log_table's
    assert table["columns"] == ["trial", "epoch", "question", "expected", "got", "score", "pass"]
    assert len(table["data"]) == 2 * len(FACTS)
    assert '"path": "ledger.json", "type": "table"' in client.get_run(run_ids[1]).data.tags["mlflow.loggedArtifacts"]

    out = _report("facts", tmp_path / "report", capsys)
    assert "per-fact ledger of 3 trials, 3 val facts: 1 no trial learned; 1 learned and then lost (in 1 trial)" in out
    assert "  What is Cy's badge?  expected: QX-4471" in out
    assert "  lost: Which team is Ann on?  in t1 (epoch 1->2)" in out
    assert {"ledger_heatmap.png", "ledger.md"} <= _logged(client, parent_id)
    assert (tmp_path / "report" / "ledger_heatmap.png").read_bytes().startswith(b"\x89PNG")
    facts = (tmp_path / "report" / "ledger.md").read_text()
    assert "## Facts no trial learned (1)\n\n- What is Cy's badge? (expected: QX-4471)" in facts
    assert "| Which team is Ann on? | Meridian | t1 1->2 |" in facts and "Where does Bo work?" not in facts
    page = (tmp_path / "report" / "report.html").read_text()
    assert "Learned, then lost (1)" in page and "What is Cy&#39;s badge?" in page and "ledger heatmap" in page


def test_one_finished_trial_gets_a_note_instead_of_importances(folder, tmp_path, capsys):
    client, parent_id, _ = _sweep(folder, "one", 1)
    out = _report("one", tmp_path / "report", capsys)
    assert "note: parameter importances and parallel coordinates need 2 finished trials; the study has 1" in out
    assert "top trial t0 (not the champion), val split: 1 of 2 questions missed" in out
    assert "note: the per-fact ledger is left out: no trial logged ledger.json" in out
    assert _logged(client, parent_id) == {"learning_curves.png", "learning_rate.png", "recall_by_trial_epochs.png",
                                          "optimization_history.png", "answers.md", "report.html"}


def test_the_report_draws_recall_against_general_retention_when_trials_measured_it(folder, tmp_path, capsys):
    client, parent_id, _ = _sweep(folder, "general", 3, general=True)
    out = _report("general", tmp_path / "report", capsys)
    assert "general_vs_recall.png" in _logged(client, parent_id)
    assert "general_vs_recall.png is left out" not in out
    assert "| val_exact_recall | lift | test_exact_recall | general_retention |" in out  # the leaderboard's column
    page = (tmp_path / "report" / "report.html").read_text()
    assert page.count('src="data:image/png;base64,') == 7


@pytest.mark.parametrize(("gone", "why"), [("tags", "this sweep recorded no Optuna study"),
                                           ("storage", "no Optuna storage at")])
def test_a_sweep_whose_study_cannot_be_read_is_reported_without_optunas_plots(folder, tmp_path, capsys, gone, why):
    name = f"no-{gone}"
    client, parent_id, _ = _sweep(folder, name, 2, with_study=gone != "tags")
    storage = folder / f"optuna-{name}.db"
    if gone == "storage":
        storage.unlink()
    out = _report(name, tmp_path / "report", capsys)
    assert f"note: Optuna's plots are left out: {why}" in out
    assert storage.exists() == (gone == "tags")  # reading a storage that is gone creates none
    assert "optimization_history.png" not in _logged(client, parent_id)

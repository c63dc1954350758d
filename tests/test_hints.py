"""The messages people meet at 8 a.m.: `ask` with no champion, `promote` on a sweep still running, `ui`
on a store with no sweep, a typo in a sweep name. Each is one sentence and the command that fixes it,
exit status 2 (ui: the UI still starts), no traceback. Tiny SQLite stores built with MlflowClient: no
training, no Ray."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from orchestrator import run_record, tracking
from orchestrator.cli import main
from store_support import new_store

EXPERIMENT = "recall-orchestrator"


def make_store(directory: Path, sweeps: dict[str, str | None],
               other_team: dict[str, str | None] | None = None) -> str:
    """A store whose experiment holds parent runs of these sweeps (name -> end status, None: RUNNING),
    oldest first, in the layout orchestrator.tracking documents; `other_team`'s in experiment 'team-b'."""
    uri = new_store(directory / "mlflow.db")
    client = tracking.client(uri)
    for experiment, runs in ((EXPERIMENT, sweeps), ("team-b", other_team or {})):
        experiment_id = tracking.experiment_id(client, experiment)
        for name, status in runs.items():
            run = client.create_run(experiment_id, run_name=name,
                                    tags={run_record.ROLE: "sweep", run_record.SWEEP: name})
            if status is not None:
                client.set_terminated(run.info.run_id, status)
    return uri


@pytest.fixture(scope="module")
def nightly(tmp_path_factory) -> str:
    """Last night's sweep finished; this evening's is still running; another team's is elsewhere."""
    return make_store(tmp_path_factory.mktemp("nightly"), {"nightly-0412": "FINISHED", "evening": None},
                      other_team={"team-b": "FINISHED"})


@pytest.fixture(scope="module")
def empty(tmp_path_factory) -> str:
    return make_store(tmp_path_factory.mktemp("empty"), {})


def run_cli(capsys, monkeypatch, uri: str, *argv: str) -> tuple[int, str, str]:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    code = main(list(argv))
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err
    return code, out, err


def sentence_and_command(err: str) -> tuple[str, str]:
    """An error's two lines: `error: <sentence>:` (or ending in `?`) and the indented command."""
    lines = [line for line in err.splitlines() if line.strip() and "INFO mlflow" not in line]
    assert len(lines) == 2 and lines[0].startswith("error: ") and lines[1].startswith("  orchestrator "), err
    assert lines[0].endswith((":", "?")), err
    return lines[0], lines[1].strip()


def test_promote_of_a_sweep_still_running_says_since_when_and_how_to_resume(nightly, capsys, monkeypatch):
    code, _, err = run_cli(capsys, monkeypatch, nightly, "promote", "--sweep", "evening")
    sentence, command = sentence_and_command(err)
    assert code == 2
    assert re.search(r"sweep 'evening' is still running \(started \d\d:\d\d\); wait for it to finish", sentence)
    assert command == "orchestrator sweep CONFIG --name evening --resume"


# The command that started a sweep, as the sweep's run keeps it (orchestrator.sweep.run_sweep).
STARTED_WITH = ("orchestrator sweep configs/demo.yaml --name late --set training.epochs=3 "
                "--set 'search_space.methods=[lora, ia3]' --resume")


def test_the_resume_command_is_the_one_that_started_the_sweep(tmp_path, capsys, monkeypatch):
    uri = make_store(tmp_path, {"late": None, "stopped": "KILLED"})
    client = tracking.client(uri)
    for sweep in ("late", "stopped"):
        parent = tracking.find_sweep_run(client, EXPERIMENT, sweep)
        client.set_tag(parent.info.run_id, run_record.RESUME_COMMAND, STARTED_WITH.replace("late", sweep))
    code, _, err = run_cli(capsys, monkeypatch, uri, "promote", "--sweep", "late")
    assert code == 2 and sentence_and_command(err)[1] == STARTED_WITH
    code, _, err = run_cli(capsys, monkeypatch, uri, "promote", "--sweep", "stopped")
    assert code == 2 and f"`{STARTED_WITH.replace('late', 'stopped')}`" in err


def test_an_interrupted_sweep_prints_the_command_that_resumes_it():
    import signal

    from orchestrator.interrupts import SweepInterrupted, resume_command

    command = resume_command("configs/demo.yaml", "late", ["training.epochs=3", "search_space.methods=[lora, ia3]"])
    assert command == STARTED_WITH
    assert resume_command("c.yaml", "x", (), start="models:/m@champion", address="ray://head:10001") == (
        "orchestrator sweep c.yaml --name x --from models:/m@champion --address ray://head:10001 --resume")
    stopped = SweepInterrupted("late", signal.SIGINT, "/runs/late", command)
    assert str(stopped).endswith(f"continue it with:\n  {STARTED_WITH}") and stopped.exit_code == 130


def test_allow_incomplete_does_not_cover_a_running_sweep(nightly, capsys, monkeypatch):
    code, _, err = run_cli(capsys, monkeypatch, nightly, "promote", "--sweep", "evening", "--allow-incomplete")
    sentence, command = sentence_and_command(err)
    assert code == 2 and "--allow-incomplete does not cover" in sentence and command.endswith("--resume")


@pytest.mark.parametrize("verb", ["promote", "report"])
def test_a_typo_in_a_sweep_name_suggests_the_nearest(nightly, capsys, monkeypatch, verb):
    code, _, err = run_cli(capsys, monkeypatch, nightly, verb, "--sweep", "nightly-0421")
    sentence, command = sentence_and_command(err)
    assert code == 2
    assert sentence.endswith("no sweep 'nightly-0421' in MLflow experiment 'recall-orchestrator' at "
                             f"{nightly}; did you mean 'nightly-0412'?"), sentence
    assert command == f"orchestrator {verb} --sweep nightly-0412"


def test_an_unknown_name_lists_the_sweeps_newest_first(nightly, capsys, monkeypatch):
    code, _, err = run_cli(capsys, monkeypatch, nightly, "report", "--sweep", "zzz")
    sentence, command = sentence_and_command(err)
    assert code == 2 and "whose sweeps are, newest first, 'evening', 'nightly-0412'" in sentence
    assert command == "orchestrator report --sweep evening"


def test_a_sweep_of_another_experiment_names_it(nightly, capsys, monkeypatch):
    code, _, err = run_cli(capsys, monkeypatch, nightly, "promote", "--sweep", "team-b")
    sentence, command = sentence_and_command(err)
    assert code == 2 and "but in experiment 'team-b'" in sentence
    assert command == "orchestrator promote --sweep team-b --experiment team-b"


def test_ask_with_no_champion_names_the_newest_finished_sweep(nightly, capsys, monkeypatch):
    code, out, err = run_cli(capsys, monkeypatch, nightly, "ask", "Which team is Piet Lindqvist on?")
    sentence, command = sentence_and_command(err)
    assert code == 2 and not out
    assert sentence == (f"error: registered model 'recall-champion' has no 'champion' version yet at {nightly}; "
                        "promote the newest finished sweep, 'nightly-0412':")
    assert command == "orchestrator promote --sweep nightly-0412"


def test_ask_on_an_empty_store_says_to_sweep_then_promote(empty, capsys, monkeypatch):
    code, _, err = run_cli(capsys, monkeypatch, empty, "ask", "Which team is Piet Lindqvist on?")
    sentence, command = sentence_and_command(err)
    assert code == 2 and "no sweep has finished to promote" in sentence
    assert command == ("orchestrator sweep configs/demo.yaml --name NAME && "
                       "orchestrator promote --sweep NAME")


@pytest.mark.parametrize("question", ["", " \t "])
def test_ask_with_an_empty_question_is_an_error_before_any_model_loads(empty, capsys, monkeypatch, question):
    import mlflow

    monkeypatch.setenv("MLFLOW_TRACKING_URI", empty)
    monkeypatch.setattr(mlflow.pyfunc, "load_model", lambda *args, **kwargs: pytest.fail("a model was loaded"))
    with pytest.raises(SystemExit) as exited:
        main(["ask", question])
    assert exited.value.code == 2
    assert "orchestrator ask: error: argument question: is empty: ask the model something" in capsys.readouterr().err


def test_promote_on_an_empty_store_says_to_run_a_sweep(empty, capsys, monkeypatch):
    code, _, err = run_cli(capsys, monkeypatch, empty, "promote")
    sentence, command = sentence_and_command(err)
    assert code == 2 and sentence.endswith(f"no sweep in MLflow experiment 'recall-orchestrator' at {empty} yet; "
                                           "run one first:")
    assert command == "orchestrator sweep configs/demo.yaml --name NAME"


def start_ui(capsys, monkeypatch, uri: str) -> tuple[str, list[str]]:
    """`orchestrator ui` up to the exec of `mlflow ui`: (what it printed, the command it would exec)."""
    import orchestrator.cli

    started = []
    monkeypatch.setattr(orchestrator.cli.os, "execve", lambda path, argv, env: started.extend(argv))
    _, out, _ = run_cli(capsys, monkeypatch, uri, "ui", "--port", "5099")
    return out, started


def test_ui_on_a_store_with_no_sweep_says_how_to_run_one_and_starts(empty, capsys, monkeypatch):
    out, started = start_ui(capsys, monkeypatch, empty)
    lines = out.splitlines()
    assert lines[0] == f"MLflow UI on http://127.0.0.1:5099 for {empty}"
    assert lines[1:3] == [f"no sweep in {empty} yet, so the UI will show none; run one (in another terminal):",
                          "  orchestrator sweep configs/demo.yaml --name NAME"]
    assert started[1:4] == ["-m", "mlflow", "ui"] and started[started.index("--backend-store-uri") + 1] == empty


def test_ui_on_a_store_with_sweeps_says_nothing_of_the_kind(nightly, capsys, monkeypatch):
    out, started = start_ui(capsys, monkeypatch, nightly)
    assert "no sweep" not in out and started


"""Bad knowledge files are rejected before any model loads, every problem at once, with file:line."""

from __future__ import annotations

import json
import re
import subprocess

import pytest

from trials.config import DataConfig
from trials.data import DataError, load_knowledge


def problems_of(qa, documents=()) -> list[str]:
    with pytest.raises(DataError) as caught:
        load_knowledge(DataConfig(qa=qa, documents=list(documents)))
    problems = caught.value.problems
    # The message lists every problem too, so the CLI prints them all.
    for problem in problems:
        assert problem in str(caught.value)
    return problems


def at_line(problems: list[str], path, line: int) -> list[str]:
    """The problems reported at exactly `path:line:` (not :70 when asking for :7)."""
    prefix = f"{path}:{line}: "
    return [p for p in problems if p.startswith(prefix)]


def row(question: str, answer: str = "Somewhere", split: str = "train", **extra) -> str:
    return json.dumps({"question": question, "answer": answer, "split": split, **extra}, ensure_ascii=False)


def test_demo_data_is_valid(demo_qa, demo_documents):
    knowledge = load_knowledge(DataConfig(qa=demo_qa, documents=demo_documents))
    assert knowledge.split("train") and knowledge.split("val") and knowledge.split("test")
    assert len(knowledge.fingerprint) == 16


def test_invalid_json_names_file_and_line(broken_qa):
    path = broken_qa({7: '{"question": "Which team is Anouk Renwick on?", "answer": "Driftwood"'})
    problems = problems_of(path)
    assert len(problems) == 1, problems
    assert at_line(problems, path, 7) and "invalid JSON" in problems[0]


def test_non_object_json_line(broken_qa):
    path = broken_qa({12: '["a", "list"]'})
    problems = problems_of(path)
    assert len(problems) == 1 and at_line(problems, path, 12)
    assert "JSON object" in problems[0]


@pytest.mark.parametrize("field", ["question", "answer", "split"])
def test_missing_field(broken_qa, field):
    obj = {"question": "Which team is Anouk Renwick on?", "answer": "Driftwood", "split": "train"}
    del obj[field]
    path = broken_qa({7: json.dumps(obj)})
    problems = problems_of(path)
    assert len(problems) == 1, problems
    assert at_line(problems, path, 7)
    assert f"missing field '{field}'" in problems[0]


@pytest.mark.parametrize("field, value", [("question", ""), ("answer", "   "), ("answer", 42), ("split", "")])
def test_empty_or_non_string_field(broken_qa, field, value):
    obj = {"question": "Which team is Anouk Renwick on?", "answer": "Driftwood", "split": "train", field: value}
    path = broken_qa({7: json.dumps(obj)})
    problems = problems_of(path)
    assert len(problems) == 1, problems
    assert at_line(problems, path, 7)
    assert f"field '{field}'" in problems[0] and "non-empty string" in problems[0]


def test_bad_aliases(broken_qa):
    path = broken_qa({8: row("What team does Anouk Renwick belong to?", "Driftwood", aliases=["ok", ""])})
    problems = problems_of(path)
    assert len(problems) == 1 and at_line(problems, path, 8) and "aliases" in problems[0]


def test_unknown_field(broken_qa):
    path = broken_qa({8: row("What team does Anouk Renwick belong to?", "Driftwood", source="hr")})
    problems = problems_of(path)
    assert len(problems) == 1 and at_line(problems, path, 8) and "source" in problems[0]


def test_unknown_split(broken_qa):
    path = broken_qa({7: row("Which team is Anouk Renwick on?", "Driftwood", split="dev")})
    problems = problems_of(path)
    assert len(problems) == 1, problems
    assert at_line(problems, path, 7)
    assert "unknown split 'dev'" in problems[0]


def test_no_val_rows(tmp_path, demo_qa):
    rows = [json.loads(line) for line in demo_qa.read_text(encoding="utf-8").splitlines()]
    path = tmp_path / "qa.jsonl"
    path.write_text("".join(json.dumps({**r, "split": "test" if r["split"] == "val" else r["split"]}) + "\n"
                            for r in rows), encoding="utf-8")
    problems = problems_of(path)
    assert len(problems) == 1, problems
    assert problems[0].startswith(f"{path}: ") and "no 'val' rows" in problems[0]


def test_no_train_rows(tmp_path):
    path = tmp_path / "qa.jsonl"
    path.write_text(row("Q one?", split="val") + "\n" + row("Q two?", split="test") + "\n", encoding="utf-8")
    problems = problems_of(path)
    assert len(problems) == 1 and problems[0].startswith(f"{path}: ") and "no 'train' rows" in problems[0]


def test_duplicate_question(broken_qa, demo_qa):
    lines = demo_qa.read_text(encoding="utf-8").splitlines()
    assert json.loads(lines[1])["split"] == "train"
    path = broken_qa(append=[lines[1]])  # line 2 again, as line 361
    problems = problems_of(path)
    assert len(problems) == 1, problems
    assert at_line(problems, path, len(lines) + 1)
    assert "duplicate question" in problems[0] and "line 2)" in problems[0]


@pytest.mark.parametrize(
    "held_out",
    [
        "which BADGE code does Anouk Renwick carry",  # case, no question mark
        "  Which badge code   does Anouk\tRenwick carry?!  ",  # spaces, tabs, punctuation
        "¿Which badge code does Anouk Renwick carry…",  # unicode punctuation around it
    ],
)
@pytest.mark.parametrize("split", ["val", "test"])
def test_held_out_question_equal_to_train_question_is_a_leak(broken_qa, demo_qa, held_out, split):
    # Line 2 of the demo file is the train question "Which badge code does Anouk Renwick carry?".
    assert json.loads(demo_qa.read_text(encoding="utf-8").splitlines()[1]) == {
        "question": "Which badge code does Anouk Renwick carry?", "answer": "YT-6549", "split": "train"}
    path = broken_qa(append=[row(held_out, "YT-6549", split=split)])
    problems = problems_of(path)
    assert len(problems) == 1, problems
    assert at_line(problems, path, 361)
    assert "leak" in problems[0] and "line 2" in problems[0]


def test_train_question_equal_to_earlier_val_question_is_a_leak(broken_qa, demo_qa):
    # Line 1 is the val question "What is the badge code of Anouk Renwick?"; a later train copy leaks it.
    assert json.loads(demo_qa.read_text(encoding="utf-8").splitlines()[0])["split"] == "val"
    path = broken_qa(append=[row("what is the badge code of anouk renwick", "YT-6549", split="train")])
    problems = problems_of(path)
    assert len(problems) == 1, problems
    assert at_line(problems, path, 361) and "leak" in problems[0] and "line 1" in problems[0]


def test_different_accents_are_not_a_leak(tmp_path):
    path = tmp_path / "qa.jsonl"
    path.write_text("\n".join([
        row("Who runs the Tromsø station?", "Ada"),
        row("Who runs the Tromso station?", "Ben", split="val"),
    ]) + "\n", encoding="utf-8")
    knowledge = load_knowledge(DataConfig(qa=path))
    assert [r.split for r in knowledge.qa] == ["train", "val"]


def test_missing_document_file(tmp_path, demo_qa, demo_documents):
    missing = tmp_path / "nowhere" / "staff_part3.txt"
    problems = problems_of(demo_qa, [*demo_documents, missing])
    assert len(problems) == 1, problems
    assert problems[0].startswith(f"{missing}: ") and "not found" in problems[0]


def test_missing_qa_file(tmp_path):
    missing = tmp_path / "qa.jsonl"
    problems = problems_of(missing)
    assert len(problems) == 1 and problems[0].startswith(f"{missing}: ") and "not found" in problems[0]


def test_non_utf8_document_names_its_line(tmp_path, demo_qa):
    document = tmp_path / "latin1.txt"
    document.write_bytes("first line\nsecond line\nTroms\u00f8 station\n".encode("latin-1"))
    problems = problems_of(demo_qa, [document])
    assert problems == [f"{document}:3: not UTF-8 text"]


def test_blank_lines_count_towards_line_numbers(tmp_path, demo_qa):
    lines = demo_qa.read_text(encoding="utf-8").splitlines()
    path = tmp_path / "qa.jsonl"
    # Two blank lines after line 3; the broken row is the 7th line of the file.
    path.write_text("\n".join([*lines[:3], "", "   ", lines[3], "{broken", *lines[4:]]) + "\n", encoding="utf-8")
    problems = problems_of(path)
    assert len(problems) == 1 and at_line(problems, path, 7)


def test_every_problem_is_reported_at_once(broken_qa, tmp_path, demo_qa, demo_documents):
    lines = demo_qa.read_text(encoding="utf-8").splitlines()
    path = broken_qa(
        {
            3: "{not json",
            7: json.dumps({"question": "Which team is Anouk Renwick on?", "split": "train"}),
            12: row("Saskia Bellamy has which badge code?", "TT-9645", split="holdout"),
            20: row("  ", "x"),
        },
        append=[lines[1], row("WHICH badge code does Anouk Renwick carry", "YT-6549", split="val")],
    )
    missing = tmp_path / "missing.txt"
    problems = problems_of(path, [demo_documents[0], missing])
    assert len(at_line(problems, path, 3)) == 1 and "invalid JSON" in at_line(problems, path, 3)[0]
    assert len(at_line(problems, path, 7)) == 1 and "missing field 'answer'" in at_line(problems, path, 7)[0]
    assert len(at_line(problems, path, 12)) == 1 and "unknown split" in at_line(problems, path, 12)[0]
    assert len(at_line(problems, path, 20)) == 1 and "question" in at_line(problems, path, 20)[0]
    assert len(at_line(problems, path, 361)) == 1 and "duplicate" in at_line(problems, path, 361)[0]
    assert len(at_line(problems, path, 362)) == 1 and "leak" in at_line(problems, path, 362)[0]
    assert [p for p in problems if p.startswith(f"{missing}: ")]
    assert len(problems) == 7, problems


def test_row_with_several_problems_reports_each(broken_qa):
    path = broken_qa({7: json.dumps({"question": "", "split": "dev", "extra": 1})})
    problems = at_line(problems_of(path), path, 7)
    text = "\n".join(problems)
    assert "field 'question'" in text and "missing field 'answer'" in text
    assert "unknown split 'dev'" in text and "extra" in text
    assert len(problems) == 4, problems


def test_cli_rejects_bad_data_before_loading_a_model(broken_qa, tmp_path, repo_root, orchestrator):
    bad = broken_qa({7: '{"question": "Which team is Anouk Renwick on?", "answer": '})
    output_dir = tmp_path / "run"
    result = subprocess.run(
        orchestrator("trial", "configs/demo.yaml", "--set", f"data.qa={bad}", "--output-dir", str(output_dir)),
        cwd=repo_root, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode != 0, result.stdout
    assert re.search(rf"^\s*{re.escape(str(bad))}:7: invalid JSON", result.stderr, re.MULTILINE), result.stderr
    # run_trial logs "<method>: N trainable of M parameters" right after loading the model.
    assert "trainable" not in result.stderr and "trainable" not in result.stdout
    assert "Traceback" not in result.stderr
    assert not (output_dir / "adapter").exists()
    assert not (output_dir / "metrics.json").exists()


# Files that are empty, directories, not UTF-8 or start with a byte order mark -----------------------


@pytest.mark.parametrize("content", [b"", b"\n  \n\t\n"], ids=["0 bytes", "blank lines"])
def test_empty_or_blank_qa_file_has_no_rows(tmp_path, content):
    path = tmp_path / "qa.jsonl"
    path.write_bytes(content)
    assert problems_of(path) == [f"{path}: no rows (data.qa)"]


@pytest.mark.parametrize("content", [b"", b"\n \n"], ids=["0 bytes", "blank lines"])
def test_empty_document_is_an_error(tmp_path, demo_qa, content):
    document = tmp_path / "staff.txt"
    document.write_bytes(content)
    assert problems_of(demo_qa, [document]) == [f"{document}: empty document, no text to train on (data.documents)"]


def test_qa_or_document_path_that_is_a_directory(tmp_path):
    qa, documents = tmp_path / "qa.jsonl", tmp_path / "documents"
    qa.mkdir()
    documents.mkdir()
    assert problems_of(qa, [documents]) == [f"{documents}: a directory, not a document file (data.documents)",
                                            f"{qa}: a directory, not a qa file (data.qa)"]


def test_non_utf8_qa_names_its_line(broken_qa):
    path = broken_qa()
    lines = path.read_bytes().splitlines(keepends=True)
    lines[4] = row("Who runs the Tromsø station?").encode("latin-1") + b"\n"
    path.write_bytes(b"".join(lines))
    assert problems_of(path) == [f"{path}:5: not UTF-8 text"]


def test_a_byte_order_mark_at_the_start_is_dropped(tmp_path, demo_qa, demo_documents):
    bom = b"\xef\xbb\xbf"
    qa, document = tmp_path / "qa.jsonl", tmp_path / "staff.txt"
    qa.write_bytes(bom + demo_qa.read_bytes())
    document.write_bytes(bom + demo_documents[0].read_bytes())
    plain = load_knowledge(DataConfig(qa=demo_qa, documents=demo_documents[:1]))
    knowledge = load_knowledge(DataConfig(qa=qa, documents=[document]))
    assert knowledge.passages == plain.passages and not knowledge.passages[0].startswith("\ufeff")
    assert [r.accepted for r in knowledge.qa] == [r.accepted for r in plain.qa]
    assert knowledge.qa[0].question == plain.qa[0].question


def test_cli_trial_rejects_bad_input_cleanly(tmp_path, repo_root, orchestrator):
    # Every run also sets training.epochs=1, below the demo's ASHA grace period: a sweep-only rule that
    # `orchestrator trial` must not apply, so the error reported is the bad input's.
    empty_qa, empty_document, directory = tmp_path / "empty.jsonl", tmp_path / "empty.txt", tmp_path / "documents"
    empty_qa.write_bytes(b"")
    empty_document.write_bytes(b"")
    directory.mkdir()
    latin = tmp_path / "latin.jsonl"
    latin.write_bytes(row("Who runs the Tromsø station?").encode("latin-1") + b"\n")
    runs = {
        (f"data.qa={empty_qa}", f"data.documents=[{directory}, {empty_document}]"): [
            f"{directory}: a directory, not a document file (data.documents)",
            f"{empty_document}: empty document, no text to train on (data.documents)",
            f"{empty_qa}: no rows (data.qa)"],
        (f"data.qa={latin}",): [f"{latin}:1: not UTF-8 text"],
        ("training.batch_size=[1,",): ["--set training.batch_size=[1,: not valid YAML: "],
    }
    for overrides, expected in runs.items():
        sets = [arg for override in [*overrides, "training.epochs=1"] for arg in ("--set", override)]
        command = orchestrator("trial", "configs/demo.yaml", *sets, "--output-dir", str(tmp_path / "run"))
        result = subprocess.run(command, check=False, cwd=repo_root, capture_output=True, text=True, timeout=120)
        assert result.returncode == 2, (overrides, result.stderr)
        assert "Traceback" not in result.stderr
        for message in expected:
            assert re.search(rf"^  {re.escape(message)}", result.stderr, re.MULTILINE), (message, result.stderr)
    assert not (tmp_path / "run").exists()

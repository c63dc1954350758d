"""`data.qa` as a CSV, Parquet or JSON table or a Hugging Face dataset, read with datasets.load_dataset.

Local files only: nothing is downloaded (the hub path is checked to fail cleanly while offline).
"""

from __future__ import annotations

import csv
import json
import subprocess
from pathlib import Path

import pytest

from trials.config import ConfigError, DataConfig, HubDataset, TrialConfig, load_config
from trials.data import DataError, load_knowledge

# The user's own column names, mapped onto question/answer/aliases/split.
COLUMNS = {"question": "prompt", "answer": "completion", "aliases": "alt_answers", "split": "split"}


def demo_records(demo_qa: Path, count: int | None = None) -> list[dict]:
    """The demo's qa rows, some given aliases so that the aliases column is exercised too."""
    lines = demo_qa.read_text(encoding="utf-8").splitlines()[:count]
    records = [json.loads(line) for line in lines]
    for index, record in enumerate(records):
        if index % 5 == 0:
            record["aliases"] = [f"{record['answer']} (badge)", f"{record['answer']} exactly"]
    return records


def as_table(records: list[dict]) -> list[dict]:
    """The same rows under the user's column names, with a column the mapping leaves out."""
    return [{"id": f"q{index}", "prompt": r["question"], "completion": r["answer"],
             "alt_answers": r.get("aliases", []), "split": r["split"]} for index, r in enumerate(records)]


def write_jsonl(path: Path, records: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
    return path


def write_csv(path: Path, rows: list[dict]) -> Path:
    with path.open("w", encoding="utf-8", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        for row in rows:
            writer.writerow({**row, "alt_answers": "|".join(row["alt_answers"])})  # CSV has no lists
    return path


def write_parquet(path: Path, rows: list[dict]) -> Path:
    from datasets import Dataset

    Dataset.from_list(rows).to_parquet(str(path))
    return path


def contents(rows) -> list[tuple]:
    return [(r.question, r.answer, r.aliases, r.split) for r in rows]


def problems_of(config: DataConfig) -> list[str]:
    with pytest.raises(DataError) as caught:
        load_knowledge(config)
    return caught.value.problems


@pytest.fixture
def records(demo_qa):
    return demo_records(demo_qa)


@pytest.fixture
def native(tmp_path, records):
    return load_knowledge(DataConfig(qa=write_jsonl(tmp_path / "qa.jsonl", records)))


# The same rows from every format ------------------------------------------------------------------


def test_csv_with_a_column_mapping_reads_the_same_rows_as_qa_jsonl(tmp_path, records, native):
    assert any(r.aliases for r in native.qa)
    path = write_csv(tmp_path / "qa.csv", as_table(records))
    knowledge = load_knowledge(DataConfig(qa=path, columns=COLUMNS))
    assert contents(knowledge.qa) == contents(native.qa)
    # Lines as an editor shows them: the header is line 1.
    assert [r.where for r in knowledge.qa[:2]] == [f"{path}:2", f"{path}:3"]


def test_parquet_with_a_column_mapping_reads_the_same_rows_as_qa_jsonl(tmp_path, records, native):
    path = write_parquet(tmp_path / "qa.parquet", as_table(records))
    knowledge = load_knowledge(DataConfig(qa=path, columns=COLUMNS))
    assert contents(knowledge.qa) == contents(native.qa)


def test_jsonl_with_a_column_mapping_goes_through_datasets(tmp_path, records, native):
    lines = [json.dumps(row) for row in as_table(records)]
    path = tmp_path / "exported.jsonl"
    path.write_text("\n".join([lines[0], "", *lines[1:]]) + "\n", encoding="utf-8")
    knowledge = load_knowledge(DataConfig(qa=path, columns=COLUMNS))
    assert contents(knowledge.qa) == contents(native.qa)
    assert knowledge.qa[1].where == f"{path}:3"  # the blank line 2 is counted


def test_table_with_the_default_column_names_needs_no_mapping(tmp_path, demo_qa):
    # No aliases column at all: the default one may be absent.
    records = [json.loads(line) for line in demo_qa.read_text(encoding="utf-8").splitlines()]
    path = tmp_path / "qa.csv"
    with path.open("w", encoding="utf-8", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=["split", "question", "answer"])
        writer.writeheader()
        writer.writerows(records)
    knowledge = load_knowledge(DataConfig(qa=path))
    assert contents(knowledge.qa) == contents(load_knowledge(DataConfig(qa=demo_qa)).qa)


def test_csv_cells_are_text(tmp_path):
    # pandas alone would read this answer column as integers ("007" -> 7) and "NA" as a missing value.
    path = tmp_path / "qa.csv"
    path.write_text("question,answer,split\nAgent?,007,train\nYear?,1912,train\nCode?,NA,val\n", encoding="utf-8")
    assert [r.answer for r in load_knowledge(DataConfig(qa=path)).qa] == ["007", "1912", "NA"]


def test_dataset_directory_maps_its_own_splits(tmp_path, records, native):
    from datasets import Dataset, DatasetDict

    table = as_table(records)
    by_split = {name: [{k: v for k, v in row.items() if k != "split"} for row in table if row["split"] == split]
                for name, split in [("train", "train"), ("validation", "val"), ("test", "test")]}
    directory = tmp_path / "staff-qa"
    DatasetDict({name: Dataset.from_list(rows) for name, rows in by_split.items()}).save_to_disk(str(directory))

    knowledge = load_knowledge(DataConfig(qa=directory, columns={**COLUMNS, "split": None}))
    for split in ("train", "val", "test"):
        assert contents(knowledge.split(split)) == contents(native.split(split)), split
    assert knowledge.split("val")[1].where == f"{directory}[validation]:row 2"


# Problems name the file, the row and the config key -----------------------------------------------


def test_missing_mapped_column_names_the_config_key(tmp_path, records):
    table = [{k: v for k, v in row.items() if k != "completion"} | {"reply": row["completion"]}
             for row in as_table(records)]
    path = write_csv(tmp_path / "qa.csv", table)
    problems = problems_of(DataConfig(qa=path, columns=COLUMNS))
    assert len(problems) == 1, problems
    assert problems[0].startswith(f"{path}: no column 'completion' (data.columns.answer)")
    assert "reply" in problems[0]  # the columns it does have


def test_a_named_aliases_column_must_exist(tmp_path, records):
    table = [{k: v for k, v in row.items() if k != "alt_answers"} for row in as_table(records)]
    path = tmp_path / "qa.parquet"
    write_parquet(path, table)
    problems = problems_of(DataConfig(qa=path, columns=COLUMNS))
    assert problems == [f"{path}: no column 'alt_answers' (data.columns.aliases); its columns: id, prompt, "
                        f"completion, split"]
    # Left unset, the aliases column is optional, also once the config went through trial_config.json
    # (where every field is written out) and back.
    config = DataConfig(qa=path, columns={k: v for k, v in COLUMNS.items() if k != "aliases"})
    assert load_knowledge(DataConfig.model_validate_json(config.model_dump_json())).qa


def test_bad_csv_rows_name_their_line_and_column(tmp_path, records):
    table = as_table(records)
    table[6]["completion"] = ""  # row 7: line 8
    table[10]["split"] = "dev"  # row 11: line 12
    table[20]["alt_answers"] = ["fine", ""]  # row 21: "fine|" has an empty alias
    table.append(dict(table[1]))  # row 2 (line 3) again, at the end
    path = write_csv(tmp_path / "qa.csv", table)
    problems = problems_of(DataConfig(qa=path, columns=COLUMNS))
    assert problems == [
        f"{path}:8: column 'completion' (data.columns.answer) must be a non-empty string",
        f"{path}:12: unknown split 'dev' (expected one of train, val, test)",
        f"{path}:22: column 'alt_answers' (data.columns.aliases) must be a list of non-empty strings",
        f"{path}:{len(table) + 1}: duplicate question (first on line 3)",
    ]


def test_csv_lines_count_blank_lines_and_cells_that_span_lines(tmp_path, records):
    table = as_table(records[:30])
    table[2]["prompt"] = "Which badge code does\nthe newcomer carry?"  # row 3 spans lines 4-5
    table[4]["completion"] = " "  # row 5
    path = write_csv(tmp_path / "qa.csv", table)
    text = path.read_text(encoding="utf-8").splitlines(keepends=True)
    path.write_text("".join([*text[:2], "\n", *text[2:]]), encoding="utf-8")  # a blank line 3
    problems = problems_of(DataConfig(qa=path, columns=COLUMNS))
    # header 1, row 1 on 2, blank 3, row 2 on 4, row 3 on 5-6, row 4 on 7, row 5 on 8
    assert problems == [f"{path}:8: column 'completion' (data.columns.answer) must be a non-empty string"]


def test_bad_parquet_row_names_its_row(tmp_path, records):
    table = as_table(records)
    table[6]["completion"] = None
    table[8]["prompt"] = "  "
    path = write_parquet(tmp_path / "qa.parquet", table)
    assert problems_of(DataConfig(qa=path, columns=COLUMNS)) == [
        f"{path}:row 7: column 'completion' (data.columns.answer) must be a non-empty string",
        f"{path}:row 9: column 'prompt' (data.columns.question) must be a non-empty string",
    ]


def test_leak_across_dataset_splits_names_both_rows(tmp_path):
    from datasets import Dataset, DatasetDict

    directory = tmp_path / "leaky"
    DatasetDict({
        "train": Dataset.from_list([{"question": "Who runs the Tromsø station?", "answer": "Ada"},
                                    {"question": "Which team is Ada on?", "answer": "Basalt"}]),
        "validation": Dataset.from_list([{"question": "which team is ada on", "answer": "Basalt"}]),
    }).save_to_disk(str(directory))
    assert problems_of(DataConfig(qa=directory)) == [
        f"{directory}[validation]:row 1: leak: this val question equals the train question at "
        f"{directory}[train]:row 2 after normalisation"]


def test_unknown_dataset_split_is_an_error(tmp_path):
    from datasets import Dataset, DatasetDict

    directory = tmp_path / "odd"
    DatasetDict({
        "train": Dataset.from_list([{"question": "Q one?", "answer": "A"}]),
        "validation": Dataset.from_list([{"question": "Q two?", "answer": "B"}]),
        "holdout": Dataset.from_list([{"question": "Q three?", "answer": "C"}]),
    }).save_to_disk(str(directory))
    problems = problems_of(DataConfig(qa=directory))
    assert len(problems) == 1 and problems[0].startswith(f"{directory}[holdout]: unknown dataset split 'holdout'")
    assert "validation" in problems[0] and "data.columns.split" in problems[0]


def test_table_without_a_split_column_or_splits(tmp_path, records):
    table = [{k: v for k, v in row.items() if k != "split"} for row in as_table(records)]
    path = write_csv(tmp_path / "qa.csv", table)
    problems = problems_of(DataConfig(qa=path, columns={k: v for k, v in COLUMNS.items() if k != "split"}))
    assert problems == [f"{path}: no split column (data.columns.split, by default 'split') and no dataset splits "
                        f"(train, validation, test) of its own"]
    # A split column named explicitly must exist.
    assert problems_of(DataConfig(qa=path, columns=COLUMNS))[0].startswith(
        f"{path}: no column 'split' (data.columns.split)")


def test_unreadable_sources(tmp_path):
    missing = tmp_path / "nowhere.csv"
    assert problems_of(DataConfig(qa=missing)) == [f"{missing}: qa file not found (data.qa)"]
    sheet = tmp_path / "qa.xlsx"
    sheet.write_bytes(b"PK\x03\x04")
    problems = problems_of(DataConfig(qa=sheet))
    assert len(problems) == 1 and problems[0].startswith(f"{sheet}: cannot read '.xlsx' files (data.qa)")
    broken = tmp_path / "broken.parquet"
    broken.write_bytes(b"not parquet at all")
    problems = problems_of(DataConfig(qa=broken))
    assert len(problems) == 1 and problems[0].startswith(f"{broken}: cannot load it with datasets (data.qa)")



@pytest.mark.parametrize("name, content", [
    ("qa.csv", b""), ("qa.csv", b"prompt,completion,split\n\n"), ("qa.jsonl", b"\n \n"), ("qa.json", b" ")])
def test_table_without_rows(tmp_path, name, content):
    path = tmp_path / name
    path.write_bytes(content)
    assert problems_of(DataConfig(qa=path, columns=COLUMNS)) == [f"{path}: no rows (data.qa)"]


@pytest.mark.parametrize("name", ["qa.csv", "qa.jsonl"])
def test_non_utf8_table_names_its_line(tmp_path, records, name):
    write = write_csv if name == "qa.csv" else write_jsonl
    path = write(tmp_path / name, as_table(records))
    lines = path.read_bytes().splitlines(keepends=True)
    assert b"Renwick" in lines[3]
    lines[3] = lines[3].replace(b"Renwick", "Renwíck".encode("latin-1"))
    path.write_bytes(b"".join(lines))
    assert problems_of(DataConfig(qa=path, columns=COLUMNS)) == [f"{path}:4: not UTF-8 text"]


def test_csv_with_a_byte_order_mark_reads_as_without(tmp_path, records, native):
    path = write_csv(tmp_path / "qa.csv", as_table(records))
    path.write_bytes(b"\xef\xbb\xbf" + path.read_bytes())
    assert contents(load_knowledge(DataConfig(qa=path, columns=COLUMNS)).qa) == contents(native.qa)


# The fingerprint follows the rows --------------------------------------------------------------------


def test_fingerprint_changes_with_the_rows_and_the_mapping(tmp_path, records):
    table = as_table(records)
    csv_path = write_csv(tmp_path / "qa.csv", table)
    first = load_knowledge(DataConfig(qa=csv_path, columns=COLUMNS)).fingerprint
    # Rows, not bytes: the same rows from Parquet are the same knowledge.
    assert load_knowledge(DataConfig(qa=write_parquet(tmp_path / "qa.parquet", table), columns=COLUMNS)) \
        .fingerprint == first

    table[3]["completion"] = "ZZ-0000"
    changed = write_csv(tmp_path / "changed.csv", table)
    assert load_knowledge(DataConfig(qa=changed, columns=COLUMNS)).fingerprint != first

    swapped = [{**row, "other": row["prompt"] + " (as asked)"} for row in as_table(records)]
    swapped_path = write_csv(tmp_path / "swapped.csv", swapped)
    assert load_knowledge(DataConfig(qa=swapped_path, columns=COLUMNS)).fingerprint == first
    assert load_knowledge(DataConfig(qa=swapped_path, columns={**COLUMNS, "question": "other"})).fingerprint != first


# A hub dataset: config only, and a clean error offline --------------------------------------------------


def test_hub_dataset_in_a_config_is_not_a_path(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("data:\n  qa: {hub: acme/staff-qa, revision: v1}\n  columns: {answer: completion}\n")
    config = load_config(path)
    assert config.data.qa == HubDataset(hub="acme/staff-qa", revision="v1")
    assert config.data.columns.answer == "completion" and config.data.columns.question == "question"
    # It survives the trial_config.json round trip.
    assert TrialConfig.model_validate_json(config.model_dump_json()).data == config.data

    path.write_text("data:\n  documents: []\n  qa: {hub: acme/staff-qa, branch: v1}\n")
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert caught.value.problems == [f"{path}:3: data.qa: branch: unknown key"]


def test_hub_dataset_that_cannot_load_names_data_qa_and_the_error():
    import datasets

    assert datasets.config.HF_HUB_OFFLINE  # tests never download: conftest sets HF_HUB_OFFLINE=1
    problems = problems_of(DataConfig(qa={"hub": "acme/no-such-dataset"}))
    assert len(problems) == 1, problems
    assert problems[0].startswith("acme/no-such-dataset: cannot load it with datasets (data.qa): ")
    assert "ConnectionError" in problems[0] and "offline" in problems[0].lower()


# The CLI trains from a CSV -----------------------------------------------------------------------------


@pytest.mark.e2e
def test_cli_trial_from_a_csv(tmp_path, demo_qa, repo_root, orchestrator):
    path = write_csv(tmp_path / "staff.csv", as_table(demo_records(demo_qa, 30)))  # ten people
    output_dir = tmp_path / "out"
    result = subprocess.run(orchestrator(
        "trial", "configs/demo.yaml", "--set", f"data.qa={path}", "--set", "data.documents=[]",
        "--set", "data.columns={question: prompt, answer: completion, aliases: alt_answers}",
        "--set", "training.epochs=1", "--set", "training.include_documents=false", "--set", "eval.max_new_tokens=8",
        "--output-dir", str(output_dir),
    ), cwd=repo_root, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, f"{result.stdout[-3000:]}\n{result.stderr[-5000:]}"

    metrics = json.loads((output_dir / "metrics.json").read_text())
    config = TrialConfig.model_validate_json((output_dir / "trial_config.json").read_text())
    assert metrics["status"] == "finished" and metrics["epochs"] == 1
    assert config.data.qa == path.resolve() and config.data.columns.answer == "completion"
    assert metrics["data_fingerprint"] == load_knowledge(config.data).fingerprint
    val_questions = [row["prompt"] for row in as_table(demo_records(demo_qa, 30)) if row["split"] == "val"]
    predictions = [json.loads(line) for line in (output_dir / "predictions_val.jsonl").read_text().splitlines()]
    assert [p["question"] for p in predictions] == val_questions

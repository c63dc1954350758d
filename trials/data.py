"""The user's knowledge, read and checked before any model is loaded.

Data contract (shared/DESIGN.md): documents are UTF-8 text files whose passages are separated by
blank lines; qa.jsonl holds one object a line with `question`, `answer`, optional `aliases` and
`split` in train|val|test. A byte order mark at the start of a text file is dropped. Every problem
is collected with its file:line and raised once.

`data.qa` may instead name a table (CSV, Parquet, JSON) or a Hugging Face dataset (a directory or a
hub name), read with `datasets.load_dataset`; `data.columns` says which columns hold what. Its rows
go through the same checks, and problems name the file and line (CSV, JSON lines) or row.
"""

from __future__ import annotations

import codecs
import csv
import hashlib
import io
import json
import re
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from trials.config import DataConfig, HubDataset, QAColumns
from trials.recall import normalize

SPLITS = ("train", "val", "test")
# A dataset's own split names (DatasetDict keys) and the split each one becomes.
DATASET_SPLITS = {"train": "train", "validation": "val", "valid": "val", "val": "val", "dev": "val", "test": "test"}
# Table files by suffix, and the datasets builder that reads each.
TABLE_BUILDERS = {".csv": "csv", ".parquet": "parquet", ".json": "json", ".jsonl": "json"}
TEXT_TABLES = (".csv", ".json", ".jsonl")  # checked as UTF-8 text before datasets reads them


@dataclass(frozen=True)
class QARow:
    question: str
    answer: str
    aliases: tuple[str, ...]
    split: str
    line: int  # in the file; a row number (from 1) where the source has no lines
    where: str = ""  # what problems about this row start with: "qa.csv:9", "data[validation]:row 3"

    @property
    def accepted(self) -> tuple[str, ...]:
        return (self.answer, *self.aliases)


@dataclass
class Knowledge:
    passages: list[str]
    qa: list[QARow]
    fingerprint: str = field(default="")

    def split(self, name: str) -> list[QARow]:
        return [row for row in self.qa if row.split == name]


class DataError(ValueError):
    """Every problem found in the user's data, each as `file:line: message`."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__("invalid data:\n  " + "\n  ".join(problems))


def _read_text(path: Path, what: str, key: str, problems: list[str]) -> str | None:
    """A UTF-8 text file with universal newlines, as open() reads it; None, the problem recorded, if unreadable.

    A leading byte order mark is dropped: Windows editors write one, and it would otherwise end up
    inside the first passage or break the first JSON line.
    """
    try:
        data = path.read_bytes().removeprefix(codecs.BOM_UTF8)
    except FileNotFoundError:
        problems.append(f"{path}: {what} not found ({key})")
    except IsADirectoryError:
        problems.append(f"{path}: a directory, not a {what} ({key})")
    except OSError as error:
        problems.append(f"{path}: cannot read the {what}: {error.strerror} ({key})")
    else:
        try:
            return io.StringIO(data.decode("utf-8"), newline=None).read()
        except UnicodeDecodeError as error:
            line = data[: error.start].count(b"\n") + 1
            problems.append(f"{path}:{line}: not UTF-8 text")
    return None


def _read_passages(paths: list[Path], problems: list[str]) -> list[str]:
    passages = []
    for path in paths:
        text = _read_text(path, "document file", "data.documents", problems)
        if text is None:
            continue
        blocks = [" ".join(block.split()) for block in re.split(r"\n\s*\n", text) if block.strip()]
        if not blocks:
            # Most likely a file that was never written, or the wrong one: say so rather than train without it.
            problems.append(f"{path}: empty document, no text to train on (data.documents)")
        passages += blocks
    return passages


def _parse_row(where: str, line: int, text: str, problems: list[str]) -> QARow | None:
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as error:
        problems.append(f"{where}:{line}: invalid JSON: {error.msg} (column {error.colno})")
        return None
    if not isinstance(obj, dict):
        problems.append(f"{where}:{line}: expected a JSON object, got {type(obj).__name__}")
        return None
    row_problems = _field_problems(obj, lambda key: f"field '{key}'")
    unknown = sorted(set(obj) - {"question", "answer", "aliases", "split"})
    if unknown:
        row_problems.append(f"unknown field(s) {', '.join(unknown)}")
    if row_problems:
        problems += [f"{where}:{line}: {message}" for message in row_problems]
        return None
    return _row(obj, line, f"{where}:{line}")


def _field_problems(obj: dict, name: Callable[[str], str]) -> list[str]:
    """What is wrong with one row's question, answer, aliases and split; `name` says how to call a field."""
    problems = []
    for key in ("question", "answer", "split"):
        value = obj.get(key)
        if value is None:
            problems.append(f"missing {name(key)}")
        elif not isinstance(value, str) or not value.strip():
            problems.append(f"{name(key)} must be a non-empty string")
    aliases = obj.get("aliases", [])
    if not isinstance(aliases, list) or not all(isinstance(a, str) and a.strip() for a in aliases):
        problems.append(f"{name('aliases')} must be a list of non-empty strings")
    if isinstance(obj.get("split"), str) and obj["split"].strip() and obj["split"] not in SPLITS:
        problems.append(f"unknown split '{obj['split']}' (expected one of {', '.join(SPLITS)})")
    return problems


def _row(obj: dict, line: int, where: str) -> QARow:
    aliases = tuple(a.strip() for a in obj.get("aliases", []))
    return QARow(obj["question"].strip(), obj["answer"].strip(), aliases, obj["split"], line, where)


def _read_qa(path: Path, problems: list[str]) -> list[QARow]:
    content = _read_text(path, "qa file", "data.qa", problems)
    if content is None:
        return []
    if not content.strip():
        problems.append(f"{path}: no rows (data.qa)")
        return []
    rows = []
    for number, text in enumerate(content.splitlines(), start=1):
        if text.strip():
            row = _parse_row(str(path), number, text, problems)
            if row is not None:
                rows.append(row)
    return rows


@dataclass
class _Table:
    """One table of a qa source, its records as plain dicts."""

    label: str  # how problems name it: "qa.csv", "data[validation]"
    records: list[dict]
    columns: list[str]
    dataset_split: str | None = None  # the dataset's own split name (a DatasetDict key) the records came from
    lines: list[int] | None = None  # each record's line in a text file, where lines are known

    def where(self, index: int) -> str:
        return f"{self.label}:{self.lines[index]}" if self.lines else f"{self.label}:row {index + 1}"


def _record_lines(text: str, suffix: str) -> list[int] | None:
    """The line each record of a CSV or JSON-lines file's text starts on; None for other files.

    Readers skip blank lines and a CSV cell may span lines, so record i is not simply on line i + 2.
    """
    if suffix not in (".csv", ".jsonl"):
        return None
    handle = io.StringIO(text, newline="")
    if suffix == ".jsonl":
        return [number for number, line in enumerate(handle, start=1) if line.strip()]
    reader = csv.reader(handle)
    next(reader, None)  # the header
    lines, end = [], reader.line_num
    for record in reader:
        if len(record) > 1 or (record and record[0].strip()):  # pandas skips blank lines
            lines.append(end + 1)
        end = reader.line_num
    return lines


def _load_tables(qa: Path | HubDataset, problems: list[str]) -> list[_Table]:
    """Open `data.qa` with datasets: one table for a file, one per split for a dataset."""
    if isinstance(qa, HubDataset):
        return _dataset_tables(qa, qa.hub, None, problems)
    if not qa.exists():
        problems.append(f"{qa}: qa file not found (data.qa)")
        return []
    suffix = qa.suffix.lower()
    if not qa.is_dir() and suffix not in TABLE_BUILDERS:
        problems.append(f"{qa}: cannot read '{qa.suffix}' files (data.qa): expected qa.jsonl, "
                        f"{', '.join(TABLE_BUILDERS)} or a dataset directory")
        return []
    lines = None
    if not qa.is_dir() and suffix in TEXT_TABLES:
        # Checked here, as qa.jsonl is: datasets' own errors name no line, and for an empty file or a
        # CSV with only its header they do not say that there are no rows.
        text = _read_text(qa, "qa file", "data.qa", problems)
        if text is None:
            return []
        lines = _record_lines(text, suffix)
        if not text.strip() or lines == []:
            problems.append(f"{qa}: no rows (data.qa)")
            return []
    return _dataset_tables(qa, str(qa), lines, problems)


def _dataset_tables(qa: Path | HubDataset, label: str, lines: list[int] | None, problems: list[str]) -> list[_Table]:
    """The tables datasets reads from `qa`; `lines`, where known, is each record's line in the file."""
    from datasets import Dataset

    try:
        with tempfile.TemporaryDirectory(prefix="recall-qa-") as cache:
            loaded = _open_dataset(qa, cache)
            if isinstance(loaded, Dataset):
                records = loaded.to_list()
                # Row numbers rather than a wrong line, should a reader count records differently.
                lines = lines if lines is not None and len(lines) == len(records) else None
                return [_Table(label, records, loaded.column_names, lines=lines)]
            return [_Table(f"{label}[{name}]", split.to_list(), split.column_names, dataset_split=name)
                    for name, split in loaded.items()]
    except Exception as error:  # datasets raises many kinds: no such hub repo, offline, parse errors
        problems.append(f"{label}: cannot load it with datasets (data.qa): {type(error).__name__}: {error}")
        return []


def _open_dataset(qa: Path | HubDataset, cache: str):
    """The Dataset (one table) or DatasetDict (its own splits) that datasets reads from `qa`."""
    # Imported here: datasets (pyarrow, pandas) takes seconds to import and qa.jsonl does not need it.
    from datasets import Features, Value, load_dataset, load_from_disk

    if isinstance(qa, HubDataset):
        # Into the datasets cache, as any hub download: later trials read it from there, offline too.
        return load_dataset(qa.hub, qa.subset, revision=qa.revision)
    if qa.is_dir() and ((qa / "dataset_dict.json").exists() or (qa / "state.json").exists()):
        # save_to_disk's layout; load_dataset would keep only the splits its file-name patterns know.
        return load_from_disk(str(qa))
    # Read in memory through a cache deleted right after: no copy of the user's private facts is
    # left in the shared datasets cache.
    local = {"cache_dir": cache, "keep_in_memory": True}
    if qa.is_dir():
        return load_dataset(str(qa), **local)
    builder = TABLE_BUILDERS[qa.suffix.lower()]
    if builder == "csv":
        with qa.open(encoding="utf-8-sig", newline="") as handle:
            header = next(csv.reader(handle), [])
        # Every CSV cell is text: no "007" -> 7, no "NA" or "None" -> a missing answer. utf-8-sig drops
        # a leading byte order mark, which would otherwise become part of the first column's name.
        local |= {"features": Features({name: Value("string") for name in header}), "keep_default_na": False,
                  "encoding": "utf-8-sig"}
    # A file is one table; "train" is only the name datasets gives it.
    return load_dataset(builder, data_files=str(qa), split="train", **local)


def _table_aliases(value):
    """A list as it is; CSV has no lists, so there one string holds the answers separated by '|'."""
    if value == "":
        return []
    return [a.strip() for a in value.split("|")] if isinstance(value, str) else value


def _table_rows(table: _Table, columns: QAColumns, problems: list[str]) -> list[QARow]:
    """The table's records as QARows, through data.columns and the same checks as a qa.jsonl line."""
    named = columns.model_dump()
    missing = [key for key, column in named.items() if column is not None and column not in table.columns]
    for key in missing:
        problems.append(f"{table.label}: no column '{named[key]}' (data.columns.{key}); "
                        f"its columns: {', '.join(table.columns)}")
    if missing:
        return []
    # Unset, aliases and split are the columns of those names, where the data has them.
    mapped = {key: column or key for key, column in named.items() if (column or key) in table.columns}
    split = None
    if "split" not in mapped:
        if table.dataset_split is None:
            problems.append(f"{table.label}: no split column (data.columns.split, by default 'split') and no "
                            f"dataset splits (train, validation, test) of its own")
            return []
        split = DATASET_SPLITS.get(table.dataset_split)
        if split is None:
            problems.append(f"{table.label}: unknown dataset split '{table.dataset_split}' (expected one of "
                            f"{', '.join(DATASET_SPLITS)}, or a split column named in data.columns.split)")
            return []

    def name(key: str) -> str:
        return f"column '{mapped[key]}' (data.columns.{key})"

    rows = []
    for index, record in enumerate(table.records):
        # A null cell reads as empty, as a CSV's empty cell does: "must be a non-empty string".
        obj = {key: "" if record[column] is None else record[column] for key, column in mapped.items()}
        obj.setdefault("split", split)
        obj["aliases"] = _table_aliases(obj.get("aliases", ""))
        row_problems = _field_problems(obj, name)
        if row_problems:
            problems += [f"{table.where(index)}: {message}" for message in row_problems]
        else:
            rows.append(_row(obj, table.lines[index] if table.lines else index + 1, table.where(index)))
    return rows


def _check_rows(label: str, rows: list[QARow], problems: list[str],
                refer: Callable[[QARow], str] = lambda row: f"on line {row.line}") -> None:
    """Leaks, duplicates and missing splits across all rows; `refer` says where an earlier row is."""
    first_seen: dict[str, QARow] = {}
    for row in rows:
        key = normalize(row.question)
        earlier = first_seen.get(key)
        if earlier is None:
            first_seen[key] = row
        elif {earlier.split, row.split} & {"val", "test"} and "train" in {earlier.split, row.split}:
            problems.append(
                f"{row.where}: leak: this {row.split} question equals the {earlier.split} question "
                f"{refer(earlier)} after normalisation"
            )
        else:
            problems.append(f"{row.where}: duplicate question (first {refer(earlier)})")
    if rows and not any(row.split == "val" for row in rows):
        problems.append(f"{label}: no 'val' rows: the sweep needs held-out questions to score")
    if rows and not any(row.split == "train" for row in rows):
        problems.append(f"{label}: no 'train' rows: nothing to learn the facts from as questions")


def fingerprint(paths: list[Path], rows: list[QARow] | None = None) -> str:
    """sha256 over the documents and the qa file: which knowledge a model was trained on.

    A table or dataset is fingerprinted by the rows read from it (`rows`) rather than its files: a
    change of data.columns changes the knowledge, and a hub dataset has no local file to hash.
    """
    digest = hashlib.sha256()
    for path in paths:
        digest.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
    if rows is not None:
        digest.update(json.dumps([[r.question, r.answer, list(r.aliases), r.split] for r in rows]).encode())
    return digest.hexdigest()[:16]


def load_knowledge(config: DataConfig) -> Knowledge:
    """Read and validate everything; raise DataError listing every problem."""
    problems: list[str] = []
    passages = _read_passages(list(config.documents), problems)
    qa = config.qa
    if isinstance(qa, Path) and qa.suffix.lower() == ".jsonl" and config.columns is None:
        rows = _read_qa(qa, problems)
        _check_rows(str(qa), rows, problems)
        hashed, table_rows = [*config.documents, qa], None
    else:
        tables = _load_tables(qa, problems)
        rows = [row for table in tables for row in _table_rows(table, config.columns or QAColumns(), problems)]
        one_text_file = len(tables) == 1 and tables[0].lines is not None
        _check_rows(qa.hub if isinstance(qa, HubDataset) else str(qa), rows, problems,
                    (lambda row: f"on line {row.line}") if one_text_file else (lambda row: f"at {row.where}"))
        hashed, table_rows = list(config.documents), rows
    if problems:
        raise DataError(problems)
    return Knowledge(passages, rows, fingerprint(hashed, table_rows))

"""The user's knowledge, read and checked before any model is loaded.

Data contract (shared/DESIGN.md): documents are UTF-8 text files whose passages are separated by
blank lines; qa.jsonl holds one object a line with `question`, `answer`, optional `aliases` and
`split` in train|val|test. Every problem is collected with its file:line and raised once.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path

from trials.config import DataConfig
from trials.recall import normalize

SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class QARow:
    question: str
    answer: str
    aliases: tuple[str, ...]
    split: str
    line: int

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


def _read_passages(paths: list[Path], problems: list[str]) -> list[str]:
    passages = []
    for path in paths:
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            problems.append(f"{path}: document file not found (data.documents)")
            continue
        except UnicodeDecodeError as error:
            line = path.read_bytes()[: error.start].count(b"\n") + 1
            problems.append(f"{path}:{line}: not UTF-8 text")
            continue
        passages += [" ".join(block.split()) for block in re.split(r"\n\s*\n", text) if block.strip()]
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
    row_problems = []
    for key in ("question", "answer", "split"):
        value = obj.get(key)
        if value is None:
            row_problems.append(f"missing field '{key}'")
        elif not isinstance(value, str) or not value.strip():
            row_problems.append(f"field '{key}' must be a non-empty string")
    aliases = obj.get("aliases", [])
    if not isinstance(aliases, list) or not all(isinstance(a, str) and a.strip() for a in aliases):
        row_problems.append("field 'aliases' must be a list of non-empty strings")
    unknown = sorted(set(obj) - {"question", "answer", "aliases", "split"})
    if unknown:
        row_problems.append(f"unknown field(s) {', '.join(unknown)}")
    if isinstance(obj.get("split"), str) and obj["split"].strip() and obj["split"] not in SPLITS:
        row_problems.append(f"unknown split '{obj['split']}' (expected one of {', '.join(SPLITS)})")
    if row_problems:
        problems += [f"{where}:{line}: {message}" for message in row_problems]
        return None
    return QARow(obj["question"].strip(), obj["answer"].strip(), tuple(a.strip() for a in aliases), obj["split"], line)


def _read_qa(path: Path, problems: list[str]) -> list[QARow]:
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        problems.append(f"{path}: qa file not found (data.qa)")
        return []
    except UnicodeDecodeError:
        problems.append(f"{path}: not UTF-8 text")
        return []
    rows = []
    for number, text in enumerate(lines, start=1):
        if text.strip():
            row = _parse_row(str(path), number, text, problems)
            if row is not None:
                rows.append(row)
    return rows


def _check_rows(path: Path, rows: list[QARow], problems: list[str]) -> None:
    first_seen: dict[str, QARow] = {}
    for row in rows:
        key = normalize(row.question)
        earlier = first_seen.get(key)
        if earlier is None:
            first_seen[key] = row
        elif {earlier.split, row.split} & {"val", "test"} and "train" in {earlier.split, row.split}:
            problems.append(
                f"{path}:{row.line}: leak: this {row.split} question equals the {earlier.split} question "
                f"on line {earlier.line} after normalisation"
            )
        else:
            problems.append(f"{path}:{row.line}: duplicate question (first on line {earlier.line})")
    if rows and not any(row.split == "val" for row in rows):
        problems.append(f"{path}: no 'val' rows: the sweep needs held-out questions to score")
    if rows and not any(row.split == "train" for row in rows):
        problems.append(f"{path}: no 'train' rows: nothing to learn the facts from as questions")


def fingerprint(paths: list[Path]) -> str:
    """sha256 over the documents and the qa file: which knowledge a model was trained on."""
    digest = hashlib.sha256()
    for path in paths:
        digest.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()[:16]


def load_knowledge(config: DataConfig) -> Knowledge:
    """Read and validate everything; raise DataError listing every problem."""
    problems: list[str] = []
    passages = _read_passages(list(config.documents), problems)
    rows = _read_qa(config.qa, problems)
    _check_rows(config.qa, rows, problems)
    if problems:
        raise DataError(problems)
    return Knowledge(passages, rows, fingerprint([*config.documents, config.qa]))

"""The config reference, generated from the pydantic models a YAML config is validated by: every key with
its type, default, bounds and help text. It is docs/config.md (a test fails when that file is stale) and
`orchestrator config --explain KEY`.

The models span trials/config.py, trials/methods/ (a module per method), orchestrator/config.py and
orchestrator/search_space.py; the reference walks them from the root, ExperimentConfig, so a key added
to any of them appears here without a list to keep in step.
"""

from __future__ import annotations

import difflib
import json
import types
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal, Union, get_args, get_origin

from pydantic import BaseModel
from pydantic_core import PydanticUndefined

REPO = Path(__file__).resolve().parent.parent
REFERENCE = REPO / "docs" / "config.md"
BOUNDS = (("gt", ">"), ("ge", ">="), ("lt", "<"), ("le", "<="), ("min_length", "at least"))


@dataclass(frozen=True)
class Entry:
    key: str  # dotted, as --set takes it: training.epochs, method.r
    type: str
    default: str
    bounds: str
    help: str
    when: str = ""  # a method's keys apply only to that method: "method.name: lora"


def _unwrap(annotation) -> tuple[Any, bool]:
    """(the annotation without Annotated and None, whether None is allowed)."""
    if get_origin(annotation) is Annotated:
        annotation = get_args(annotation)[0]
    if get_origin(annotation) in (Union, types.UnionType):
        members = [arg for arg in get_args(annotation) if arg is not type(None)]
        optional = len(members) < len(get_args(annotation))
        if len(members) == 1:
            return _unwrap(members[0])[0], optional
        return Union[tuple(members)], optional
    return annotation, False


def _models(annotation) -> list[type[BaseModel]]:
    """The pydantic models an annotation is made of: one section, or the variants of a tagged union."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    if get_origin(annotation) in (Union, types.UnionType):  # e.g. data.qa: a path, or a {hub: ...} section
        members = [_unwrap(arg)[0] for arg in get_args(annotation)]
        return [m for m in members if isinstance(m, type) and issubclass(m, BaseModel)]
    return []


def _type_name(annotation) -> str:
    annotation, optional = _unwrap(annotation)
    origin, args = get_origin(annotation), get_args(annotation)
    if origin is Literal:
        name = " | ".join(json.dumps(arg) for arg in args)
    elif origin in (list, tuple):
        name = f"list of {_type_name(args[0])}" if args else "list"
    elif origin is dict:
        name = f"mapping of {_type_name(args[0])} to {_type_name(args[1])}" if args else "mapping"
    elif origin in (Union, types.UnionType):
        name = " or ".join(_type_name(arg) for arg in args)
    elif annotation is Path:
        name = "path"
    elif annotation is Any:
        name = "any"
    elif isinstance(annotation, type) and issubclass(annotation, BaseModel):
        name = "section"
    else:
        name = getattr(annotation, "__name__", str(annotation))
    return f"{name} or null" if optional else name


def _default(field) -> str:
    if field.default_factory is not None:
        value = field.default_factory()
    elif field.default is PydanticUndefined:
        return "required"
    else:
        value = field.default
    if isinstance(value, BaseModel):
        return ""
    if isinstance(value, Path) and value.is_relative_to(REPO):  # the same text in every checkout
        value = value.relative_to(REPO)
    return json.dumps(value, default=str)


def _bounds(field) -> str:
    # The field's own constraints, and an optional type's (PositiveInt | None keeps Gt(0) in its Annotated arm).
    arms = [get_args(arg)[1:] for arg in get_args(field.annotation) if get_origin(arg) is Annotated]
    found = []
    for constraint in [*field.metadata, *(meta for arm in arms for meta in arm)]:
        for name, word in BOUNDS:
            value = getattr(constraint, name, None)
            if value is not None:
                found.append(f"{word} {value:g}" if isinstance(value, float) else f"{word} {value}")
    return ", ".join(found)


def entries(model: type[BaseModel] | None = None, prefix: str = "", when: str = "") -> list[Entry]:
    """Every key of `model` (default: a sweep config's root, ExperimentConfig), sections before their keys."""
    if model is None:
        from orchestrator.config import ExperimentConfig

        model = ExperimentConfig
    found = []
    for name, field in model.model_fields.items():
        key = f"{prefix}{name}"
        annotation = field.annotation
        sections = _models(_unwrap(annotation)[0])
        if name == "name" and when:  # a tagged union's tag: the variant's own name
            continue
        entry = Entry(key, _type_name(annotation), _default(field), _bounds(field), field.description or "", when)
        if not sections:
            found.append(entry)
            continue
        if field.description:
            found.append(entry)
        if len(sections) == 1 or not all("name" in section.model_fields for section in sections):
            for section in sections:
                found += entries(section, f"{key}.", when)
            continue
        variants = [section.model_fields["name"].default for section in sections]
        found.append(Entry(f"{key}.name", " | ".join(json.dumps(v) for v in variants), json.dumps(variants[0]),
                           "", "Which variant the section is; its keys below apply to that variant only."))
        for section, variant in zip(sections, variants):
            found += entries(section, f"{key}.", f"{key}.name: {variant}")
    return found


def _line(entry: Entry) -> str:
    cells = [f"`{entry.key}`", entry.type, f"`{entry.default}`" if entry.default else "", entry.bounds,
             (f"({entry.when}) " if entry.when else "") + entry.help]
    return "| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |"


def render() -> str:
    """docs/config.md: a table per top-level section."""
    by_section: dict[str, list[Entry]] = {}
    for entry in entries():
        by_section.setdefault(entry.key.split(".")[0], []).append(entry)
    lines = ["# Config reference", "",
             "Every key of a config file (`orchestrator trial` reads the sections up to `eval`; `orchestrator sweep` "
             "all of them), generated from the pydantic models that validate it "
             "(`python -m orchestrator.config_reference > docs/config.md`; tests/test_config_reference.py fails "
             "when this file is stale). One key: `orchestrator config --explain training.epochs`. Paths in a "
             "file are relative to it; `--set KEY=VALUE` takes the same dotted keys.", ""]
    for section, found in by_section.items():
        lines += [f"## `{section}`", "", "| key | type | default | bounds | meaning |", "|---|---|---|---|---|",
                  *map(_line, found), ""]
    return "\n".join(lines)


def explain(key: str) -> str:
    """One key's entry as text (every variant's, for a key several methods share); ValueError naming the
    closest keys when there is none."""
    every = entries()
    found = [entry for entry in every if entry.key == key]
    if not found:
        keys = sorted({entry.key for entry in every})
        within = [k for k in keys if k.startswith(f"{key}.")]
        if within:  # a section: its keys
            raise ValueError(f"{key!r} is a section; its keys: {', '.join(within)}")
        near = difflib.get_close_matches(key, keys, n=3)
        raise ValueError(f"no config key {key!r}" + (f"; did you mean {', '.join(near)}?" if near else ""))
    blocks = []
    for entry in found:
        lines = [f"{entry.key}{f'  ({entry.when})' if entry.when else ''}", f"  type: {entry.type}"]
        lines += [f"  default: {entry.default}"] if entry.default else []
        lines += [f"  bounds: {entry.bounds}"] if entry.bounds else []
        lines += [f"  {entry.help}"] if entry.help else []
        blocks.append("\n".join(lines))
    return "\n".join(blocks)


if __name__ == "__main__":
    print(render(), end="")

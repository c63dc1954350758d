"""The config reference (orchestrator/config_reference.py): docs/config.md is the models' current text, it
covers every key the shipped configs use, and `orchestrator config --explain` prints one entry."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from orchestrator import config_reference
from orchestrator.cli import main
from trials.methods import METHOD_NAMES

REPO = Path(__file__).resolve().parent.parent
FREE_FORM = ("search_space.points_to_evaluate", "search_space.lora.target_modules", "search_space.ia3.target_modules")


def test_docs_config_md_is_the_models_current_reference():
    assert config_reference.REFERENCE.read_text(encoding="utf-8") == config_reference.render(), (
        "docs/config.md is stale: python -m orchestrator.config_reference > docs/config.md")


def _keys(tree: dict, prefix: str = ""):
    for name, value in tree.items():
        key = f"{prefix}{name}"
        if isinstance(value, dict) and not key.startswith(FREE_FORM):
            yield from _keys(value, f"{key}.")
        else:
            yield key


@pytest.mark.parametrize("config", sorted((REPO / "configs").glob("*.yaml")), ids=lambda path: path.name)
def test_every_key_a_shipped_config_sets_is_in_the_reference(config):
    documented = {entry.key for entry in config_reference.entries()}
    used = set(_keys(yaml.safe_load(config.read_text(encoding="utf-8"))))
    assert used and not used - documented


def test_explain_prints_one_keys_type_default_bounds_and_help(capsys):
    assert main(["config", "--explain", "training.warmup_ratio"]) == 0
    assert capsys.readouterr().out == ("training.warmup_ratio\n  type: float\n  default: 0.05\n  bounds: >= 0, < 1\n"
                                       "  Fraction of optimiser steps spent warming up.\n")
    # A key each method has its own of: every method's entry.
    assert main(["config", "--explain", "method.learning_rate"]) == 0
    out = capsys.readouterr().out
    assert [line for line in out.splitlines() if not line.startswith(" ")] == [
        f"method.learning_rate  (method.name: {name})" for name in METHOD_NAMES]


def test_explain_of_a_misspelt_key_or_a_section_says_what_there_is(capsys):
    assert main(["config", "--explain", "training.epoch"]) == 2
    assert "no config key 'training.epoch'; did you mean training.epochs" in capsys.readouterr().err
    assert main(["config", "--explain", "sweep.asha"]) == 2
    err = capsys.readouterr().err
    assert "'sweep.asha' is a section; its keys: sweep.asha.compare_at_least, sweep.asha.compare_by" in err

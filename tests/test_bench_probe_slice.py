"""bench.run.probe_slice: a smoke run's general probe is a quarter of each split of each file, still a probe."""

from __future__ import annotations

import json
from dataclasses import asdict

from bench.run import probe_slice
from trials.config import DEFAULT_PROBE
from trials.general import load_probe


def _content(row) -> dict:
    """A probe row without where it sits in its file (the slice's lines are others than the full file's)."""
    return {key: value for key, value in asdict(row).items() if key not in ("line", "where")}


def test_the_smoke_probe_keeps_every_fourth_row_of_each_split(tmp_path):
    sliced = load_probe(probe_slice(DEFAULT_PROBE, tmp_path / "probe"))
    full = load_probe(DEFAULT_PROBE)
    for kept, every in ((sliced.questions, full.questions), (sliced.prompts, full.prompts)):
        for split in ("protect", "check"):
            rows = [_content(row) for row in every if row.split == split]
            assert [_content(row) for row in kept if row.split == split] == rows[::4] and rows
    # The files' own lines, unchanged.
    first = (tmp_path / "probe" / "questions.jsonl").read_text().splitlines()[0]
    assert json.loads(first) == json.loads((DEFAULT_PROBE / "questions.jsonl").read_text().splitlines()[0])

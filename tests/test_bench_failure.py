"""A bench section that raises: latest.json and RESULTS.md are written all the same.

`bench.run` runs here with three sections added to its registry: one raises, one returns without its
required figure, one works. The real sections are not run: the previous latest.json (a copy of
bench/results/latest.json) keeps their figures, and the report renders them next to the failures.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent

DRIVER = """
import sys
from bench import run

def boom(bench):
    raise RuntimeError("deliberate failure in a bench section")

def incomplete(bench):
    return {}

def probe(bench):
    return {"probe_figure": 1.0}

def owns_probe_keys(key):
    return key.startswith("probe_")

run.SECTIONS["boom"] = run.Section(boom, (), owns_probe_keys)
run.SECTIONS["incomplete"] = run.Section(incomplete, ("probe_missing",), owns_probe_keys)
run.SECTIONS["probe"] = run.Section(probe, ("probe_figure",), owns_probe_keys)
sys.exit(run.main(sys.argv[1:]))
"""


@pytest.mark.timeout(120)
def test_a_failing_section_is_recorded_and_the_rest_is_written(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    shutil.copy(REPO / "bench" / "results" / "latest.json", out / "latest.json")
    previous = json.loads((out / "latest.json").read_text())
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    env.pop("MLFLOW_TRACKING_URI", None)
    done = subprocess.run([sys.executable, "-c", DRIVER, "--sections", "boom,incomplete,probe", "--out", str(out)],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=110)
    assert done.returncode == 1, done.stdout[-3000:] + done.stderr[-3000:]

    results = json.loads((out / "latest.json").read_text())
    boom = results["sections"]["boom"]["error"]
    assert boom["type"] == "RuntimeError"
    assert boom["message"] == "deliberate failure in a bench section"
    assert ", in boom" in boom["traceback"]  # the tail reaches the frame that raised
    assert boom["traceback"].endswith("RuntimeError: deliberate failure in a bench section")
    assert results["sections"]["incomplete"]["error"]["type"] == "MissingFigures"
    assert "probe_missing" in results["sections"]["incomplete"]["error"]["message"]
    # The section after the failures ran, and the sections not run kept their figures and records.
    assert results["probe_figure"] == 1.0 and "error" not in results["sections"]["probe"]
    for key in ("throughput_ratio_vs_seed", "smollm2_champion_test_recall", "goals_met", "smollm2_goals_met"):
        assert results[key] == previous[key], key
    assert results["sections"]["tiny"] == previous["sections"]["tiny"]

    markdown = (out / "RESULTS.md").read_text()
    assert "## Failed sections" in markdown
    assert "### boom: RuntimeError" in markdown and "deliberate failure in a bench section" in markdown
    assert "### incomplete: MissingFigures" in markdown and "### probe" not in markdown
    assert "## SmolLM2-135M-Instruct" in markdown and "## The embedded tiny model" in markdown

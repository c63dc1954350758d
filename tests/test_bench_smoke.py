"""The bench's code paths on tiny settings: keys produced, nothing timed, the real results untouched.

`python -m bench.run --smoke` runs every section (throughput vs the seed recipe, ASHA and no-ASHA
sweeps with real Ray/Optuna/MLflow, best-trial test scoring from MLflow, the seed recipe at equal
compute) on a 4-person slice of the demo data, writing into a temporary directory.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.e2e


# What latest.json must hold (the list), checked here independently of bench.run.
REQUIRED_KEYS = (
    "throughput_ratio_vs_seed", "tokens_per_s_ours", "tokens_per_s_seed",
    "recall_best_val", "recall_best_test", "recall_seed_val", "recall_seed_test",
    "overhead_fraction", "per_trial_overhead_s",
    "asha_trial_epochs", "noasha_trial_epochs", "asha_best_val", "noasha_best_val",
)


def _env() -> dict:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    env.pop("RAY_ADDRESS", None)
    env.pop("MLFLOW_TRACKING_URI", None)
    return env


def _stamp(path: Path):
    return path.stat().st_mtime_ns if path.exists() else None


@pytest.mark.timeout(240)
def test_bench_smoke_writes_every_key(tmp_path):
    real_json, real_md = REPO / "bench" / "results" / "latest.json", REPO / "bench" / "RESULTS.md"
    before = (_stamp(real_json), _stamp(real_md))
    out = tmp_path / "out"
    done = subprocess.run([sys.executable, "-m", "bench.run", "--smoke", "--out", str(out)], cwd=REPO,
                          env=_env(), capture_output=True, text=True, timeout=230)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]

    results = json.loads((out / "latest.json").read_text())
    missing = [key for key in REQUIRED_KEYS if key not in results]
    assert not missing
    assert results["smoke"] is True
    for key in ("throughput_ratio_vs_seed", "tokens_per_s_ours", "tokens_per_s_seed", "per_trial_overhead_s"):
        assert isinstance(results[key], float) and results[key] > 0, key
    for key in ("recall_best_val", "recall_best_test", "recall_seed_val", "recall_seed_test", "asha_best_val",
                "noasha_best_val"):
        assert 0.0 <= results[key] <= 1.0, key
    assert results["overhead_fraction"] < 1.0
    # 2 trials x 2 epochs without ASHA; the seed recipe trained for the ASHA sweep's trial-epochs.
    assert results["noasha_trial_epochs"] == 4
    assert 2 <= results["asha_trial_epochs"] <= 4
    assert results["seed_equal_compute"]["epochs"] == results["asha_trial_epochs"]
    # Both sides of the throughput comparison trained on the same real-token count (the seed stops
    # after the batch that reaches it: at most one batch of 2 lines more).
    ours, seed = (results["throughput"]["throughput_runs"][side][0] for side in ("ours", "seed"))
    assert ours["tokens"] <= seed["tokens"] < ours["tokens"] + 200
    assert set(results["goals_met"]) == {"throughput_ratio_vs_seed", "recall_best_val", "overhead_fraction", "asha"}

    markdown = (out / "RESULTS.md").read_text()
    assert "SMOKE" in markdown and "| measure |" in markdown and "torch" in markdown
    assert (_stamp(real_json), _stamp(real_md)) == before, "a test must never overwrite bench/results"


@pytest.mark.timeout(120)
def test_gpu_bench_code_paths_on_cpu(tmp_path):
    """bench/gpu.py --tiny: the GPU bench's two training loops on a tiny model on CPU."""
    out = tmp_path / "gpu.json"
    done = subprocess.run([sys.executable, "-m", "bench.gpu", "--tiny", "--out", str(out)], cwd=REPO,
                          env=_env(), capture_output=True, text=True, timeout=110)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result["ours"]["tokens"] == result["data"]["real_tokens"]
    assert result["seed"]["tokens"] >= result["ours"]["tokens"]
    assert result["throughput_ratio_vs_seed"] > 0
    assert result["shared_gpu"]["skipped"]

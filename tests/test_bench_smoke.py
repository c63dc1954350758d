"""The bench's code paths on tiny settings: keys produced, nothing timed, the real results untouched.

`python -m bench.run --smoke` runs the tiny-model sections (throughput vs the seed recipe, ASHA and no-ASHA
sweeps with real Ray/Optuna/MLflow, best-trial test scoring from MLflow, the seed recipe at equal
compute; adding facts later: an incremental sweep against the seed recipe's way) on a 2-person slice
of the demo data (and of its second batch), writing into a temporary directory.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from bench_support import bench_env

REPO = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.e2e


# What latest.json must hold (the list), checked here independently of bench.run.
REQUIRED_KEYS = (
    "throughput_ratio_vs_seed", "tokens_per_s_ours", "tokens_per_s_seed",
    "recall_best_val", "recall_best_test", "recall_seed_val", "recall_seed_test",
    "overhead_fraction", "per_trial_overhead_s",
    "asha_trial_epochs", "noasha_trial_epochs", "asha_best_val", "noasha_best_val",
    "incremental_retention_ours", "incremental_retention_seed_way",
    "incremental_new_recall_ours", "incremental_new_recall_seed_way",
)


def _stamp(path: Path):
    return path.stat().st_mtime_ns if path.exists() else None


@pytest.mark.timeout(900)
def test_bench_smoke_writes_every_key(tmp_path):
    real_json, real_md = REPO / "bench" / "results" / "latest.json", REPO / "bench" / "RESULTS.md"
    before = (_stamp(real_json), _stamp(real_md))
    out = tmp_path / "out"
    # The tiny-model sections. SmolLM2's has the next test; `general`'s two SmolLM2 sweeps are measured
    # by `make bench-general` on their own.
    done = subprocess.run([sys.executable, "-m", "bench.run", "--smoke", "--sections", "tiny,incremental",
                           "--out", str(out)], cwd=REPO, env=bench_env(), capture_output=True, text=True, timeout=890)
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
    # Lent CPUs only ever add to what counts as busy.
    assert results["overhead_fraction_cpus_counted"] <= results["overhead_fraction"]
    # 2 trials x 2 epochs without ASHA; the seed recipe trained for the ASHA sweep's trial-epochs.
    assert results["noasha_trial_epochs"] == 4
    assert 2 <= results["asha_trial_epochs"] <= 4
    assert results["seed_equal_compute"]["epochs"] == results["asha_trial_epochs"]
    # Both sides of the throughput comparison trained on the same real-token count (the seed stops
    # after the batch that reaches it: at most one batch of 2 lines more).
    ours, seed = (results["throughput"]["throughput_runs"][side][0] for side in ("ours", "seed"))
    assert ours["tokens"] <= seed["tokens"] < ours["tokens"] + 200
    assert set(results["goals_met"]) == {"throughput_ratio_vs_seed", "recall_best_val", "overhead_fraction", "asha"}
    # Adding facts later: both sides continue the same parent, the seed way for as many epochs as the best trial.
    for key in ("incremental_retention_ours", "incremental_retention_seed_way", "incremental_new_recall_ours",
                "incremental_new_recall_seed_way", "incremental_parent_recall"):
        assert 0.0 <= results[key] <= 1.0, key
    assert results["incremental_sweep"]["num_trials"] == 2
    assert results["incremental_seed_way"]["epochs"] == results["incremental_trial_epochs"] \
        == results["incremental_best"]["epochs"]
    assert results["incremental_seed_way_seed_lr"]["learning_rate"] == 1e-6
    assert 0.0 <= results["incremental_best_replay_fraction"] <= 1.0

    markdown = (out / "RESULTS.md").read_text()
    assert "SMOKE" in markdown and "| measure |" in markdown and "torch" in markdown
    assert "## Adding facts later" in markdown
    assert (_stamp(real_json), _stamp(real_md)) == before, "a test must never overwrite bench/results"


SMOLLM2_KEYS = (
    "smollm2_champion_test_recall", "smollm2_champion_train_recall", "smollm2_seed_test_recall",
    "smollm2_throughput_ratio_vs_seed", "smollm2_speedup_vs_previous",
)


@pytest.mark.real_model
@pytest.mark.timeout(1200)
def test_bench_smollm2_smoke_writes_every_key_and_keeps_the_other_sections(tmp_path):
    """`--sections smollm2` on a slice: its keys are written, and a previous run's tiny-model figures
    in the same latest.json are kept, not dropped."""
    out = tmp_path / "out"
    out.mkdir()
    earlier = {"throughput_ratio_vs_seed": 1.7, "sections": {"tiny": {"date": "earlier"}}, "smoke": True}
    (out / "latest.json").write_text(json.dumps(earlier))
    done = subprocess.run([sys.executable, "-m", "bench.run", "--smoke", "--sections", "smollm2", "--out", str(out)],
                          cwd=REPO, env=bench_env(), capture_output=True, text=True, timeout=1190)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]

    results = json.loads((out / "latest.json").read_text())
    assert not [key for key in SMOLLM2_KEYS if key not in results]
    for key in ("smollm2_throughput_ratio_vs_seed", "smollm2_speedup_vs_previous", "smollm2_tokens_per_s_ours"):
        assert isinstance(results[key], float) and results[key] > 0, key
    for key in ("smollm2_champion_test_recall", "smollm2_champion_train_recall", "smollm2_seed_test_recall"):
        assert 0.0 <= results[key] <= 1.0, key
    # The three sides of the speed comparison trained on the same examples; the seed matched our tokens.
    runs = results["smollm2_speed_runs"]
    assert runs["ours"][0]["tokens"] == runs["previous"][0]["tokens"]
    assert runs["ours"][0]["tokens"] <= runs["seed"][0]["tokens"] < runs["ours"][0]["tokens"] + 400
    assert results["smollm2_sweep"]["num_trials"] == 2
    assert results["smollm2_seed"]["epochs"] == results["smollm2_champion"]["epochs"]
    assert set(results["smollm2_seed"]["recall_by_prompt_format"]) == {"chatml", "plain"}
    assert results["throughput_ratio_vs_seed"] == 1.7 and results["sections"]["tiny"] == {"date": "earlier"}
    assert "smollm2" in results["sections"]
    assert "SmolLM2-135M-Instruct" in (out / "RESULTS.md").read_text()


@pytest.mark.timeout(600)
def test_gpu_bench_code_paths_on_cpu(tmp_path):
    """bench/gpu.py --tiny: the GPU bench's two training loops on a tiny model on CPU."""
    out = tmp_path / "gpu.json"
    done = subprocess.run([sys.executable, "-m", "bench.gpu", "--tiny", "--out", str(out)], cwd=REPO,
                          env=bench_env(), capture_output=True, text=True, timeout=590)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result["ours"]["tokens"] == result["data"]["real_tokens"]
    assert result["seed"]["tokens"] >= result["ours"]["tokens"]
    assert result["throughput_ratio_vs_seed"] > 0
    assert result["shared_gpu"]["skipped"]

"""bench/steps.py: its token-budget batching (the `token_budget` variant): every example once, and a batch's rows x
its longest example within the budget unless one example alone is longer; and the section run on a slice."""

from __future__ import annotations

import json
import random
import subprocess
import sys
from pathlib import Path

import pytest
from bench_support import bench_env

from bench.steps import token_budget_batches
from trials.formatting import Example
from trials.train import batches_for_epoch, group_key

REPO = Path(__file__).resolve().parent.parent


def _examples(lengths: list[int]) -> list[Example]:
    return [Example(list(range(n)), list(range(n)), prompt_tokens=n // 2) for n in lengths]


def test_every_example_once_and_each_batch_within_the_budget():
    lengths = [random.Random(seed).randint(20, 90) for seed in range(200)] + [900]
    examples = _examples(lengths)
    batches = token_budget_batches(examples, 8, random.Random(0), group_key)
    assert sorted(id(e) for batch in batches for e in batch) == sorted(id(e) for e in examples)
    budget = 8 * sum(lengths) / len(lengths)
    for batch in batches:
        assert len(batch) * max(e.num_tokens for e in batch) <= budget or len(batch) == 1
    # Short examples fill wider batches than the fixed 8 rows; the 900-token one goes alone.
    assert max(len(batch) for batch in batches) > 8
    assert [len(batch) for batch in batches if batch[0].num_tokens == 900] == [1]


def test_less_padding_than_fixed_rows_on_mixed_lengths():
    examples = _examples([random.Random(seed).choice([30, 45, 60, 200]) for seed in range(256)])

    def padded(batches):
        return sum(len(batch) * max(e.num_tokens for e in batch) for batch in batches)

    fixed = batches_for_epoch(examples, 8, random.Random(0), group_key)
    budget = token_budget_batches(examples, 8, random.Random(0), group_key)
    assert padded(budget) <= padded(fixed)


@pytest.mark.real_model
@pytest.mark.timeout(600)
def test_bench_steps_smoke_measures_mfu_the_variants_and_threads(tmp_path):
    """`--sections steps` on a slice: both models' MFU against peaks measured in the run, every faster-step variant
    beside ours (on the tiny model in a smoke run), and two trainings at once on 1 and on 2 threads each."""
    from bench.steps import VARIANT_PAIRS, VARIANTS
    out = tmp_path / "out"
    done = subprocess.run([sys.executable, "-m", "bench.run", "--smoke", "--sections", "steps", "--out", str(out)],
                          cwd=REPO, env=bench_env(), capture_output=True, text=True, timeout=590)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]

    results = json.loads((out / "latest.json").read_text())
    for key in ("tiny_mfu", "smollm2_mfu", "peak_bf16_gflops", "peak_fp32_gflops", "smollm2_flops_per_token"):
        assert isinstance(results[key], float) and results[key] > 0, key
    assert results["smollm2_flops_per_token"] > 10 * results["tiny_flops_per_token"]  # 488 against 16.8 MFLOP
    variants = results["steps_variants"]
    assert set(variants) == set(VARIANTS)
    for name, row in variants.items():
        assert row["tokens_per_s"] > 0 and (name == "ours" or row["loss"] > 0), name
        if row["speedup"] >= 1.05:  # trained the whole trial, with ours, and scored on val
            assert 0.0 <= row["recall"]["val_exact_recall"] <= 1.0 and "recall" in variants["ours"]
    assert all(len(row["rates"]) == len(row["ours_rates"]) == VARIANT_PAIRS for name, row in variants.items()
               if name != "ours")
    # The ways they replaced compute the same numbers: the same loss to the last bit, in bf16 as the smoke trains.
    for before in ("prefix_output_layer", "peft_input_casts"):
        assert variants[before]["loss"] == variants[before]["ours_loss"], before
    threads = results["steps_threads"]
    assert set(threads) == {"1_thread_each", "2_threads_each"}
    assert all(len(rates) == 2 and min(rates) > 0 for rates in threads.values())
    assert "## Training steps" in (out / "RESULTS.md").read_text()

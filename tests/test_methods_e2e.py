"""The PEFT methods beyond LoRA and prefix-tuning, each trained for real on the tiny model from the
command line: DoRA (a LoRA knob) and IA3 (a method of its own). Two epochs each: enough to show the
adapter has the right shape, trains (its loss falls), is saved and scored."""

from __future__ import annotations

import json

import pytest

from test_trial_e2e import run_cli
from trials.tiny_model import SPEC

LAYERS, HIDDEN, INTERMEDIATE = SPEC["num_hidden_layers"], SPEC["hidden_size"], SPEC["intermediate_size"]
KV = HIDDEN * SPEC["num_key_value_heads"] // SPEC["num_attention_heads"]


def train(tmp_path, orchestrator, repo_root, *overrides: str) -> tuple[dict, dict]:
    output_dir = tmp_path / "out"
    sets = [arg for override in ("training.epochs=2", *overrides) for arg in ("--set", override)]
    run_cli(orchestrator, repo_root, "trial", "configs/demo.yaml", *sets, "--output-dir", str(output_dir))
    metrics = json.loads((output_dir / "metrics.json").read_text())
    adapter_config = json.loads((output_dir / "adapter" / "adapter_config.json").read_text())
    assert metrics["status"] == "finished" and metrics["epochs"] == 2
    assert metrics["history"][-1]["loss"] < metrics["history"][0]["loss"]
    assert 0.0 <= metrics["val_exact_recall"] <= metrics["val_contains_recall"] <= 1.0
    return metrics, adapter_config


@pytest.mark.e2e
def test_ia3_trains_from_the_command_line(tmp_path, orchestrator, repo_root):
    metrics, adapter_config = train(tmp_path, orchestrator, repo_root, "method={name: ia3, learning_rate: 0.01}")
    assert metrics["method"] == "ia3" and adapter_config["peft_type"] == "IA3"
    # One learned scale per output channel of k_proj and v_proj, per input channel of down_proj.
    assert metrics["trainable_parameters"] == LAYERS * (KV + KV + INTERMEDIATE)


@pytest.mark.e2e
def test_dora_trains_from_the_command_line(tmp_path, orchestrator, repo_root):
    metrics, adapter_config = train(tmp_path, orchestrator, repo_root, "method.use_dora=true",
                                    "method.target_modules=[q_proj, v_proj]", "method.r=8")
    assert metrics["method"] == "lora" and adapter_config["use_dora"] is True
    lora = LAYERS * 8 * ((HIDDEN + HIDDEN) + (HIDDEN + KV))
    magnitudes = LAYERS * (HIDDEN + KV)  # DoRA's magnitude vector: one per output channel
    assert metrics["trainable_parameters"] == lora + magnitudes

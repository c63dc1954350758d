"""bench/mfu.py: the FLOP count of a training step, checked by hand on the tiny model, and a GEMM peak."""

from __future__ import annotations

import pytest
import torch

from bench import mfu
from trials.formatting import Example
from trials.methods.lora import LoraMethod
from trials.model import attach_method, load_base_model


def test_the_flop_count_is_four_per_frozen_weight_six_per_trained_one_plus_lm_head_and_attention(tokenizer_path):
    model = attach_method(load_base_model(tokenizer_path, torch.device("cpu"), False),
                          LoraMethod(r=4, alpha=8, target_modules=["q_proj", "v_proj"]), False)
    config = model.config
    # Two examples: 10 tokens with 4 of prompt, 6 with none (a passage): 12 of 16 tokens are labels.
    examples = [Example(list(range(10)), [-100] * 4 + list(range(6)), prompt_tokens=4),
                Example(list(range(6)), list(range(6)))]
    hidden, inter, layers = config.hidden_size, config.intermediate_size, config.num_hidden_layers
    heads, kv_heads = config.num_attention_heads, config.num_key_value_heads
    kv = hidden * kv_heads // heads
    frozen = layers * (hidden * hidden * 2 + hidden * kv * 2 + 3 * hidden * inter)  # q, o; k, v; gate, up, down
    trained = layers * (4 * hidden + 4 * hidden) + layers * (4 * hidden + 4 * kv)  # A (4 x in) and B (out x 4), q and v
    attended = (10 * 11 / 2 + 6 * 7 / 2) / 16
    expected = 4 * frozen + 6 * trained + 4 * hidden * config.vocab_size * 12 / 16 + 8 * hidden * attended * layers
    assert mfu.training_flops_per_token(model, examples) == pytest.approx(expected)
    # Half the real tokens computed (a shared prompt start run once per batch): as many labels, over half the tokens.
    lm_head = 4 * hidden * config.vocab_size * 12 / 16
    assert mfu.training_flops_per_token(model, examples, 0.5) == pytest.approx(expected + lm_head)


def test_a_gemm_peak_is_measured_in_gflops():
    assert mfu.gemm_gflops(64, 64, 64, torch.float32, torch.device("cpu"), seconds=0.05) > 0
    assert mfu.utilisation(1e9, 10.0, 20.0) == pytest.approx(0.5)

"""training.adapter_shrink (trials/shrink.py): the trained LoRA update scaled down after the last epoch, the
smallest factor kept whose val score holds; real peft on the embedded tiny Llama."""

from __future__ import annotations

import json

import pytest
import torch

from pydantic import ValidationError

from trials.config import TrialConfig
from trials.shrink import Verdict, choose_shrink, lora_b_weights


def _lora(tokenizer_path: str):
    from trials.methods.lora import LoraMethod
    from trials.model import attach_method, load_base_model

    model = attach_method(load_base_model(tokenizer_path, torch.device("cpu"), False),
                          LoraMethod(r=4, alpha=8, learning_rate=1e-3, target_modules=["q_proj", "v_proj"]), False)
    for weight in lora_b_weights(model):  # peft starts B at zero: give the update a size to shrink
        torch.nn.init.normal_(weight)
    return model


def test_the_smallest_factor_that_keeps_val_is_kept_and_applied(tokenizer_path):
    model = _lora(tokenizer_path)
    weights = lora_b_weights(model)
    assert len(weights) == 4 * 2  # q_proj and v_proj of the tiny model's 4 layers
    full = [w.clone() for w in weights]
    size = lambda: sum(float(w.norm()) for w in lora_b_weights(model)) / sum(float(w.norm()) for w in full)
    # A val score that holds down to 0.6 of the update and drops below it (measured on the model as it is).
    val = lambda factor: Verdict(0.9 if size() > 0.55 else 0.5)
    lines = []
    assert choose_shrink(model, [0.8, 0.4, 0.6], 0.0, Verdict(0.9), val, lines.append) == 0.6
    for weight, before in zip(lora_b_weights(model), full):
        assert torch.allclose(weight, 0.6 * before, atol=1e-6)
    assert lines == ["adapter_shrink: val at 1: 0.900, 0.8: 0.900, 0.6: 0.900, 0.4: 0.500; kept 0.6"]


def test_nothing_holding_val_keeps_the_full_update_and_the_tolerance_lets_a_little_go(tokenizer_path):
    model = _lora(tokenizer_path)
    full = [w.clone() for w in lora_b_weights(model)]
    falls = lambda factor: Verdict(0.85)  # every shrunk update scores a little below the full one's 0.9
    assert choose_shrink(model, [0.8], 0.0, Verdict(0.9), falls, lambda _: None) == 1.0
    assert all(torch.equal(w, before) for w, before in zip(lora_b_weights(model), full))
    assert choose_shrink(model, [0.8], 0.05, Verdict(0.9), falls, lambda _: None) == 0.8


def test_with_the_probe_the_factor_keeping_the_most_protect_questions_wins(tokenizer_path):
    """Measured on SmolLM2 (docs/general-knowledge.md): judged on val alone the smallest factor won and lost a protect question
    the full update answered; with the probe, the most protect questions kept decide among val-holding ones."""
    model = _lora(tokenizer_path)
    verdicts = {0.9: Verdict(0.98, 83), 0.8: Verdict(0.98, 80), 0.7: Verdict(0.95, 86), 0.6: Verdict(0.98, 83)}
    lines = []
    judge = lambda factor: verdicts[factor]
    # 0.7 drops val; 0.8 keeps fewer than the full update's 82; 0.9 and 0.6 tie on 83: the smaller wins.
    assert choose_shrink(model, list(verdicts), 0.0, Verdict(0.98, 82), judge, lines.append) == 0.6
    assert lines == ["adapter_shrink: val at 1: 0.980 (protect 82), 0.9: 0.980 (protect 83), "
                     "0.8: 0.980 (protect 80), 0.7: 0.950 (protect 86), 0.6: 0.980 (protect 83); kept 0.6"]
    # A full update no shrunk one matches on the protect questions is kept whole.
    assert choose_shrink(model, list(verdicts), 0.0, Verdict(0.98, 84), judge, lambda _: None) == 1.0


def test_a_model_without_lora_is_left_alone(tokenizer_path):
    from trials.model import load_base_model

    lines = []
    base = load_base_model(tokenizer_path, torch.device("cpu"), False)
    assert choose_shrink(base, [0.5], 0.0, Verdict(1.0), lambda factor: Verdict(1.0), lines.append) == 1.0
    assert "not a LoRA adapter" in lines[0]


@pytest.mark.parametrize("factors", [[1.0], [0.0], [-0.5]])
def test_a_factor_outside_zero_to_one_is_a_config_error(factors):
    with pytest.raises(ValidationError, match="adapter_shrink"):
        TrialConfig.model_validate({"data": {"qa": "x.jsonl"}, "training": {"adapter_shrink": factors}})


@pytest.mark.e2e
def test_a_trial_saves_and_reports_its_shrunk_update(tmp_path, demo_qa, tokenizer_path):
    """What a trial saves is what it measured: its adapter, re-scored, gives its val predictions. With a
    probe the tiny model knows, each factor is judged on the protect questions it keeps, and the general
    metrics are the kept factor's."""
    from general_support import self_known_probe

    from trials.evaluate import score_adapter
    from trials.trial import run_trial

    qa = tmp_path / "qa.jsonl"
    qa.write_text("".join(demo_qa.read_text(encoding="utf-8").splitlines(keepends=True)[:60]), encoding="utf-8")
    probe = self_known_probe(tmp_path / "probe", tokenizer_path)
    config = TrialConfig.model_validate({
        "data": {"qa": str(qa)}, "eval": {"max_new_tokens": 8, "general": str(probe)},
        "method": {"name": "lora", "r": 16, "alpha": 32, "learning_rate": 3e-3,
                   "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj"]},
        "training": {"epochs": 6, "batch_size": 4, "include_documents": False,
                     "adapter_shrink": [0.9, 0.7], "adapter_shrink_tolerance": 0.2},
    })
    lines = []
    summary = run_trial(config, tmp_path / "out", log=lines.append)
    assert summary["adapter_shrink"] in (1.0, 0.9, 0.7)
    (shrink_line,) = [line for line in lines if line.startswith("adapter_shrink: val at 1: ")]
    assert "(protect " in shrink_line
    assert summary["general_known"] > 5 and 0.0 <= summary["general_retention"] <= 1.0
    assert 0.0 <= summary["general_protect_retention"] <= 1.0
    saved = [json.loads(line) for line in (tmp_path / "out" / "predictions_val.jsonl").read_text().splitlines()]
    scores, records = score_adapter(tmp_path / "out" / "adapter", config, "val")["val"]
    assert [r["got"] for r in records] == [r["got"] for r in saved]
    assert scores["exact_recall"] == pytest.approx(summary["val_exact_recall"], abs=1e-12)

"""The adapter gate (trials/gate.py): which questions the adapter answers, and that the others get exactly
the base model's answer."""

from __future__ import annotations

import json

import pytest
import torch

from orchestrator.config import load_experiment
from trials.config import ConfigError
from trials.data import load_knowledge
from trials.gate import GATE_FILE, Gate, attach, fit_gate, gate_of, share_to_adapter
from trials.general import DEFAULT_PROBE, GeneralCheck, base_answers, drift, load_probe
from trials.methods.lora import LoraMethod
from trials.methods.prefix import PrefixMethod
from trials.model import attach_method, load_base_model, load_tokenizer
from trials.recall import generate_token_ids

CPU = torch.device("cpu")


def _tiny(path: str):
    return load_base_model(path, CPU, False), load_tokenizer(path)


def _gate_to(adapter: bool, hidden: int, layer: int = 1) -> Gate:
    """A gate that sends every question one way: weights 0, the bias decides."""
    return Gate(layer, [0.0] * hidden, [1.0] * hidden, [0.0] * hidden, 1.0 if adapter else -1.0)


def _trained_lora(model):
    """A LoRA model whose update is not zero (B drawn at random), so it answers unlike its base."""
    model = attach_method(model, LoraMethod(r=8, alpha=16, learning_rate=1e-2), False)
    torch.manual_seed(0)
    for name, parameter in model.named_parameters():
        if "lora_B" in name:
            parameter.data.normal_(0.0, 0.5)
    return model


@pytest.fixture(scope="module")
def demo_and_probe(repo_root):
    config = load_experiment(repo_root / "configs" / "demo.yaml")
    return load_knowledge(config.data), load_probe(DEFAULT_PROBE)


def test_the_gate_learns_the_private_questions_from_the_general_ones(tokenizer_path, demo_and_probe, tmp_path):
    knowledge, probe = demo_and_probe
    model, tokenizer = _tiny(tokenizer_path)
    private = [row.question for row in knowledge.split("train")]
    general = [q.question for q in probe.questions if q.split == "protect"]
    gate = fit_gate(model, tokenizer, private, general, batch_size=64, device=CPU, bf16=False)
    model = attach(model, gate)
    options = {"batch_size": 64, "device": CPU, "bf16": False}
    # Questions it never saw: val (the same facts, asked other ways) and the probe's check part. Even the
    # tiny random model's states tell them apart (0.97 and 0.99 measured).
    assert share_to_adapter(model, tokenizer, [row.question for row in knowledge.split("val")], **options) >= 0.9
    assert share_to_adapter(model, tokenizer, [q.question for q in probe.questions if q.split == "check"],
                            **options) <= 0.1
    gate.save(tmp_path)
    assert Gate.load(tmp_path) == gate and json.loads((tmp_path / GATE_FILE).read_text())["layer"] == gate.layer
    assert Gate.load(tmp_path / "nowhere") is None


@pytest.mark.parametrize("method", [LoraMethod(r=8, alpha=16, learning_rate=1e-2),
                                    PrefixMethod(num_virtual_tokens=4, learning_rate=1e-2)],
                         ids=["lora", "prefix"])
def test_a_question_sent_to_the_base_gets_exactly_the_base_models_answer(tokenizer_path, method):
    questions = ["What is the capital of France?", "Which team is Anouk Renwick on?", "How many legs has a spider?",
                 "Where is the office of Anouk Renwick?"]
    base, tokenizer = _tiny(tokenizer_path)

    def answers(model, asked=questions):
        return generate_token_ids(model, tokenizer, asked, batch_size=8, max_new_tokens=6, device=CPU)

    from_base = answers(base)
    if isinstance(method, LoraMethod):
        model = _trained_lora(base)
    else:  # a prefix drawn at random: it changes the answers from the first step
        model = attach_method(base, method, False)
        torch.manual_seed(0)
        for parameter in model.parameters():
            if parameter.requires_grad:
                parameter.data.normal_(0.0, 1.0)
    hidden = model.config.hidden_size
    ungated = answers(attach(model, None))
    assert ungated != from_base  # the adapter changes what is answered
    assert answers(attach(model, _gate_to(False, hidden))) == from_base
    assert answers(attach(model, _gate_to(True, hidden))) == ungated


def test_a_batch_split_by_the_gate_answers_each_part_as_it_would_alone(tokenizer_path, monkeypatch):
    import trials.gate as gate

    base, tokenizer = _tiny(tokenizer_path)
    questions = ["What is the capital of France?", "Which team is Anouk Renwick on?", "Name a prime number.",
                 "Where is the office of Anouk Renwick?"]
    model = _trained_lora(base)
    hidden = base.config.hidden_size

    def answers(asked, to_adapter: bool):
        attach(model, _gate_to(to_adapter, hidden))
        return generate_token_ids(model, tokenizer, asked, batch_size=8, max_new_tokens=6, device=CPU)

    private, general = answers(questions[1::2], True), answers(questions[0::2], False)
    # France and the prime to the base, the two private ones to the adapter, in one batch of four.
    monkeypatch.setattr(gate, "routes", lambda *args: [False, True, False, True])
    assert answers(questions, True) == [general[0], private[0], general[1], private[1]]


def test_a_reply_the_gate_sends_to_the_base_does_not_drift(tokenizer_path):
    base, tokenizer = _tiny(tokenizer_path)
    probe = load_probe(DEFAULT_PROBE)
    check = GeneralCheck(tokenizer, probe, base_answers(base, tokenizer, probe, tokenizer_path, CPU, False, 64))
    model = _trained_lora(base)
    hidden = base.config.hidden_size
    examples = check.drift_examples[:8]
    assert drift(attach(model, _gate_to(True, hidden)), examples, tokenizer.pad_token_id, CPU, False, 8) > 0.01
    assert drift(attach(model, _gate_to(False, hidden)), examples, tokenizer.pad_token_id, CPU, False, 8) == 0.0


def test_the_gate_needs_the_probe(repo_root):
    demo = repo_root / "configs" / "demo.yaml"
    assert load_experiment(demo, ["training.adapter_gate=true"]).trial_config().training.adapter_gate
    with pytest.raises(ConfigError, match="training.adapter_gate needs eval.general"):
        load_experiment(demo, ["eval.general=null", "training.adapter_gate=true"])


@pytest.mark.e2e
def test_a_gated_trial_saves_its_gate_and_the_reloaded_adapter_answers_as_it_did(tokenizer_path, repo_root,
                                                                                 tmp_path):
    from trials.config import TrialConfig
    from trials.evaluate import load_trained, score_adapter
    from trials.trial import run_trial

    config = load_experiment(repo_root / "configs" / "demo.yaml",
                             ["training.epochs=2", "training.adapter_gate=true"]).trial_config()
    summary = run_trial(config, tmp_path / "out", log=lambda line: None)
    adapter = tmp_path / "out" / "adapter"
    assert (adapter / GATE_FILE).is_file()
    assert summary["gate_val_to_adapter"] >= 0.9 and summary["gate_check_to_base"] >= 0.9
    assert all("gate_val_to_adapter" in epoch for epoch in summary["history"])

    saved_config = TrialConfig.model_validate_json((tmp_path / "out" / "trial_config.json").read_text())
    saved = [json.loads(line) for line in (tmp_path / "out" / "predictions_val.jsonl").read_text().splitlines()]
    assert score_adapter(adapter, saved_config, "val")["val"][1] == saved
    # Reloaded, the gate comes with it: a general question gets the bare base model's answer.
    model, tokenizer, device, bf16 = load_trained(adapter, saved_config)
    assert gate_of(model) == Gate.load(adapter)
    france = ["What is the capital of France?"]
    gated = generate_token_ids(model, tokenizer, france, batch_size=8, max_new_tokens=8, device=device, bf16=bf16)
    base, _ = _tiny(tokenizer_path)
    assert gated == generate_token_ids(base, tokenizer, france, batch_size=8, max_new_tokens=8, device=device,
                                       bf16=bf16)

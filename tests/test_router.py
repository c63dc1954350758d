"""The adapter router (trials/router.py): which questions the adapter answers, and that the others get exactly
the base model's answer."""

from __future__ import annotations

import json

import pytest
import torch

from orchestrator.config import load_experiment
from trials.config import ConfigError
from trials.data import load_knowledge
from trials.general import DEFAULT_PROBE, GeneralCheck, base_answers, drift, load_probe
from trials.methods.lora import LoraMethod
from trials.methods.prefix import PrefixMethod
from trials.model import attach_method, load_base_model, load_tokenizer
from trials.recall import generate_token_ids
from trials.router import ROUTER_FILE, Router, attach, fit_router, routed_and_measured, router_of, share_to_adapter

CPU = torch.device("cpu")


def _tiny(path: str):
    return load_base_model(path, CPU, False), load_tokenizer(path)


def _router_to(adapter: bool, hidden: int, layer: int = 1) -> Router:
    """A router that sends every question one way: weights 0, the bias decides."""
    return Router(layer, [0.0] * hidden, [1.0] * hidden, [0.0] * hidden, 1.0 if adapter else -1.0)


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


def test_the_router_learns_the_private_questions_from_the_general_ones(tokenizer_path, demo_and_probe, tmp_path):
    knowledge, probe = demo_and_probe
    model, tokenizer = _tiny(tokenizer_path)
    private = [row.question for row in knowledge.split("train")]
    general = [q.question for q in probe.questions if q.split == "protect"]
    router = fit_router(model, tokenizer, private, general, batch_size=64, device=CPU, bf16=False)
    model = attach(model, router)
    options = {"batch_size": 64, "device": CPU, "bf16": False}
    # Questions it never saw: val (the same facts, asked other ways) and the probe's check part. Even the
    # tiny random model's states tell them apart (0.97 and 0.99 measured).
    assert share_to_adapter(model, tokenizer, [row.question for row in knowledge.split("val")], **options) >= 0.9
    assert share_to_adapter(model, tokenizer, [q.question for q in probe.questions if q.split == "check"],
                            **options) <= 0.1
    router.save(tmp_path)
    assert Router.load(tmp_path) == router and json.loads((tmp_path / ROUTER_FILE).read_text())["layer"] == router.layer
    assert Router.load(tmp_path / "nowhere") is None


def test_a_fitted_router_and_its_measurement_are_cached_for_the_next_trial(tokenizer_path, demo_and_probe,
                                                                            tmp_path, monkeypatch):
    """A sweep's trials fit the same router: the second asks the cache, not the model; other questions refit."""
    import trials.router

    monkeypatch.setenv("RECALL_CACHE", str(tmp_path))
    knowledge, probe = demo_and_probe
    model, tokenizer = _tiny(tokenizer_path)
    asked = {"private": [row.question for row in knowledge.split("train")],
             "general": [q.question for q in probe.questions if q.split == "protect"],
             "unseen_private": [row.question for row in knowledge.split("val")],
             "unseen_general": [q.question for q in probe.questions if q.split == "check"]}
    options = {**asked, "base_path": tokenizer_path, "batch_size": 64, "device": CPU, "bf16": False}
    fitted, measured = routed_and_measured(model, tokenizer, **options)
    assert measured["router_val_to_adapter"] >= 0.9 and measured["router_check_to_base"] >= 0.9
    assert fitted == fit_router(model, tokenizer, asked["private"], asked["general"], batch_size=64, device=CPU,
                                bf16=False)
    fits = []
    monkeypatch.setattr(trials.router, "fit_router", lambda *args, **kwargs: fits.append(args) or fitted)
    assert routed_and_measured(model, tokenizer, **options) == (fitted, measured) and fits == []
    routed_and_measured(model, tokenizer, **{**options, "private": asked["private"][1:]})
    assert len(fits) == 1  # one train question fewer is another router


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
    unrouted = answers(attach(model, None))
    assert unrouted != from_base  # the adapter changes what is answered
    assert answers(attach(model, _router_to(False, hidden))) == from_base
    assert answers(attach(model, _router_to(True, hidden))) == unrouted


def test_a_batch_split_by_the_router_answers_each_part_as_it_would_alone(tokenizer_path, monkeypatch):
    import trials.router as router

    base, tokenizer = _tiny(tokenizer_path)
    questions = ["What is the capital of France?", "Which team is Anouk Renwick on?", "Name a prime number.",
                 "Where is the office of Anouk Renwick?"]
    model = _trained_lora(base)
    hidden = base.config.hidden_size

    def answers(asked, to_adapter: bool):
        attach(model, _router_to(to_adapter, hidden))
        return generate_token_ids(model, tokenizer, asked, batch_size=8, max_new_tokens=6, device=CPU)

    private, general = answers(questions[1::2], True), answers(questions[0::2], False)
    # France and the prime to the base, the two private ones to the adapter, in one batch of four.
    monkeypatch.setattr(router, "routes", lambda *args: [False, True, False, True])
    assert answers(questions, True) == [general[0], private[0], general[1], private[1]]


def test_a_reply_the_router_sends_to_the_base_does_not_drift_and_is_not_generated(tokenizer_path, monkeypatch):
    import trials.general

    base, tokenizer = _tiny(tokenizer_path)
    probe = load_probe(DEFAULT_PROBE)
    check = GeneralCheck(tokenizer, probe, base_answers(base, tokenizer, probe, tokenizer_path, CPU, False, 64))
    model = _trained_lora(base)
    hidden = base.config.hidden_size
    examples = check.drift_examples[:8]
    assert drift(attach(model, _router_to(True, hidden)), examples, tokenizer.pad_token_id, CPU, False, 8) > 0.01
    assert drift(attach(model, _router_to(False, hidden)), examples, tokenizer.pad_token_id, CPU, False, 8) == 0.0
    # The probe's questions: those sent to the base get the base's own answer, which it knew, ungenerated.
    generated, real_right = [], trials.general._right
    monkeypatch.setattr(trials.general, "_right", lambda *args: generated.extend(args[3]) or real_right(*args))
    known = {split: sum(check.known[i] for i in check.asked[split]) for split in check.asked}
    assert check.kept(attach(model, _router_to(False, hidden)), tokenizer, CPU, False) == {
        split: [True] * count for split, count in known.items()} and generated == []
    kept = check.kept(attach(model, _router_to(True, hidden)), tokenizer, CPU, False)
    assert sorted(generated) == sorted(i for indices in check.asked.values() for i in indices)
    assert kept == check.kept(attach(model, None), tokenizer, CPU, False)  # all to the adapter: as without a router


def test_the_router_needs_the_probe_and_its_protect_part(repo_root, tmp_path, monkeypatch):
    from trials.data import DataError
    from trials.trial import run_trial

    demo = repo_root / "configs" / "demo.yaml"
    assert load_experiment(demo, ["training.adapter_router=true"]).trial_config().training.adapter_router
    with pytest.raises(ConfigError, match="training.adapter_router needs eval.general"):
        load_experiment(demo, ["eval.general=null", "training.adapter_router=true"])
    checks_only = tmp_path / "questions.jsonl"
    checks_only.write_text("".join(line + "\n" for line in (DEFAULT_PROBE / "questions.jsonl").read_text().splitlines()
                                   if '"split": "check"' in line))
    config = load_experiment(demo, ["training.adapter_router=true", f"eval.general={checks_only}"]).trial_config()
    monkeypatch.setattr("trials.trial.load_for", None)  # the error comes before any model would load
    with pytest.raises(DataError, match=f"{checks_only}: no 'protect' questions or prompts for the adapter router"):
        run_trial(config, tmp_path / "out", log=lambda line: None)


@pytest.mark.e2e
def test_a_routed_trial_saves_its_router_and_the_reloaded_adapter_answers_as_it_did(tokenizer_path, repo_root,
                                                                                 tmp_path):
    from trials.config import TrialConfig
    from trials.evaluate import load_trained, score_adapter
    from trials.trial import run_trial

    config = load_experiment(repo_root / "configs" / "demo.yaml",
                             ["training.epochs=2", "training.adapter_router=true"]).trial_config()
    summary = run_trial(config, tmp_path / "out", log=lambda line: None)
    adapter = tmp_path / "out" / "adapter"
    assert (adapter / ROUTER_FILE).is_file()
    assert summary["router_val_to_adapter"] >= 0.9 and summary["router_check_to_base"] >= 0.9
    assert all("router_val_to_adapter" in epoch for epoch in summary["history"])

    saved_config = TrialConfig.model_validate_json((tmp_path / "out" / "trial_config.json").read_text())
    saved = [json.loads(line) for line in (tmp_path / "out" / "predictions_val.jsonl").read_text().splitlines()]
    assert score_adapter(adapter, saved_config, "val")["val"][1] == saved
    # Reloaded, the router comes with it: a general question gets the bare base model's answer.
    model, tokenizer, device, bf16 = load_trained(adapter, saved_config)
    assert router_of(model) == Router.load(adapter)
    france = ["What is the capital of France?"]
    routed = generate_token_ids(model, tokenizer, france, batch_size=8, max_new_tokens=8, device=device, bf16=bf16)
    base, _ = _tiny(tokenizer_path)
    assert routed == generate_token_ids(base, tokenizer, france, batch_size=8, max_new_tokens=8, device=device,
                                       bf16=bf16)

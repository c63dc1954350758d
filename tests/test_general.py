"""The general-knowledge probe (trials/general.py): its data, the base model's cached answers, retention
and drift, the replay rows and their KL, the floor in the objective and in promotion."""

from __future__ import annotations

import json
import subprocess
from collections import Counter
from pathlib import Path

import pytest
import torch

from orchestrator.promote import Scored, _refusal
from orchestrator.report import pareto_front
from orchestrator.trainable import Floors, objective
from orchestrator.config import load_experiment
from trials.config import DEFAULT_PROBE, ConfigError
from trials.data import DataError
from trials.general import (GeneralCheck, base_answers, drift, load_probe, mentions,
                            protect_examples)

DEMO_CONFIG = Path(__file__).resolve().parent.parent / "configs" / "demo.yaml"


def test_the_shipped_probe_has_the_size_topics_and_fixed_split_it_promises():
    probe = load_probe(DEFAULT_PROBE)
    topics = Counter(question.topic for question in probe.questions)
    assert len(probe.questions) >= 300 and len(probe.prompts) >= 100
    assert {"geography", "science", "arithmetic", "language", "history", "animals", "units", "everyday"} <= set(topics)
    assert all(count >= 30 for count in topics.values()), topics
    for rows in (probe.questions, probe.prompts):
        splits = Counter(row.split for row in rows)
        assert set(splits) == {"protect", "check"} and min(splits.values()) >= len(rows) // 3, splits
    asked = [question.question.casefold() for question in probe.questions]
    assert len(asked) == len(set(asked))
    assert {p.kind for p in probe.prompts} == {"explain", "list", "rewrite", "advise"}


def test_a_known_answer_is_whole_words_in_the_first_line():
    assert mentions("The capital of France is Paris.", ("Paris",))
    assert mentions("To add 7 and 5: 7 + 5 = 12.", ("12", "twelve"))
    assert mentions("A spider has EIGHT legs", ("8", "eight"))
    assert not mentions("It has 18 legs.", ("8", "eight"))  # a number inside another is not it
    assert not mentions("Maybe Lyon.\nParis", ("Paris",))  # only the first line counts
    assert not mentions("", ("Paris",))


def test_a_bad_probe_file_names_each_bad_line(tmp_path):
    bad = tmp_path / "probe.jsonl"
    bad.write_text("\n".join([
        json.dumps({"question": "What is 2 + 2?", "answer": "4", "split": "check"}),
        "{not json",
        json.dumps({"question": "Capital of Peru?", "answer": "Lima", "split": "train"}),
        json.dumps({"question": "Largest ocean?", "split": "protect", "colour": "blue"}),
    ]) + "\n", encoding="utf-8")
    with pytest.raises(DataError) as raised:
        load_probe(bad)
    problems = "\n".join(raised.value.problems)
    assert f"{bad}:2: invalid JSON" in problems
    assert f"{bad}:3: unknown split 'train' (expected protect or check)" in problems
    assert f"{bad}:4: missing field 'answer'" in problems and f"{bad}:4: unknown field(s) colour" in problems


def test_a_bad_probe_is_reported_before_any_model_loads(tmp_path, orchestrator, repo_root):
    bad = tmp_path / "probe.jsonl"
    bad.write_text('{"question": "What is 2 + 2?", "answer": "4", "split": "check"}\n{"question": 3}\n')
    result = subprocess.run(orchestrator("trial", str(repo_root / "configs" / "demo.yaml"), "--output-dir",
                                         str(tmp_path / "out"), "--set", f"eval.general={bad}"),
                            capture_output=True, text=True, timeout=120)
    assert result.returncode != 0
    assert f"{bad}:2: field 'question' must be a non-empty string (eval.general)" in result.stderr
    assert "trainable of" not in result.stdout  # no model was loaded
    assert not (tmp_path / "out" / "metrics.json").exists()


def test_the_probe_can_be_turned_off_and_replay_needs_it(tmp_path, repo_root):
    demo = repo_root / "configs" / "demo.yaml"
    assert load_experiment(demo, ["eval.general=null"]).eval.general is None
    assert load_experiment(demo, ["eval.general=false"]).eval.general is None
    with pytest.raises(ConfigError, match="training.general_replay needs eval.general"):
        load_experiment(demo, ["eval.general=null", "training.general_replay=0.5"])


def _tiny(tokenizer_path):
    from trials.model import load_base_model, load_tokenizer

    return load_base_model(tokenizer_path, torch.device("cpu"), False), load_tokenizer(tokenizer_path)


def _first_lines_of_the_shipped_probe(directory: Path, questions: int, prompts: int) -> Path:
    directory.mkdir()
    for name, count in (("questions.jsonl", questions), ("chat.jsonl", prompts)):
        lines = (DEFAULT_PROBE / name).read_text(encoding="utf-8").splitlines()[:count]
        (directory / name).write_text("\n".join(lines) + "\n", encoding="utf-8")
    return directory


def test_the_base_answers_are_computed_once_and_cached(tmp_path, monkeypatch, tokenizer_path):
    monkeypatch.setenv("RECALL_CACHE", str(tmp_path / "cache"))
    # A slice of the shipped probe: the private cache means generating everything again.
    probe = load_probe(_first_lines_of_the_shipped_probe(tmp_path / "probe", 40, 10))
    model, tokenizer = _tiny(tokenizer_path)
    first = base_answers(model, tokenizer, probe, tokenizer_path, torch.device("cpu"), False, 64)
    assert len(first.replies) == len(probe.questions) and len(first.chat_ids) == len(probe.prompts)
    assert list((tmp_path / "cache" / "general").glob("*.json"))
    # A second call reads the cache: no model is needed (None would fail at its first use).
    assert base_answers(None, tokenizer, probe, tokenizer_path, torch.device("cpu"), False, 64) == first
    assert sum(first.known) <= 1  # the tiny random model knows next to nothing


def test_drift_is_zero_for_a_fresh_adapter_and_grows_as_it_trains(tokenizer_path):
    from trials.config import TrainingConfig
    from trials.formatting import qa_example
    from trials.methods.lora import LoraMethod
    from trials.model import attach_method
    from trials.train import Trainer

    model, tokenizer = _tiny(tokenizer_path)
    probe = load_probe(DEFAULT_PROBE)
    base = base_answers(model, tokenizer, probe, tokenizer_path, torch.device("cpu"), False, 64)
    check = GeneralCheck(tokenizer, probe, base)
    model = attach_method(model, LoraMethod(r=8, alpha=16, learning_rate=1e-2), False)
    before = drift(model, check.drift_examples, tokenizer.pad_token_id, torch.device("cpu"), False, 32)
    assert before == pytest.approx(0.0, abs=1e-5)  # LoRA's B starts at zero: the base model itself
    examples = [qa_example(tokenizer, "Who keeps the keys?", "Ada Lovelace")] * 16
    trainer = Trainer(model, examples, TrainingConfig(epochs=3, batch_size=8), 1e-2, tokenizer.pad_token_id,
                      torch.device("cpu"), False)
    for epoch in range(3):
        trainer.train_epoch(epoch)
    assert drift(model, check.drift_examples, tokenizer.pad_token_id, torch.device("cpu"), False, 32) > 0.01


def _replay_batch(tokenizer_path) -> tuple:
    """(LoRA model, inputs, labels) of a batch of the first 4 replay rows (the probe's protect part, the tiny
    base's own replies); the adapter starts as the base (B = 0)."""
    from trials.formatting import collate
    from trials.methods.lora import LoraMethod
    from trials.model import attach_method

    model, tokenizer = _tiny(tokenizer_path)
    probe = load_probe(DEFAULT_PROBE)
    rows = protect_examples(tokenizer, probe, base_answers(model, tokenizer, probe, tokenizer_path,
                                                           torch.device("cpu"), False, 64))
    assert rows and all(row.distill for row in rows)
    model = attach_method(model, LoraMethod(r=8, alpha=16, learning_rate=1e-2), False)
    inputs = collate(rows[:4], tokenizer.pad_token_id)
    return model, inputs, inputs.pop("labels")


def test_kl_only_replay_rows_cost_nothing_while_the_adapter_is_the_base(tokenizer_path):
    from trials.train import batch_loss, distilled_loss

    model, inputs, labels = _replay_batch(tokenizer_path)
    distill = torch.tensor([True] * 4)
    kl_only, tokens = distilled_loss(model, inputs, labels, distill, kl_weight=1.0)
    assert tokens > 0 and float(kl_only) == pytest.approx(0.0, abs=1e-3)
    ce_only, _ = distilled_loss(model, inputs, labels, distill, kl_weight=0.0)
    assert float(ce_only) == pytest.approx(float(batch_loss(model, inputs, labels)[0]), rel=1e-5)


def test_a_kl_weight_above_one_scales_the_kl_alone(tokenizer_path):
    from trials.train import distilled_loss

    model, inputs, labels = _replay_batch(tokenizer_path)
    with torch.no_grad():  # move the adapter off the base, so the KL is not zero
        for name, parameter in model.named_parameters():
            if "lora_B" in name:
                parameter.normal_(std=0.05)
    distill = torch.tensor([True] * len(labels))
    kl_only = float(distilled_loss(model, inputs, labels, distill, kl_weight=1.0)[0])
    assert kl_only > 0.01
    # No cross-entropy term comes back above 1: four times the KL, nothing else.
    assert float(distilled_loss(model, inputs, labels, distill, kl_weight=4.0)[0]) == pytest.approx(4 * kl_only,
                                                                                                  rel=1e-4)


def test_the_first_token_weight_counts_each_replay_reply_s_first_token_that_many_times(tokenizer_path):
    from trials.formatting import IGNORE_INDEX
    from trials.train import distilled_loss, labelled_logits

    model, inputs, labels = _replay_batch(tokenizer_path)
    logits, targets = labelled_logits(model, inputs, labels)
    ce = torch.nn.functional.cross_entropy(logits.float().transpose(1, 2), targets, reduction="none",
                                           ignore_index=IGNORE_INDEX)
    first_of_each = [float(ce[row][targets[row] != IGNORE_INDEX][0]) for row in range(len(labels))]
    distill = torch.tensor([True, True, False, False])  # the first-token weight is for replay rows only
    plain, tokens = distilled_loss(model, inputs, labels, distill, kl_weight=0.0)
    weighted, same_tokens = distilled_loss(model, inputs, labels, distill, kl_weight=0.0, first_token_weight=5.0)
    assert same_tokens == tokens  # the mean stays over the real target tokens
    assert float(weighted) - float(plain) == pytest.approx(4 * sum(first_of_each[:2]), rel=1e-4)

def _metrics(val: float, general: float | None, known: int = 40) -> dict:
    metrics = {"val_exact_recall": val, "train_exact_recall": 1.0, "val_questions": 60, "general_known": known}
    return metrics if general is None else {**metrics, "general_retention": general}


def test_the_objective_ranks_a_trial_below_the_general_floor_last():
    floors = Floors(retention=0.95, general=0.95, general_min_known=20)
    kept, forgot, forgot_more = (objective(_metrics(0.3, 0.97), floors), objective(_metrics(0.9, 0.6), floors),
                                 objective(_metrics(1.0, 0.2), floors))
    assert forgot_more < forgot < 0 < kept  # recalls more, but forgot the base's knowledge: last
    assert objective(_metrics(0.0, 1.0), floors) >= 0 > forgot
    # The gate is off when the base knew too little: retention then does not count.
    assert objective(_metrics(0.9, 0.0, known=3), floors) == objective(_metrics(0.9, None), floors) > 0
    # Both floors broken: the worse breach decides.
    both = {**_metrics(0.9, 0.9), "retention_exact_recall": 0.1, "parent_retention_exact_recall": 1.0}
    assert objective(both, floors) == pytest.approx(0.1 / 0.95 - 1)


def _scored(test: float, general: float | None) -> Scored:
    return Scored(role="candidate", test_recall=test, val_recall=None, trainable_parameters=None, run_id="r",
                  trial="t1", method="lora", general_retention=general)


def test_promotion_refuses_a_candidate_below_the_general_floor_only_when_the_gate_is_on():
    refusal = _refusal(_scored(0.9, 0.5), None, None, 0.0, "--min-test-recall", general_floor=0.95)
    assert ("keeps 0.500 of the general questions the base model answered right, below the general floor 0.950"
            in refusal)
    assert _refusal(_scored(0.9, 0.96), None, None, 0.0, "--min-test-recall", general_floor=0.95) is None
    assert _refusal(_scored(0.9, 0.5), None, None, 0.0, "--min-test-recall", general_floor=None) is None


def test_the_pareto_front_keeps_the_points_nothing_beats_on_both():
    points = [(1.0, 0.2), (0.9, 0.6), (0.5, 0.5), (0.2, 0.9), (0.1, 0.1)]
    assert pareto_front(points) == [(0.2, 0.9), (0.9, 0.6), (1.0, 0.2)]


@pytest.mark.slow  # generates every probe answer with the tiny model: 40-115 s on 2 cores
def test_a_users_probe_the_base_knows_is_kept_whole_by_the_base_itself(tmp_path, monkeypatch, tokenizer_path):
    """A user's own probe directory: the base model knows its check questions, and keeps all of them."""
    from general_support import self_known_probe

    monkeypatch.setenv("RECALL_CACHE", str(tmp_path / "cache"))
    probe = load_probe(self_known_probe(tmp_path / "probe", tokenizer_path))
    model, tokenizer = _tiny(tokenizer_path)
    base = base_answers(model, tokenizer, probe, tokenizer_path, torch.device("cpu"), False, 64)
    check = GeneralCheck(tokenizer, probe, base)
    assert check.base_known == sum(q.split == "check" for q in probe.questions) > 10
    from trials.methods.lora import LoraMethod
    from trials.model import attach_method

    fresh = attach_method(model, LoraMethod(r=8, alpha=16, learning_rate=1e-2), False)  # B = 0: still the base
    scores = check.measure(fresh, tokenizer, torch.device("cpu"), False, 64)
    assert scores["general_retention"] == 1.0  # the base model itself keeps everything it knew
    assert scores["general_drift"] == pytest.approx(0.0, abs=1e-5)


def test_a_sweep_can_search_the_protection_knobs():
    import optuna

    from orchestrator.search_space import DefineByRun, trial_config_for

    config = load_experiment(DEMO_CONFIG, ["search_space.general_replay={low: 0.25, high: 0.75}",
                                           "search_space.kl_to_base={low: 0.0, high: 4.0}"])
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=1))
    trial = study.ask()
    DefineByRun(config.search_space)(trial)
    trained = trial_config_for(config.trial_config(), trial.params, config.search_space).training
    assert 0.25 <= trained.general_replay == trial.params["general_replay"] <= 0.75
    assert trained.kl_to_base == trial.params["kl_to_base"]
    with pytest.raises(ConfigError, match="high must be at most 1"):
        load_experiment(DEMO_CONFIG, ["search_space.general_replay={low: 0.0, high: 2.0}"])


def test_the_sweep_says_whether_the_general_floor_applies_and_why():
    from orchestrator.sweep import describe_baseline
    from trials.baseline import general_gate

    tiny = {"base_val_exact_recall": 0.0, "base_general_known": 0, "base_general_check": 168}
    gate = general_gate(tiny, 20)
    assert "answers only 0 of the probe's 168 check questions right" in gate and "eval.general_min_known" in gate
    assert describe_baseline(tiny, gate, 0.95).endswith(f"General floor off: {gate}.")
    real = {**tiny, "base_general_known": 82}
    assert general_gate(real, 20) is None
    assert describe_baseline(real, None, 0.85).endswith("General floor on: a trial must keep 85% of them "
                                                        "(sweep.general_floor).")
    assert general_gate({"base_val_exact_recall": 0.0}, 20) == "the general probe is off (eval.general: null)"


@pytest.mark.slow  # generates every probe answer with the tiny model: 40-115 s on 2 cores
def test_the_bare_base_in_bf16_keeps_every_question_it_knew(tmp_path, monkeypatch, tokenizer_path):
    """In bf16 a greedy answer moves with its batch's padding: a trial is asked in the base's own (second
    pass) batches, so the base model itself (a fresh LoRA, B = 0) keeps all it knew, on both parts."""
    from general_support import self_known_probe

    from trials.methods.lora import LoraMethod
    from trials.model import attach_method

    monkeypatch.setenv("RECALL_CACHE", str(tmp_path / "cache"))
    probe = load_probe(self_known_probe(tmp_path / "probe", tokenizer_path, questions=120))
    model, tokenizer = _tiny(tokenizer_path)
    base = base_answers(model, tokenizer, probe, tokenizer_path, torch.device("cpu"), True, 16)
    assert base.known_count(probe, "check") > 10 and base.known_count(probe, "protect") > 10
    # Asked again: only what the first pass got right, each split apart; known = right both times.
    for split, indices in base.asked.items():
        assert all(probe.questions[i].split == split and mentions(base.replies[i], probe.questions[i].accepted)
                   for i in indices)
    assert {i for i, known in enumerate(base.known) if known} <= {i for indices in base.asked.values() for i in indices}
    fresh = attach_method(model, LoraMethod(r=8, alpha=16, learning_rate=1e-2), False)
    check = GeneralCheck(tokenizer, probe, base)
    scores = check.measure(fresh, tokenizer, torch.device("cpu"), True, 16)
    assert scores["general_retention"] == 1.0 and scores["general_protect_retention"] == 1.0
    # Verdicts a caller already has (the shrink's, trials/trial.py) give the same metrics without asking again.
    verdicts = check.kept(fresh, tokenizer, torch.device("cpu"), True)
    assert check.measure(fresh, tokenizer, torch.device("cpu"), True, 16, kept=verdicts) == scores
    # The shrink's verdicts are on the protect part alone: the check part is asked then.
    protect = check.kept(fresh, tokenizer, torch.device("cpu"), True, splits=("protect",))
    assert list(protect) == ["protect"]
    assert check.measure(fresh, tokenizer, torch.device("cpu"), True, 16, kept=protect) == scores

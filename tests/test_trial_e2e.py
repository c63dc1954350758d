"""One trial end to end on the embedded tiny Llama: the CLI, its files, re-scoring, prefix, resume.

Real torch, transformers and peft on CPU; nothing is mocked. The demo trial runs once per session.
"""

from __future__ import annotations

import json
import subprocess
import textwrap
from pathlib import Path

import pytest

from trials.config import TrialConfig
from trials.data import load_knowledge
from trials.methods.prefix import PrefixMethod
from trials.recall import is_correct

ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json")


def run_cli(orchestrator, repo_root: Path, *args: str) -> subprocess.CompletedProcess:
    result = subprocess.run(orchestrator(*args), cwd=repo_root, capture_output=True, text=True, timeout=1800)
    assert result.returncode == 0, f"exit {result.returncode}\n{result.stdout[-3000:]}\n{result.stderr[-5000:]}"
    return result


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def adapter_tensors(directory: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(directory / "adapter" / "adapter_model.safetensors")


# The demo trial, once per session --------------------------------------------------------------


@pytest.fixture(scope="session")
def demo_trial(tmp_path_factory, orchestrator, repo_root):
    output_dir = tmp_path_factory.mktemp("demo-trial") / "out"
    result = run_cli(orchestrator, repo_root, "trial", "configs/demo.yaml", "--output-dir", str(output_dir))
    return output_dir, result


@pytest.fixture(scope="session")
def demo_metrics(demo_trial):
    return json.loads((demo_trial[0] / "metrics.json").read_text())


@pytest.fixture(scope="session")
def demo_config(demo_trial) -> TrialConfig:
    return TrialConfig.model_validate_json((demo_trial[0] / "trial_config.json").read_text())


@pytest.mark.e2e
def test_demo_trial_learns_the_facts(demo_trial, demo_metrics):
    _, result = demo_trial
    assert "trainable" in result.stdout + result.stderr
    assert demo_metrics["status"] == "finished"
    assert demo_metrics["train_exact_recall"] >= 0.95
    assert demo_metrics["val_exact_recall"] >= 0.3  # held-out phrasings of trained facts
    assert demo_metrics["train_tokens_per_second"] > 0
    assert demo_metrics["method"] == "lora" and demo_metrics["base_model"] == "embedded:tiny-llama"
    # The tiny base answers none of the probe's check questions, under eval.general_min_known: the general floor
    # cannot apply, so the trial never asked the probe (tests/test_general_e2e.py asks a probe the tiny base knows).
    assert not [key for epoch in demo_metrics["history"] for key in epoch if key.startswith("general_")]


@pytest.mark.e2e
def test_demo_metrics_are_consistent(demo_metrics, demo_config):
    epochs = demo_metrics["epochs"]
    assert 1 <= epochs <= demo_config.training.epochs
    history = demo_metrics["history"]
    assert [h["epoch"] for h in history] == list(range(1, epochs + 1))
    assert history[-1]["val_exact_recall"] == demo_metrics["val_exact_recall"]
    assert history[-1]["loss"] < history[0]["loss"]
    assert 0 < demo_metrics["trainable_parameters"] < demo_metrics["total_parameters"]
    assert demo_metrics["train_tokens"] > 0 and demo_metrics["train_seconds"] > 0
    assert demo_metrics["train_tokens_per_second"] == pytest.approx(
        demo_metrics["train_tokens"] / demo_metrics["train_seconds"])
    assert demo_metrics["data_fingerprint"] == load_knowledge(demo_config.data).fingerprint


@pytest.mark.e2e
def test_demo_trial_saves_its_config(demo_config, repo_root):
    from orchestrator.config import load_experiment

    assert demo_config == load_experiment(repo_root / "configs" / "demo.yaml").trial_config()
    assert demo_config.data.qa.is_absolute() and demo_config.data.qa.exists()


@pytest.mark.e2e
def test_demo_trial_writes_a_loadable_adapter(demo_trial, demo_config):
    adapter = demo_trial[0] / "adapter"
    for name in ADAPTER_FILES + TOKENIZER_FILES:
        assert (adapter / name).is_file(), name
    adapter_config = json.loads((adapter / "adapter_config.json").read_text())
    assert adapter_config["peft_type"] == "LORA"
    assert adapter_config["r"] == demo_config.method.r
    assert set(adapter_config["target_modules"]) == set(demo_config.method.target_modules)
    tensors = adapter_tensors(demo_trial[0])
    assert any("lora_A" in key for key in tensors) and any("lora_B" in key for key in tensors)
    # LoRA B starts at zero; after training it must not be.
    assert any(t.abs().sum() > 0 for key, t in tensors.items() if "lora_B" in key)


@pytest.mark.e2e
def test_demo_predictions_match_the_metrics(demo_trial, demo_metrics, demo_config):
    predictions = read_jsonl(demo_trial[0] / "predictions_val.jsonl")
    val_rows = load_knowledge(demo_config.data).split("val")
    assert [p["question"] for p in predictions] == [row.question for row in val_rows]
    for record, row in zip(predictions, val_rows):
        assert {"question", "expected", "got", "correct"} <= set(record)
        assert record["expected"] == row.answer
        assert isinstance(record["correct"], bool)
        assert record["correct"] == is_correct(record["got"], row.accepted)
    recall = sum(p["correct"] for p in predictions) / len(predictions)
    assert recall == pytest.approx(demo_metrics["val_exact_recall"], abs=1e-12)
    # `orchestrator trial` leaves the per-fact ledger too: every val question at every epoch it scored.
    ledger = read_jsonl(demo_trial[0] / "ledger.jsonl")
    epochs = range(1, demo_metrics["epochs"] + 1)
    assert [(r["epoch"], r["question"]) for r in ledger] == [(e, p["question"]) for e in epochs for p in predictions]
    last = [(p["got"], p["correct"]) for p in predictions]
    assert [(r["got"], r["pass"]) for r in ledger[-len(predictions):]] == last
    assert {r["trial"] for r in ledger} == {None}


@pytest.mark.e2e
def test_saved_adapter_reproduces_the_predictions(demo_trial, demo_metrics, demo_config):
    from trials.evaluate import score_adapter

    saved = read_jsonl(demo_trial[0] / "predictions_val.jsonl")
    scores, records = score_adapter(demo_trial[0] / "adapter", demo_config, "val")["val"]
    assert [(r["question"], r["got"]) for r in records] == [(r["question"], r["got"]) for r in saved]
    assert [r["correct"] for r in records] == [r["correct"] for r in saved]
    assert scores["exact_recall"] == pytest.approx(demo_metrics["val_exact_recall"], abs=1e-12)
    assert scores["contains_recall"] == pytest.approx(demo_metrics["val_contains_recall"], abs=1e-12)
    assert scores["contains_recall"] >= scores["exact_recall"]
    for name in ("token_f1", "token_f1_pass", "rouge_l_recall", "rouge_l_f1", "rouge_l_pass"):
        assert scores[name] == pytest.approx(demo_metrics[f"val_{name}"], abs=1e-12)
    assert [r["rouge_l_recall"] for r in records] == [r["rouge_l_recall"] for r in saved]


# A warm start from a saved adapter ---------------------------------------------------------------


@pytest.mark.e2e
def test_a_trial_started_from_a_saved_adapter_begins_at_its_recall(tmp_path, orchestrator, repo_root, demo_trial,
                                                                   demo_metrics):
    # A learning rate so small that one epoch cannot move the adapter: what the trial then scores is
    # what it started from. From the demo's adapter that is the demo's recall; from scratch, nothing.
    def one_epoch(name: str, *extra: str) -> dict:
        output_dir = tmp_path / name
        run_cli(orchestrator, repo_root, "trial", "configs/demo.yaml", "--set", "training.epochs=1",
                "--set", "method.learning_rate=1e-9", *extra, "--output-dir", str(output_dir))
        return json.loads((output_dir / "metrics.json").read_text())

    warm = one_epoch("warm", "--set", f"init_adapter={demo_trial[0] / 'adapter'}")
    cold = one_epoch("cold")
    val_questions = warm["history"][0]["val_questions"]
    assert warm["val_exact_recall"] == pytest.approx(demo_metrics["val_exact_recall"], abs=1 / val_questions)
    assert warm["train_exact_recall"] >= 0.9
    assert cold["val_exact_recall"] == 0.0 and cold["train_exact_recall"] < 0.1
    assert warm["trainable_parameters"] == demo_metrics["trainable_parameters"]  # the adapter trains on


@pytest.mark.e2e
@pytest.mark.parametrize("projection", [False, True])
def test_a_saved_prefix_trains_further_from_where_it_ended(tmp_path, short_config, projection):
    """peft loads a prefix adapter for inference only ("Cannot set a prompt learning adapter to trainable"), so an
    incremental sweep from a prefix champion failed in every trial. It now continues from the same prefix, trainable;
    a projected one as its saved output, directly."""
    import torch
    from peft import PeftModel

    from trials.model import attach_method, load_for
    from trials.trial import run_trial

    config = short_config.model_copy(update={
        "method": PrefixMethod(num_virtual_tokens=4, prefix_projection=projection, learning_rate=1e-2),
        "training": short_config.training.model_copy(update={"epochs": 1})})
    run_trial(config, tmp_path / "A", log=lambda line: None)
    adapter = tmp_path / "A" / "adapter"
    inputs = torch.tensor([[1, 42, 17, 99, 5]])
    with torch.no_grad():
        saved = PeftModel.from_pretrained(load_for(config).model, str(adapter)).eval()(inputs).logits
        continued = attach_method(load_for(config).model, config.method, False, init_adapter=adapter)
        trainable = [p for p in continued.parameters() if p.requires_grad]
        assert sum(p.numel() for p in trainable) == 4 * 4 * 2 * 256  # tokens x layers x (key, value) x hidden
        torch.testing.assert_close(continued.eval()(inputs).logits, saved)


def test_init_adapter_keeps_the_adapters_shape_and_refuses_contradictions(tmp_path, demo_qa):
    from peft import LoraConfig

    from trials.config import ConfigError, load_config

    adapter = tmp_path / "adapter"
    adapter.mkdir()
    LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]).save_pretrained(adapter)
    config_path = tmp_path / "warm.yaml"
    config_path.write_text(f"data: {{qa: {demo_qa}}}\ninit_adapter: adapter\nmethod:\n  learning_rate: 0.001\n")
    method = load_config(config_path).method
    assert (method.r, method.alpha, method.target_modules, method.learning_rate) == (4, 8, ["q_proj", "v_proj"], 1e-3)

    with pytest.raises(ConfigError, match=r"--set method.r: method: .*r: 16 but the adapter has 4"):
        load_config(config_path, ["method.r=16"])
    with pytest.raises(ConfigError, match=r"method: name: prefix contradicts init_adapter .* a lora adapter"):
        load_config(config_path, ["method={name: prefix}"])
    with pytest.raises(ConfigError, match=r"init_adapter .*nowhere: no peft adapter there"):
        load_config(config_path, ["init_adapter=nowhere"])
    with pytest.raises(ConfigError, match=r"warm.yaml:2: init_adapter: .* trained on the base model "
                                          r"/cache/smollm2-135m-instruct-0.1.2-r1, not embedded:tiny-llama"):
        LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"],
                   base_model_name_or_path="/cache/smollm2-135m-instruct-0.1.2-r1").save_pretrained(adapter)
        load_config(config_path)


# Prefix tuning -----------------------------------------------------------------------------------


@pytest.mark.e2e
def test_prefix_trial_runs_end_to_end(tmp_path, orchestrator, repo_root, demo_qa, demo_documents):
    config_path = tmp_path / "prefix.yaml"
    config_path.write_text(textwrap.dedent(f"""\
        model: embedded:tiny-llama
        data:
          documents: [{", ".join(str(p) for p in demo_documents)}]
          qa: {demo_qa}
        method:
          name: prefix
          num_virtual_tokens: 10
        training:
          epochs: 2
        eval:
          max_new_tokens: 8
        """))
    output_dir = tmp_path / "out"
    run_cli(orchestrator, repo_root, "trial", str(config_path), "--output-dir", str(output_dir))

    metrics = json.loads((output_dir / "metrics.json").read_text())
    assert metrics["status"] == "finished" and metrics["method"] == "prefix" and metrics["epochs"] == 2
    assert len(metrics["history"]) == 2
    from trials.tiny_model import SPEC

    # A key and a value prefix per layer: 2 * layers * tokens * hidden, and nothing else trains.
    assert metrics["trainable_parameters"] == 2 * SPEC["num_hidden_layers"] * 10 * SPEC["hidden_size"]
    for name in ADAPTER_FILES + TOKENIZER_FILES:
        assert (output_dir / "adapter" / name).is_file(), name
    adapter_config = json.loads((output_dir / "adapter" / "adapter_config.json").read_text())
    assert adapter_config["peft_type"] == "PREFIX_TUNING" and adapter_config["num_virtual_tokens"] == 10

    # The saved prefix adapter reloads and answers exactly as it did inside the trial.
    from trials.evaluate import score_adapter

    config = TrialConfig.model_validate_json((output_dir / "trial_config.json").read_text())
    saved = read_jsonl(output_dir / "predictions_val.jsonl")
    scores, records = score_adapter(output_dir / "adapter", config, "val")["val"]
    assert [r["got"] for r in records] == [r["got"] for r in saved]
    assert scores["exact_recall"] == pytest.approx(metrics["val_exact_recall"], abs=1e-12)


# Resume ------------------------------------------------------------------------------------------


@pytest.fixture
def short_config(tmp_path, demo_qa) -> TrialConfig:
    """Ten people's questions, no documents, 4 short epochs, LoRA dropout so the torch RNG matters."""
    qa = tmp_path / "qa.jsonl"
    qa.write_text("".join(demo_qa.read_text(encoding="utf-8").splitlines(keepends=True)[:30]), encoding="utf-8")
    return TrialConfig.model_validate({
        "data": {"qa": str(qa)},
        "method": {"name": "lora", "r": 8, "dropout": 0.1, "learning_rate": 3e-3,
                   "target_modules": ["q_proj", "v_proj", "o_proj"]},
        "training": {"epochs": 4, "batch_size": 4, "include_documents": False, "weight_decay": 0.1,
                     "warmup_ratio": 0.2, "lr_scheduler": "linear"},
        "eval": {"max_train_questions": 4, "max_new_tokens": 8},
    })


@pytest.mark.e2e
def test_resume_continues_exactly(tmp_path, short_config):
    from trials.trial import TRAINER_STATE, run_trial

    quiet = lambda line: None  # noqa: E731

    full, seen_checkpoints = [], []

    def record_full(metrics, checkpoint):
        full.append(metrics)
        seen_checkpoints.append(checkpoint)
        assert (checkpoint / TRAINER_STATE).is_file() and (checkpoint / "adapter" / ADAPTER_FILES[1]).is_file()

    result_a = run_trial(short_config, tmp_path / "A", on_epoch=record_full, checkpoint_each_epoch=True, log=quiet)
    assert [m["epoch"] for m in full] == [1, 2, 3, 4]
    assert seen_checkpoints == [tmp_path / "A" / "checkpoint"] * 4

    stopped = []
    result_b = run_trial(short_config, tmp_path / "B", checkpoint_each_epoch=True, log=quiet,
                         on_epoch=lambda metrics, checkpoint: stopped.append(metrics) or metrics["epoch"] == 2)
    assert [m["epoch"] for m in stopped] == [1, 2] and result_b["epochs"] == 2
    for a, b in zip(full, stopped):
        assert b["loss"] == pytest.approx(a["loss"], abs=1e-5)  # same seed, same run so far

    logged, resumed = [], []
    result_c = run_trial(short_config, tmp_path / "C", on_epoch=lambda m, c: resumed.append(m), log=logged.append,
                         resume_from=tmp_path / "B" / "checkpoint")
    assert any("resumed" in line and "epoch 2" in line for line in logged), logged
    assert [m["epoch"] for m in resumed] == [3, 4]
    for a, c in zip(full[2:], resumed):
        assert c["loss"] == pytest.approx(a["loss"], abs=1e-5), (a["epoch"], a["loss"], c["loss"])
    assert full[3]["loss"] != pytest.approx(full[1]["loss"], abs=1e-5)  # the comparison is not vacuous

    assert result_c["epochs"] == 4
    assert [h["epoch"] for h in result_c["history"]] == [1, 2, 3, 4]
    assert result_c["val_exact_recall"] == result_a["val_exact_recall"]
    assert result_c["train_tokens"] == result_a["train_tokens"]
    # Same final adapter, and the same answers.
    import torch

    tensors_a, tensors_c = adapter_tensors(tmp_path / "A"), adapter_tensors(tmp_path / "C")
    assert tensors_a.keys() == tensors_c.keys()
    for key in tensors_a:
        torch.testing.assert_close(tensors_c[key], tensors_a[key], rtol=0, atol=1e-6, msg=key)
    assert read_jsonl(tmp_path / "C" / "predictions_val.jsonl") == read_jsonl(tmp_path / "A" / "predictions_val.jsonl")

    # The per-fact ledger: one row per val question per scored epoch, the last epoch's being the predictions;
    # the resumed trial kept the checkpoint's rows for epochs 1-2 and has the same ledger as the unbroken one.
    predictions = read_jsonl(tmp_path / "A" / "predictions_val.jsonl")
    questions = [record["question"] for record in predictions]
    ledger = read_jsonl(tmp_path / "A" / "ledger.jsonl")
    assert [(row["epoch"], row["question"]) for row in ledger] == [(e, q) for e in (1, 2, 3, 4) for q in questions]
    assert all(set(row) == {"trial", "epoch", "question", "expected", "got", "score", "pass"} for row in ledger)
    assert [(row["got"], row["pass"], row["score"]) for row in ledger[-len(questions):]] == [
        (record["got"], record["correct"], float(record["correct"])) for record in predictions]  # exact_recall
    assert read_jsonl(tmp_path / "A" / "checkpoint" / "ledger.jsonl") == ledger
    assert [row["epoch"] for row in read_jsonl(tmp_path / "B" / "ledger.jsonl")] == [1] * len(questions) + [2] * len(
        questions)
    assert read_jsonl(tmp_path / "C" / "ledger.jsonl") == ledger


def _losses_unbroken_and_resumed(config, tmp_path) -> tuple[list[float], list[float]]:
    """Epoch losses of a trial run through, and of the same trial stopped after epoch 2 and resumed from there."""
    from trials.trial import run_trial

    quiet = lambda line: None  # noqa: E731
    full, resumed = [], []
    run_trial(config, tmp_path / "A", log=quiet, on_epoch=lambda metrics, checkpoint: full.append(metrics["loss"]))
    run_trial(config, tmp_path / "B", log=quiet, checkpoint_each_epoch=True,
              on_epoch=lambda metrics, checkpoint: metrics["epoch"] == 2)
    run_trial(config, tmp_path / "C", log=quiet, resume_from=tmp_path / "B" / "checkpoint",
              on_epoch=lambda metrics, checkpoint: resumed.append(metrics["loss"]))
    return full, resumed


@pytest.mark.e2e
@pytest.mark.parametrize("optimizer", ["sgd", "adafactor"])
def test_resume_continues_exactly_with_the_other_optimizers(tmp_path, short_config, optimizer):
    config = short_config.model_copy(update={
        "training": short_config.training.model_copy(update={"optimizer": optimizer})})
    full, resumed = _losses_unbroken_and_resumed(config, tmp_path)
    assert resumed == pytest.approx(full[2:], abs=1e-5) and full[3] != pytest.approx(full[1], abs=1e-5)


@pytest.mark.e2e
def test_resume_continues_exactly_with_a_projected_prefix(tmp_path, short_config):
    """peft saves a projected prefix in its inference form (the prefix the MLP computes), not the embedding and MLP
    that train: a paused sweep trial resumed from that failed on the embedding's shape."""
    config = short_config.model_copy(update={"method": PrefixMethod(num_virtual_tokens=4, prefix_projection=True,
                                                                    learning_rate=1e-2)})
    full, resumed = _losses_unbroken_and_resumed(config, tmp_path)
    assert resumed == pytest.approx(full[2:], abs=1e-5) and full[3] != pytest.approx(full[1], abs=1e-5)


@pytest.mark.e2e
def test_a_checkpoint_of_another_adapter_is_refused_naming_it(tmp_path, short_config):
    from trials.trial import CheckpointUnreadable, run_trial

    quiet = lambda line: None  # noqa: E731
    run_trial(short_config, tmp_path / "A", checkpoint_each_epoch=True, log=quiet,
              on_epoch=lambda metrics, checkpoint: metrics["epoch"] == 1)
    checkpoint = tmp_path / "A" / "checkpoint"
    other = short_config.model_copy(update={"method": short_config.method.model_copy(update={"r": 4})})
    with pytest.raises(CheckpointUnreadable, match=f"checkpoint {checkpoint} holds another adapter's weights"):
        run_trial(other, tmp_path / "B", log=quiet, resume_from=checkpoint)


@pytest.mark.e2e
@pytest.mark.parametrize("cut", ["trainable.safetensors", "trainer_state"])
def test_a_truncated_checkpoint_is_refused_naming_it(tmp_path, short_config, cut):
    from trials.trial import TRAINER_STATE, CheckpointUnreadable, run_trial

    quiet = lambda line: None  # noqa: E731
    run_trial(short_config, tmp_path / "A", checkpoint_each_epoch=True, log=quiet,
              on_epoch=lambda metrics, checkpoint: metrics["epoch"] == 1)
    checkpoint = tmp_path / "A" / "checkpoint"
    damaged = checkpoint / (TRAINER_STATE if cut == "trainer_state" else cut)
    damaged.write_bytes(damaged.read_bytes()[: damaged.stat().st_size // 2])  # an upload cut off mid-file
    with pytest.raises(CheckpointUnreadable, match=f"checkpoint {checkpoint} cannot be read, cut short or corrupted"):
        run_trial(short_config, tmp_path / "B", log=quiet, resume_from=checkpoint)


# Failure -----------------------------------------------------------------------------------------


def test_failed_trial_leaves_metrics_saying_so(tmp_path, short_config):
    from trials.trial import run_trial

    missing = tmp_path / "no-such-model"
    config = short_config.model_copy(update={"model": str(missing)})
    with pytest.raises(OSError):
        run_trial(config, tmp_path / "out", log=lambda line: None)  # the data is fine, the model is not
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert metrics["status"] == "failed" and "no-such-model" in metrics["error"] and metrics["method"] == "lora"
    assert not (tmp_path / "out" / "adapter").exists()

"""`orchestrator export`: champions of each peft method trained on the tiny model, promoted for real, exported
(merged where the method merges), reloaded as a user would and re-scored on their test facts."""

from __future__ import annotations

import json
import os
import stat
import subprocess
from pathlib import Path

import pytest

from promote_support import ALL_LINEAR, Trained, log_sweep, promote, trial_config
from store_support import new_store

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


@pytest.fixture(scope="module")
def champions(tmp_path_factory, demo_documents, demo_qa):
    """A store with one registered champion per method: (tracking URI, {method: models:/export-METHOD@champion},
    {method: the adapter directory its trial saved})."""
    from trials.methods.ia3 import IA3Method
    from trials.methods.lora import LoraMethod
    from trials.methods.prefix import PrefixMethod
    from trials.trial import run_trial

    methods = {  # each learns some demo answers in its epochs (LoRA's and DoRA's recall test questions)
        "lora": (LoraMethod(r=32, alpha=64, learning_rate=3e-3, target_modules=ALL_LINEAR), 5),
        "dora": (LoraMethod(r=32, alpha=64, learning_rate=3e-3, target_modules=ALL_LINEAR, use_dora=True), 5),
        "ia3": (IA3Method(learning_rate=3e-2), 3),
        "prefix": (PrefixMethod(num_virtual_tokens=8, learning_rate=1e-2), 2),
        "routed": (LoraMethod(r=32, alpha=64, learning_rate=3e-3, target_modules=ALL_LINEAR), 2),  # + adapter router
    }
    root = tmp_path_factory.mktemp("export")
    uri = new_store(root / "mlflow.db")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MLFLOW_TRACKING_URI", uri)
        patch.setenv("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
        for name, (method, epochs) in methods.items():
            config = trial_config(demo_documents, demo_qa, epochs=epochs, learning_rate=method.learning_rate,
                                  method=method)
            if name == "routed":
                config = config.model_copy(update={"training": config.training.model_copy(update={"adapter_router": True})})
            run_trial(config, root / name, log=lambda line: None)
            trial = Trained(root / name)
            log_sweep(name, [(trial, trial.metrics["val_exact_recall"])])
            assert promote(name, model_name=f"export-{name}", force=True).promoted
    return uri, {name: f"models:/export-{name}@champion" for name in methods}, {
        name: root / name / "adapter" for name in methods}


def export(orchestrator, uri: str, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri, "HF_HUB_OFFLINE": "1"}
    return subprocess.run(orchestrator("export", *args), env=env, capture_output=True, text=True, timeout=600)


def plain_transformers_recall(directory: Path, test_rows) -> float:
    """The merged checkpoint loaded with transformers alone (peft's classes never touch it), scored on the
    version's test facts as a user would score it: greedy, the trial's prompt format and answer cut."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from trials.evaluate import score_rows

    model = AutoModelForCausalLM.from_pretrained(directory)
    assert "peft" not in type(model).__module__ and not hasattr(model, "peft_config")
    record = json.loads((directory / "export.json").read_text())
    metrics, _ = score_rows(model, AutoTokenizer.from_pretrained(directory), test_rows, batch_size=64,
                            max_new_tokens=record["max_new_tokens"], device=torch.device("cpu"), bf16=record["bf16"])
    return metrics["exact_recall"]


@pytest.fixture(scope="module")
def test_rows(demo_qa):
    from trials.config import DataConfig
    from trials.data import load_knowledge

    return load_knowledge(DataConfig(qa=demo_qa)).split("test")


@pytest.mark.parametrize("method", ["lora", "dora", "ia3"])
def test_a_merged_export_loads_with_transformers_alone_and_keeps_its_test_recall(champions, orchestrator, tmp_path,
                                                                                 test_rows, method):
    from transformers import AutoTokenizer

    uri, models, adapters = champions
    result = export(orchestrator, uri, models[method], "--merge", "--to", str(tmp_path / "merged"))
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.startswith(f"verified: {models[method]} -> {tmp_path / 'merged'}, merged checkpoint")
    record = json.loads((tmp_path / "merged" / "export.json").read_text())
    assert record["merged"] and record["verified"] and record["method"] == method
    assert abs(record["export_test_exact_recall"] - record["adapter_test_exact_recall"]) <= 0.02
    assert record["general_questions"] > 100  # the shipped probe's check questions, as the trial was measured
    assert abs(record["export_general_right"] - record["adapter_general_right"]) <= 0.02
    if method in ("lora", "dora"):
        assert record["adapter_test_exact_recall"] > 0  # a recall that could drop
    files = {path.name for path in (tmp_path / "merged").iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= files
    assert not files & {"adapter_config.json", "adapter_model.safetensors"}
    # The tokenizer the trial trained with, chat template and all (the tiny model has none; SmolLM2 has one).
    trained, exported = (AutoTokenizer.from_pretrained(path) for path in (adapters[method], tmp_path / "merged"))
    assert (exported.chat_template, exported.get_vocab()) == (trained.chat_template, trained.get_vocab())
    # Independently of export's own check: transformers alone, in this process.
    assert record["test_questions"] == len(test_rows)
    assert abs(plain_transformers_recall(tmp_path / "merged", test_rows) - record["adapter_test_exact_recall"]) <= 0.02


def test_a_prefix_champion_is_exported_as_an_adapter_and_says_why(champions, orchestrator, tmp_path):
    uri, models, _ = champions
    result = export(orchestrator, uri, models["prefix"], "--merge", "--to", str(tmp_path / "prefix"))
    assert result.returncode == 0, result.stderr[-3000:]
    assert "prefix cannot merge (its virtual tokens are not weights)" in result.stderr
    assert "adapter + pinned base reference" in result.stdout
    record = json.loads((tmp_path / "prefix" / "export.json").read_text())
    assert not record["merged"] and record["verified"] and record["method"] == "prefix"
    reference = json.loads((tmp_path / "prefix" / "base_model.json").read_text())
    assert reference["base_model"] == "embedded:tiny-llama" and reference["bundled"] == "base"
    assert set(reference["sha256"]) >= {"config.json", "model.safetensors"}
    assert (tmp_path / "prefix" / "adapter_config.json").is_file()
    (tmp_path / "made-by-mkdir").mkdir()  # the export is readable by whom the umask says, like any other directory
    assert stat.S_IMODE((tmp_path / "prefix").stat().st_mode) == stat.S_IMODE((tmp_path / "made-by-mkdir").stat().st_mode)
    assert (tmp_path / "prefix" / "base" / "model.safetensors").is_file()


def test_a_routed_champion_is_exported_as_an_adapter_with_its_router(champions, orchestrator, tmp_path):
    uri, models, adapters = champions
    result = export(orchestrator, uri, models["routed"], "--merge", "--to", str(tmp_path / "routed"))
    assert result.returncode == 0, result.stderr[-3000:]
    assert "cannot merge (its adapter router sends general questions to the base model" in result.stderr
    record = json.loads((tmp_path / "routed" / "export.json").read_text())
    assert not record["merged"] and record["verified"]
    assert record["export_general_right"] == record["adapter_general_right"]
    assert (tmp_path / "routed" / "router.json").read_text() == (adapters["routed"] / "router.json").read_text()


def test_an_export_refuses_a_taken_directory_before_loading_anything(champions, orchestrator, tmp_path):
    uri, models, _ = champions
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "notes.txt").write_text("mine")
    result = export(orchestrator, uri, models["lora"], "--to", str(tmp_path / "taken"))
    assert result.returncode == 2
    assert "--to" in result.stderr and "not an empty directory" in result.stderr
    assert [path.name for path in (tmp_path / "taken").iterdir()] == ["notes.txt"]


def test_an_export_whose_recall_drops_is_refused_and_leaves_nothing(champions, tmp_path, monkeypatch):
    """A merge that went wrong (here: the base saved without the adapter merged in) is caught by the
    re-scoring, not shipped."""
    from transformers import AutoModelForCausalLM

    from orchestrator import export as exporting
    from orchestrator.tracking import use_store

    uri, models, _ = champions
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    use_store()

    def base_only(registered, directory):
        AutoModelForCausalLM.from_pretrained(registered.base).save_pretrained(directory)
        exporting.load_tokenizer(str(registered.adapter)).save_pretrained(directory)

    monkeypatch.setattr(exporting, "_write_merged", base_only)
    outcome = exporting.export(models["lora"], tmp_path / "broken", merge=True, log=lambda line: None)
    assert not outcome.verified
    assert outcome.adapter_test_exact_recall > outcome.tolerance >= outcome.export_test_exact_recall
    assert outcome.drops() == [f"test exact recall {outcome.export_test_exact_recall:.3f} exported vs "
                               f"{outcome.adapter_test_exact_recall:.3f} registered"]
    assert not (tmp_path / "broken").exists() and not list(tmp_path.glob(".broken-*"))  # no staging left

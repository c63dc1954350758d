"""The embedded base model: a tiny Llama built here, deterministically, with nothing downloaded.

A byte-level BPE tokenizer is trained on the demo corpus and a randomly initialised
`LlamaForCausalLM` is made from a fixed seed; both are saved once with `save_pretrained` into a
cache directory keyed by a hash of this recipe (`trials.model_cache`, atomic under concurrent
trials), and loaded back with `from_pretrained` like any other model.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from trials.model_cache import build_once

SPEC = {
    "seed": 1234,
    "vocab_size": 1024,
    "hidden_size": 256,
    "intermediate_size": 688,
    "num_hidden_layers": 4,
    "num_attention_heads": 4,
    "num_key_value_heads": 4,
    "max_position_embeddings": 512,
    "initializer_range": 0.1,
    "recipe": 1,  # bump when the build below changes
}
SPECIAL_TOKENS = ["<unk>", "<s>", "</s>", "<pad>"]


def spec_hash() -> str:
    return hashlib.sha256(json.dumps(SPEC, sort_keys=True).encode()).hexdigest()[:12]


def _build_tokenizer():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from trials.demo_data import corpus_text

    core = Tokenizer(models.BPE(unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=SPEC["vocab_size"],
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    core.train_from_iterator(corpus_text().splitlines(), trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=core, bos_token="<s>", eos_token="</s>", unk_token="<unk>", pad_token="<pad>"
    )


def _build_model(tokenizer):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=SPEC["hidden_size"],
        intermediate_size=SPEC["intermediate_size"],
        num_hidden_layers=SPEC["num_hidden_layers"],
        num_attention_heads=SPEC["num_attention_heads"],
        num_key_value_heads=SPEC["num_key_value_heads"],
        max_position_embeddings=SPEC["max_position_embeddings"],
        initializer_range=SPEC["initializer_range"],
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
    )
    torch.manual_seed(SPEC["seed"])
    return LlamaForCausalLM(config)


def embedded_model_path() -> Path:
    """Path of the built tiny model, building it first if this recipe is not cached yet."""

    def build(staging: Path) -> None:
        tokenizer = _build_tokenizer()
        _build_model(tokenizer).save_pretrained(staging)
        tokenizer.save_pretrained(staging)

    return build_once(f"tiny-llama-{spec_hash()}", build)

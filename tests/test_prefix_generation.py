"""A prefix-tuned model generates with its prefix: `generate` (batched, left-padded) must pick, token for
token, what a plain forward pass over the whole sequence picks, and that must differ from the base model.

Without trials/prefix_generation.py, transformers 5.x's `generate` silently dropped peft's prefix and the
prefix-tuned model answered exactly like the base model.
"""

from __future__ import annotations

import pytest
import torch

from trials.formatting import prompt_ids
from trials.methods.lora import LoraMethod
from trials.methods.prefix import PrefixMethod
from trials.model import attach_method, load_base_model, load_tokenizer, resolve_model
from trials.prefix_generation import prefix_aware_generation
from trials.recall import generate_answers

CPU = torch.device("cpu")
QUESTIONS = ["Which team is Piet Lindqvist on?", "Where does Anouk Renwick work?", "Who?"]
NEW_TOKENS = 6


@pytest.fixture(scope="module")
def tiny():
    path = resolve_model("embedded:tiny-llama")
    return path, load_tokenizer(path)


def prefix_model(path: str):
    torch.manual_seed(0)
    model = attach_method(load_base_model(path, CPU, False), PrefixMethod(num_virtual_tokens=8), False)
    with torch.no_grad():  # a freshly initialised prefix is near zero; make it matter
        for parameter in model.parameters():
            if parameter.requires_grad:
                parameter.mul_(50)
    return model.eval()


@torch.no_grad()
def forward_greedy(model, tokenizer, question: str) -> str:
    """Greedy decoding the slow, unambiguous way: the whole sequence through forward at every step."""
    ids = torch.tensor([prompt_ids(tokenizer, question)])
    start = ids.shape[1]
    for _ in range(NEW_TOKENS):
        next_id = model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits[:, -1].argmax(-1, keepdim=True)
        ids = torch.cat([ids, next_id], dim=1)
        if next_id.item() == tokenizer.eos_token_id:
            break
    return tokenizer.decode(ids[0, start:], skip_special_tokens=True)


def test_generate_uses_the_prefix_exactly_as_the_forward_pass_does(tiny):
    path, tokenizer = tiny
    model = prefix_model(path)
    generated = generate_answers(model, tokenizer, QUESTIONS, batch_size=3, max_new_tokens=NEW_TOKENS, device=CPU)
    assert generated == [forward_greedy(model, tokenizer, q) for q in QUESTIONS]

    base = load_base_model(path, CPU, False).eval()
    from_base = generate_answers(base, tokenizer, QUESTIONS, batch_size=3, max_new_tokens=NEW_TOKENS, device=CPU)
    assert generated != from_base


def test_the_patch_is_scoped_to_prefix_models_and_to_the_call(tiny):
    path, _ = tiny
    model = prefix_model(path)
    with prefix_aware_generation(model):
        assert "prepare_inputs_for_generation" in vars(model)
    assert "prepare_inputs_for_generation" not in vars(model)

    lora = attach_method(load_base_model(path, CPU, False), LoraMethod(), False)
    with prefix_aware_generation(lora):
        assert "prepare_inputs_for_generation" not in vars(lora)

"""Greedy generation from a prefix-tuned model that sees the same prefix, and the same positions, as training.

Why this exists: peft 0.21's `PeftModelForCausalLM.prepare_inputs_for_generation` injects the learned
prefix as `past_key_values`, but transformers 5.x's `generate` hands the model its own (empty) cache as
`cache=`. The model then keeps `cache` and drops `past_key_values` with a FutureWarning, so every
prefix-tuned answer was the base model's answer. Separately, `generate` numbers the prompt's positions
from 0, while training (prefix in the cache, no position ids) numbers them from `num_virtual_tokens`.

`prefix_aware_generation(model)` patches the one model instance for the duration of a `generate` call:
the prefix becomes the cache at the first step, later steps keep the growing cache, and position ids are
shifted to match training. Models that are not prefix-tuned are left untouched. tests/test_prefix_generation.py
checks the result token for token against a plain forward-pass greedy decode, so a peft or transformers
release that fixes this upstream shows up there (the patch then becomes a no-op and can go).
"""

from __future__ import annotations

import contextlib

from peft import PeftType


def _is_prefix_tuned(model) -> bool:
    config = getattr(model, "active_peft_config", None)
    return config is not None and config.peft_type == PeftType.PREFIX_TUNING


@contextlib.contextmanager
def prefix_aware_generation(model):
    if not _is_prefix_tuned(model):
        yield model
        return
    peft_prepare = model.prepare_inputs_for_generation

    def prepare(*args, **kwargs):
        inputs = peft_prepare(*args, **kwargs)
        prefix = inputs.pop("past_key_values", None)
        cache = inputs.get("cache")
        if prefix is not None and (cache is None or cache.get_seq_length() == 0):
            inputs["cache"] = prefix  # first step: start from the learned prefix
        return inputs

    # peft's generate installs `self.prepare_inputs_for_generation` on the base model; an instance
    # attribute shadows the class method there, and deleting it restores the class method.
    model.prepare_inputs_for_generation = prepare
    try:
        yield model
    finally:
        del model.prepare_inputs_for_generation

"""The training step as it was before SmolLM2 (commit eb0c3c7), kept to measure the new one against.

`bench.run` runs the same trial through `trials.train.Trainer` twice, side by side: once as it is,
once with these two pieces swapped back in (and float32, as the CPU then refused bf16).
"""

from __future__ import annotations

import torch

from trials.formatting import Example


def full_logits_loss(model, inputs: dict[str, torch.Tensor], labels: torch.Tensor,
                     share_prefix: bool = False) -> tuple[torch.Tensor, int]:
    """The output layer at every position, shifted, float32 cross-entropy over all of it; every
    row computed whole (`share_prefix` is ignored: the previous loop had no such thing)."""
    logits = model(**inputs).logits
    shift_logits = logits[:, :-1].float().reshape(-1, logits.shape[-1])
    shift_labels = labels[:, 1:].reshape(-1)
    loss = torch.nn.functional.cross_entropy(shift_logits, shift_labels, reduction="sum")
    return loss, int((shift_labels != -100).sum())


def length_key(example: Example) -> int:
    return example.num_tokens


def as_before(trial):
    """`trial` as the previous code loaded its model: float32 (the CPU then refused bf16) and transformers'
    default attention, sdpa (it had no setting)."""
    return trial.model_copy(update={"training": trial.training.model_copy(update={"bf16": False, "attention": "sdpa"})})

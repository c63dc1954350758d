"""A smaller step from the base model: the trained LoRA update scaled down, kept if val recall holds.

LoRA adds B·A·(alpha/r) to each adapted weight; multiplying B by a factor s < 1 moves the model back
along the straight line to its base, the interpolation of WiSE-FT (Wortsman et al. 2022) and of LoRA
scaling. Fine-tuning on new facts overshoots what recalling them needs: on SmolLM2 the demo trial's
update at 0.8 answered as many val questions (0.983 against 0.967) and kept more of the base model's
general knowledge (0.927 against 0.878 of the check questions it knew; README, General knowledge).
`training.adapter_shrink` tries the factors after the last epoch, judged on val alone (test and the
general probe's check questions stay unseen), and keeps the smallest that scores within
`training.adapter_shrink_tolerance` of the full update.
"""

from __future__ import annotations

from collections.abc import Callable

import torch


def lora_b_weights(model) -> list[torch.Tensor]:
    """The B matrices of every active LoRA adapter (peft's lora_B), or [] for a model without LoRA."""
    from peft.tuners.lora import LoraLayer

    weights = []
    for module in model.modules():
        if isinstance(module, LoraLayer):
            for name in module.active_adapters:
                if name in module.lora_B:
                    weights.append(module.lora_B[name].weight)
    return weights


def choose_shrink(model, factors: list[float], tolerance: float, full_score: float,
                  val_score: Callable[[float], float], log: Callable[[str], None]) -> float:
    """The smallest factor whose val score (`val_score(factor)`, of the model as it is now, scaled by that
    factor: a caller may keep what it scored, for the factor kept) is at least `full_score` -
    `tolerance`, or 1.0; the model is left with its update scaled by it (from a copy of the full one, so 1.0
    restores it exactly). Every factor is tried, largest first: val recall need not fall steadily."""
    weights = lora_b_weights(model)
    if not weights:
        log("training.adapter_shrink: not a LoRA adapter, nothing to shrink")
        return 1.0
    full = [weight.detach().clone() for weight in weights]

    @torch.no_grad()
    def scale(factor: float) -> None:
        for weight, original in zip(weights, full, strict=True):
            weight.copy_(original * factor)

    chosen, tried = 1.0, []
    for factor in sorted(set(factors), reverse=True):
        scale(factor)
        score = val_score(factor)
        tried.append(f"{factor:g}: {score:.3f}")
        if score >= full_score - tolerance:
            chosen = factor
    scale(chosen)
    log(f"adapter_shrink: val at 1: {full_score:.3f}, {', '.join(tried)}; kept {chosen:g}")
    return chosen

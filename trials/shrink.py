"""A smaller step from the base model: the trained LoRA update scaled down, kept if val recall holds.

LoRA adds B·A·(alpha/r) to each adapted weight; multiplying B by a factor s < 1 moves the model back
along the straight line to its base, the interpolation of WiSE-FT (Wortsman et al. 2022) and of LoRA
scaling. Fine-tuning on new facts overshoots what recalling them needs: on SmolLM2 the demo trial's
update at 0.8 answered as many val questions (0.983 against 0.967) and kept more of the base model's
general knowledge (0.927 against 0.878 of the check questions it knew; docs/general-knowledge.md).
`training.adapter_shrink` tries the factors after the last epoch, judged on val and, with the general
probe on, on the probe's `protect` questions the base knew (training may see those; test and the
`check` questions stay unseen). A factor is eligible when its val objective is within
`training.adapter_shrink_tolerance` of the full update's and it keeps at least as many protect questions;
of those, the one keeping the most is kept, the smallest on a tie. Judged on val alone, the rule kept
0.7 on a bench run whose champion then lost "What is the capital of France?" (a protect question the full
update answered); the scaled path is not monotone in what it keeps, question by question.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

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


@dataclass(frozen=True)
class Verdict:
    """What an update was judged on: its val objective, and how many of the probe's protect questions the
    base knew it still answers right (None with the probe off)."""

    val: float
    protect_kept: int | None = None

    def __str__(self) -> str:
        return f"{self.val:.3f}" + (f" (protect {self.protect_kept})" if self.protect_kept is not None else "")


def choose_shrink(model, factors: list[float], tolerance: float, full: Verdict,
                  judge: Callable[[float], Verdict], log: Callable[[str], None]) -> float:
    """The factor kept, or 1.0; the model is left with its update scaled by it (from a copy of the full one,
    so 1.0 restores it exactly). `judge(factor)` scores the model as it is now, scaled by that factor (a
    caller may keep what it scored, for the factor kept). Eligible: val at least `full.val - tolerance`
    and no fewer protect questions kept than the full update; of those, the most protect questions kept,
    then the smallest factor. Every factor is tried: neither need fall steadily."""
    weights = lora_b_weights(model)
    if not weights:
        log("training.adapter_shrink: not a LoRA adapter, nothing to shrink")
        return 1.0
    originals = [weight.detach().clone() for weight in weights]

    @torch.no_grad()
    def scale(factor: float) -> None:
        for weight, original in zip(weights, originals, strict=True):
            weight.copy_(original * factor)

    verdicts: dict[float, Verdict] = {}
    for factor in sorted(set(factors), reverse=True):
        scale(factor)
        verdicts[factor] = judge(factor)
    eligible = [factor for factor, verdict in verdicts.items()
                if verdict.val >= full.val - tolerance
                and (full.protect_kept is None or verdict.protect_kept >= full.protect_kept)]
    chosen = max(eligible, key=lambda factor: (verdicts[factor].protect_kept or 0, -factor), default=1.0)
    scale(chosen)
    tried = ", ".join(f"{factor:g}: {verdict}" for factor, verdict in verdicts.items())
    log(f"adapter_shrink: val at 1: {full}, {tried}; kept {chosen:g}")
    return chosen

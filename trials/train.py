"""The training loop: a plain PyTorch loop over dynamically padded, length-grouped batches.

Why not HF Trainer: a trial here is short and evaluated by generation every epoch; a plain loop
keeps that in one readable function, pads each batch only to its own longest example, and groups
similar lengths so little compute goes to padding.
"""

from __future__ import annotations

import contextlib
import math
import random
import time
from dataclasses import dataclass

import torch

from trials.config import TrainingConfig
from trials.formatting import Example, collate

# Batches are drawn from shuffled windows of this many batches, sorted by length inside a window:
# random enough for SGD, and padding falls to a few percent on mixed QA/passage data.
LENGTH_GROUP_WINDOW = 32


def batches_for_epoch(examples: list[Example], batch_size: int, rng: random.Random) -> list[list[Example]]:
    order = list(range(len(examples)))
    rng.shuffle(order)
    window = batch_size * LENGTH_GROUP_WINDOW
    batches = []
    for start in range(0, len(order), window):
        chunk = sorted(order[start : start + window], key=lambda i: examples[i].num_tokens)
        batches += [[examples[i] for i in chunk[b : b + batch_size]] for b in range(0, len(chunk), batch_size)]
    rng.shuffle(batches)
    return batches


@dataclass
class EpochStats:
    loss: float
    tokens: int  # real (non-pad) tokens processed
    seconds: float

    @property
    def tokens_per_second(self) -> float:
        return self.tokens / self.seconds if self.seconds > 0 else 0.0


class Trainer:
    """Optimiser, schedule and one-epoch step over a peft model."""

    def __init__(self, model, examples: list[Example], training: TrainingConfig, learning_rate: float,
                 pad_id: int, device: torch.device, bf16: bool):
        from transformers import get_scheduler

        self.model, self.examples, self.training = model, examples, training
        self.pad_id, self.device, self.bf16 = pad_id, device, bf16
        self.rng = random.Random(training.seed)
        params = [p for p in model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(params, lr=learning_rate, weight_decay=training.weight_decay)
        micro_batches = math.ceil(len(examples) / training.batch_size)
        steps_per_epoch = math.ceil(micro_batches / training.gradient_accumulation_steps)
        total_steps = steps_per_epoch * training.epochs
        self.scheduler = get_scheduler(
            training.lr_scheduler if training.lr_scheduler != "constant" else "constant_with_warmup",
            self.optimizer,
            num_warmup_steps=int(training.warmup_ratio * total_steps),
            num_training_steps=total_steps,
        )

    def _autocast(self):
        if self.bf16:
            return torch.autocast(device_type=self.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def train_epoch(self) -> EpochStats:
        self.model.train()
        started = time.perf_counter()
        accumulate = self.training.gradient_accumulation_steps
        batches = batches_for_epoch(self.examples, self.training.batch_size, self.rng)
        loss_sum, loss_tokens, real_tokens = 0.0, 0, 0
        self.optimizer.zero_grad(set_to_none=True)
        for index, batch in enumerate(batches, start=1):
            inputs = {k: v.to(self.device) for k, v in collate(batch, self.pad_id).items()}
            labels = inputs.pop("labels")
            with self._autocast():
                logits = self.model(**inputs).logits
            # Mean over answer/passage tokens of this micro-batch; the epoch loss reported is
            # token-weighted across batches, so short and long batches count by their tokens.
            shift_logits = logits[:, :-1].float().reshape(-1, logits.shape[-1])
            shift_labels = labels[:, 1:].reshape(-1)
            loss_total = torch.nn.functional.cross_entropy(shift_logits, shift_labels, reduction="sum")
            targets = int((shift_labels != -100).sum())
            (loss_total / max(targets, 1) / accumulate).backward()
            loss_sum += loss_total.item()
            loss_tokens += targets
            real_tokens += int(inputs["attention_mask"].sum())
            if index % accumulate == 0 or index == len(batches):
                torch.nn.utils.clip_grad_norm_(
                    [p for p in self.model.parameters() if p.requires_grad], self.training.max_grad_norm
                )
                self.optimizer.step()
                self.scheduler.step()
                self.optimizer.zero_grad(set_to_none=True)
        if self.device.type == "cuda":
            torch.cuda.synchronize()
        return EpochStats(loss_sum / max(loss_tokens, 1), real_tokens, time.perf_counter() - started)

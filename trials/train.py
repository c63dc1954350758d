"""The training loop: a plain PyTorch loop over dynamically padded, length-grouped batches.

Why not HF Trainer: a trial here is short and evaluated by generation every epoch; a plain loop
keeps that in one readable function, pads each batch only to its own longest example, groups
similar lengths so little compute goes to padding, and computes the output layer only where a
label is (`batch_loss`).
"""

from __future__ import annotations

import contextlib
import math
import random
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch

from trials.config import TrainingConfig
from trials.formatting import IGNORE_INDEX, Example, collate
from trials.model import autocast, bf16_adapter_inputs

# Batches are drawn from shuffled windows of this many batches, sorted by length inside a window:
# random enough for SGD, and padding falls to a few percent on mixed QA/passage data.
LENGTH_GROUP_WINDOW = 32


def group_key(example: Example) -> tuple[bool, bool, int, int]:
    # QA pairs (loss on the answer only) apart from passages (loss everywhere), then by prompt and
    # total length: answers of one batch then sit at nearly the same positions, so the output
    # layer runs on few positions (see batch_loss).
    # General-knowledge replay rows batch apart too: only their batches need the base model's logits.
    return example.distill, example.prompt_tokens == 0, example.prompt_tokens, example.num_tokens


def length_sorted_windows(examples: list[Example], batch_size: int, rng: random.Random,
                          key: Callable[[Example], Any] = group_key) -> Iterator[list[Example]]:
    """The examples shuffled, in windows of batch_size x LENGTH_GROUP_WINDOW, each sorted by `key`: batches cut
    from one window hold examples of similar length (little padding), and each epoch mixes them afresh."""
    order = list(range(len(examples)))
    rng.shuffle(order)
    window = batch_size * LENGTH_GROUP_WINDOW
    for start in range(0, len(order), window):
        yield [examples[i] for i in sorted(order[start : start + window], key=lambda i: key(examples[i]))]


def batches_for_epoch(examples: list[Example], batch_size: int, rng: random.Random,
                      key: Callable[[Example], Any] = group_key) -> list[list[Example]]:
    batches = [window[b : b + batch_size] for window in length_sorted_windows(examples, batch_size, rng, key)
               for b in range(0, len(window), batch_size)]
    rng.shuffle(batches)
    return batches


@dataclass
class EpochStats:
    loss: float
    tokens: int  # real (non-pad) tokens processed
    seconds: float
    computed_tokens: int  # of those, the ones run through the model: a prefix every row shares counts once

    @property
    def tokens_per_second(self) -> float:
        return self.tokens / self.seconds if self.seconds > 0 else 0.0


def trainable_parameters(model: torch.nn.Module) -> list[tuple[str, torch.nn.Parameter]]:
    return [(name, parameter) for name, parameter in model.named_parameters() if parameter.requires_grad]


# Below this many shared leading tokens, a second forward call costs more than it saves.
MIN_SHARED_PREFIX = 4


def shared_prefix_length(inputs: dict[str, torch.Tensor], labels: torch.Tensor) -> int:
    """Leading tokens every row of the batch has in common, before any position whose logits count.

    Chat templates start every prompt alike: SmolLM2's ChatML puts a 20-token system prompt before
    each question, about half of a QA example's tokens.
    """
    ids, mask = inputs["input_ids"], inputs["attention_mask"]
    labelled = (labels[:, 1:] != IGNORE_INDEX).any(dim=0).nonzero()
    if len(labelled) == 0 or ids.shape[0] < 2:
        return 0
    first_logit = int(labelled[0])  # the logit at this position predicts the first label
    same = ((ids == ids[:1]).all(dim=0) & mask.bool().all(dim=0))[:first_logit]
    return int(same.int().cumprod(dim=0).sum())


def prefix_shared(inputs: dict[str, torch.Tensor], labels: torch.Tensor, share_prefix: bool) -> int:
    """The leading tokens labelled_logits computes once for the whole batch: 0 when not worth it."""
    shared = shared_prefix_length(inputs, labels) if share_prefix else 0
    return shared if shared >= MIN_SHARED_PREFIX else 0


def labelled_logits(model, inputs: dict[str, torch.Tensor], labels: torch.Tensor,
                    share_prefix: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """(logits, targets) at the positions whose next token is a label in some row of the batch;
    targets holds IGNORE_INDEX where a row has no label there.

    The output layer runs only at those positions (`logits_to_keep`). A QA example has ~5 answer
    tokens after a ~40-token chat prompt; with SmolLM2's 49,152-word vocabulary the full logits would
    cost 28 M multiply-adds a position, ~20% of the model's forward pass, and a float32 soft-max over
    a 16 x 45 x 49,152 tensor, almost all of it for positions without a label.

    With `share_prefix` (not for prefix-tuning, whose own virtual tokens take the KV cache), leading
    tokens identical in every row are computed once, for one row, and their keys and values repeated
    for the batch as a KV cache the rest attends to; gradients flow back through the cache, so the
    loss and its gradients are those of the plain forward pass.
    """
    keep = (labels[:, 1:] != IGNORE_INDEX).any(dim=0).nonzero().squeeze(1)
    shared = prefix_shared(inputs, labels, share_prefix)
    if shared:
        ids, mask = inputs["input_ids"], inputs["attention_mask"]
        # The decoder body alone: no position of the prefix has a label, and the output layer, even at one
        # position, cost SmolLM2 a copy of its 49,152 x 576 tied weight each step (bench/RESULTS.md, "Training
        # steps": prefix_output_layer, 0.90x).
        cache = model.get_decoder()(input_ids=ids[:1, :shared], attention_mask=mask[:1, :shared],
                                    use_cache=True).cache
        cache.batch_repeat_interleave(ids.shape[0])
        logits = model(input_ids=ids[:, shared:], attention_mask=mask, cache=cache, use_cache=True,
                       logits_to_keep=keep - shared).logits
    else:
        logits = model(**inputs, logits_to_keep=keep).logits
    return logits, labels[:, keep + 1]


def batch_loss(model, inputs: dict[str, torch.Tensor], labels: torch.Tensor,
               share_prefix: bool = False) -> tuple[torch.Tensor, int]:
    """(summed cross-entropy, number of target tokens) of one batch (see labelled_logits)."""
    logits, targets = labelled_logits(model, inputs, labels, share_prefix)
    loss = torch.nn.functional.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), targets.reshape(-1),
                                             reduction="sum", ignore_index=IGNORE_INDEX)
    return loss, int((targets != IGNORE_INDEX).sum())


def kl_per_token(logits: torch.Tensor, base_logits: torch.Tensor) -> torch.Tensor:
    """KL(base || model) at each position, from the two models' logits, in float32."""
    base_log = torch.log_softmax(base_logits.float(), dim=-1)
    return (base_log.exp() * (base_log - torch.log_softmax(logits.float(), dim=-1))).sum(dim=-1)


@contextlib.contextmanager
def clean_embeddings(model):
    """The input embeddings without NEFTune's noise (training.neftune_alpha): its hook adds noise only while the
    embedding module is in training mode. The noise regularises the model being trained; the base model's
    reference distribution in distilled_loss is taken on the replay row as it is."""
    embeddings = model.get_input_embeddings()
    training = embeddings.training
    embeddings.eval()
    try:
        yield
    finally:
        embeddings.train(training)


def distilled_loss(model, inputs: dict[str, torch.Tensor], labels: torch.Tensor, distill: torch.Tensor,
                   kl_weight: float, share_prefix: bool = False,
                   first_token_weight: float = 1.0) -> tuple[torch.Tensor, int]:
    """batch_loss for a batch holding general-knowledge replay rows (`distill`, one bool a row): on those
    rows each token's loss is max(0, 1 - kl_weight) x the cross-entropy on the base model's own reply +
    kl_weight x KL(base || model) over the whole vocabulary, the base's logits coming from the same
    model with its adapter disabled (no second copy), the reply's first token weighted
    `first_token_weight` times; other rows keep the plain cross-entropy."""
    logits, targets = labelled_logits(model, inputs, labels, share_prefix)
    ce = torch.nn.functional.cross_entropy(logits.float().transpose(1, 2), targets, reduction="none",
                                           ignore_index=IGNORE_INDEX)
    mixed = max(0.0, 1 - kl_weight) * ce
    if kl_weight > 0:
        with torch.no_grad(), model.disable_adapter(), clean_embeddings(model):
            base_logits, _ = labelled_logits(model, inputs, labels, share_prefix)
        mixed = mixed + kl_weight * kl_per_token(logits, base_logits)
    mask = targets != IGNORE_INDEX
    if first_token_weight != 1.0:
        first = mask & (mask.cumsum(dim=1) == 1)
        mixed = mixed * torch.where(first, first_token_weight, 1.0)
    per_token = torch.where(distill.to(ce.device)[:, None], mixed, ce)
    return per_token[mask].sum(), int(mask.sum())


@dataclass
class AnswerLoss:
    """Teacher-forced scores of the expected answers: the early signal of a trial (orchestrator/sweep.py).

    Exact recall is a step function of these: a question is recalled once its answer's tokens all
    become the most likely ones. The loss falls from the first epoch, long before that happens.
    """

    loss: float  # cross-entropy per answer token (EOS included), as the training loss is measured
    likelihood: float  # mean over questions of P(whole answer | question), in [0, 1]


@torch.no_grad()
def answer_loss(model, examples: list[Example], pad_id: int, device: torch.device, bf16: bool,
                batch_size: int) -> AnswerLoss:
    """One forward pass over QA examples (no generation), in eval mode."""
    model.eval()
    nll_sum, tokens, likelihood = 0.0, 0, 0.0
    for start in range(0, len(examples), batch_size):
        inputs = {k: v.to(device) for k, v in collate(examples[start : start + batch_size], pad_id).items()}
        labels = inputs.pop("labels")
        with autocast(device, bf16, model):
            logits, targets = labelled_logits(model, inputs, labels)
        nll = torch.nn.functional.cross_entropy(logits.float().transpose(1, 2), targets, reduction="none",
                                                ignore_index=IGNORE_INDEX).sum(dim=1)
        nll_sum += float(nll.sum())
        tokens += int((targets != IGNORE_INDEX).sum())
        likelihood += float(torch.exp(-nll).sum())
    return AnswerLoss(nll_sum / max(tokens, 1), likelihood / max(len(examples), 1))


class TrainingDiverged(RuntimeError):
    """The loss or the gradient became NaN or infinite: training cannot recover, so the trial stops.

    Raised before the optimiser applies the step, so the weights are those of the last finite step.
    """

    def __init__(self, epoch: int | None, step: int, what: str):
        self.epoch, self.step, self.what = epoch, step, what
        where = f"epoch {epoch}, step {step}" if epoch is not None else f"step {step}"
        super().__init__(f"training diverged: non-finite {what} at {where} (try a lower learning rate)")

    def __reduce__(self):
        # Ray pickles a trial's exception to the driver; the default rebuilds it from the message alone,
        # which this __init__ refuses (a TypeError in place of the divergence).
        return type(self), (self.epoch, self.step, self.what)


# training.optimizer sgd's momentum: the usual value for fine-tuning with SGD (PyTorch's default is none).
SGD_MOMENTUM = 0.9


def build_optimizer(params: list[torch.nn.Parameter], training: TrainingConfig,
                    learning_rate: float) -> torch.optim.Optimizer:
    """training.optimizer over the trainable parameters, at the method's learning rate (the schedule scales it)."""
    if training.optimizer == "sgd":
        return torch.optim.SGD(params, lr=learning_rate, momentum=SGD_MOMENTUM, weight_decay=training.weight_decay)
    if training.optimizer == "adafactor":
        from transformers.optimization import Adafactor

        # Its own step sizes off (relative_step, scale_parameter, warmup_init): the method's learning rate and
        # training.lr_scheduler set the step, as for the other optimisers, so a sweep's learning rates compare.
        return Adafactor(params, lr=learning_rate, weight_decay=training.weight_decay, relative_step=False,
                         scale_parameter=False, warmup_init=False)
    return torch.optim.AdamW(params, lr=learning_rate, weight_decay=training.weight_decay)


def build_schedule(optimizer: torch.optim.Optimizer, training: TrainingConfig, total_steps: int):
    """training.lr_scheduler after training.warmup_ratio of the `total_steps` optimiser steps spent warming up."""
    from transformers import get_scheduler

    return get_scheduler(
        training.lr_scheduler if training.lr_scheduler != "constant" else "constant_with_warmup",
        optimizer,
        num_warmup_steps=int(training.warmup_ratio * total_steps),
        num_training_steps=total_steps,
    )


class Trainer:
    """Optimiser, schedule and one-epoch step over a peft model."""

    # The bench swaps in the previous full-logits loss and length-only grouping, and other batchings, to compare.
    loss_fn = staticmethod(batch_loss)
    adapter_inputs = staticmethod(bf16_adapter_inputs)  # entered for each bf16 epoch
    group_key = staticmethod(group_key)
    batcher = staticmethod(batches_for_epoch)

    def __init__(self, model, examples: list[Example], training: TrainingConfig, learning_rate: float,
                 pad_id: int, device: torch.device, bf16: bool, replay: list[Example] = (),
                 general: list[Example] = (),
                 vary: Callable[[list[Example], random.Random], list[Example]] | None = None):
        self.model, self.examples, self.training = model, examples, training
        # The epoch's examples redrawn from `examples` and the batch stream (trials/augment.py), when given.
        self.vary = vary
        # Old examples replayed: a fresh random share of them joins every epoch.
        self.replay, self.replay_count = list(replay), round(training.replay_fraction * len(replay))
        # The base model's own replies to the general probe's protect part, likewise (trials/general.py).
        self.general, self.general_count = list(general), round(training.general_replay * len(general))
        self.pad_id, self.device, self.bf16 = pad_id, device, bf16
        # Prefix-tuning feeds its virtual tokens as the KV cache; checkpointing turns the cache off.
        peft_config = getattr(model, "active_peft_config", None)
        prompt_learning = peft_config is not None and peft_config.is_prompt_learning
        self.share_prefix = not (prompt_learning or training.gradient_checkpointing)
        self.rng = random.Random(training.seed)
        self.trained = [parameter for _, parameter in trainable_parameters(model)]
        self.optimizer = build_optimizer(self.trained, training, learning_rate)
        micro_batches = math.ceil((len(examples) + self.replay_count + self.general_count) / training.batch_size)
        steps_per_epoch = math.ceil(micro_batches / training.gradient_accumulation_steps)
        self.scheduler = build_schedule(self.optimizer, training, steps_per_epoch * training.epochs)

    def state_dict(self) -> dict:
        """What a resume needs to go on as if never stopped: optimiser, schedule, both random streams
        (the batch order's and torch's, which draws dropout)."""
        return {"optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
                "batch_rng": self.rng.getstate(), "torch_rng": torch.get_rng_state()}

    def load_state_dict(self, state: dict) -> None:
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.rng.setstate(state["batch_rng"])
        torch.set_rng_state(state["torch_rng"])

    def train_epoch(self, epoch: int | None = None) -> EpochStats:
        """One pass over the examples; `epoch` only names where a TrainingDiverged happened."""
        self.model.train()
        # NEFTune's hook lives for one epoch only, so a base model kept for the next trial carries none.
        # For the whole epoch, backward included: a checkpointed layer recomputes what it saved, inputs alike.
        with self.adapter_inputs(self.model) if self.bf16 else contextlib.nullcontext():
            if not self.training.neftune_alpha:
                return self._train_epoch(epoch)
            from transformers.integrations.neftune import activate_neftune, deactivate_neftune

            noise = activate_neftune(self.model, self.training.neftune_alpha)
            try:
                return self._train_epoch(epoch)
            finally:
                deactivate_neftune(self.model, noise)

    def _train_epoch(self, epoch: int | None) -> EpochStats:
        started = time.perf_counter()
        accumulate = self.training.gradient_accumulation_steps
        ours = self.vary(self.examples, self.rng) if self.vary else self.examples
        examples = (ours + self.rng.sample(self.replay, self.replay_count)
                    + self.rng.sample(self.general, self.general_count))
        batches = self.batcher(examples, self.training.batch_size, self.rng, self.group_key)
        loss_sum, loss_tokens, real_tokens, computed_tokens = 0.0, 0, 0, 0
        self.optimizer.zero_grad(set_to_none=True)
        for index, batch in enumerate(batches, start=1):
            inputs = {k: v.to(self.device) for k, v in collate(batch, self.pad_id).items()}
            labels = inputs.pop("labels")
            distill = torch.tensor([example.distill for example in batch])
            with autocast(self.device, self.bf16):
                if bool(distill.any()) and (self.training.kl_to_base > 0
                                            or self.training.general_first_token_weight != 1.0):
                    loss_total, targets = distilled_loss(self.model, inputs, labels, distill,
                                                         self.training.kl_to_base, self.share_prefix,
                                                         self.training.general_first_token_weight)
                else:
                    loss_total, targets = self.loss_fn(self.model, inputs, labels, self.share_prefix)
            # Mean over answer/passage tokens of this micro-batch; the epoch loss reported is
            # token-weighted across batches, so short and long batches count by their tokens.
            (loss_total / max(targets, 1) / accumulate).backward()
            batch_loss_sum = loss_total.item()
            # The optimiser step this micro-batch feeds (the schedule counts the steps taken, resumes included).
            step = self.scheduler.last_epoch + 1
            if not math.isfinite(batch_loss_sum):
                raise TrainingDiverged(epoch, step, "loss")
            loss_sum += batch_loss_sum
            loss_tokens += targets
            real = int(inputs["attention_mask"].sum())
            real_tokens += real
            computed_tokens += real - (len(batch) - 1) * prefix_shared(inputs, labels, self.share_prefix)
            if index % accumulate == 0 or index == len(batches):
                grad_norm = torch.nn.utils.clip_grad_norm_(self.trained, self.training.max_grad_norm)
                # A finite loss can still give an infinite or NaN gradient (an overflow in backward);
                # clipping would scale it into NaN weights. One scalar check per step.
                if not torch.isfinite(grad_norm):
                    raise TrainingDiverged(epoch, step, "gradient norm")
                self.optimizer.step()
                self.scheduler.step()
                self.optimizer.zero_grad(set_to_none=True)
        if self.device.type == "cuda":
            torch.cuda.synchronize()
        return EpochStats(loss_sum / max(loss_tokens, 1), real_tokens, time.perf_counter() - started, computed_tokens)

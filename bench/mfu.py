"""Model FLOPs utilisation of a training step: the FLOPs a trained token needs, times tokens per second,
over the machine's peak, measured in the same run (a shared machine's peak moves with its load).

The FLOP count is per computed token: a real (non-pad) token that the step runs through the model. A prompt prefix
every row of a batch shares (SmolLM2's chat template: about half of a QA example's tokens) runs once per batch
(trials/train.labelled_logits), so its FLOPs count once, not once per row: counting FLOPs the step never ran would
report work the machine did not do. For a peft adapter trained on a frozen base:
- every frozen Linear weight of the body (attention q, k, v, o; MLP gate, up, down): a multiply-add in
  the forward pass (2 FLOPs) and one in the backward pass to its input (2 FLOPs); no weight gradient,
  the base is frozen: 4 FLOPs per weight;
- every trainable Linear weight (LoRA's A and B): forward, input gradient and weight gradient: 6;
- the output layer (lm_head) runs only at the positions that have a label (trials/train.py keeps the
  logits there alone): 4 FLOPs per weight, times the labels per computed token;
- attention's two matmuls (scores, weighted sum), causal, so a token attends to (its position + 1) keys on
  average half the sequence: 2 x 2 x hidden x mean attended length per layer forward, twice that with the
  backward pass to the inputs, the mean taken over the real tokens (attention is about 1% of SmolLM2's count).
Left out: norms, activations, softmax, embeddings and the optimiser (no matmul), and prefix-tuning's
extra keys. For SmolLM2-135M the body is 106 M weights, so ~0.42 GFLOP a token before lm_head and
attention.
"""

from __future__ import annotations

import time

LARGE = 2048  # the peak's GEMM: LARGE x LARGE x LARGE


def gemm_gflops(m: int, k: int, n: int, dtype, device, seconds: float = 1.0) -> float:
    """GFLOP/s of torch's (m x k) @ (k x n) in `dtype` on `device` (on the CPU with torch's current threads,
    the bench's), timed for at least `seconds` after a warm-up."""
    import torch

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    a, b = torch.randn(m, k, dtype=dtype, device=device), torch.randn(k, n, dtype=dtype, device=device)
    a @ b
    sync()
    runs, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds or runs < 3:
        a @ b
        runs += 1
        if runs % 8 == 0:
            sync()
    sync()
    return 2 * m * k * n * runs / (time.perf_counter() - started) / 1e9


def peaks(hidden: int, intermediate: int, tokens: int, device) -> dict[str, float]:
    """The machine's GEMM peak in bf16 and fp32, at LARGE and at a training step's biggest shape (a batch's
    tokens x hidden x intermediate: the MLP's up projection)."""
    import torch

    found = {}
    for name, dtype in (("bf16", torch.bfloat16), ("fp32", torch.float32)):
        found[name] = gemm_gflops(LARGE, LARGE, LARGE, dtype, device)
        found[f"{name}_trial_shape"] = gemm_gflops(tokens, hidden, intermediate, dtype, device)
    return found


def training_flops_per_token(model, examples, computed_share: float = 1.0) -> float:
    """FLOPs per computed token of one training step of `model` (a peft model) on `examples`
    (trials.formatting.Example: num_tokens, prompt_tokens), counted as the module docstring says; `computed_share`:
    the computed tokens' share of the real ones (trials.train.EpochStats)."""
    import torch

    output = model.get_output_embeddings()
    body = 0.0
    for module in model.modules():
        if isinstance(module, torch.nn.Linear) and module is not output:
            body += module.weight.numel() * (6 if module.weight.requires_grad else 4)
    tokens = sum(example.num_tokens for example in examples)
    labelled = sum(example.num_tokens - example.prompt_tokens for example in examples) / tokens / computed_share
    config = model.config
    mean_attended = sum(example.num_tokens * (example.num_tokens + 1) / 2 for example in examples) / tokens
    attention = 2 * 2 * 2 * config.hidden_size * mean_attended * config.num_hidden_layers
    return body + 4 * output.weight.numel() * labelled + attention


def utilisation(flops_per_token: float, tokens_per_s: float, peak_gflops: float) -> float:
    return flops_per_token * tokens_per_s / (peak_gflops * 1e9)


def measure(trainer, tokens_per_s: float, computed_share: float) -> dict:
    """For a training speed measured with `trainer` (trials.train.Trainer) just before, in real tokens/s of which
    `computed_share` ran through the model: its model's FLOPs per computed token on its examples, the device's
    peaks now, at its shapes, and the MFU against the peak of the dtype it trained in."""
    model, examples = trainer.model, trainer.examples
    flops = training_flops_per_token(model, examples, computed_share)
    batch_tokens = trainer.training.batch_size * round(sum(e.num_tokens for e in examples) / len(examples))
    peak = peaks(model.config.hidden_size, model.config.intermediate_size, batch_tokens, trainer.device)
    return {"flops_per_token": flops, "peak_gflops": peak, "computed_share": computed_share,
            "mfu": utilisation(flops, tokens_per_s * computed_share, peak["bf16" if trainer.bf16 else "fp32"])}

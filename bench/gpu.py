"""GPU bench (bench/gpu.sh runs it): LoRA training at Llama-2-7B's shapes, our loop vs the seed recipe.

    bash bench/gpu.sh                       # on a CUDA machine; writes bench/results/gpu.json
    python -m bench.gpu --tiny --out X.json # the same code paths on CPU with a tiny model (tests)

1. A randomly initialised LlamaForCausalLM with Llama-2-7B's shapes (hidden 4096, 32 layers, 32 heads,
   intermediate 11008, vocab 32000), bf16 weights. Nothing is downloaded: throughput does not depend
   on the weights' values.
2. Synthetic examples: random token ids, lengths uniform in [seq_len/4, seq_len] (mixed lengths, like
   real documents + QA, so padding matters). The same examples for both sides.
3. The same adapter and learning rate for both (bench/seed_recipe.SEED: LoRA r=8, alpha=32 on
   q_proj/v_proj, lr 1e-6; the rate does not change what a step costs), so the difference is the
   training loop alone:
   - ours: trials.train.Trainer (what run_trial trains with): batch --batch (default 4; fits twice on
     an 80 GB GPU for part 4), length-grouped dynamic padding, bf16 autocast;
   - seed: transformers.Trainer, per_device_train_batch_size=2, DataCollatorForLanguageModeling
     (mlm=False), pad = eos, bf16=True (bench/seed_recipe.train_seed).
   Each side gets a warm-up pass first; the timed pass is training wall time only.
   Reported: real tokens/s, MFU and peak allocated memory.
   MFU = useful FLOPs / s / peak bf16 dense FLOPs, with useful FLOPs per example of n real tokens =
   4 * N * n + 12 * layers * hidden * n^2 (LoRA: forward 2N, backward input-gradients 2N, no weight
   gradients for the frozen base; attention forward 4*L*h*n per token, backward twice that; N = the
   parameters of the base's linear layers, lm_head included; LoRA's own matmuls are left out).
4. Two trials sharing one GPU through fractional resources: two Ray tasks with num_gpus=0.5 each run
   our loop on their own copy of the model at the same time (a barrier lines up their timed passes);
   reported per trial and together, next to the single-trial number from 3.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import sys
import time
from dataclasses import asdict
from datetime import datetime, timezone
from pathlib import Path

import torch

from bench.seed_recipe import SEED

REPO = Path(__file__).resolve().parent.parent
LLAMA2_7B = {"hidden_size": 4096, "num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": 32,
             "intermediate_size": 11008, "vocab_size": 32000, "max_position_embeddings": 4096}
TINY = {"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 4,
        "intermediate_size": 172, "vocab_size": 1024, "max_position_embeddings": 512}
# Peak dense bf16 tensor FLOP/s (no sparsity), by device-name fragment.
PEAK_BF16 = {"H200": 989.4e12, "H100": 989.4e12, "A100": 312e12, "L40S": 362.05e12, "A10G": 70e12, "L4": 121e12}


def build_model(shapes: dict, device: torch.device, bf16: bool):
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(**shapes, bos_token_id=1, eos_token_id=2, pad_token_id=0, tie_word_embeddings=False)
    dtype = torch.bfloat16 if bf16 else torch.float32
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        torch.manual_seed(0)
        with device:  # initialised on the device: no 27 GB fp32 copy on the host
            model = LlamaForCausalLM(config)
    finally:
        torch.set_default_dtype(previous)
    return model


def linear_parameters(model) -> int:
    return sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear))


def make_examples(count: int, seq_len: int, vocab: int, seed: int = 0):
    from trials.formatting import Example

    rng = random.Random(seed)
    examples = []
    for _ in range(count):
        n = rng.randint(max(seq_len // 4, 2), seq_len)
        ids = [rng.randrange(3, vocab) for _ in range(n)]
        examples.append(Example(ids, list(ids)))
    return examples


def useful_flops(lengths: list[int], n_linear: int, layers: int, hidden: int) -> float:
    return sum(4.0 * n_linear * n + 12.0 * layers * hidden * n * n for n in lengths)


def peak_flops(device: torch.device, override: float | None) -> float | None:
    if override:
        return override * 1e12
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((value for key, value in PEAK_BF16.items() if key in name), None)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def _peak_gib(device: torch.device) -> float | None:
    return torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None


def run_ours(base, examples, batch: int, device: torch.device, bf16: bool, warmup_examples: list):
    """trials.train.Trainer on a LoRA of `base`: a warm-up epoch, then one timed epoch."""
    from trials.config import TrainingConfig
    from trials.model import attach_method
    from trials.train import Trainer

    model = attach_method(base, SEED.method(), gradient_checkpointing=False)
    training = TrainingConfig(epochs=2, batch_size=batch, seed=0, bf16=bf16)
    warm = Trainer(model, warmup_examples, training, SEED.learning_rate, 0, device, bf16)
    warm.train_epoch()
    trainer = Trainer(model, examples, training, SEED.learning_rate, 0, device, bf16)
    _sync(device)
    _reset_peak(device)
    stats = trainer.train_epoch()  # synchronises at its end on CUDA
    peak = _peak_gib(device)
    return model, {"tokens": stats.tokens, "seconds": stats.seconds, "tokens_per_s": stats.tokens_per_second,
                   "peak_memory_gib": peak, "batch_size": batch}


def run_seed(base, examples, device: torch.device, bf16: bool, token_target: int, work: Path):
    """The seed recipe's Trainer (bench/seed_recipe.train_seed) on the same examples."""
    from datasets import Dataset
    from peft import get_peft_model

    from bench.seed_recipe import seed_tokenizer, train_seed
    from trials.model import resolve_model

    model = get_peft_model(base, SEED.lora_config())
    tokenizer = seed_tokenizer(resolve_model("embedded:tiny-llama"))  # only pads: pad = eos id 2
    dataset = Dataset.from_dict({"input_ids": [e.input_ids for e in examples],
                                 "attention_mask": [[1] * e.num_tokens for e in examples]})
    warm = train_seed(model, tokenizer, dataset, work / "seed-warmup", epochs=1,
                      token_target=sum(e.num_tokens for e in examples[:8]), bf16=bf16)
    _sync(device)
    _reset_peak(device)
    run = train_seed(model, tokenizer, dataset, work / "seed", epochs=1, token_target=token_target, bf16=bf16)
    _sync(device)
    return model, {"tokens": run.tokens, "seconds": run.seconds, "tokens_per_s": run.tokens_per_second,
                   "peak_memory_gib": _peak_gib(device), "batch_size": SEED.batch_size, "steps": run.steps,
                   "pad_fraction": 1 - run.tokens / max(run.padded_tokens, 1), "warmup_steps": warm.steps}


def add_mfu(result: dict, lengths_of: dict, n_linear: int, shapes: dict, peak: float | None) -> None:
    flops = useful_flops(lengths_of["lengths"], n_linear, shapes["num_hidden_layers"], shapes["hidden_size"])
    # Scale to the real tokens this side trained on (the seed stops after the step reaching the target).
    flops *= result["tokens"] / max(sum(lengths_of["lengths"]), 1)
    result["tflops_per_s"] = flops / result["seconds"] / 1e12
    result["mfu"] = flops / result["seconds"] / peak if peak else None


def shared_gpu(args, shapes: dict, single_tokens_per_s: float) -> dict:
    """Two trials at 0.5 GPU each on one GPU, timed passes lined up by a barrier."""
    import ray

    ray.init(address="local", num_gpus=1, include_dashboard=False, logging_level="WARNING",
             runtime_env={"env_vars": {"PYTHONPATH": str(REPO)}})

    @ray.remote(num_cpus=0)
    class Barrier:
        def __init__(self, parties: int):
            import asyncio

            self.parties, self.arrived, self.event = parties, 0, asyncio.Event()

        async def wait(self):
            self.arrived += 1
            if self.arrived >= self.parties:
                self.event.set()
            await self.event.wait()

    @ray.remote(num_gpus=0.5, num_cpus=1)
    def trial(index: int, barrier) -> dict:
        device = torch.device("cuda")
        base = build_model(shapes, device, True)
        examples = make_examples(args.batch * args.steps, args.seq_len, shapes["vocab_size"], seed=1 + index)
        warmup = make_examples(args.batch * 2, args.seq_len, shapes["vocab_size"], seed=100 + index)
        from trials.config import TrainingConfig
        from trials.model import attach_method
        from trials.train import Trainer

        model = attach_method(base, SEED.method(), gradient_checkpointing=False)
        training = TrainingConfig(epochs=1, batch_size=args.batch, seed=index, bf16=True)
        Trainer(model, warmup, training, SEED.learning_rate, 0, device, True).train_epoch()
        trainer = Trainer(model, examples, training, SEED.learning_rate, 0, device, True)
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        ray.get(barrier.wait.remote())
        started = time.time()
        stats = trainer.train_epoch()
        ended = time.time()
        return {"trial": index, "tokens": stats.tokens, "seconds": stats.seconds, "tokens_per_s": stats.tokens_per_second,
                "started": started, "ended": ended, "peak_memory_gib": torch.cuda.max_memory_allocated() / 2**30,
                "gpu_ids": [str(g) for g in ray.get_gpu_ids()],
                "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES", "")}

    try:
        barrier = Barrier.remote(2)
        results = ray.get([trial.remote(i, barrier) for i in range(2)])
    finally:
        ray.shutdown()
    window = max(r["ended"] for r in results) - min(r["started"] for r in results)
    together = sum(r["tokens"] for r in results) / window
    return {"trials": results, "aggregate_tokens_per_s": together, "single_trial_tokens_per_s": single_tokens_per_s,
            "aggregate_vs_single": together / single_tokens_per_s,
            "same_gpu": len({tuple(r["gpu_ids"]) for r in results}) == 1}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.gpu", description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "gpu.json")
    parser.add_argument("--seq-len", type=int, default=512, help="longest example; lengths are uniform in [L/4, L]")
    parser.add_argument("--batch", type=int, default=4,
                        help="our loop's batch size (the seed recipe's is 2); two trials at this batch share the GPU")
    parser.add_argument("--steps", type=int, default=24, help="our timed batches; the seed trains the same tokens")
    parser.add_argument("--peak-tflops", type=float, default=None, help="peak bf16 TFLOP/s if the GPU is not known")
    parser.add_argument("--tiny", action="store_true", help="tiny model on CPU, fp32: checks the code paths")
    parser.add_argument("--skip-shared", action="store_true", help="skip the two-trials-on-one-GPU part")
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    import tempfile

    if args.tiny:  # a code-path check, seconds on one CPU thread
        args.seq_len, args.batch, args.steps = min(args.seq_len, 64), min(args.batch, 4), min(args.steps, 4)
        torch.set_num_threads(1)
    cuda = torch.cuda.is_available() and not args.tiny
    device = torch.device("cuda" if cuda else "cpu")
    bf16 = cuda and torch.cuda.is_bf16_supported()
    shapes = TINY if args.tiny else LLAMA2_7B
    if not cuda and not args.tiny:
        print("no CUDA GPU: run this on a GPU machine (or pass --tiny to check the code paths on CPU)", file=sys.stderr)
        return 2
    work = Path(tempfile.mkdtemp(prefix="recall-gpu-bench-"))
    started = time.perf_counter()

    built = time.perf_counter()
    base = build_model(shapes, device, bf16)
    build_seconds = time.perf_counter() - built
    n_linear = linear_parameters(base)
    examples = make_examples(args.batch * args.steps, args.seq_len, shapes["vocab_size"])
    warmup = make_examples(args.batch * 2, args.seq_len, shapes["vocab_size"], seed=100)
    lengths = {"lengths": [e.num_tokens for e in examples]}
    peak = peak_flops(device, args.peak_tflops)

    model, ours = run_ours(base, examples, args.batch, device, bf16, warmup)
    base = model.base_model.unload()  # the same base weights, LoRA layers removed
    del model
    model, seed = run_seed(base, examples, device, bf16, ours["tokens"], work)
    add_mfu(ours, lengths, n_linear, shapes, peak)
    add_mfu(seed, lengths, n_linear, shapes, peak)
    del model, base
    import gc

    gc.collect()  # the HF Trainer holds the model in reference cycles: free it before the shared part
    if cuda:
        torch.cuda.empty_cache()

    result = {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "device": torch.cuda.get_device_name(0) if cuda else "cpu",
        "dtype": "bf16" if bf16 else "fp32",
        "model": {"shapes": shapes, "linear_parameters": n_linear, "init": "random (seed 0)",
                  "build_seconds": build_seconds},
        "data": {"examples": len(examples), "seq_len_max": args.seq_len, "seq_len_min": max(args.seq_len // 4, 2),
                 "real_tokens": sum(lengths["lengths"]), "distribution": "uniform lengths, random ids"},
        "lora": asdict(SEED),
        "ours": ours,
        "seed": seed,
        "throughput_ratio_vs_seed": ours["tokens_per_s"] / seed["tokens_per_s"],
        "peak_tflops": peak / 1e12 if peak else None,
        "mfu_formula": "(4*N_linear*n + 12*layers*hidden*n^2) per example of n real tokens / seconds / peak",
        "versions": {name: __import__(name).__version__ for name in ("torch", "transformers", "peft")},
        "python": platform.python_version(),
        "command": " ".join(["python", "-m", "bench.gpu", *(argv if argv is not None else sys.argv[1:])]),
    }
    if cuda and not args.skip_shared:
        result["shared_gpu"] = shared_gpu(args, shapes, ours["tokens_per_s"])
    else:
        result["shared_gpu"] = {"skipped": "needs a CUDA GPU" if not cuda else "--skip-shared"}
    result["seconds"] = time.perf_counter() - started
    import shutil

    shutil.rmtree(work, ignore_errors=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: result[k] for k in ("device", "throughput_ratio_vs_seed")}
                     | {"ours_tokens_per_s": ours["tokens_per_s"], "seed_tokens_per_s": seed["tokens_per_s"],
                        "ours_mfu": ours["mfu"], "seed_mfu": seed["mfu"]}, indent=2))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The `steps` section: how fast one training step is against the machine's peak, and what makes it faster, each
way side by side with today's step in one run (issue 26).

    python -m bench.run --sections steps     # about 25 minutes on 2 idle cores

1. mfu       the tiny model's trial (configs/demo.yaml) and SmolLM2's (configs/smollm2.yaml): training tokens/s over
             STEP_EPOCHS epochs after a warm-up epoch, then the GEMM peaks right after, on the threads a trial gets
             (bench/mfu.py counts the FLOPs): tiny_mfu, smollm2_mfu, peak_bf16_gflops, peak_fp32_gflops.
2. variants  SmolLM2's step as shipped (`ours`) against each way to make it faster, each on a fresh adapter with the
             same seed, so the same batches, timed in adjacent pairs with a fresh `ours` (compare_variants):
               float32_base  the frozen base in float32 under the same bf16 autocast, as before it was held in
                             bf16 (trials/model.load_base_model): autocast casts each weight on every call, and
                             norms and the residual stream run in float32;
               compile       every decoder layer under torch.compile(dynamic=True), eager where compiling fails;
               token_budget  batches filled up to a token budget (batch_size x the mean example's tokens, padding
                             included) in place of a fixed number of rows;
               prefix_output_layer  slower ways kept to measure what replaced them: the shared prompt prefix's
               peft_input_casts     pass through the output layer too, and peft's casts of each LoRA layer's bf16
                                    input to float32 and back (trials/model.bf16_adapter_inputs);
             each: its median tokens/s, the median of its pairs' ratios to ours, and both losses after the same
             epochs.
             A variant at least KEEP_SPEEDUP faster is then trained the whole trial beside ours, and both answer
             the val questions (the adapter alone, no router): worth shipping only if recall is unchanged.
3. threads   two SmolLM2 trainings at once, as a 2-core sweep runs two 1-CPU trials: each on 1 thread (what
             orchestrator.trainable.trial_threads gives them) and each on 2 (an OMP_NUM_THREADS=2 inherited from the
             shell, or torch's default of every core): tokens/s each way.
"""

from __future__ import annotations

import contextlib
import functools
import multiprocessing
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch

from bench import mfu

REPO = Path(__file__).resolve().parent.parent
SMOLLM2 = REPO / "configs" / "smollm2.yaml"
STEP_EPOCHS = 2  # timed epochs for the MFU, after a warm-up epoch
KEEP_SPEEDUP = 1.05  # a variant this much faster than ours gets its recall checked over a whole trial
# The variants' timing: adjacent pairs of one epoch of ours and one of the variant over the trial's first
# VARIANT_EXAMPLES examples (~9 s of SmolLM2 on one thread). Timed one after another, once each, ours measured 468 and
# 489 tok/s first and last and prefix_output_layer came out level with ours; in rounds of every variant in turn,
# ours came out slowest of all in two rounds of three; in 10 adjacent pairs, ours was the faster in every pair.
VARIANT_PAIRS = 4
VARIANT_EXAMPLES = 96
MFU_KEYS = ("tiny_mfu", "smollm2_mfu", "peak_bf16_gflops", "peak_fp32_gflops", "tiny_flops_per_token",
            "smollm2_flops_per_token", "peak_gflops", "smollm2_peak_gflops", "tiny_computed_share",
            "smollm2_computed_share")
REQUIRED_KEYS = ("tiny_mfu", "smollm2_mfu", "peak_bf16_gflops", "peak_fp32_gflops", "steps_variants",
                 "steps_threads")


# ------------------------------------------------------------------------------------------- variants


def _base_float32(model) -> None:
    model.to(torch.float32)


def _compile_layers(model) -> None:
    import torch._dynamo

    torch._dynamo.config.suppress_errors = True  # the fallback: a frame that fails to compile runs eagerly
    for layer in model.model.layers:
        layer.compile(dynamic=True)


def token_budget_batches(examples, batch_size: int, rng, key) -> list[list]:
    """trials.train.batches_for_epoch's shuffled, length-sorted windows, cut where the next example would take the
    batch (rows x its longest example) past a budget of batch_size x the mean example's tokens."""
    from trials.train import length_sorted_windows

    budget = batch_size * sum(example.num_tokens for example in examples) / len(examples)
    batches = []
    for window in length_sorted_windows(examples, batch_size, rng, key):
        batch: list = []
        for example in window:
            longest = max([example.num_tokens] + [other.num_tokens for other in batch])
            if batch and (len(batch) + 1) * longest > budget:
                batches.append(batch)
                batch = []
            batch.append(example)
        batches.append(batch)
    rng.shuffle(batches)
    return batches


def _prefix_through_output_layer(trainer) -> None:
    """The shared prompt prefix's pass (trials/train.labelled_logits) through the whole model, its output layer at
    one position included, as before it ran the decoder body alone; only its KV cache is used either way."""
    model = trainer.model
    model.get_decoder = lambda: functools.partial(model, logits_to_keep=1)


# name -> (applied to the bare base before the adapter, applied to the Trainer)
VARIANTS: dict[str, tuple[Callable | None, Callable | None]] = {
    "ours": (None, None),
    "float32_base": (_base_float32, None),
    "token_budget": (None, lambda trainer: setattr(trainer, "batcher", token_budget_batches)),
    "prefix_output_layer": (None, _prefix_through_output_layer),
    # peft's cast of each adapter layer's bf16 input to float32 and autocast's back, as before bf16_adapter_inputs
    "peft_input_casts": (None, lambda trainer: setattr(trainer, "adapter_inputs", lambda _: contextlib.nullcontext())),
    "compile": (_compile_layers, None),  # last: Dynamo's settings are the process's
}


def _trainer(trial, variant: str):
    """A fresh adapter on a freshly loaded base, `variant` applied, seeded as the trial is."""
    from trials.data import load_knowledge
    from trials.model import attach_method, load_for
    from trials.train import Trainer
    from trials.trial import build_examples

    on_base, on_trainer = VARIANTS[variant]
    loaded = load_for(trial)
    examples = build_examples(loaded.tokenizer, load_knowledge(trial.data), trial)
    if on_base:
        on_base(loaded.model)
    torch.manual_seed(trial.training.seed)
    model = attach_method(loaded.model, trial.method, False)
    trainer = Trainer(model, examples, trial.training, trial.method.learning_rate, loaded.tokenizer.pad_token_id,
                      loaded.device, loaded.bf16)
    if on_trainer:
        on_trainer(trainer)
    return loaded, model, trainer


def timed_epochs(trial, variant: str, epochs: int, warm_up: bool = True, examples: int | None = None) -> dict:
    """A warm-up epoch (compiling, for `compile`), then `epochs` timed ones: tokens/s and the last epoch's loss.
    `examples`: an epoch of only the first that many training examples."""
    _, _, trainer = _trainer(trial, variant)
    trainer.examples = trainer.examples[:examples]
    return _timed(trainer, epochs, warm_up)


def _timed(trainer, epochs: int, warm_up: bool = True) -> dict:
    started = time.perf_counter()
    warm = trainer.train_epoch() if warm_up else None
    warm_up_seconds = time.perf_counter() - started
    tokens = computed = seconds = 0.0
    for _ in range(epochs):
        stats = trainer.train_epoch()
        tokens, computed, seconds = tokens + stats.tokens, computed + stats.computed_tokens, seconds + stats.seconds
    return {"tokens_per_s": tokens / seconds, "tokens": int(tokens), "computed_share": computed / tokens,
            "seconds": seconds, "warm_up_seconds": warm_up_seconds, "warm_up_loss": warm and warm.loss,
            "loss": stats.loss}


def trained_recall(trial, variant: str) -> dict:
    """The whole trial's epochs, then the adapter's val exact recall (no router: the same for every variant)."""
    from trials.data import load_knowledge
    from trials.evaluate import generation_budget, score_rows

    loaded, model, trainer = _trainer(trial, variant)
    seconds = 0.0
    for _ in range(trial.training.epochs):
        seconds += trainer.train_epoch().seconds
    knowledge = load_knowledge(trial.data)
    metrics, _ = score_rows(model, loaded.tokenizer, knowledge.split("val"), batch_size=trial.eval.batch_size,
                            max_new_tokens=generation_budget(loaded.tokenizer, knowledge, trial.eval),
                            device=loaded.device, bf16=loaded.bf16)
    return {"val_exact_recall": metrics["exact_recall"], "train_seconds": seconds, "epochs": trial.training.epochs}


def compare_variants(trial, log, pairs: int = VARIANT_PAIRS, examples: int | None = VARIANT_EXAMPLES) -> dict:
    """Each variant against ours in adjacent pairs: a fresh trainer of each (the same seed, so the same batches), a
    warm-up epoch each, then `pairs` pairs of one epoch of ours and one of the variant, the order alternating. A
    variant's speedup is the median of its pairs' ratios, so a drift in the machine's load over the section cancels
    out; both have trained the same epochs when their losses are compared. Then the recall of the faster ones."""
    table: dict[str, dict] = {}
    ours_rates: list[float] = []
    for variant in [name for name in VARIANTS if name != "ours"]:
        sides = {}
        for side in ("ours", variant):
            _, _, trainer = _trainer(trial, side)
            trainer.examples = trainer.examples[:examples]
            started = time.perf_counter()
            trainer.train_epoch()
            sides[side] = {"trainer": trainer, "warm_up_seconds": time.perf_counter() - started, "rates": []}
        for pair in range(pairs):
            for side in ("ours", variant)[:: 1 if pair % 2 == 0 else -1]:
                stats = sides[side]["trainer"].train_epoch()
                sides[side]["rates"].append(stats.tokens_per_second)
                sides[side]["loss"] = stats.loss
        ours, row = sides["ours"], sides[variant]
        ratios = [rate / ours_rate for rate, ours_rate in zip(row["rates"], ours["rates"], strict=True)]
        ours_rates += ours["rates"]
        table[variant] = {"tokens_per_s": statistics.median(row["rates"]), "rates": row["rates"],
                          "ours_rates": ours["rates"], "speedup": statistics.median(ratios), "loss": row["loss"],
                          "ours_loss": ours["loss"], "warm_up_seconds": row["warm_up_seconds"]}
        log(f"steps {variant}: {table[variant]['speedup']:.2f}x ours (median of {len(ratios)} adjacent pairs: "
            f"{[round(rate) for rate in row['rates']]} against {[round(rate) for rate in ours['rates']]} tok/s), "
            f"loss {row['loss']:.4f} against {ours['loss']:.4f} (warm-up {row['warm_up_seconds']:.1f}s)")
    table["ours"] = {"tokens_per_s": statistics.median(ours_rates), "rates": ours_rates, "speedup": 1.0}
    faster = [variant for variant, row in table.items() if row["speedup"] >= KEEP_SPEEDUP]
    if faster:
        table["ours"]["recall"] = trained_recall(trial, "ours")
        for variant in faster:
            table[variant]["recall"] = trained_recall(trial, variant)
            log(f"steps {variant} over the whole trial: val {table[variant]['recall']['val_exact_recall']:.3f}, "
                f"ours {table['ours']['recall']['val_exact_recall']:.3f}")
    return table


# -------------------------------------------------------------------------------------------- threads


# Two SmolLM2 trainings on 2 threads each ran 18x slower than on 1 each (22 against 404 tok/s): an epoch took 10
# minutes. Both ways train the same first examples (the demo's QA pairs), so their rates compare. A smoke run trains
# fewer: the tiny model's 2-threads-each way ran at 63 tok/s, 20 s of a smoke run's 90 for 64 examples.
THREADS_EXAMPLES = 64
SMOKE_THREADS_EXAMPLES = 16


def _train_on(threads: int, trial, examples: int, results) -> None:
    torch.set_num_threads(threads)
    results.put(timed_epochs(trial, "ours", epochs=1, warm_up=False, examples=examples)["tokens_per_s"])


def two_at_once(trial, examples: int) -> dict[str, list[float]]:
    """tokens/s of two trainings run at once in two processes (`examples` examples each, no warm-up), on
    1 thread each and on 2 each."""
    context = multiprocessing.get_context("spawn")
    found = {}
    for threads in (1, 2):
        results = context.Queue()
        workers = [context.Process(target=_train_on, args=(threads, trial, examples, results)) for _ in range(2)]
        for worker in workers:
            worker.start()
        rates = [results.get() for _ in workers]
        for worker in workers:
            worker.join()
        found[f"{threads}_thread{'s' if threads > 1 else ''}_each"] = rates
    return found


# ---------------------------------------------------------------------------------------------- mfu


def step_mfu(trial, epochs: int) -> dict:
    _, _, trainer = _trainer(trial, "ours")
    speed = _timed(trainer, epochs)
    return {**mfu.measure(trainer, speed["tokens_per_s"], speed["computed_share"]),
            "tokens_per_s": speed["tokens_per_s"]}


def run(bench, log) -> dict:
    from orchestrator.config import load_experiment

    smoke = bench.settings.smoke
    epochs = 1 if smoke else STEP_EPOCHS
    extra = ["training.epochs=1"] if smoke else []
    smollm2 = load_experiment(SMOLLM2, [*bench.overrides, *extra]).trial_config()
    tiny = bench.experiment.trial_config()
    # The variants and the threads on the tiny model in a smoke run, their code paths in seconds; in bf16, as
    # SmolLM2's config trains, so that float32_base differs from ours.
    in_bf16 = tiny.model_copy(update={"training": tiny.training.model_copy(update={"bf16": True})})
    subject = in_bf16 if smoke else smollm2
    timings: dict[str, float] = {}
    results: dict = {}
    for name, trial in (("tiny", tiny), ("smollm2", smollm2)):
        started = time.perf_counter()
        found = step_mfu(trial, epochs)
        timings[f"{name}_mfu"] = time.perf_counter() - started
        peak = found["peak_gflops"]
        log(f"{name} MFU {found['mfu']:.3f}: {found['flops_per_token'] / 1e6:,.1f} MFLOP a computed token at "
            f"{found['tokens_per_s']:,.0f} real tok/s, {found['computed_share']:.3f} of them computed; peak bf16 "
            f"{peak['bf16']:,.0f}, fp32 {peak['fp32']:,.0f} GFLOP/s")
        results.update({f"{name}_mfu": found["mfu"], f"{name}_flops_per_token": found["flops_per_token"],
                        f"steps_{name}_tokens_per_s": found["tokens_per_s"],
                        f"{name}_computed_share": found["computed_share"]})
        if name == "tiny":
            results.update({"peak_bf16_gflops": peak["bf16"], "peak_fp32_gflops": peak["fp32"], "peak_gflops": peak})
        else:
            results["smollm2_peak_gflops"] = peak
    started = time.perf_counter()
    results["steps_variants"] = compare_variants(subject, log)
    timings["variants"] = time.perf_counter() - started
    started = time.perf_counter()
    results["steps_threads"] = two_at_once(subject, SMOKE_THREADS_EXAMPLES if smoke else THREADS_EXAMPLES)
    timings["threads"] = time.perf_counter() - started
    log(f"steps threads, two trainings at once: {results['steps_threads']}")
    results.update({"steps_subject": "tiny" if smoke else "smollm2", "steps_section_seconds": timings,
                    "steps_torch_threads": torch.get_num_threads()})
    return results

"""The SmolLM2 sections of `make bench`: a real pretrained chat model, side by side on one machine.

    python -m bench.run --sections smollm2      # = make bench-real (about an hour on 2 idle cores)

1. speed     configs/smollm2.yaml's trial, one epoch at a time, three ways in ABBA rounds:
             ours now; ours as it was before this model (bench/previous.py: full logits, length-only
             grouping, float32, val and train scored in two generation passes); the seed recipe's
             HF Trainer (batch 2, LoRA r=8 q/v, same bf16 setting) for the same real-token count.
2. sweep     configs/smollm2.yaml's sweep (LoRA and prefix-tuning, ASHA), then `orchestrator promote`'s
             own code on a private registry: the champion's train, val and test exact recall.
3. seed      the seed recipe trained for as many epochs as the champion trial ran, scored by our
             exact-recall scorer on train, val and test; both prompt formats (ChatML, which is how a
             chat model is asked, and the `Question: ...\\nAnswer:` lines it trained on), the better counted.
"""

from __future__ import annotations

import time
from pathlib import Path

from bench.goals import smollm2_goals_met
from bench.library import exact_recall, run_bench_sweep, start_ray
from orchestrator.run_record import ADAPTER, TRIAL_CONFIG

REPO = Path(__file__).resolve().parent.parent
CONFIG = REPO / "configs" / "smollm2.yaml"
REQUIRED_KEYS = (
    "smollm2_champion_test_recall", "smollm2_champion_train_recall", "smollm2_seed_test_recall",
    "smollm2_throughput_ratio_vs_seed", "smollm2_speedup_vs_previous",
)


# -------------------------------------------------------------------------------------------- speed


def _timed_epochs(trial, examples, epochs: int, previous: bool) -> dict:
    """Train `epochs` epochs of `trial` on a fresh adapter; then score val + the per-epoch train questions."""
    from bench.previous import as_before, full_logits_loss, length_key
    from trials.data import load_knowledge
    from trials.evaluate import generation_budget, score_rows
    from trials.model import attach_method, load_for
    from trials.train import Trainer

    loaded = load_for(as_before(trial) if previous else trial)
    tokenizer, device, bf16 = loaded.tokenizer, loaded.device, loaded.bf16
    model = attach_method(loaded.model, trial.method, False)
    trainer = Trainer(model, examples, trial.training, trial.method.learning_rate, tokenizer.pad_token_id, device, bf16)
    if previous:
        trainer.loss_fn, trainer.group_key = full_logits_loss, length_key
    tokens = seconds = 0.0
    for _ in range(epochs):
        stats = trainer.train_epoch()
        tokens, seconds = tokens + stats.tokens, seconds + stats.seconds
    knowledge = load_knowledge(trial.data)
    val = knowledge.split("val")
    train = knowledge.split("train")[: trial.eval.max_train_questions or None]
    budget = generation_budget(tokenizer, knowledge, trial.eval)
    options = {"batch_size": trial.eval.batch_size, "max_new_tokens": budget, "device": device, "bf16": bf16}
    started = time.perf_counter()
    if previous:  # two generation passes, as the trial loop did
        score_rows(model, tokenizer, val, **options)
        score_rows(model, tokenizer, train, **options)
    else:
        score_rows(model, tokenizer, val + train, **options)
    return {"tokens": int(tokens), "seconds": seconds, "tokens_per_s": tokens / seconds,
            "eval_seconds": time.perf_counter() - started, "eval_questions": len(val) + len(train)}


def measure_speed(experiment, epochs: int, rounds: int, work: Path, log) -> dict:
    from bench.seed_recipe import seed_dataset, seed_lines, seed_model, seed_tokenizer, train_seed
    from trials.data import load_knowledge
    from trials.model import load_tokenizer, pick_device, resolve_model, use_bf16
    from trials.trial import build_examples

    trial = experiment.trial_config()
    device = pick_device(trial.training)
    bf16 = use_bf16(trial.training, device)
    base_path = resolve_model(trial.model)
    tokenizer = load_tokenizer(base_path)
    knowledge = load_knowledge(trial.data)
    examples = build_examples(tokenizer, knowledge, trial)
    seed_tok = seed_tokenizer(base_path)
    dataset = seed_dataset(seed_tok, seed_lines(knowledge, trial.data.documents))

    runs: dict[str, list[dict]] = {"ours": [], "previous": [], "seed": []}
    for index in range(rounds):
        order = ("ours", "previous", "seed") if index % 2 == 0 else ("seed", "previous", "ours")
        for side in order:
            if side == "seed":
                target = runs["ours"][-1]["tokens"] if runs["ours"] else sum(e.num_tokens for e in examples) * epochs
                seed = seed_model(trial)
                run = train_seed(seed.model, seed_tok, dataset, work / f"seed-{index}", epochs=1000,
                                 token_target=target, bf16=seed.bf16)
                row = {"tokens": run.tokens, "seconds": run.seconds, "tokens_per_s": run.tokens_per_second,
                       "steps": run.steps}
            else:
                row = _timed_epochs(trial, examples, epochs, previous=side == "previous")
            runs[side].append(row)
            log(f"smollm2 speed round {index}: {side} {row['tokens']} tokens in {row['seconds']:.1f}s = "
                f"{row['tokens_per_s']:,.0f} tok/s" + (f", eval {row['eval_seconds']:.1f}s" if "eval_seconds" in row else ""))

    def rate(side: str) -> float:
        return sum(r["tokens"] for r in runs[side]) / sum(r["seconds"] for r in runs[side])

    def epoch_wall(side: str) -> float:
        return sum(r["seconds"] + r["eval_seconds"] for r in runs[side]) / (len(runs[side]) * epochs)

    return {
        "smollm2_tokens_per_s_ours": rate("ours"),
        "smollm2_tokens_per_s_previous": rate("previous"),
        "smollm2_tokens_per_s_seed": rate("seed"),
        "smollm2_speedup_vs_previous": rate("ours") / rate("previous"),
        "smollm2_epoch_speedup_vs_previous": epoch_wall("previous") / epoch_wall("ours"),
        "smollm2_throughput_ratio_vs_seed": rate("ours") / rate("seed"),
        "smollm2_epoch_seconds": {"ours": epoch_wall("ours"), "previous": epoch_wall("previous")},
        "smollm2_speed_runs": runs,
        "smollm2_speed_setup": {"epochs_per_run": epochs, "rounds": rounds, "bf16": bf16, "device": str(device),
                                "method": trial.method.model_dump(mode="json"),
                                "batch_size": trial.training.batch_size, "examples": len(examples)},
    }


# ------------------------------------------------------------------------------------ sweep, seed


def sweep_and_promote(experiment, source: str, work: Path, log) -> dict:
    from orchestrator.promote import promote
    from trials.config import TrialConfig

    import ray

    ray_init = start_ray()
    try:
        sweep = run_bench_sweep(experiment, "bench-smollm2", source)
    finally:
        ray.shutdown()
    log(f"smollm2 sweep: {sweep['num_trials']} trials, {sweep['trial_epochs']} trial-epochs, best val "
        f"{sweep['best_val']}, wall {sweep['wall_seconds']:.0f}s")
    outcome = promote("bench-smollm2", top_k=3, model_name="bench-smollm2", experiment=experiment.sweep.experiment,
                      log=log)
    best = outcome.candidates[0]
    # The champion's own files, as promote downloaded them, re-scored on every split (train included).
    from orchestrator import tracking

    client = tracking.client()
    target = work / "champion"
    target.mkdir(parents=True, exist_ok=True)
    adapter = Path(client.download_artifacts(best.run_id, ADAPTER, str(target)))
    config = TrialConfig.model_validate_json(
        Path(client.download_artifacts(best.run_id, TRIAL_CONFIG, str(target))).read_text())
    scores = exact_recall(adapter, config, "train", "val", "test")
    champion_trial = next(t for t in sweep["trials"] if t["run_id"] == best.run_id)
    return {
        "smollm2_champion_test_recall": scores["test"],
        "smollm2_champion_train_recall": scores["train"],
        "smollm2_champion_val_recall": scores["val"],
        "smollm2_champion": {"trial": best.trial, "run_id": best.run_id, "method": best.method,
                             "promotion": outcome.reason, "epochs": champion_trial["epochs"],
                             "trial_config": config.model_dump(mode="json"),
                             "candidates": [{"trial": c.trial, "method": c.method, "val": c.val_recall,
                                             "test": c.test_recall} for c in outcome.candidates]},
        "smollm2_sweep": sweep,
        "smollm2_ray_init_seconds": ray_init,
    }


def seed_recall(experiment, epochs: int, work: Path) -> dict:
    """The seed recipe for `epochs` epochs of its own lines on SmolLM2, scored on every split."""
    from bench.seed_recipe import save_for_scoring, train_seed_for

    trained = train_seed_for(experiment.trial_config(), epochs, work)
    run, bf16 = trained.run, trained.bf16
    formats = {}
    for name in ("chatml", "plain"):
        adapter = save_for_scoring(trained, work / f"seed-adapter-{name}", chat_template=name == "chatml")
        formats[name] = exact_recall(adapter, trained.config, "train", "val", "test")
    best = max(formats, key=lambda name: (formats[name]["test"], formats[name]["train"]))
    return {
        "smollm2_seed_test_recall": formats[best]["test"],
        "smollm2_seed_train_recall": formats[best]["train"],
        "smollm2_seed_val_recall": formats[best]["val"],
        "smollm2_seed": {"epochs": epochs, "steps": run.steps, "tokens": run.tokens, "train_seconds": run.seconds,
                         "bf16": bf16, "recall_by_prompt_format": formats, "counted_format": best},
    }


def run(overrides: list[str], settings, work: Path, log) -> dict:
    """All SmolLM2 sections; returns the smollm2_* results."""
    from orchestrator.config import load_experiment

    experiment = load_experiment(CONFIG, [*overrides, *settings.smollm2_overrides])
    timings = {}
    section = time.perf_counter()
    results = measure_speed(experiment, settings.smollm2_speed_epochs, settings.throughput_rounds, work, log)
    timings["speed"] = time.perf_counter() - section
    log(f"smollm2 speed: ours {results['smollm2_tokens_per_s_ours']:,.0f} tok/s, previous "
        f"{results['smollm2_tokens_per_s_previous']:,.0f}, seed {results['smollm2_tokens_per_s_seed']:,.0f}")
    section = time.perf_counter()
    results.update(sweep_and_promote(experiment, str(CONFIG), work, log))
    timings["sweep_and_promote"] = time.perf_counter() - section
    section = time.perf_counter()
    results.update(seed_recall(experiment, results["smollm2_champion"]["epochs"], work))
    timings["seed_recall"] = time.perf_counter() - section
    log(f"smollm2 recall: champion train {results['smollm2_champion_train_recall']:.3f} test "
        f"{results['smollm2_champion_test_recall']:.3f}; seed train {results['smollm2_seed_train_recall']:.3f} "
        f"test {results['smollm2_seed_test_recall']:.3f}")
    results["smollm2_section_seconds"] = timings
    results["smollm2_goals_met"] = smollm2_goals_met(results)
    return results

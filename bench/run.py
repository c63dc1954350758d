"""`make bench`: speed, recall and orchestration overhead against the seed recipe, in one run.

    python -m bench.run                      # every section: tiny (~15 min) + smollm2 (~1 h) on 2 idle cores,
                                             # + incremental (~9 min on 2 busy ones)
    python -m bench.run --sections tiny      # only the tiny-model sections below
    python -m bench.run --sections smollm2   # only the real-model sections (bench/smollm2.py)
    python -m bench.run --sections incremental   # adding facts later: forgetting (bench/incremental.py)
    python -m bench.run --sections general   # general knowledge kept, SmolLM2 (bench/general.py)
    python -m bench.run --sections sentences # sentence answers by ROUGE-L, SmolLM2 (bench/sentences.py)
    python -m bench.run --sections time_to_champion  # sweep to promoted champion, then vs now (bench/time_to_champion.py)
    python -m bench.run --sections steps     # a training step's MFU, and faster steps side by side (bench/steps.py)
    python -m bench.run --sections rungs     # early stopping replayed on SmolLM2's learning curves (bench/rungs.py)
    python -m bench.run --smoke --out /tmp/b   # the same code paths on a tiny slice (tests)

Sections not run keep their figures from the previous latest.json (each section records its own
date, command and machine load under `sections`). A section that raises is recorded there with its
error (type, message, traceback tail) and no figures; latest.json and RESULTS.md are written all the
same, with the other sections' figures, and the exit status is 1.

Writes OUT/latest.json and RESULTS.md (bench/results/ and bench/RESULTS.md by default). Every
MLflow run and Ray result goes to a private temporary directory, never the user's store.

The tiny sections, all measured in this one process, one after another:
1. throughput  our run_trial (configs/demo.yaml's trial) vs the seed recipe's HF Trainer, same base
               model, same data, same real-token count, same torch thread count; training wall only.
2. sweeps      the demo sweep with its early stopping, with the one it had before, and without, over
               3 sampler seeds; then a second sweep of the same data, cold and warm-started
               (bench/early_stopping.py).
3. recall      the ASHA sweep's best trial (val, and test re-scored from its MLflow adapter) vs the
               seed recipe trained for as many epochs as the sweep spent trial-epochs in total.
4. overhead    sweep wall (tuner start to end; ray.init timed apart) vs sum(train+eval)/concurrency.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import platform
import shutil
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from bench.general import REQUIRED_KEYS as GENERAL_REQUIRED_KEYS
from bench.goals import tiny_goals_met
from bench.incremental import REQUIRED_KEYS as INCREMENTAL_REQUIRED_KEYS
from bench.library import exact_recall, run_bench_sweep, score_best, start_ray, timed
from bench.report import DEFAULT_MARKDOWN, DEFAULT_OUT, write_results
from bench.seed_recipe import SEED
from bench.rungs import REQUIRED_KEYS as RUNGS_REQUIRED_KEYS
from bench.sentences import REQUIRED_KEYS as SENTENCES_REQUIRED_KEYS
from bench.smollm2 import REQUIRED_KEYS as SMOLLM2_REQUIRED_KEYS
from bench.steps import MFU_KEYS
from bench.steps import REQUIRED_KEYS as STEPS_REQUIRED_KEYS
from bench.time_to_champion import REQUIRED_KEYS as TIME_TO_CHAMPION_REQUIRED_KEYS

REPO = Path(__file__).resolve().parent.parent
DEFAULT_CONFIG = REPO / "configs" / "demo.yaml"

TINY_REQUIRED_KEYS = (
    "throughput_ratio_vs_seed", "tokens_per_s_ours", "tokens_per_s_seed",
    "recall_best_val", "recall_best_test", "recall_seed_val", "recall_seed_test",
    "overhead_fraction", "per_trial_overhead_s",
    "asha_trial_epochs", "noasha_trial_epochs", "asha_best_val", "noasha_best_val",
    "asha_best_test", "noasha_best_test", "warm_start_epochs_to_best", "cold_start_epochs_to_best",
)
TRACEBACK_LINES = 40  # of a failed section's traceback, kept in latest.json


@dataclass
class Settings:
    overrides: list[str] = field(default_factory=list)  # --set overrides on top of the config, every section
    throughput_epochs: int = 3  # epochs of our trial per throughput round (the seed matches its tokens)
    throughput_rounds: int = 2  # ours, seed, then seed, ours (ABBA): drift in machine load cancels
    smollm2_overrides: list[str] = field(default_factory=list)  # on top of `overrides`, SmolLM2 only
    smollm2_speed_epochs: int = 1  # epochs per SmolLM2 speed run (each side, each round)
    incremental_samples: int = 6  # trials in the incremental sweep (its first 4 are TPE's random start-up)
    sampler_seeds: int = 3  # early stopping and warm start: sweeps per arm, sweep.seed 0, 1, ...
    early_stopping_arms: tuple[str, ...] = ("noasha", "asha_before", "asha", "asha_unlent")  # early_stopping.ARMS
    smoke: bool = False
    # A smoke run's data: the first this many people of each batch of the demo data (6 train, 1-2 val and 1-2 test
    # questions each). 2 rather than 4 halved the SmolLM2 section's generation, most of its smoke time.
    smoke_people: int = 2


FULL = Settings()
SMOKE = Settings(
    overrides=["training.epochs=2", "sweep.num_samples=2", "sweep.asha.grace_period=1",
               "eval.max_train_questions=4"],
    throughput_epochs=1, throughput_rounds=1, incremental_samples=2, smoke=True, sampler_seeds=1,
    early_stopping_arms=("noasha", "asha"),
    # A twentieth of the general probe's protect rows (~12): the replay path, in proportion to a few people's
    # questions. No shrink: each factor asks the probe again, minutes a trial (tests/test_shrink.py runs it).
    smollm2_overrides=["training.epochs=1", "training.batch_size=4", "training.general_replay=0.05",
                       "training.adapter_shrink=[]"],
)


def log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", flush=True)


# ---------------------------------------------------------------------------------------- 1. speed


def _ours_once(config, work: Path, index: int) -> dict:
    from trials.trial import run_trial

    summary = run_trial(config, work / f"ours-{index}", log=lambda _: None)
    return {"tokens": summary["train_tokens"], "seconds": summary["train_seconds"],
            "tokens_per_s": summary["train_tokens"] / summary["train_seconds"]}


def _seed_once(trial, dataset, tokenizer, token_target: int, work: Path, index: int) -> dict:
    from bench.seed_recipe import seed_model, train_seed

    seed = seed_model(trial)  # load excluded from the timing
    run = train_seed(seed.model, tokenizer, dataset, work / f"seed-speed-{index}", epochs=1000,
                     token_target=token_target, bf16=seed.bf16)
    return {"tokens": run.tokens, "padded_tokens": run.padded_tokens, "seconds": run.seconds,
            "steps": run.steps, "tokens_per_s": run.tokens_per_second}


def loop_breakdown(trial, knowledge, epochs: int) -> list[dict]:
    """Where the ratio comes from: our loop (trials/train.py) with the seed's adapter at batch 2 and 16.

    One pass each (after a warm-up epoch), informational: loop vs HF Trainer at the same batch and
    adapter (and base model as the seed loads it), then the batch, then our trial's larger adapter.
    """
    from bench.seed_recipe import seed_base
    from trials.model import attach_method, load_for
    from trials.train import Trainer
    from trials.trial import build_examples

    seed_adapter = SEED.method()
    rows = []
    for batch in (SEED.batch_size, trial.training.batch_size):
        loaded = load_for(seed_base(trial))
        examples = build_examples(loaded.tokenizer, knowledge, trial)
        model = attach_method(loaded.model, seed_adapter, False)
        training = trial.training.model_copy(update={"batch_size": batch, "epochs": epochs + 1})
        trainer = Trainer(model, examples, training, seed_adapter.learning_rate, loaded.tokenizer.pad_token_id,
                          loaded.device, loaded.bf16)
        trainer.train_epoch()  # warm-up
        tokens = seconds = 0.0
        for _ in range(epochs):
            stats = trainer.train_epoch()
            tokens, seconds = tokens + stats.tokens, seconds + stats.seconds
        rows.append({"loop": "ours (trials/train.py)", "adapter": f"seed: {SEED.adapter}", "batch_size": batch,
                     "tokens": int(tokens), "seconds": seconds, "tokens_per_s": tokens / seconds})
        log(f"breakdown: our loop, seed adapter, batch {batch}: {tokens / seconds:,.0f} tok/s")
    return rows


def measure_throughput(experiment, settings: Settings, work: Path) -> dict:
    """Our trial vs the seed recipe: real tokens / training wall seconds, ABBA-ordered rounds."""

    from bench.seed_recipe import seed_dataset, seed_lines, seed_tokenizer
    from trials.data import load_knowledge
    from trials.model import pick_device, resolve_model, use_bf16

    trial = experiment.trial_config()
    # Eval (excluded from the timing anyway) scores only a few train questions between epochs.
    trial = trial.model_copy(update={
        "training": trial.training.model_copy(update={"epochs": settings.throughput_epochs}),
        "eval": trial.eval.model_copy(update={"max_train_questions": 4}),
    })
    device = pick_device(trial.training)
    bf16 = use_bf16(trial.training, device)
    knowledge = load_knowledge(trial.data)
    base_path = resolve_model(trial.model)
    tokenizer = seed_tokenizer(base_path)
    dataset = seed_dataset(tokenizer, seed_lines(knowledge, trial.data.documents))

    ours, seed = [], []
    for index in range(settings.throughput_rounds):
        order = ("ours", "seed") if index % 2 == 0 else ("seed", "ours")
        for side in order:
            if side == "ours":
                ours.append(_ours_once(trial, work, index))
                log(f"throughput round {index}: ours {ours[-1]['tokens']} tokens in {ours[-1]['seconds']:.1f}s "
                    f"= {ours[-1]['tokens_per_s']:,.0f} tok/s")
            else:
                # Same real-token count as our run of this round (ours runs first in round 0).
                target = ours[-1]["tokens"] if ours else sum(len(ids) for ids in dataset["input_ids"]) * settings.throughput_epochs
                seed.append(_seed_once(trial, dataset, tokenizer, target, work, index))
                log(f"throughput round {index}: seed {seed[-1]['tokens']} tokens in {seed[-1]['seconds']:.1f}s "
                    f"= {seed[-1]['tokens_per_s']:,.0f} tok/s")
    breakdown = loop_breakdown(trial, knowledge, settings.throughput_epochs)
    ours_rate = sum(r["tokens"] for r in ours) / sum(r["seconds"] for r in ours)
    seed_rate = sum(r["tokens"] for r in seed) / sum(r["seconds"] for r in seed)
    seed_real = sum(r["tokens"] for r in seed)
    return {
        "tokens_per_s_ours": ours_rate,
        "tokens_per_s_seed": seed_rate,
        "throughput_ratio_vs_seed": ours_rate / seed_rate,
        "throughput_runs": {"ours": ours, "seed": seed},
        "throughput_breakdown": breakdown,
        "throughput_setup": {
            "ours": {"method": trial.method.model_dump(mode="json"), "batch_size": trial.training.batch_size,
                     "epochs_per_round": settings.throughput_epochs, "examples": "QA pairs + document passages, "
                     "length-grouped dynamic padding (trials/train.py)"},
            "seed": {"batch_size": SEED.batch_size, "lora": SEED.adapter, "learning_rate": SEED.learning_rate,
                     "examples": len(dataset), "collator": "DataCollatorForLanguageModeling(mlm=False), pad=eos",
                     "pad_fraction": 1 - seed_real / max(sum(r["padded_tokens"] for r in seed), 1)},
            "device": str(device), "bf16": bf16, "rounds": settings.throughput_rounds,
        },
    }


# --------------------------------------------------------------------------------------- 3. recall


def seed_at_equal_compute(experiment, epochs: int, work: Path) -> dict:
    """The seed recipe trained for `epochs` epochs, then scored by our exact-recall scorer."""
    from bench.seed_recipe import save_for_scoring, train_seed_for

    trained = train_seed_for(experiment.trial_config(), epochs, work)
    run = trained.run
    scores = exact_recall(save_for_scoring(trained, work / "seed-adapter"), trained.config, "val", "test")
    return {"val": scores["val"], "test": scores["test"], "epochs": epochs, "steps": run.steps, "tokens": run.tokens,
            "train_seconds": run.seconds}


# ------------------------------------------------------------------------------------------ report


def machine_info() -> dict:
    import torch

    cpu = platform.processor()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    memory = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                memory = round(int(line.split()[1]) / 2**20, 1)
    except OSError:
        pass
    return {
        "platform": platform.platform(), "cpu": cpu, "cores": os.cpu_count(),
        "usable_cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "memory_gib": memory, "python": platform.python_version(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }


def versions() -> dict:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for package in ("torch", "transformers", "peft", "ray", "mlflow", "optuna", "datasets", "accelerate"):
        try:
            out[package] = version(package)
        except PackageNotFoundError:
            out[package] = None
    return out


def load_average() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


# ------------------------------------------------------------------------------------------ sections


@dataclass
class Bench:
    """What every section gets: the command line, the settings, the experiment and a private work dir."""

    args: argparse.Namespace
    settings: Settings
    experiment: object  # orchestrator.config.ExperimentConfig with `overrides` applied
    overrides: list[str]  # --set overrides (and the smoke data slice) every section's config gets
    work: Path
    threads: int


def sweeps(bench: Bench, timings: dict[str, float]) -> tuple[float, dict, dict[str, dict]]:
    """The demo sweep with early stopping, before it and without it, over sampler seeds, and warm-started
    (bench/early_stopping.py), on a fresh local Ray: (ray.init seconds, figures, seed 0's sweep of each arm)."""
    import ray

    from bench import early_stopping
    from orchestrator.config import load_experiment

    def load(overrides: list[str]):
        return load_experiment(bench.args.config, [*bench.overrides, *overrides])

    def run(experiment, name: str) -> dict:
        return run_bench_sweep(experiment, name, str(bench.args.config))

    try:
        ray_init_seconds = start_ray()
        log(f"ray.init {ray_init_seconds:.1f}s")
        figures, arms = timed(timings, "sweeps", early_stopping.measure, run, load, bench.settings,
                              bench.work, log)
    finally:
        ray.shutdown()  # frees the cores for what follows, also when a sweep raised
    first = {arm: {k: v for k, v in runs[0].items() if k not in ("curves", "reports")} for arm, runs in arms.items()}
    return ray_init_seconds, figures, first


def run_tiny(bench: Bench) -> dict:
    """Sections 1-4 on the embedded tiny model (configs/demo.yaml unless --config)."""
    experiment, settings, work = bench.experiment, bench.settings, bench.work
    timings: dict[str, float] = {}
    speed = timed(timings, "throughput", measure_throughput, experiment, settings, work)
    log(f"throughput: ours {speed['tokens_per_s_ours']:,.0f} tok/s, seed {speed['tokens_per_s_seed']:,.0f} tok/s, "
        f"ratio {speed['throughput_ratio_vs_seed']:.2f}")
    ray_init_seconds, early, first = sweeps(bench, timings)
    asha, flat = first["asha"], first["noasha"]
    best = timed(timings, "score_best", score_best, asha, work)
    seed = timed(timings, "seed_equal_compute", seed_at_equal_compute, experiment, asha["trial_epochs"], work)
    log(f"recall: best val {asha['best_val']} test {best['test']}; seed ({seed['epochs']} epochs) "
        f"val {seed['val']} test {seed['test']}")
    results = {
        "throughput_ratio_vs_seed": speed["throughput_ratio_vs_seed"],
        "tokens_per_s_ours": speed["tokens_per_s_ours"],
        "tokens_per_s_seed": speed["tokens_per_s_seed"],
        "recall_best_val": asha["best_val"],
        "recall_best_test": best["test"],
        "recall_seed_val": seed["val"],
        "recall_seed_test": seed["test"],
        "overhead_fraction": asha["overhead_fraction"],
        "overhead_fraction_cpus_counted": asha["overhead_fraction_cpus_counted"],
        "per_trial_overhead_s": asha["per_trial_overhead_s"],
        # Means over the sampler seeds (bench/early_stopping.py); the other figures are seed 0's sweeps.
        **{key: value for key, value in early.items() if key not in ("replay", "sweeps_by_arm")},
        # Context for the numbers above.
        "recall_best_val_rescored": best["val"],
        "seed_equal_compute": seed,
        "ray_init_seconds": ray_init_seconds,
        "overhead_fraction_with_ray_init": 1 - (asha["compute_seconds"] / asha["concurrency"])
        / (asha["wall_seconds"] + ray_init_seconds),
        "noasha_overhead_fraction": flat["overhead_fraction"],
        "noasha_per_trial_overhead_s": flat["per_trial_overhead_s"],
        "throughput": {k: speed[k] for k in ("throughput_runs", "throughput_setup", "throughput_breakdown")},
        "sweeps": {arm: first[arm] for arm in ("asha", "noasha", "asha_unlent") if arm in first},
        "early_stopping": {"replay": early["replay"], "sweeps_by_arm": early["sweeps_by_arm"]},
        "smoke": settings.smoke,
        "settings": asdict(settings),
        "torch_threads": bench.threads,
        "config": str(bench.args.config),
        "section_seconds": timings,
    }
    results["goals_met"] = tiny_goals_met(results)
    return results


def module_section(name: str, takes_bench: bool = False) -> Callable[[Bench], dict]:
    """The run of the section in bench/<name>.py, imported only when it runs (its heavy imports stay out of the
    others): `run(bench, log)` where `takes_bench`, else `run(overrides, settings, work, log)`."""

    def run(bench: Bench) -> dict:
        module = importlib.import_module(f"bench.{name}")
        if takes_bench:
            return module.run(bench, log)
        return module.run(bench.overrides, bench.settings, bench.work, log)

    return run


def is_rungs_key(key: str) -> bool:
    return key.startswith("rungs_")


def is_steps_key(key: str) -> bool:
    return key.startswith("steps_") or key in MFU_KEYS


def is_time_to_champion_key(key: str) -> bool:
    return key.startswith("time_to_champion_")


def is_sentences_key(key: str) -> bool:
    return key.startswith("sentences_")


def is_general_key(key: str) -> bool:
    return key.startswith("general_")


def is_smollm2_key(key: str) -> bool:
    return key.startswith("smollm2_") and not is_steps_key(key)


def is_incremental_key(key: str) -> bool:
    return key.startswith("incremental_")


def is_tiny_key(key: str) -> bool:
    # The tiny sections came first, with unprefixed keys: every key no other section claims is theirs.
    return not (is_smollm2_key(key) or is_incremental_key(key) or is_general_key(key) or is_sentences_key(key)
                or is_time_to_champion_key(key) or is_steps_key(key) or is_rungs_key(key))


@dataclass(frozen=True)
class Section:
    run: Callable[[Bench], dict]
    required_keys: tuple[str, ...]
    owns: Callable[[str], bool]  # the latest.json keys this section writes: replaced when it runs


# `--sections` chooses among these, run in the order given.
SECTIONS: dict[str, Section] = {
    "tiny": Section(run_tiny, TINY_REQUIRED_KEYS, is_tiny_key),
    # The real model against the seed recipe and our previous code path, on configs/smollm2.yaml.
    "smollm2": Section(module_section("smollm2"), SMOLLM2_REQUIRED_KEYS, is_smollm2_key),
    # Adding facts later, on the tiny model and the demo's two batches.
    "incremental": Section(module_section("incremental", takes_bench=True), INCREMENTAL_REQUIRED_KEYS,
                           is_incremental_key),
    # General knowledge kept, on configs/smollm2.yaml with the full demo data.
    "general": Section(module_section("general"), GENERAL_REQUIRED_KEYS, is_general_key),
    # Sentence answers, configs/sentences.yaml swept and promoted by ROUGE-L.
    "sentences": Section(module_section("sentences"), SENTENCES_REQUIRED_KEYS, is_sentences_key),
    # From `sweep` to a promoted SmolLM2 champion, the previous path and ours.
    "time_to_champion": Section(module_section("time_to_champion"), TIME_TO_CHAMPION_REQUIRED_KEYS,
                                is_time_to_champion_key),
    # A training step's MFU, and the ways to make it faster side by side.
    "steps": Section(module_section("steps", takes_bench=True), STEPS_REQUIRED_KEYS, is_steps_key),
    # Early stopping's set-ups replayed on SmolLM2's own learning curves.
    "rungs": Section(module_section("rungs"), RUNGS_REQUIRED_KEYS, is_rungs_key),
}


class MissingFigures(Exception):
    """A section returned without a figure latest.json must hold."""


def error_record(error: BaseException) -> dict:
    lines = "".join(traceback.format_exception(type(error), error, error.__traceback__)).splitlines()
    return {"type": type(error).__name__, "message": str(error),
            "traceback": "\n".join(lines[-TRACEBACK_LINES:])}


def run_section(name: str, bench: Bench, command: str) -> tuple[dict, dict]:
    """One section's figures (none if it raised) and its record: date, seconds, load, and any error."""
    section = SECTIONS[name]
    started, started_at, load_before = time.perf_counter(), datetime.now(timezone.utc), load_average()
    figures, error = {}, None
    try:
        figures = section.run(bench)
        missing = [key for key in section.required_keys if key not in figures]
        if missing:
            raise MissingFigures(f"section {name} did not produce {', '.join(missing)}")
    except Exception as raised:  # the other sections' figures are still written, and this error with them
        figures, error = {}, error_record(raised)
        log(f"section {name} FAILED: {error['type']}: {error['message']}\n{error['traceback']}")
    record = {
        "date": started_at.isoformat(timespec="seconds"), "seconds": time.perf_counter() - started,
        "load_average": {"start": load_before, "end": load_average()}, "command": command,
        "smoke": bench.settings.smoke, "torch_threads": bench.threads,
        "machine": machine_info(),  # sections of one latest.json may come from different machines
    }
    return figures, record | ({"error": error} if error else {})


# -------------------------------------------------------------------------------------------- main


def parse_args(argv):
    parser = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__.split("\n")[0])
    parser.add_argument("--smoke", action="store_true", help="tiny settings: seconds per section (tests)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="where latest.json goes")
    parser.add_argument("--markdown", type=Path, default=None,
                        help="RESULTS.md path (default bench/RESULTS.md, or OUT/RESULTS.md with --out)")
    parser.add_argument("--config", type=Path, default=DEFAULT_CONFIG)
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads in this process (default: sweep.resources.cpu, what one trial gets)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary MLflow store and Ray results")
    parser.add_argument("--sections", default=",".join(SECTIONS),
                        help=f"comma-separated sections to run, of {', '.join(SECTIONS)} (default: all)")
    args = parser.parse_args(argv)
    args.sections = [name.strip() for name in args.sections.split(",") if name.strip()]
    unknown = sorted(set(args.sections) - set(SECTIONS))
    if unknown or not args.sections:
        parser.error(f"--sections: unknown {', '.join(unknown) or '(none given)'}; choose from {', '.join(SECTIONS)}")
    return args


def merge_previous(results: dict, previous_path: Path, sections: list[str]) -> dict:
    """Results of the sections run now, plus the previous latest.json's figures for the others.

    A section that ran and failed keeps no figures: its previous ones would read as this run's.
    """
    try:
        previous = json.loads(previous_path.read_text())
    except (OSError, ValueError):
        return results
    ran = [SECTIONS[name] for name in sections]
    kept = {key: value for key, value in previous.items()
            if key != "sections" and not any(section.owns(key) for section in ran)}
    merged = {**kept, **results}
    # A latest.json from before sections were recorded held the tiny sections alone, dated at the top.
    earlier = previous.get("sections") or {"tiny": {
        "date": previous.get("date"), "seconds": previous.get("bench_seconds"), "command": previous.get("command"),
        "load_average": previous.get("load_average"), "torch_threads": previous.get("torch_threads"),
        "smoke": previous.get("smoke")}}
    merged["sections"] = {**earlier, **results["sections"]}
    return merged


def quiet_libraries() -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")


def probe_slice(source: Path, target: Path, every: int = 4) -> Path:
    """A smoke run's general probe: every `every`-th row of each split of the probe's files (a quarter of
    data/general: ~86 questions, 30 chat prompts, both splits), so the probe's code paths run in a
    quarter of the generation time. SmolLM2's smoke trials spent most of their time asking the probe."""
    target.mkdir(parents=True, exist_ok=True)
    for name in ("questions.jsonl", "chat.jsonl"):
        if not (source / name).exists():  # chat.jsonl is optional
            continue
        seen: dict[str, int] = {}
        kept = []
        for line in (source / name).read_text(encoding="utf-8").splitlines():
            split = json.loads(line)["split"]
            if seen.get(split, 0) % every == 0:
                kept.append(line)
            seen[split] = seen.get(split, 0) + 1
        (target / name).write_text("".join(f"{line}\n" for line in kept), encoding="utf-8")
    return target


def prepare(args, settings: Settings, work: Path) -> Bench:
    """The experiment every section starts from (the smoke data slice, private Ray storage) and torch threads."""
    import torch

    from orchestrator.config import load_experiment
    from trials.demo_data import first_people

    overrides = list(settings.overrides)
    if settings.smoke:
        given = load_experiment(args.config)
        overrides += first_people(work / "data", given.data.documents, given.data.qa, people=settings.smoke_people)
        if given.eval.general is not None and given.eval.general.is_dir():
            overrides.append(f"eval.general={json.dumps(str(probe_slice(given.eval.general, work / 'probe')))}")
    overrides += [f"sweep.storage_path={json.dumps(str(work / 'ray_results'))}", "sweep.experiment=recall-bench"]
    experiment = load_experiment(args.config, overrides)
    threads = args.threads or max(int(experiment.sweep.resources.cpu), 1)
    torch.set_num_threads(threads)
    return Bench(args, settings, experiment, overrides, work, threads)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    quiet_libraries()
    settings = SMOKE if args.smoke else FULL
    out = args.out.resolve()
    markdown = args.markdown or (DEFAULT_MARKDOWN if out == DEFAULT_OUT.resolve() else out / "RESULTS.md")
    work = Path(tempfile.mkdtemp(prefix="recall-bench-"))
    # A private MLflow store and Ray storage: the user's mlflow.db and ray_results are never touched.
    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{work / 'mlflow.db'}"
    bench_started = time.perf_counter()
    started_at_all = datetime.now(timezone.utc)
    load_before_all = load_average()
    bench = prepare(args, settings, work)
    log(f"work dir {work}; torch threads {bench.threads}; {'smoke' if settings.smoke else 'full'} settings; "
        f"sections {', '.join(args.sections)}")
    command = " ".join([Path(sys.executable).name, "-m", "bench.run", *(argv if argv is not None else sys.argv[1:])])

    results: dict = {"sections": {}}
    for name in args.sections:
        figures, results["sections"][name] = run_section(name, bench, command)
        results.update(figures)
    results.update({
        "smoke": settings.smoke,
        "bench_seconds": time.perf_counter() - bench_started,
        "date": started_at_all.isoformat(timespec="seconds"),
        "load_average": {"start": load_before_all, "end": load_average()},
        "machine": machine_info(),
        "versions": versions(),
        "command": command,
    })
    results = merge_previous(results, out / "latest.json", args.sections)
    write_results(results, out, markdown)
    failed = [name for name in args.sections if "error" in results["sections"][name]]
    log(f"wrote {out / 'latest.json'} and {markdown} in {results['bench_seconds']:.0f}s"
        + (f"; FAILED: {', '.join(failed)}" if failed else ""))
    if args.keep:
        log(f"kept {work}")
    else:
        shutil.rmtree(work, ignore_errors=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

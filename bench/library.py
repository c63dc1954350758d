"""What the bench's sections share: a fresh local Ray, a sweep run and read back from MLflow, an adapter
scored by our exact-recall scorer, a step timed. bench/run.py, the registry of sections, imports the
sections, and they import this."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

from orchestrator.run_record import (ADAPTER, EPOCH_THREADS, EVAL_SECONDS, TRAIN_SECONDS, TRIAL_CONFIG,
                                     VAL_EXACT_RECALL, method_param, param_value, placement_tag)


def start_ray() -> float:
    import ray

    from orchestrator.sweep import RAY_OPTIONS

    started = time.perf_counter()
    ray.init(address="local", **RAY_OPTIONS)  # as a sweep would, but always a fresh local instance
    return time.perf_counter() - started


def cpu_seconds(client, run) -> float:
    """A trial's train + eval seconds with each epoch counted on every CPU it ran on: an epoch on CPUs lent at
    the sweep's end (orchestrator/cpu_loans.py) holds them as well as its own."""
    own = int(run.data.tags.get(placement_tag("torch_threads"), 1))
    history = {name: {m.step: m.value for m in client.get_metric_history(run.info.run_id, name)}
               for name in (TRAIN_SECONDS, EVAL_SECONDS, EPOCH_THREADS)}
    total = before = 0.0
    train = evaluate = 0.0  # cumulative; an epoch without scoring logs no eval_seconds
    for step in sorted(history[TRAIN_SECONDS]):
        train = history[TRAIN_SECONDS][step]
        evaluate = history[EVAL_SECONDS].get(step, evaluate)
        total += (train + evaluate - before) * history[EPOCH_THREADS].get(step, own) / own
        before = train + evaluate
    return total


def run_bench_sweep(experiment, name: str, source: str, start: str | None = None) -> dict:
    """A sweep (incremental from `start` when given) and its trials, wall and overhead, read back from MLflow."""
    import ray

    from orchestrator import tracking
    from orchestrator.scheduling import EarlyStopping
    from orchestrator.sweep import run_sweep

    started = time.perf_counter()
    outcome = run_sweep(experiment, name, source=source, verbose=0, start=start)
    call_seconds = time.perf_counter() - started
    client = tracking.client()
    rows = outcome.leaderboard
    trials = []
    for row in rows:
        run = client.get_run(row["run_id"])
        metrics = run.data.metrics
        history = client.get_metric_history(row["run_id"], VAL_EXACT_RECALL)
        trials.append({
            "trial": row["trial"], "run_id": row["run_id"], "status": row["status"], "method": row["method"],
            **{knob: param_value(run.data.params.get(method_param(knob)))
               for knob in ("r", "alpha", "num_virtual_tokens")},
            "learning_rate": row["learning_rate"], "shape": row["shape"], "epochs": row["epochs"],
            VAL_EXACT_RECALL: row[VAL_EXACT_RECALL],
            "best_epoch_val_exact_recall": max((m.value for m in history), default=None),
            TRAIN_SECONDS: metrics.get(TRAIN_SECONDS, 0.0), EVAL_SECONDS: metrics.get(EVAL_SECONDS, 0.0),
            "run_seconds": row["seconds"],
            "stopped_by": row["stopped_by"] or "",  # tagged by the sweep driver: asha or time_budget
            "cpu_seconds": cpu_seconds(client, run),
        })
    sweep = experiment.sweep
    slots = int(ray.cluster_resources().get("CPU", 1) // sweep.resources.cpu) if sweep.resources.gpu == 0 else None
    concurrency = min(x for x in (sweep.max_concurrent_trials, slots, sweep.num_samples) if x)
    compute = sum(t[TRAIN_SECONDS] + t[EVAL_SECONDS] for t in trials)
    in_runs = sum(t["run_seconds"] for t in trials)
    wall = outcome.wall_seconds
    finished = [t for t in trials if t["status"] != "FAILED" and t[VAL_EXACT_RECALL] is not None]
    stopping = EarlyStopping.of(experiment)
    return {
        "name": name,
        "parent_run_id": outcome.parent_run_id,
        "max_epochs": experiment.training.epochs,
        "asha": {**stopping.asha.model_dump(), "rung_metrics": list(stopping.compared), "rungs": stopping.rungs},
        "num_trials": len(trials),
        "failed_trials": len(trials) - len(finished),
        "concurrency": concurrency,
        "wall_seconds": wall,  # tuner built -> fit -> leaderboard logged (ray.init is timed apart)
        "run_sweep_seconds": call_seconds,  # + MLflow parent run, config checks
        "trial_epochs": sum(t["epochs"] for t in trials),
        "best_val": finished[0][VAL_EXACT_RECALL] if finished else None,
        "best_trial": finished[0] if finished else None,
        "compute_seconds": compute,  # sum over trials of train + eval seconds
        "trial_run_seconds": in_runs,  # sum of MLflow child-run durations (driver's view of each trial)
        "overhead_fraction": 1 - (compute / concurrency) / wall,
        # The same with each epoch counted on every CPU it ran on: a CPU lent to a trial is not an idle slot.
        "overhead_fraction_cpus_counted": 1 - (sum(t["cpu_seconds"] for t in trials) / concurrency) / wall,
        "per_trial_overhead_s": (wall - compute / concurrency) * concurrency / max(len(trials), 1),
        # Where the fixed cost goes: inside trials (imports, model load, checkpoints, reporting) vs
        # between them (idle slots: scheduling, actor start, the tail when one slot has no work left).
        "in_trial_overhead_s": (in_runs - compute) / max(len(trials), 1),
        "idle_slot_seconds": wall * concurrency - in_runs,
        "trials": trials,
    }


def exact_recall(adapter: Path, config, *splits: str) -> dict[str, float]:
    """Our scorer's exact recall of a saved adapter on `splits` of its trial's data, by split."""
    from trials.evaluate import score_adapter

    return {split: metrics["exact_recall"] for split, (metrics, _) in score_adapter(adapter, config, *splits).items()}


def score_best(sweep: dict, work: Path) -> dict:
    """Download the best trial's adapter + trial_config.json from MLflow; score val and test."""
    from orchestrator import tracking
    from trials.config import TrialConfig

    if not sweep["best_trial"]:  # every trial failed
        return {"val": None, "test": None, "run_id": None}
    client = tracking.client()
    run_id = sweep["best_trial"]["run_id"]
    target = work / "best"
    target.mkdir(parents=True, exist_ok=True)
    adapter = Path(client.download_artifacts(run_id, ADAPTER, str(target)))
    config = TrialConfig.model_validate_json(
        Path(client.download_artifacts(run_id, TRIAL_CONFIG, str(target))).read_text()
    )
    scores = exact_recall(adapter, config, "val", "test")
    return {"val": scores["val"], "test": scores["test"], "run_id": run_id}


def closed(section: str, results: dict, timings: dict[str, float], ray_init: float,
           goals_met: Callable[[dict], dict]) -> dict:
    """A section's results with what a section records last: the wall seconds of its parts and of ray.init,
    and its goals, judged on the rest."""
    results[f"{section}_ray_init_seconds"] = ray_init
    results[f"{section}_section_seconds"] = timings
    results[f"{section}_goals_met"] = goals_met(results)
    return results


def timed(timings: dict[str, float], name: str, measure: Callable, *args, **kwargs):
    """`measure(*args, **kwargs)`, its wall seconds recorded as `timings[name]`."""
    started = time.perf_counter()
    result = measure(*args, **kwargs)
    timings[name] = time.perf_counter() - started
    return result

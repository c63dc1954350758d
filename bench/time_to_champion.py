"""The `time_to_champion` section: the wall-clock from `sweep` to a promoted SmolLM2 champion, the path as it
stood when issue 26 was filed (`previous`) beside today's (`ours`), on the full demo data, in one run.

    python -m bench.run --sections time_to_champion     # about 45 minutes on 2 idle cores

previous  configs/smollm2.yaml with the protection in training it shipped then (bench.time_to_champion.PREVIOUS:
          general_replay 0.5, kl_to_base 1, adapter_shrink 0.9 .. 0.6, no router, general_floor 0.85), answers
          generated every epoch as they were then (eval.recall_every=1), its early stopping then (rungs at
          epochs 2 and 6 by val answer loss, then the objective; no patience), every trial loading its base
          model (RECALL_REUSE_BASE=0). What it does not undo: the base held in bf16 (trials/model.load_base_model),
          faster steps for both paths.
ours      configs/smollm2.yaml as shipped: the adapter router alone, fitted once per sweep (its fit cached,
          trials/router.routed_and_measured; the cache is emptied first, so this sweep pays for one fit), the base
          model kept from trial to trial in each Ray worker (trials/model.keep_base).

Each: a fresh local Ray, the sweep (TTC_SAMPLES trials, 2 at a time, same sampler seed: the config's own trial
first), then `promote`'s own code; the time is ray.init + sweep + promotion. The probe's and the private
questions' base answers come from the same cache for both.

Also the fixed cost of one trial's setup (`fixed_cost`): the same SmolLM2 trial set up from nothing (reuse off,
no cached router), and again after a finished trial in the same process (the base kept, the router cached).
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

from bench.goals import time_to_champion_goals_met
from bench.library import closed, run_bench_sweep, start_ray

REPO = Path(__file__).resolve().parent.parent
CONFIG = REPO / "configs" / "smollm2.yaml"
TTC_SAMPLES = 4
# configs/smollm2.yaml's protection at issue 26's filing (d5fc712), on top of today's file.
PREVIOUS = ["training.adapter_router=false", "training.general_replay=0.5", "training.kl_to_base=1.0",
            "training.adapter_shrink=[0.9,0.8,0.7,0.6]", "sweep.general_floor=0.85", "eval.recall_every=1",
            # its early stopping, whatever configs/smollm2.yaml sets today
            "sweep.asha.grace_period=2", "sweep.asha.reduction_factor=3", "sweep.asha.compare_by=loss_then_objective",
            "sweep.asha.compare_at_least=2", "training.patience=null"]
REUSE = "RECALL_REUSE_BASE"
REQUIRED_KEYS = (
    "time_to_champion_previous_s", "time_to_champion_ours_s", "time_to_champion_speedup",
    "time_to_champion_ours_test_recall", "time_to_champion_previous_test_recall", "time_to_champion_fixed_cost_s",
)


def _clear_router_cache() -> None:
    from trials.model_cache import cache_root

    shutil.rmtree(cache_root() / "routers", ignore_errors=True)


def _to_champion(experiment, name: str, reuse: bool, log) -> dict:
    """ray.init, the sweep and its promotion, timed: the sweep's figures and the champion's."""
    import ray

    from orchestrator import tracking
    from orchestrator.promote import promote

    os.environ[REUSE] = "1" if reuse else "0"  # Ray's workers start from this process's environment
    started = time.perf_counter()
    ray_init = start_ray()
    try:
        sweep = run_bench_sweep(experiment, name, str(CONFIG))
    finally:
        ray.shutdown()
    outcome = promote(name, top_k=3, model_name=f"bench-{name}", experiment=experiment.sweep.experiment, log=log)
    seconds = time.perf_counter() - started
    champion = outcome.candidates[0]
    log(f"{name}: {sweep['num_trials']} trials, {sweep['trial_epochs']} trial-epochs, champion test "
        f"{champion.test_recall:.3f} after {seconds:.0f}s ({outcome.reason})")
    trials = sweep["trials"]
    client = tracking.client()
    reused = sum(client.get_run(t["run_id"]).data.metrics.get("base_reused", 0.0) for t in trials)
    return {"seconds": seconds, "ray_init_seconds": ray_init, "test_recall": champion.test_recall,
            "trials_reusing_base": reused,
            "champion": {"trial": champion.trial, "promoted": outcome.promoted, "reason": outcome.reason,
                         "val": champion.val_recall, "general_retention": champion.general_retention},
            "train_seconds": sum(t["train_seconds"] for t in trials), "eval_seconds": sum(t["eval_seconds"] for t in trials),
            "sweep": sweep}


def fixed_cost(experiment, log) -> dict:
    """Seconds of one SmolLM2 trial's setup (base model, probe answers, router, adapter, examples): from nothing,
    and as a sweep's next trial in the same worker."""
    from trials import model
    from trials.trial import TrialRun

    def setup_seconds() -> float:
        run = TrialRun(experiment.trial_config(), Path(os.devnull), lambda _: None, None)
        started = time.perf_counter()
        run.setup()
        seconds = time.perf_counter() - started
        run.release()
        return seconds

    os.environ[REUSE] = "0"
    _clear_router_cache()
    model._kept.clear()
    first = setup_seconds()
    os.environ[REUSE] = "1"
    setup_seconds()  # a finished trial: keeps its base, has cached the router
    reused = setup_seconds()
    model._kept.clear()
    log(f"time_to_champion: a trial's setup {first:.1f}s from nothing, {reused:.1f}s as a sweep's next trial")
    return {"previous": first, "ours": reused}


def run(overrides: list[str], settings, work: Path, log) -> dict:
    """The fixed cost, then both paths to a champion; returns the time_to_champion_* results."""
    from orchestrator.config import load_experiment

    samples = [f"sweep.num_samples={min(TTC_SAMPLES, load_experiment(CONFIG).sweep.num_samples)}"]
    ours = load_experiment(CONFIG, [*overrides, *samples, *settings.smollm2_overrides])
    previous = load_experiment(CONFIG, [*overrides, *samples, *settings.smollm2_overrides, *PREVIOUS])
    environment = dict(os.environ)
    timings = {}
    try:
        started = time.perf_counter()
        fixed = fixed_cost(ours, log)
        timings["fixed_cost"] = time.perf_counter() - started
        paths = {"previous": _to_champion(previous, "ttc-previous", False, log)}
        _clear_router_cache()
        paths["ours"] = _to_champion(ours, "ttc-ours", True, log)
    finally:  # RECALL_REUSE_BASE as it was
        os.environ.clear()
        os.environ.update(environment)
    timings.update({name: path["seconds"] for name, path in paths.items()})
    results = {
        "time_to_champion_previous_s": paths["previous"]["seconds"],
        "time_to_champion_ours_s": paths["ours"]["seconds"],
        "time_to_champion_speedup": paths["previous"]["seconds"] / paths["ours"]["seconds"],
        "time_to_champion_previous_test_recall": paths["previous"]["test_recall"],
        "time_to_champion_ours_test_recall": paths["ours"]["test_recall"],
        "time_to_champion_fixed_cost_s": fixed,
        "time_to_champion_paths": paths,
    }
    return closed("time_to_champion", results, timings, paths["ours"]["ray_init_seconds"], time_to_champion_goals_met)

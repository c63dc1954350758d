"""Early stopping and warm start, measured on real sweeps over several sampler seeds.

For each sampler seed s (sweep.seed), the same demo sweep (same num_samples) several ways:
- noasha       no early stopping: every trial runs every epoch;
- asha_before  the early stopping the sweep had before: Ray's ASHA on the exact-recall objective at
               epochs 2, 6 and 18 (grace 2, reduction factor 3), first arrivals passing uncompared
               (`compare_at_least: 1`; tests/test_scheduling.py checks this equals Ray's
               AsyncHyperBandScheduler decision for decision);
- asha         the default (configs/demo.yaml's sweep.asha);
- asha_unlent  the default with `sweep.resources.lend_freed_cpus` off: the CPUs finished trials free are
               not lent to the trials still running (orchestrator/cpu_loans.py). Run right after asha, its
               overhead is the side-by-side figure for the loans.
Then a second sweep of the same data, sampler seed s + 100, twice: cold, and warm-started
(`sweep.warm_start`) from seed s's `asha` sweep.

Single sweeps are noise here (TPE's choices and which trial reaches a rung first both vary), so
the figures are means over the seeds, with every seed's figures kept. "Trial-epochs to best": the
trial-epochs the sweep had spent (in the order its reports reached the driver) when a val recall
as high as its best was first reported. The noasha sweeps' learning curves are also replayed
through other set-ups (bench/scheduler_replay.py), all on the same trials.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable
from pathlib import Path

from bench.library import score_best
from bench.scheduler_replay import compare, epochs_to_reach
from orchestrator.run_record import OBJECTIVE, VAL_ANSWER_LOSS, VAL_EXACT_RECALL

ARMS = {
    "noasha": ["sweep.asha.enabled=false"],
    "asha_before": ["sweep.asha.compare_by=objective", "sweep.asha.compare_at_least=1",
                    "sweep.asha.grace_period=2", "sweep.asha.reduction_factor=3"],
    "asha": [],
    "asha_unlent": ["sweep.resources.lend_freed_cpus=false"],
}
SECOND_SWEEP_SEED = 100  # added to a seed for the second sweep of the same data
CURVE_METRICS = (VAL_EXACT_RECALL, VAL_ANSWER_LOSS, OBJECTIVE)


def learning_curves(run_ids: list[str]) -> tuple[list[dict[str, list[float]]], list[tuple[int, float]]]:
    """The trials' metrics by epoch, in the order the trials started, and (trial-epochs spent, val
    recall) in the order the driver logged the reports."""
    from orchestrator import tracking

    client = tracking.client()
    runs = sorted((client.get_run(run_id) for run_id in run_ids), key=lambda run: run.info.start_time)
    curves, reports = [], []
    for run in runs:
        curve = {}
        for key in CURVE_METRICS:
            history = client.get_metric_history(run.info.run_id, key)
            curve[key] = [m.value for m in sorted(history, key=lambda m: m.step)]
            if key == VAL_EXACT_RECALL:
                reports += [(m.timestamp, m.step, m.value) for m in history]
        curves.append(curve)
    reports.sort()
    return curves, [(spent, value) for spent, (_, _, value) in enumerate(reports, start=1)]


def measured_sweep(run: Callable, load: Callable, overrides: list[str], name: str, work: Path) -> dict:
    """A bench sweep (bench.library.run_bench_sweep), with its learning curves, trial-epochs to best and the
    best trial's test recall."""

    sweep = run(load(overrides), name)
    curves, order = learning_curves([t["run_id"] for t in sweep["trials"] if t["status"] != "FAILED"])
    best = max((value for _, value in order), default=None)
    sweep.update({
        "curves": curves,
        "best_reported_val": best,
        "epochs_to_best": epochs_to_reach(order, best) if best is not None else None,
        "best_test": score_best(sweep, work / name)["test"],
        "reports": order,
    })
    return sweep


def mean(values: list) -> float | None:
    values = [v for v in values if v is not None]
    return statistics.fmean(values) if values else None


def measure(run: Callable, load: Callable, settings, work: Path,
            log: Callable[[str], None]) -> tuple[dict, dict[str, list[dict]]]:
    """`run(experiment, name)` runs a bench sweep; `load(overrides)` the bench's experiment with overrides;
    `settings` (bench.run.Settings) says how many seeds and which arms. Returns (figures, sweeps by arm)."""
    arms: dict[str, list[dict]] = {arm: [] for arm in settings.early_stopping_arms}
    second: dict[str, list[dict]] = {"cold": [], "warm": []}
    for seed in range(settings.sampler_seeds):
        for arm in arms:
            overrides = ARMS[arm]
            sweep = measured_sweep(run, load, [f"sweep.seed={seed}", *overrides], f"bench-{arm}-s{seed}", work)
            arms[arm].append(sweep)
            log(f"seed {seed} {arm}: {sweep['trial_epochs']} trial-epochs, best val {sweep['best_val']}, "
                f"test {sweep['best_test']}, epochs to best {sweep['epochs_to_best']}, "
                f"wall {sweep['wall_seconds']:.0f}s")
        again = [f"sweep.seed={seed + SECOND_SWEEP_SEED}"]
        for kind, extra in (("cold", []), ("warm", [f"sweep.warm_start=bench-asha-s{seed}"])):
            sweep = measured_sweep(run, load, [*again, *extra], f"bench-{kind}-s{seed}", work)
            second[kind].append(sweep)
            log(f"seed {seed} second sweep, {kind}: best val {sweep['best_val']}, "
                f"epochs to best {sweep['epochs_to_best']}")
    results: dict = {}
    for arm, sweeps in arms.items():
        results.update({
            f"{arm}_trial_epochs": mean([s["trial_epochs"] for s in sweeps]),
            f"{arm}_best_val": mean([s["best_val"] for s in sweeps]),
            f"{arm}_best_test": mean([s["best_test"] for s in sweeps]),
            f"{arm}_epochs_to_best": mean([s["epochs_to_best"] for s in sweeps]),
            f"{arm}_wall_seconds": mean([s["wall_seconds"] for s in sweeps]),
            f"{arm}_mean_overhead_fraction": mean([s["overhead_fraction"] for s in sweeps]),
            f"{arm}_mean_overhead_fraction_cpus_counted": mean([s["overhead_fraction_cpus_counted"] for s in sweeps]),
        })
    # At equal trial-epochs: the best val recall the no-early-stopping sweep had reported by the time it
    # had spent what the default spent in all.
    results["noasha_best_val_at_asha_epochs"] = mean([
        max((value for spent, value in flat["reports"] if spent <= early["trial_epochs"]), default=None)
        for flat, early in zip(arms["noasha"], arms["asha"])])
    # Warm against cold on a second sweep: trial-epochs until each reached the lower of the two bests
    # (a level both reached), and each one's best.
    warm_epochs, cold_epochs = [], []
    for warm, cold in zip(second["warm"], second["cold"]):
        target = min(warm["best_reported_val"] or 0.0, cold["best_reported_val"] or 0.0)
        warm_epochs.append(epochs_to_reach(warm["reports"], target))
        cold_epochs.append(epochs_to_reach(cold["reports"], target))
    results.update({
        "warm_start_epochs_to_best": mean(warm_epochs),
        "cold_start_epochs_to_best": mean(cold_epochs),
        "warm_start_best_val": mean([s["best_val"] for s in second["warm"]]),
        "cold_start_best_val": mean([s["best_val"] for s in second["cold"]]),
        "warm_start_best_test": mean([s["best_test"] for s in second["warm"]]),
        "cold_start_best_test": mean([s["best_test"] for s in second["cold"]]),
        "warm_start_per_seed": warm_epochs,
        "cold_start_per_seed": cold_epochs,
    })
    concurrency = arms["noasha"][0]["concurrency"]
    results["replay"] = compare([s["curves"] for s in arms["noasha"]], concurrency)
    results["sweeps_by_arm"] = {arm: [_brief(s) for s in sweeps] for arm, sweeps in {**arms, **second}.items()}
    return results, arms


def _brief(sweep: dict) -> dict:
    """What RESULTS.md shows of each sweep (the learning curves stay in the replay's input)."""
    keep = ("name", "trial_epochs", "best_val", "best_test", "epochs_to_best", "wall_seconds", "overhead_fraction",
            "overhead_fraction_cpus_counted", "num_trials", "failed_trials")
    return {**{k: sweep[k] for k in keep}, "epochs_per_trial": [t["epochs"] for t in sweep["trials"]],
            "asha": sweep["asha"]}

"""The `rungs` section: early stopping measured on SmolLM2's own learning curves (issue 26).

    python -m bench.run --sections rungs     # about 30 minutes on 2 idle cores

configs/smollm2.yaml's sweep (RUNGS_SAMPLES trials, 2 at a time) without early stopping and with every trial scored
every epoch (eval.recall_every=1), so each trial's curve holds val exact recall, val answer loss and the objective at
every epoch. bench/scheduler_replay.py then runs these curves through every early-stopping set-up it knows
(compare_by objective, val_answer_loss or auto; grace 1 or 2; reduction factor 2, 3 or 4; a first arrival waiting
for company or not), the trials' order held fixed: the trial-epochs each set-up spends and the val recall it keeps.
`rungs_shipped` is configs/smollm2.yaml's own set-up among them; `rungs_cheapest_keeping_best` the set-up that keeps
the sweep's best val recall for the fewest trial-epochs.

    python -m bench.rungs --replay   # seconds: today's set-ups on the curves bench/results keeps, no new sweep

The replay alone, after the scheduler or the set-ups change: the recorded curves (`rungs_trials`) through
today's scheduler code, the run that recorded them named in `rungs_replayed`.
"""

from __future__ import annotations

import argparse
import json
import subprocess
from datetime import datetime, timezone
from pathlib import Path

from bench.library import run_bench_sweep, start_ray
from bench.scheduler_replay import compare

REPO = Path(__file__).resolve().parent.parent
CONFIG = REPO / "configs" / "smollm2.yaml"
RUNGS_SAMPLES = 6
FLAT = ["sweep.asha.enabled=false", "eval.recall_every=1"]
REQUIRED_KEYS = ("rungs_replay", "rungs_shipped", "rungs_cheapest_keeping_best", "rungs_full_trial_epochs")


def set_up_name(asha) -> str:
    """scheduler_replay.SET_UPS's name for a sweep.asha config (its compare_by, grace, reduction factor, and whether
    a first arrival waits): the replay has a set-up for every compare_by the config accepts."""
    wait = " wait" if asha.compare_at_least > 1 else ""
    return f"{asha.compare_by} g{asha.grace_period} rf{asha.reduction_factor:g}{wait}"


def summarise(rows: list[dict], shipped: str) -> dict:
    """The replay's rows (scheduler_replay.compare on one sweep's curves), the shipped set-up's, and the cheapest
    set-up that keeps the best val recall the full sweep reached (ties: the earlier in SET_UPS)."""
    keeping = [row for row in rows if row["best_val_loss_vs_full"] <= 1e-9]
    cheapest = min(keeping, key=lambda row: row["trial_epochs"]) if keeping else None
    return {"rungs_replay": rows, "rungs_shipped": next(row for row in rows if row["set_up"] == shipped),
            "rungs_cheapest_keeping_best": cheapest}


def run(overrides: list[str], settings, work: Path, log) -> dict:
    import ray

    from bench.early_stopping import learning_curves
    from orchestrator import tracking
    from orchestrator.config import load_experiment

    shipped = load_experiment(CONFIG, overrides)
    samples = [f"sweep.num_samples={min(RUNGS_SAMPLES, shipped.sweep.num_samples)}"]
    experiment = load_experiment(CONFIG, [*overrides, *samples, *settings.smollm2_overrides, *FLAT])
    start_ray()
    try:
        sweep = run_bench_sweep(experiment, "rungs-flat", str(CONFIG))
    finally:
        ray.shutdown()
    client = tracking.client()
    trials = sorted((t for t in sweep["trials"] if t["status"] != "FAILED"),
                    key=lambda t: client.get_run(t["run_id"]).info.start_time)  # learning_curves' order
    curves, _ = learning_curves([t["run_id"] for t in trials])
    results = summarise(compare([curves], sweep["concurrency"]), set_up_name(shipped.sweep.asha))
    for name in ("rungs_shipped", "rungs_cheapest_keeping_best"):
        row = results[name]
        if row:
            log(f"{name}: {row['set_up']}: {row['trial_epochs']:.0f} trial-epochs ({row['saving']:.2f}x fewer), "
                f"best val {row['best_val']:.3f}")
    return {**results, "rungs_full_trial_epochs": sweep["trial_epochs"],
            "rungs_sweep": {k: v for k, v in sweep.items() if k != "trials"},
            "rungs_trials": [{**trial, "curve": curve} for trial, curve in zip(trials, curves)]}


def replay_recorded(results: dict) -> dict:
    """The `rungs_*` figures of `results` (a bench/results/latest.json with the rungs section) replayed anew: its
    recorded curves through today's set-ups, configs/smollm2.yaml's as shipped today."""
    from orchestrator.config import load_experiment

    curves = [trial["curve"] for trial in results["rungs_trials"]]
    shipped = set_up_name(load_experiment(CONFIG, []).sweep.asha)
    return summarise(compare([curves], results["rungs_sweep"]["concurrency"]), shipped)


def main(argv: list[str] | None = None) -> int:
    from bench.report import DEFAULT_MARKDOWN, DEFAULT_OUT, write_results

    parser = argparse.ArgumentParser(prog="python -m bench.rungs", description=__doc__.split("\n")[0])
    parser.add_argument("--replay", action="store_true", required=True,
                        help="replay the recorded curves of bench/results/latest.json through today's set-ups")
    parser.parse_args(argv)
    path = DEFAULT_OUT / "latest.json"
    results = json.loads(path.read_text(encoding="utf-8"))
    if "rungs_trials" not in results:
        raise SystemExit(f"{path}: no rungs section recorded (run python -m bench.run --sections rungs)")
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True).stdout
    results.update(replay_recorded(results))
    results["rungs_replayed"] = {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                                 "commit": commit.strip(), "curves_from": results["sections"]["rungs"]["date"]}
    write_results(results, DEFAULT_OUT, DEFAULT_MARKDOWN)
    shipped = results["rungs_shipped"]
    print(f"replayed {len(results['rungs_replay'])} set-ups; shipped {shipped['set_up']}: "
          f"{shipped['trial_epochs']:.0f} trial-epochs, best val {shipped['best_val']:.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

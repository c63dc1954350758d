"""The incremental section of `make bench`: what adding facts later costs the facts already known.

    python -m bench.run --sections incremental   # embedded tiny model, configs/demo.yaml (~9 min, 2 busy cores)

1. parent    configs/demo.yaml's own trial on batch 1 (its data: data/demo), saved: the adapter a
             champion of batch 1 would be.
2. ours      the incremental sweep from that adapter directory on batch 2 (data/demo-batch2: 40 new
             people, documents + QA), data.retain = batch 1's qa file: what
             `orchestrator sweep configs/demo.yaml --from <adapter>` runs (the space narrowed to the
             parent's shape, learning rate and replay_fraction 0..1 searched, ASHA as configured), with
             `incremental_samples` trials. The best trial is the sweep's own: highest final `objective`
             (new-fact val recall subject to the retention floor, orchestrator/trainable.py).
3. seed way  the seed recipe's way of adding facts: the same parent adapter trained further on batch 2
             alone (replay_fraction 0), nothing old mixed in. Only that is the seed's; the loop and
             the settings are the demo trial's (learning rate included), for as many epochs as the
             best trial ran. Once more at the seed recipe's own learning rate, reported apart.

Equal trial-epochs means: the seed-way adapter trains as many epochs over batch 2 as the adapter it is
compared with (the best trial). The sweep's total trial-epochs is recorded beside it: the search cost
more, but giving one no-replay run that total would only train it longer on the new facts alone.

Every adapter is scored the same way, by trials.evaluate.score_adapter: exact recall on batch 2's test
questions (new facts) and on batch 1's test questions (retention). Neither split is trained on, and
neither picks the best trial (the sweep ranks on the val splits).
"""

from __future__ import annotations

import json
from pathlib import Path

from bench.library import run_bench_sweep, start_ray, timed
from orchestrator.run_record import (ADAPTER, EXACT_RECALL, METRICS, OBJECTIVE, PARENT_RETENTION_EXACT_RECALL,
                                     RETENTION_EXACT_RECALL, TRAIN_EXACT_RECALL, TRIAL_CONFIG, VAL_EXACT_RECALL,
                                     param_value, training_param)

REPO = Path(__file__).resolve().parent.parent
BATCH2 = REPO / "data" / "demo-batch2"
SWEEP_NAME = "bench-incremental"
REQUIRED_KEYS = (
    "incremental_retention_ours", "incremental_retention_seed_way",
    "incremental_new_recall_ours", "incremental_new_recall_seed_way",
)


def shown(path: Path) -> str:
    """A path as RESULTS.md names it: relative to the repository when inside it."""
    path = Path(path).resolve()
    return str(path.relative_to(REPO) if path.is_relative_to(REPO) else path)


def quiet(_: str) -> None:
    """run_trial's per-epoch lines: the bench logs one line per step instead."""


def recall_on_both(adapter: Path, config) -> dict:
    """Exact recall of a saved adapter on batch 2's test questions (new) and batch 1's (retained)."""
    from trials.evaluate import score_adapter

    scores = score_adapter(adapter, config, "test", retained=("test",))
    (new, new_records), (old, old_records) = scores["test"], scores["retained_test"]
    return {"new_recall": new[EXACT_RECALL], "retention": old[EXACT_RECALL],
            "questions": {"new": len(new_records), "old": len(old_records)}}


def batch2_overrides(settings, work: Path) -> list[str]:
    """--set overrides pointing a config at batch 2; in smoke runs its first people only, as for batch 1."""
    from trials.demo_data import first_people

    documents = sorted((BATCH2 / "documents").glob("*.txt"))
    if settings.smoke:
        return first_people(work / "batch2-slice", documents, BATCH2 / "qa.jsonl", people=settings.smoke_people)
    return [f"data.documents={json.dumps([str(path) for path in documents])}",
            f"data.qa={json.dumps(str(BATCH2 / 'qa.jsonl'))}"]


def train_parent(experiment, work: Path) -> tuple[Path, dict]:
    """Batch 1: the config's own trial on its own data; its adapter is what the others continue."""
    from trials.trial import run_trial

    summary = run_trial(experiment.trial_config(), work / "incremental-parent", log=quiet)
    return work / "incremental-parent" / "adapter", summary


def trial_rows(sweep: dict) -> list[dict]:
    """The sweep's trials with what an incremental sweep adds: objective, replay, retention on old val."""
    from orchestrator import tracking

    client = tracking.client()
    rows = []
    for trial in sweep["trials"]:
        run = client.get_run(trial["run_id"])
        metrics = run.data.metrics
        rows.append({**trial, "replay_fraction": param_value(run.data.params.get(training_param("replay_fraction"))),
                     OBJECTIVE: metrics.get(OBJECTIVE),
                     "retention_val_exact_recall": metrics.get(RETENTION_EXACT_RECALL),
                     "parent_retention_val_exact_recall": metrics.get(PARENT_RETENTION_EXACT_RECALL)})
    return rows


def best_by_objective(rows: list[dict]) -> dict:
    scored = [row for row in rows if row["status"] != "FAILED" and row[OBJECTIVE] is not None]
    if not scored:
        raise RuntimeError(f"sweep {SWEEP_NAME}: no trial reported an objective")
    return max(scored, key=lambda row: (row[OBJECTIVE], row["trial"]))


def score_best(best: dict, work: Path) -> dict:
    """The best trial's adapter and config from its MLflow run, scored on both test splits."""
    from orchestrator import tracking
    from trials.config import TrialConfig

    client = tracking.client()
    target = work / "incremental-best"
    target.mkdir(parents=True, exist_ok=True)
    adapter = Path(client.download_artifacts(best["run_id"], ADAPTER, str(target)))
    config = TrialConfig.model_validate_json(
        Path(client.download_artifacts(best["run_id"], TRIAL_CONFIG, str(target))).read_text())
    summary = json.loads(Path(client.download_artifacts(best["run_id"], METRICS, str(target))).read_text())
    return {**recall_on_both(adapter, config), "train_tokens": summary["train_tokens"]}


def continue_on_new_facts(base: list[str], config_path: Path, parent: Path, epochs: int, work: Path,
                          name: str, learning_rate: float | None = None) -> dict:
    """The seed recipe's way: the parent adapter trained further on batch 2 alone (no replay), then scored.

    data.retain stays set, for the per-epoch retention curve only: with replay_fraction 0 none of its rows
    are trained on."""
    from orchestrator.config import load_experiment
    from trials.trial import run_trial

    overrides = [*base, f"init_adapter={json.dumps(str(parent))}", "training.replay_fraction=0",
                 f"training.epochs={epochs}"]
    if learning_rate is not None:
        overrides.append(f"method.learning_rate={learning_rate}")
    config = load_experiment(config_path, overrides).trial_config()
    summary = run_trial(config, work / name, log=quiet)
    return {**recall_on_both(work / name / "adapter", config), "epochs": summary["epochs"],
            "learning_rate": config.method.learning_rate, "train_tokens": summary["train_tokens"],
            "train_seconds": summary["train_seconds"],
            "retention_val_by_epoch": [epoch.get(RETENTION_EXACT_RECALL) for epoch in summary["history"]],
            "new_val_by_epoch": [epoch[VAL_EXACT_RECALL] for epoch in summary["history"]]}


def run(bench, log) -> dict:
    """The section: parent, our incremental sweep, the seed way; returns the incremental_* results."""
    import ray

    from bench.seed_recipe import SEED
    from orchestrator.config import load_experiment

    settings, work, config_path = bench.settings, bench.work, bench.args.config
    timings: dict[str, float] = {}
    parent, parent_summary = timed(timings, "parent", train_parent, bench.experiment, work)
    # Batch 2 with batch 1's qa file (the smoke slice in smoke runs) as the old facts to keep.
    base = [*bench.overrides, *batch2_overrides(settings, work),
            f"data.retain={json.dumps(str(bench.experiment.data.qa))}"]
    batch2 = load_experiment(config_path, [*base, f"sweep.num_samples={settings.incremental_samples}"])
    before = timed(timings, "score_parent", recall_on_both, parent, batch2.trial_config())
    log(f"incremental parent ({parent_summary['epochs']} epochs on batch 1): batch-1 test {before['retention']:.3f}, "
        f"batch-2 test {before['new_recall']:.3f}")

    ray_init_seconds = start_ray()
    try:
        sweep = timed(timings, "sweep", run_bench_sweep, batch2, SWEEP_NAME, str(config_path), start=str(parent))
    finally:
        ray.shutdown()  # frees the cores for the seed-way runs
    sweep["trials"] = trial_rows(sweep)
    best = best_by_objective(sweep["trials"])
    ours = timed(timings, "score_best", score_best, best, work)
    log(f"incremental ours: {sweep['num_trials']} trials, {sweep['trial_epochs']} trial-epochs; best {best['trial']} "
        f"(replay {best['replay_fraction']:.2f}, lr {best['learning_rate']:.2e}, {best['epochs']} epochs): "
        f"new {ours['new_recall']:.3f}, retention {ours['retention']:.3f}")

    seed_way = timed(timings, "seed_way", continue_on_new_facts, base, config_path, parent, best["epochs"], work,
                     "incremental-seed-way")
    log(f"incremental seed way ({seed_way['epochs']} epochs, lr {seed_way['learning_rate']:.0e}, no replay): "
        f"new {seed_way['new_recall']:.3f}, retention {seed_way['retention']:.3f}")
    seed_lr = timed(timings, "seed_way_seed_lr", continue_on_new_facts, base, config_path, parent, best["epochs"],
                    work, "incremental-seed-lr", SEED.learning_rate)
    log(f"incremental seed way at the seed's lr {SEED.learning_rate:.0e}: new {seed_lr['new_recall']:.3f}, "
        f"retention {seed_lr['retention']:.3f}")

    floor = batch2.sweep.retention_floor
    return {
        "incremental_retention_ours": ours["retention"],
        "incremental_retention_seed_way": seed_way["retention"],
        "incremental_new_recall_ours": ours["new_recall"],
        "incremental_new_recall_seed_way": seed_way["new_recall"],
        "incremental_parent_recall": before["retention"],
        "incremental_parent_new_recall": before["new_recall"],
        "incremental_test_questions": before["questions"],
        "incremental_trial_epochs": best["epochs"],
        "incremental_sweep_trial_epochs": sweep["trial_epochs"],
        "incremental_best_replay_fraction": best["replay_fraction"],
        "incremental_best_learning_rate": best["learning_rate"],
        "incremental_retention_floor": floor,
        # Whether each side kept the floor the promotion gate applies (floor x the parent's batch-1 test recall).
        "incremental_keeps_floor": {"ours": ours["retention"] >= floor * before["retention"],
                                    "seed_way": seed_way["retention"] >= floor * before["retention"]},
        "incremental_best": {**best, "train_tokens": ours["train_tokens"]},
        "incremental_seed_way": seed_way,
        "incremental_seed_way_seed_lr": seed_lr,
        "incremental_parent": {"epochs": parent_summary["epochs"],
                               VAL_EXACT_RECALL: parent_summary[VAL_EXACT_RECALL],
                               TRAIN_EXACT_RECALL: parent_summary[TRAIN_EXACT_RECALL],
                               "method": bench.experiment.trial_config().method.model_dump(mode="json")},
        "incremental_sweep": sweep,
        "incremental_config": shown(config_path),
        "incremental_ray_init_seconds": ray_init_seconds,
        "incremental_section_seconds": timings,
    }

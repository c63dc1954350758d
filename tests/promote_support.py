"""Trials and sweeps for the promotion and export tests: real tiny-model trials, logged as `run_sweep`
logs them, promoted by the real `promote`."""

from __future__ import annotations

import json
from pathlib import Path

EXPERIMENT = "recall-orchestrator"
MODEL = "recall-champion"
ALL_LINEAR = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


class Trained:
    """A trial directory (adapter/, metrics.json, predictions_val.jsonl, trial_config.json) + facts."""

    def __init__(self, directory: Path):
        from trials.config import TrialConfig

        self.dir = directory
        self.config = TrialConfig.model_validate_json((directory / "trial_config.json").read_text())
        self.metrics = json.loads((directory / "metrics.json").read_text())
        self.val_predictions = [json.loads(line) for line in (directory / "predictions_val.jsonl").open()]
        self.test_recall: float | None = None
        self.learned: dict | None = None  # a train question it answers right (the strong one)


def trial_config(documents: list[Path], qa: Path, *, epochs: int, learning_rate: float, method=None):
    """The demo recipe (configs/demo.yaml's trial: LoRA r=32 on every linear layer, unless `method`), on the
    train questions only, for a short run."""
    from trials.config import DataConfig, EvalConfig, TrainingConfig, TrialConfig
    from trials.methods.lora import LoraMethod

    return TrialConfig(
        model="embedded:tiny-llama",
        data=DataConfig(documents=documents, qa=qa),
        method=method or LoraMethod(r=32, alpha=64, learning_rate=learning_rate, target_modules=ALL_LINEAR),
        training=TrainingConfig(epochs=epochs, weight_decay=0.1, include_documents=False, seed=0),
        eval=EvalConfig(max_train_questions=16),
    )


def log_sweep(name: str, trials: list[tuple[Trained, float]]) -> list[str]:
    """A sweep in the documented layout: one FINISHED child run per (trial, val recall to log)."""
    from orchestrator import run_record, tracking
    from orchestrator.run_record import trial_params

    client = tracking.client()
    experiment_id = tracking.experiment_id(client, EXPERIMENT)
    parent = client.create_run(experiment_id, run_name=name,
                               tags={run_record.ROLE: "sweep", run_record.SWEEP: name})
    run_ids = []
    for index, (trial, val_recall) in enumerate(trials):
        run = client.create_run(experiment_id, run_name=f"{name}-{index}", tags={
            run_record.PARENT: parent.info.run_id, run_record.ROLE: "trial", run_record.SWEEP: name,
            run_record.TRIAL_ID: f"{name}-t{index}"})
        for key, value in trial_params(trial.config).items():
            client.log_param(run.info.run_id, key, value)
        client.log_metric(run.info.run_id, "val_exact_recall", val_recall, step=trial.metrics["epochs"])
        tracking.log_trial_artifacts(client, run.info.run_id, trial.dir)
        client.set_terminated(run.info.run_id, "FINISHED")
        run_ids.append(run.info.run_id)
    client.set_terminated(parent.info.run_id, "FINISHED")
    return run_ids


def promote(sweep: str, **kwargs):
    from orchestrator.promote import promote as run_promote

    return run_promote(sweep, **{"log": lambda line: None, **kwargs})

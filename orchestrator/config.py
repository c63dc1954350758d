"""The experiment config: a trial's config plus the sweep, its search space and tracking.

One YAML file holds both, so `orchestrator trial` and `orchestrator sweep` read the same file.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, PositiveInt, model_validator

from orchestrator.run_record import DEFAULT_EXPERIMENT, DEFAULT_RETENTION_FLOOR
from orchestrator.search_space import SearchSpace, check_points
from trials.config import Share, TrialConfig, load_config
from trials.methods.base import Strict


class Resources(Strict):
    cpu: float = Field(1.0, gt=0, description="CPU cores reserved per trial.")
    gpu: float = Field(0.0, ge=0, description="GPUs per trial; a fraction (0.5) shares one GPU between trials.")
    lend_freed_cpus: bool = Field(
        True, description="Once no trial is left to start, the CPU trials still running share out the CPUs Ray has "
                          "free, as more torch threads, on a one-node Ray (orchestrator/cpu_loans.py). Turn off where "
                          "two Rays share one machine: each counts every core as its own.")

    @model_validator(mode="after")
    def _whole_or_fraction(self):
        if self.gpu > 1 and self.gpu != int(self.gpu):
            raise ValueError("gpu above 1 must be a whole number")
        return self


class AshaConfig(Strict):
    """Early stopping (orchestrator/scheduling.py): trials are compared at rungs, epochs grace_period *
    reduction_factor**k, and continue only in the top 1/reduction_factor of those recorded there."""

    enabled: bool = Field(True, description="Stop trials that trail at a rung (asynchronous successive halving).")
    grace_period: PositiveInt = Field(1, description="Epochs every trial gets before it can be stopped.")
    reduction_factor: float = Field(4.0, gt=1, description="Keep the top 1/reduction_factor at each rung.")
    compare_by: Literal["auto", "val_answer_loss", "objective", "loss_then_objective"] = Field(
        "auto", description="What rungs compare. auto: the teacher-forced loss of the val answers (continuous, moves "
                            "from the first epoch), a trial that breaks a floor (sweep.retention_floor, "
                            "sweep.general_floor) ranked after every trial that keeps them. val_answer_loss: the loss "
                            "alone. objective: the sweep's objective (exact recall, under the floors). "
                            "loss_then_objective: the loss at the first rung, the objective at the later ones (what "
                            "auto was before, outside incremental sweeps; bench/RESULTS.md section 4 compares "
                            "them).")
    compare_at_least: int = Field(
        2, ge=1, description="A trial passes a rung only once this many trials are recorded there; the first to "
                             "arrive waits, paused, for company (1: Ray's plain ASHA, the first arrivals pass).")


class SweepConfig(Strict):
    num_samples: PositiveInt = Field(8, description="Trials in the sweep.")
    max_concurrent_trials: PositiveInt | None = Field(None, description="Cap on trials running at once.")
    time_budget_s: float | None = Field(None, gt=0, description="Stop the sweep after this many seconds (overnight).")
    seed: int = Field(0, description="Seeds the TPE sampler: same seed, same suggestions.")
    startup_trials: int = Field(4, ge=1, description="Random trials before TPE starts modelling the space.")
    resources: Resources = Field(default_factory=Resources)
    asha: AshaConfig = Field(default_factory=AshaConfig)
    storage_path: str | None = Field(None, description="Ray Tune results; shared storage on a cluster. Default ./ray_results.")
    experiment: str = Field(DEFAULT_EXPERIMENT, description="MLflow experiment holding the sweeps.")
    warm_start: str | None = Field(
        None, min_length=1, description="Run the best trials of an earlier finished sweep first: its name, or auto "
                                        "(every earlier finished sweep in the experiment on the same base model and "
                                        "method set). Before points_to_evaluate and TPE (orchestrator/warm_start.py).")
    warm_start_top: int = Field(3, ge=1, description="warm_start: how many of the earlier sweeps' best trials to run "
                                                     "first (over all of them, each configuration once).")
    optuna_storage: str | None = Field(
        None, description="Database URL (SQLAlchemy) of the sweeps' Optuna studies, e.g. "
                          "postgresql+psycopg2://host/optuna; never MLflow's own database. Default: optuna.db beside a "
                          "SQLite tracking store, else in the local storage_path folder (orchestrator/study.py).")
    tracking_outage_wait_s: float = Field(
        600, ge=0, description="A tracking server that is down when the trials end: how long the sweep waits for it "
                               "to write what it kept, before it exits non-zero (the results stay in storage_path).")
    retention_floor: Share = Field(
        DEFAULT_RETENTION_FLOOR,
        description="Incremental sweeps: a trial (and a promotion) must keep old-fact recall at least this share of "
                    "the starting adapter's on the same questions.")
    general_floor: Share = Field(
        0.95, description="A trial (and a promotion) must still answer at least this share of the general probe's "
                          "check questions the base model answered right (general_retention); one below it ranks "
                          "below every trial that keeps it. Off when the base knows fewer than "
                          "eval.general_min_known of them.")


class ExperimentConfig(TrialConfig):
    sweep: SweepConfig = Field(default_factory=SweepConfig)
    search_space: SearchSpace | None = None

    def sweep_problems(self, source: str) -> list[str]:
        """What stops this config from being swept. Checked when a sweep starts, not on load: a file's
        sweep section must not stop `orchestrator trial FILE --set training.epochs=1`."""
        if self.search_space is None:
            return [f"{source}: search_space: a sweep needs a search_space section"]
        problems = check_points(self.search_space, source)
        if self.sweep.asha.enabled and self.sweep.asha.grace_period > self.training.epochs:
            problems.append(f"{source}: sweep.asha.grace_period ({self.sweep.asha.grace_period}) must not exceed "
                            f"training.epochs ({self.training.epochs})")
        return problems

    def trial_config(self) -> TrialConfig:
        return TrialConfig.model_validate(self.model_dump(include=set(TrialConfig.model_fields)))


def load_experiment(path: Path, overrides: list[str] | tuple[str, ...] = ()) -> ExperimentConfig:
    return load_config(path, overrides, ExperimentConfig)

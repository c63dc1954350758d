"""The experiment config: a trial's config plus the sweep, its search space and tracking.

One YAML file holds both, so `orchestrator trial` and `orchestrator sweep` read the same file.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator

from trials.config import Strict, TrialConfig, load_config

MethodName = Literal["lora", "prefix"]


class LogRange(Strict):
    low: float = Field(gt=0, description="Smallest value (sampled on a log scale).")
    high: float = Field(gt=0, description="Largest value.")

    @model_validator(mode="after")
    def _ordered(self):
        if self.low > self.high:
            raise ValueError(f"low ({self.low}) must not exceed high ({self.high})")
        return self


class Range(Strict):
    low: float = Field(ge=0, description="Smallest value (sampled uniformly).")
    high: float = Field(ge=0, description="Largest value.")

    @model_validator(mode="after")
    def _ordered(self):
        if self.low > self.high:
            raise ValueError(f"low ({self.low}) must not exceed high ({self.high})")
        return self


class DropoutRange(Range):
    high: float = Field(ge=0, lt=1, description="Largest dropout, below 1.")


class LoraSpace(Strict):
    r: list[int] = Field(min_length=1, description="Ranks to try.")
    alpha: list[float] | None = Field(None, min_length=1, description="alpha values to try; or use alpha_ratio.")
    alpha_ratio: list[float] | None = Field(None, min_length=1, description="alpha = ratio * r; or use alpha.")
    learning_rate: LogRange
    dropout: DropoutRange = Field(default_factory=lambda: DropoutRange(low=0.0, high=0.0))
    target_modules: dict[str, list[str]] = Field(
        min_length=1, description="Named module sets to choose between, e.g. qv: [q_proj, v_proj]."
    )

    @model_validator(mode="after")
    def _one_alpha(self):
        if (self.alpha is None) == (self.alpha_ratio is None):
            raise ValueError("give exactly one of alpha (values) or alpha_ratio (alpha = ratio * r)")
        if any(r <= 0 for r in self.r):
            raise ValueError("every r must be > 0")
        if any(a <= 0 for a in (self.alpha or self.alpha_ratio or [])):
            raise ValueError("every alpha / alpha_ratio must be > 0")
        return self


class PrefixSpace(Strict):
    num_virtual_tokens: list[int] = Field(min_length=1, description="Prefix lengths to try.")
    prefix_projection: list[bool] = Field(default_factory=lambda: [False], min_length=1)
    learning_rate: LogRange

    @model_validator(mode="after")
    def _positive(self):
        if any(n <= 0 for n in self.num_virtual_tokens):
            raise ValueError("every num_virtual_tokens must be > 0")
        return self


class SearchSpace(Strict):
    methods: list[MethodName] = Field(min_length=1, description="Methods to try; the method is searched first.")
    lora: LoraSpace | None = None
    prefix: PrefixSpace | None = None
    points_to_evaluate: list[dict] = Field(
        default_factory=list, description="Trials run first, as flat params (see orchestrator.search_space)."
    )

    @model_validator(mode="after")
    def _spaces_for_methods(self):
        missing = [m for m in self.methods if getattr(self, m) is None]
        if missing:
            raise ValueError(f"methods {missing} are listed but have no search space section")
        return self


class Resources(Strict):
    cpu: float = Field(1.0, gt=0, description="CPU cores reserved per trial.")
    gpu: float = Field(0.0, ge=0, description="GPUs per trial; a fraction (0.5) shares one GPU between trials.")

    @model_validator(mode="after")
    def _whole_or_fraction(self):
        if self.gpu > 1 and self.gpu != int(self.gpu):
            raise ValueError("gpu above 1 must be a whole number")
        return self


class AshaConfig(Strict):
    enabled: bool = Field(True, description="Stop trials whose val recall trails at a rung (ASHA).")
    grace_period: int = Field(2, gt=0, description="Epochs every trial gets before it can be stopped.")
    reduction_factor: float = Field(2.0, gt=1, description="Keep the top 1/reduction_factor at each rung.")


class SweepConfig(Strict):
    num_samples: int = Field(8, gt=0, description="Trials in the sweep.")
    max_concurrent_trials: int | None = Field(None, gt=0, description="Cap on trials running at once.")
    time_budget_s: float | None = Field(None, gt=0, description="Stop the sweep after this many seconds (overnight).")
    seed: int = Field(0, description="Seeds the TPE sampler: same seed, same suggestions.")
    startup_trials: int = Field(4, ge=1, description="Random trials before TPE starts modelling the space.")
    resources: Resources = Field(default_factory=Resources)
    asha: AshaConfig = Field(default_factory=AshaConfig)
    storage_path: str | None = Field(None, description="Ray Tune results; shared storage on a cluster. Default ./ray_results.")
    experiment: str = Field("recall-orchestrator", description="MLflow experiment holding the sweeps.")


class ExperimentConfig(TrialConfig):
    sweep: SweepConfig = Field(default_factory=SweepConfig)
    search_space: SearchSpace | None = None

    @model_validator(mode="after")
    def _asha_fits(self):
        if self.sweep.asha.enabled and self.sweep.asha.grace_period > self.training.epochs:
            raise ValueError(f"sweep.asha.grace_period ({self.sweep.asha.grace_period}) must not exceed "
                             f"training.epochs ({self.training.epochs})")
        return self

    def trial_config(self) -> TrialConfig:
        return TrialConfig.model_validate(self.model_dump(include=set(TrialConfig.model_fields)))


def load_experiment(path: Path, overrides: list[str] | tuple[str, ...] = ()) -> ExperimentConfig:
    return load_config(path, overrides, ExperimentConfig)

"""LoKr (LyCORIS; Yeh et al. 2024): each target weight's update is a Kronecker product of a small full
matrix and a low-rank one, scaled by alpha / r; more expressive per parameter than LoRA at the same rank."""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import Field, model_validator

from trials.methods.base import DropoutRange, LowRankMethod, MethodSpace, named_set, positive, register, require


class LokrMethod(LowRankMethod):
    name: Literal["lokr"] = "lokr"
    rank_dropout: float = Field(0.0, ge=0.0, lt=1.0, description="Dropout on the update's rank dimension.")
    learning_rate: float = Field(1e-3, gt=0, description="Peak learning rate.")

    def peft_config(self):
        from peft import LoKrConfig, TaskType

        return LoKrConfig(task_type=TaskType.CAUSAL_LM, r=self.r, alpha=self.alpha, rank_dropout=self.rank_dropout,
                          target_modules=list(self.target_modules))

    @staticmethod
    def knobs_of(saved: dict) -> dict:
        return {"r": saved["r"], "alpha": saved["alpha"], "rank_dropout": saved["rank_dropout"],
                "target_modules": sorted(saved["target_modules"])}

    def shape(self) -> str:
        return super().shape() + (f" dropout={self.rank_dropout:.2g}" if self.rank_dropout else "")


class LokrSpace(MethodSpace):
    method: ClassVar = LokrMethod
    r: list[int] = Field(min_length=1, description="Ranks to try.")
    alpha: list[float] = Field(min_length=1, description="alpha values to try.")
    rank_dropout: DropoutRange = Field(default_factory=lambda: DropoutRange(low=0.0, high=0.0))
    target_modules: dict[str, list[str]] = Field(
        min_length=1, description="Named module sets to choose between, e.g. qv: [q_proj, v_proj].")

    @model_validator(mode="after")
    def _positive(self):
        positive("r", self.r)
        positive("alpha", self.alpha)
        return self

    def suggest(self, trial) -> None:
        trial.suggest_categorical(self.key("r"), list(self.r))
        trial.suggest_categorical(self.key("alpha"), list(self.alpha))
        trial.suggest_float(self.key("rank_dropout"), self.rank_dropout.low, self.rank_dropout.high)
        self._suggest_modules(trial, self.target_modules)
        self._suggest_learning_rate(trial)

    def narrowed_to(self, method: LokrMethod) -> LokrSpace:
        require([("r", method.r, self.r), ("alpha", method.alpha, self.alpha),
                 ("target_modules", method.target_modules, list(self.target_modules.values()))])
        modules = named_set(self.target_modules, method.target_modules)
        return self.model_copy(update={"r": [method.r], "alpha": [method.alpha],
                                       "target_modules": {modules: method.target_modules},
                                       "rank_dropout": DropoutRange(low=method.rank_dropout, high=method.rank_dropout)})

    def to_method(self, params: dict[str, Any]) -> LokrMethod:
        knobs = self.knobs(params)
        modules = self.target_modules[knobs.pop("target_modules")]
        return LokrMethod(r=int(knobs.pop("r")), alpha=float(knobs.pop("alpha")), target_modules=modules, **knobs)


register(LokrMethod, LokrSpace, peft_type="LOKR")

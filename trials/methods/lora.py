"""LoRA (Hu et al. 2021), and DoRA (`use_dora`): a low-rank update B·A beside each target weight, scaled by
alpha / r."""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import Field, model_validator

from trials.methods.base import DropoutRange, LowRankMethod, MethodSpace, named_set, positive, register, require


class LoraMethod(LowRankMethod):
    name: Literal["lora"] = "lora"
    dropout: float = Field(0.0, ge=0.0, lt=1.0, description="Dropout on the LoRA input.")
    use_dora: bool = Field(False, description="DoRA: learn each weight's magnitude apart from its LoRA direction.")
    learning_rate: float = Field(2e-4, gt=0, description="Peak learning rate.")

    def peft_config(self):
        from peft import LoraConfig, TaskType

        return LoraConfig(task_type=TaskType.CAUSAL_LM, r=self.r, lora_alpha=self.alpha, lora_dropout=self.dropout,
                          target_modules=list(self.target_modules), use_dora=self.use_dora)

    @staticmethod
    def knobs_of(saved: dict) -> dict:
        return {"r": saved["r"], "alpha": saved["lora_alpha"], "dropout": saved["lora_dropout"],
                "target_modules": sorted(saved["target_modules"]), "use_dora": saved.get("use_dora", False)}

    def shape(self) -> str:
        dropout = f" dropout={self.dropout:.2g}" if self.dropout else ""
        return f"{super().shape()}{' dora' if self.use_dora else ''}{dropout}"

    def label(self) -> str:
        return "dora" if self.use_dora else self.name  # DoRA is LoRA with use_dora, but nobody calls it "lora"


class LoraSpace(MethodSpace):
    method: ClassVar = LoraMethod
    r: list[int] = Field(min_length=1, description="Ranks to try.")
    alpha: list[float] | None = Field(None, min_length=1, description="alpha values to try; or use alpha_ratio.")
    alpha_ratio: list[float] | None = Field(None, min_length=1, description="alpha = ratio * r; or use alpha.")
    dropout: DropoutRange = Field(default_factory=lambda: DropoutRange(low=0.0, high=0.0))
    target_modules: dict[str, list[str]] = Field(
        min_length=1, description="Named module sets to choose between, e.g. qv: [q_proj, v_proj]."
    )
    use_dora: list[bool] | None = Field(
        None, min_length=1, description="DoRA on or off, e.g. [false, true]; unset = plain LoRA, not searched.")

    @model_validator(mode="after")
    def _one_alpha(self):
        if (self.alpha is None) == (self.alpha_ratio is None):
            raise ValueError("give exactly one of alpha (values) or alpha_ratio (alpha = ratio * r)")
        positive("r", self.r)
        positive("alpha / alpha_ratio", self.alpha or self.alpha_ratio)
        return self

    def suggest(self, trial) -> None:
        trial.suggest_categorical(self.key("r"), list(self.r))
        if self.alpha is not None:
            trial.suggest_categorical(self.key("alpha"), list(self.alpha))
        else:
            trial.suggest_categorical(self.key("alpha_ratio"), list(self.alpha_ratio))
        self._suggest_learning_rate(trial)
        trial.suggest_float(self.key("dropout"), self.dropout.low, self.dropout.high)
        self._suggest_modules(trial, self.target_modules)
        if self.use_dora is not None:
            trial.suggest_categorical(self.key("use_dora"), list(self.use_dora))

    def narrowed_to(self, method: LoraMethod) -> LoraSpace:
        alpha = ("alpha", method.alpha, self.alpha) if self.alpha is not None else (
            "alpha_ratio", method.alpha / method.r, self.alpha_ratio)
        require([("r", method.r, self.r), alpha, ("use_dora", method.use_dora, self.use_dora or [False]),
                 ("target_modules", method.target_modules, list(self.target_modules.values()))])
        # Dropout is the adapter's too: peft loads it with the saved config.
        modules = named_set(self.target_modules, method.target_modules)
        return self.model_copy(update={"r": [method.r], alpha[0]: [alpha[1]],
                                       "target_modules": {modules: method.target_modules},
                                       "use_dora": None if not method.use_dora else [True],
                                       "dropout": DropoutRange(low=method.dropout, high=method.dropout)})

    def to_method(self, params: dict[str, Any]) -> LoraMethod:
        knobs = self.knobs(params)
        r = int(knobs.pop("r"))
        alpha = knobs.pop("alpha") if "alpha" in knobs else knobs.pop("alpha_ratio") * r
        modules = self.target_modules[knobs.pop("target_modules")]
        return LoraMethod(r=r, alpha=float(alpha), target_modules=modules, **knobs)

    def _trained_value(self, knob: str, trained: dict[str, Any]) -> Any:
        if knob == "alpha_ratio":  # a space that searches the ratio: the trained alpha / r
            return trained["alpha"] / trained["r"] if trained.get("r") and trained.get("alpha") else None
        return super()._trained_value(knob, trained)


register(LoraMethod, LoraSpace, peft_type="LORA")

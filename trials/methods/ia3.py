"""(IA)^3 (Liu et al. 2022): a learned scale on chosen activations; few parameters, high learning rates."""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import Field, model_validator

from trials.methods.base import MethodSpace, PeftMethod, modules_label, named_set, register, require


class IA3Method(PeftMethod):
    name: Literal["ia3"] = "ia3"
    target_modules: list[str] = Field(
        default_factory=lambda: ["k_proj", "v_proj", "down_proj"], min_length=1,
        description="Modules whose activations get a learned scale (peft's default for Llama).")
    feedforward_modules: list[str] = Field(
        default_factory=lambda: ["down_proj"],
        description="The target modules that are feed-forward layers: their input is scaled, not their output.")
    learning_rate: float = Field(1e-2, gt=0, description="Peak learning rate (IA3 has few parameters: high rates).")

    @model_validator(mode="after")
    def _feedforward_are_targets(self):
        unknown = sorted(set(self.feedforward_modules) - set(self.target_modules))
        if unknown:  # peft would refuse it only when the model is built
            raise ValueError(f"feedforward_modules {unknown} must also be in target_modules")
        return self

    def peft_config(self):
        from peft import IA3Config, TaskType

        return IA3Config(task_type=TaskType.CAUSAL_LM, target_modules=list(self.target_modules),
                         feedforward_modules=list(self.feedforward_modules))

    @staticmethod
    def knobs_of(saved: dict) -> dict:
        return {"target_modules": sorted(saved["target_modules"]),
                "feedforward_modules": sorted(saved["feedforward_modules"] or [])}

    def shape(self) -> str:
        return modules_label(self.target_modules)


class IA3Space(MethodSpace):
    method: ClassVar = IA3Method
    target_modules: dict[str, list[str]] | None = Field(
        None, min_length=1, description="Named module sets to choose between; unset = IA3Method's default.")

    def suggest(self, trial) -> None:
        self._suggest_modules(trial, self.target_modules)
        self._suggest_learning_rate(trial)

    def narrowed_to(self, method: IA3Method) -> IA3Space:
        default = IA3Method.model_fields["target_modules"].default_factory()
        if self.target_modules is None:
            require([("target_modules", method.target_modules, [default])])
            return self
        require([("target_modules", method.target_modules, list(self.target_modules.values()))])
        return self.model_copy(update={"target_modules": {named_set(self.target_modules, method.target_modules):
                                                          method.target_modules}})

    def to_method(self, params: dict[str, Any]) -> IA3Method:
        knobs = self.knobs(params)
        if "target_modules" in knobs:
            modules = self.target_modules[knobs.pop("target_modules")]
            # Scaled feed-forward layers are the default ones among the chosen targets.
            default_feedforward = IA3Method.model_fields["feedforward_modules"].default_factory()
            knobs.update(target_modules=modules, feedforward_modules=[m for m in modules if m in default_feedforward])
        return IA3Method(**knobs)


register(IA3Method, IA3Space, peft_type="IA3")

"""Prefix-tuning (Li and Liang 2021): trainable key/value vectors prepended at every layer."""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field, model_validator

from trials.methods.base import MethodSpace, PeftMethod, positive, register, require


class PrefixMethod(PeftMethod):
    unmergeable: ClassVar[str] = "its virtual tokens are not weights"
    name: Literal["prefix"] = "prefix"
    num_virtual_tokens: int = Field(20, gt=0, description="Trainable key/value prefix length per layer.")
    prefix_projection: bool = Field(False, description="Reparameterise the prefix through an MLP (P-tuning v2 style).")
    learning_rate: float = Field(1e-2, gt=0, description="Peak learning rate.")

    def peft_config(self):
        from peft import PrefixTuningConfig, TaskType

        return PrefixTuningConfig(task_type=TaskType.CAUSAL_LM, num_virtual_tokens=self.num_virtual_tokens,
                                  prefix_projection=self.prefix_projection)

    @staticmethod
    def knobs_of(saved: dict) -> dict:
        return {"num_virtual_tokens": saved["num_virtual_tokens"], "prefix_projection": saved["prefix_projection"]}

    def shape(self) -> str:
        return f"tokens={self.num_virtual_tokens}{' projection' if self.prefix_projection else ''}"


class PrefixSpace(MethodSpace):
    method: ClassVar = PrefixMethod
    num_virtual_tokens: list[int] = Field(min_length=1, description="Prefix lengths to try.")
    prefix_projection: list[bool] = Field(default_factory=lambda: [False], min_length=1)

    @model_validator(mode="after")
    def _positive(self):
        positive("num_virtual_tokens", self.num_virtual_tokens)
        return self

    def narrowed_to(self, method: PrefixMethod) -> PrefixSpace:
        require([("num_virtual_tokens", method.num_virtual_tokens, self.num_virtual_tokens),
                 ("prefix_projection", method.prefix_projection, self.prefix_projection)])
        return self.model_copy(update={"num_virtual_tokens": [method.num_virtual_tokens],
                                       "prefix_projection": [method.prefix_projection]})

    def suggest(self, trial) -> None:
        trial.suggest_categorical(self.key("num_virtual_tokens"), list(self.num_virtual_tokens))
        trial.suggest_categorical(self.key("prefix_projection"), list(self.prefix_projection))
        self._suggest_learning_rate(trial)


register(PrefixMethod, PrefixSpace, peft_type="PREFIX_TUNING")

"""What every PEFT method module builds on: the method's config class, its search-space twin, the ranges a
space samples from, and `register`, the one call that makes a method known.

A method is a module in trials/methods/ that defines
- a `PeftMethod` subclass: a `name` literal, a `learning_rate`, `peft_config()`, `knobs_of()` (the inverse
  of peft_config, for a saved adapter's adapter_config.json) and `shape()`;
- a `MethodSpace` subclass: what a sweep searches for it, suggested to Optuna define-by-run under flat
  param names (`<method>_<knob>`), and turned back into the method;
and ends with `register(Method, Space, peft_type=...)`. The package imports every module in it, so adding
a method is adding its module: the config's method union, the search space's sections, warm start and the
saved-adapter checks are derived from the registry. An unknown name is a config error, never a fall-through.

Nothing here imports Optuna: a space is handed an `optuna.Trial` (or Optuna's FixedTrial) and calls its
`suggest_*` methods, so trials/ stays free of the orchestrator's libraries.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field, model_validator


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


def comparable(value: Any) -> Any:
    """A knob's value as two adapters are compared: module lists match in any order."""
    return sorted(value) if isinstance(value, list) else value


def modules_label(names: list[str]) -> str:
    return ",".join(name.removesuffix("_proj") for name in names)


class PeftMethod(Strict):
    """One method's knobs. Subclasses declare `name: Literal[...]`, their knobs and `learning_rate` (last, as
    the config reference lists them), each with its default."""

    unmergeable: ClassVar[str] = ""  # why peft cannot merge this method's adapter into the base's weights
    name: str  # each method's Literal; declared here so that it comes first in every method's keys

    def peft_config(self):
        raise NotImplementedError

    @staticmethod
    def knobs_of(saved: dict) -> dict:
        """This method's knobs from a saved adapter's adapter_config.json (the inverse of peft_config)."""
        raise NotImplementedError

    def shape(self) -> str:
        """The knobs in one line, for run names and notes."""
        raise NotImplementedError

    def label(self) -> str:
        """The method as users name it."""
        return self.name


class LowRankMethod(PeftMethod):
    """A method whose update on each target module is low-rank, of rank r, scaled by alpha / r (LoRA, LoKr)."""

    r: int = Field(8, gt=0, description="Rank of the low-rank update.")
    alpha: float = Field(16.0, gt=0, description="Scaling numerator: updates are scaled by alpha / r.")
    target_modules: list[str] = Field(default_factory=lambda: ["q_proj", "v_proj"], min_length=1,
                                      description="Module names that get adapters.")

    def shape(self) -> str:
        return f"r={self.r} alpha={self.alpha:g} {modules_label(self.target_modules)}"


class _Interval(Strict):
    low: float
    high: float

    @model_validator(mode="after")
    def _ordered(self):
        if self.low > self.high:
            raise ValueError(f"low ({self.low}) must not exceed high ({self.high})")
        return self


class LogRange(_Interval):
    low: float = Field(gt=0, description="Smallest value (sampled on a log scale).")
    high: float = Field(gt=0, description="Largest value.")


class Range(_Interval):
    low: float = Field(ge=0, description="Smallest value (sampled uniformly).")
    high: float = Field(ge=0, description="Largest value.")


class DropoutRange(Range):
    high: float = Field(ge=0, lt=1, description="Largest dropout, below 1.")


def named_set(sets: dict[str, list[str]], modules: list[str]) -> str | None:
    """The name of the module set in `sets` that is `modules`, in any order."""
    return next((name for name, members in sets.items() if sorted(members) == sorted(modules)), None)


def require(knobs: list[tuple[str, Any, list]]) -> None:
    """Raise ValueError for every (knob, adapter's value, choices) whose choices leave the value out."""
    missing = [f"{knob}: the adapter's {value!r} is not among {choices!r}"
               for knob, value, choices in knobs if comparable(value) not in [comparable(choice) for choice in choices]]
    if missing:
        raise ValueError("; ".join(missing))


def positive(name: str, values: list[float] | None) -> None:
    if any(value <= 0 for value in values or []):
        raise ValueError(f"every {name} must be > 0")


class MethodSpace(Strict):
    """What every method's space does: suggest its params (named `<method>_<knob>`), and rebuild the method."""

    method: ClassVar[type[PeftMethod]]
    learning_rate: LogRange

    @classmethod
    def name(cls) -> str:
        return cls.method.model_fields["name"].default

    def key(self, knob: str) -> str:
        return f"{self.name()}_{knob}"

    def suggest(self, trial) -> None:
        raise NotImplementedError

    def knobs(self, params: dict[str, Any]) -> dict[str, Any]:
        """This method's knobs from the flat params, without the `<method>_` prefix."""
        prefix = self.name() + "_"
        return {key.removeprefix(prefix): value for key, value in params.items() if key.startswith(prefix)}

    def to_method(self, params: dict[str, Any]) -> PeftMethod:
        return self.method(**self.knobs(params))

    def narrowed_to(self, method: PeftMethod) -> MethodSpace:
        """This space with every shape knob pinned to `method`'s (an adapter to continue), learning rate
        still searched. Raises ValueError naming each knob whose choices leave the adapter's value out."""
        raise NotImplementedError

    def point_of(self, trained: dict[str, Any]) -> tuple[dict[str, Any] | None, str | None]:
        """The flat params of this space that rebuild a trained method's knobs (`trained`, as its MLflow
        `method.*` params read back), or the reason they cannot: what warm start runs first."""
        point = {"method": self.name()}
        for knob in type(self).model_fields:  # what the space searches: its non-empty fields
            choices = getattr(self, knob)
            if choices is None:
                continue
            if isinstance(choices, dict):  # named module sets: the name this space gives the trained set
                value = named_set(choices, trained.get(knob) or [])
                if value is None:
                    return None, f"{knob} {trained.get(knob)} is none of {list(choices)}"
            else:
                value = self._trained_value(knob, trained)
            if value is None:
                return None, f"no {knob} among its params"
            point[self.key(knob)] = value
        return point, None

    def _trained_value(self, knob: str, trained: dict[str, Any]) -> Any:
        """The value this space's `knob` takes for a trained method: the knob of the same name."""
        return trained.get(knob)

    def _suggest_learning_rate(self, trial) -> None:
        trial.suggest_float(self.key("learning_rate"), self.learning_rate.low, self.learning_rate.high, log=True)

    def _suggest_modules(self, trial, sets: dict[str, list[str]] | None) -> None:
        if sets is not None:
            trial.suggest_categorical(self.key("target_modules"), list(sets))


@dataclass(frozen=True)
class Registered:
    method: type[PeftMethod]
    space: type[MethodSpace]
    peft_type: str  # adapter_config.json's peft_type


REGISTRY: dict[str, Registered] = {}


def register(method: type[PeftMethod], space: type[MethodSpace], *, peft_type: str) -> None:
    """Make a method known to configs, search spaces, warm start and saved-adapter checks."""
    name = method.model_fields["name"].default
    if space.method is not method:
        raise TypeError(f"{space.__name__}.method must be {method.__name__}")
    if name in REGISTRY or any(entry.peft_type == peft_type for entry in REGISTRY.values()):
        raise ValueError(f"method {name} ({peft_type}) is registered twice")
    REGISTRY[name] = Registered(method, space, peft_type)

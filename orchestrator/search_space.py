"""The search space: one section per PEFT method, whose space (trials/methods/) suggests itself to Optuna
define-by-run and turns the suggested params back into that method's config.

Optuna parameter names are flat (`method`, `lora_r`, `prefix_learning_rate`, ...): each method's
parameters exist only in trials of that method, so TPE models them separately. The same flat
names are what `points_to_evaluate` in a config uses, e.g. the seed recipe:
    {method: lora, lora_r: 8, lora_alpha: 32, lora_target_modules: qv, lora_learning_rate: 1.0e-6,
     lora_dropout: 0.0}

Each method's space lives beside its config in trials/methods/; SearchSpace has a section per registered
method, named after it, so adding a method adds its section here without an edit.
"""

from __future__ import annotations

import warnings
from typing import Any

from pydantic import Field, ValidationError, create_model, field_validator, model_validator

from pydantic.fields import FieldInfo

from trials.config import TrainingConfig, TrialConfig
from trials.methods import SPACES, AnyMethod, MethodName
from trials.methods.base import MethodSpace, Range, Strict


REPLAY = "replay_fraction"  # the flat Optuna param of training.replay_fraction
# Training knobs a search space may search, each a flat Optuna param named as its training.* key, and a
# search_space key of the same name whose bounds are the training key's.
TRAINING_KNOBS = (REPLAY, "general_replay", "kl_to_base")
UNSET = {REPLAY: "an incremental sweep searches 0..1"}  # what an unset knob's range is: else the config's value


class _SearchSpace(Strict):
    """SearchSpace without its method sections and training knobs (added below, from the registered
    methods and TrainingConfig)."""

    methods: list[MethodName] = Field(min_length=1, description="Methods to try; the method is searched first.")
    points_to_evaluate: list[dict] = Field(
        default_factory=list, description="Trials run first, as flat params (see orchestrator.search_space)."
    )

    @model_validator(mode="after")
    def _spaces_for_methods(self):
        missing = [m for m in self.methods if getattr(self, m) is None]
        if missing:
            raise ValueError(f"methods {missing} are listed but have no search space section")
        return self

    @field_validator(*TRAINING_KNOBS, check_fields=False)
    @classmethod
    def _within_the_keys_bounds(cls, value: Range | None, info) -> Range | None:
        most = _upper_bound(TrainingConfig.model_fields[info.field_name])
        if value is not None and most is not None and value.high > most:
            raise ValueError(f"high must be at most {most:g}")
        return value

    def space_of(self, method: str) -> MethodSpace:
        return getattr(self, method)

    def narrowed_to(self, method: AnyMethod) -> tuple[SearchSpace, list[str]]:
        """The space of an incremental sweep from an adapter trained with `method`: that method alone, its
        shape pinned, replay searched; and notes on the points_to_evaluate dropped for not fitting it.
        Raises ValueError when the space leaves the adapter out (another method, another rank)."""
        if method.name not in self.methods:
            raise ValueError(f"methods: the adapter is {method.name}, not one of {list(self.methods)}")
        try:
            narrowed = self.space_of(method.name).narrowed_to(method)
        except ValueError as error:
            raise ValueError(f"{method.name}: {error}") from None
        space = SearchSpace(methods=[method.name], **{method.name: narrowed},
                            replay_fraction=self.replay_fraction or Range(low=0.0, high=1.0))
        kept, dropped = [], []
        for index, point in enumerate(self.points_to_evaluate):
            fits = point.get("method") == method.name and not check_points(
                space.model_copy(update={"points_to_evaluate": [_with_replay(point, space)]}), "")
            (kept if fits else dropped).append(index)
        space.points_to_evaluate = [_with_replay(self.points_to_evaluate[i], space) for i in kept]
        notes = [f"points_to_evaluate.{i} dropped: it does not fit the adapter ({method.shape()})" for i in dropped]
        return space, notes


def _upper_bound(field: FieldInfo) -> float | None:
    return next((bound.le for bound in field.metadata if getattr(bound, "le", None) is not None), None)


def _searched(knob: str) -> tuple[type, FieldInfo]:
    """The search_space field of training knob `knob`: its range (training.{knob} says what it means)."""
    return Range | None, Field(None, description=f"Searched range of training.{knob} (see it). Unset: "
                                                 f"{UNSET.get(knob, 'the config value')}.")


SearchSpace = create_model("SearchSpace", __base__=_SearchSpace, __module__=__name__,
                           **{knob: _searched(knob) for knob in TRAINING_KNOBS},
                           **{name: (space | None, None) for name, space in SPACES.items()})


class DefineByRun:
    """What OptunaSearch calls with an `optuna.Trial` for every new trial.

    A class rather than a closure: Tune pickles the searcher into its experiment state, which
    is what lets `--resume` restore the sampler.
    """

    def __init__(self, space: SearchSpace):
        self.space = space

    def __call__(self, trial) -> dict[str, Any] | None:
        method = trial.suggest_categorical("method", list(self.space.methods))
        self.space.space_of(method).suggest(trial)
        for knob in TRAINING_KNOBS:
            searched = getattr(self.space, knob)
            if searched is not None:
                trial.suggest_float(knob, searched.low, searched.high)
        return None  # OptunaSearch passes the suggested params on as the trial's config


def method_from_params(params: dict[str, Any], space: SearchSpace) -> AnyMethod:
    """Turn one trial's flat Optuna params into the method config the trial trains with."""
    return space.space_of(params["method"]).to_method(params)


def trial_config_for(base: TrialConfig, params: dict[str, Any], space: SearchSpace) -> TrialConfig:
    update = {"method": method_from_params(params, space)}
    knobs = {knob: float(params[knob]) for knob in TRAINING_KNOBS if knob in params}
    if knobs:
        update["training"] = base.training.model_copy(update=knobs)
    return base.model_copy(update=update)


def _with_replay(point: dict, space: SearchSpace) -> dict:
    """A point written for a plain sweep, given the replay knob an incremental sweep adds (at its low end)."""
    return point if REPLAY in point else {**point, REPLAY: space.replay_fraction.low}


def _point_trial(point: dict):
    """optuna's FixedTrial, whose off-choice error also names the param."""
    import optuna

    class PointTrial(optuna.trial.FixedTrial):
        def suggest_categorical(self, name, choices):
            try:
                return super().suggest_categorical(name, choices)
            except ValueError as error:
                raise ValueError(f"{name}: {error}") from None

    return PointTrial(point)


def check_points(space: SearchSpace, source: str) -> list[str]:
    """Problems with points_to_evaluate, found by running each through the search space itself with
    optuna's FixedTrial: a missing param, a choice outside its choices, an unknown param, or a method
    config that does not validate. (A float outside its range is allowed: Optuna can pin it.)"""
    problems = []
    for index, point in enumerate(space.points_to_evaluate):
        where = f"{source}: search_space.points_to_evaluate.{index}"
        trial = _point_trial(point)
        try:
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message=".*out of the range.*")
                DefineByRun(space)(trial)
        except ValueError as error:
            problems.append(f"{where}: {error}")
            continue
        unknown = sorted(set(point) - set(trial.params))
        if unknown:
            problems.append(f"{where}: unknown {unknown}; a {point['method']} point has {sorted(trial.params)}")
            continue
        try:
            method_from_params(point, space)
        except ValidationError as error:
            problems += [f"{where}: {'.'.join(map(str, e['loc']))}: {e['msg']}" for e in error.errors()]
    return problems

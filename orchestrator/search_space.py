"""The search space: one class per PEFT method, which suggests itself to Optuna define-by-run and turns
the suggested params back into that method's config (trials/methods.py).

Optuna parameter names are flat (`method`, `lora_r`, `prefix_learning_rate`, ...): each method's
parameters exist only in trials of that method, so TPE models them separately. The same flat
names are what `points_to_evaluate` in a config uses, e.g. the seed recipe:
    {method: lora, lora_r: 8, lora_alpha: 32, lora_target_modules: qv, lora_learning_rate: 1.0e-6,
     lora_dropout: 0.0}

Adding a method: its config class in trials/methods.py, a `...Space` class here, and a field named
after the method on SearchSpace.
"""

from __future__ import annotations

import warnings
from typing import Any, ClassVar

from pydantic import Field, ValidationError, field_validator, model_validator

from trials.config import TrialConfig
from trials.methods import AnyMethod, IA3Method, LoraMethod, MethodName, PrefixMethod, Strict, comparable


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


def _named_set(sets: dict[str, list[str]], modules: list[str]) -> str | None:
    """The name of the module set in `sets` that is `modules`, in any order."""
    return next((name for name, members in sets.items() if sorted(members) == sorted(modules)), None)


def _require(knobs: list[tuple[str, Any, list]]) -> None:
    """Raise ValueError for every (knob, adapter's value, choices) whose choices leave the value out."""
    missing = [f"{knob}: the adapter's {value!r} is not among {choices!r}"
               for knob, value, choices in knobs if comparable(value) not in [comparable(choice) for choice in choices]]
    if missing:
        raise ValueError("; ".join(missing))


class MethodSpace(Strict):
    """What every method's space does: suggest its params (named `<method>_<knob>`), and rebuild the method."""

    method: ClassVar[type[Strict]]
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

    def to_method(self, params: dict[str, Any]) -> AnyMethod:
        return self.method(**self.knobs(params))

    def narrowed_to(self, method: AnyMethod) -> MethodSpace:
        """This space with every shape knob pinned to `method`'s (an adapter to continue), learning rate
        still searched. Raises ValueError naming each knob whose choices leave the adapter's value out."""
        raise NotImplementedError

    def _suggest_learning_rate(self, trial) -> None:
        trial.suggest_float(self.key("learning_rate"), self.learning_rate.low, self.learning_rate.high, log=True)


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
        if any(r <= 0 for r in self.r):
            raise ValueError("every r must be > 0")
        if any(a <= 0 for a in (self.alpha or self.alpha_ratio or [])):
            raise ValueError("every alpha / alpha_ratio must be > 0")
        return self

    def suggest(self, trial) -> None:
        trial.suggest_categorical(self.key("r"), list(self.r))
        if self.alpha is not None:
            trial.suggest_categorical(self.key("alpha"), list(self.alpha))
        else:
            trial.suggest_categorical(self.key("alpha_ratio"), list(self.alpha_ratio))
        self._suggest_learning_rate(trial)
        trial.suggest_float(self.key("dropout"), self.dropout.low, self.dropout.high)
        trial.suggest_categorical(self.key("target_modules"), list(self.target_modules))
        if self.use_dora is not None:
            trial.suggest_categorical(self.key("use_dora"), list(self.use_dora))

    def narrowed_to(self, method: LoraMethod) -> LoraSpace:
        alpha = ("alpha", method.alpha, self.alpha) if self.alpha is not None else (
            "alpha_ratio", method.alpha / method.r, self.alpha_ratio)
        _require([("r", method.r, self.r), alpha, ("use_dora", method.use_dora, self.use_dora or [False]),
                  ("target_modules", method.target_modules, list(self.target_modules.values()))])
        # Dropout is the adapter's too: peft loads it with the saved config.
        modules = _named_set(self.target_modules, method.target_modules)
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


class PrefixSpace(MethodSpace):
    method: ClassVar = PrefixMethod
    num_virtual_tokens: list[int] = Field(min_length=1, description="Prefix lengths to try.")
    prefix_projection: list[bool] = Field(default_factory=lambda: [False], min_length=1)

    @model_validator(mode="after")
    def _positive(self):
        if any(n <= 0 for n in self.num_virtual_tokens):
            raise ValueError("every num_virtual_tokens must be > 0")
        return self

    def narrowed_to(self, method: PrefixMethod) -> PrefixSpace:
        _require([("num_virtual_tokens", method.num_virtual_tokens, self.num_virtual_tokens),
                  ("prefix_projection", method.prefix_projection, self.prefix_projection)])
        return self.model_copy(update={"num_virtual_tokens": [method.num_virtual_tokens],
                                       "prefix_projection": [method.prefix_projection]})

    def suggest(self, trial) -> None:
        trial.suggest_categorical(self.key("num_virtual_tokens"), list(self.num_virtual_tokens))
        trial.suggest_categorical(self.key("prefix_projection"), list(self.prefix_projection))
        self._suggest_learning_rate(trial)


class IA3Space(MethodSpace):
    method: ClassVar = IA3Method
    target_modules: dict[str, list[str]] | None = Field(
        None, min_length=1, description="Named module sets to choose between; unset = IA3Method's default.")

    def suggest(self, trial) -> None:
        if self.target_modules is not None:
            trial.suggest_categorical(self.key("target_modules"), list(self.target_modules))
        self._suggest_learning_rate(trial)

    def narrowed_to(self, method: IA3Method) -> IA3Space:
        default = IA3Method.model_fields["target_modules"].default_factory()
        if self.target_modules is None:
            _require([("target_modules", method.target_modules, [default])])
            return self
        _require([("target_modules", method.target_modules, list(self.target_modules.values()))])
        return self.model_copy(update={"target_modules": {_named_set(self.target_modules, method.target_modules):
                                                          method.target_modules}})

    def to_method(self, params: dict[str, Any]) -> IA3Method:
        knobs = self.knobs(params)
        if "target_modules" in knobs:
            modules = self.target_modules[knobs.pop("target_modules")]
            # Scaled feed-forward layers are the default ones among the chosen targets.
            default_feedforward = IA3Method.model_fields["feedforward_modules"].default_factory()
            knobs.update(target_modules=modules, feedforward_modules=[m for m in modules if m in default_feedforward])
        return IA3Method(**knobs)


class SearchSpace(Strict):
    methods: list[MethodName] = Field(min_length=1, description="Methods to try; the method is searched first.")
    lora: LoraSpace | None = None
    prefix: PrefixSpace | None = None
    ia3: IA3Space | None = None
    replay_fraction: Range | None = Field(
        None, description="Searched share of old train rows replayed per epoch (incremental sweeps; "
                          "training.replay_fraction). Unset: an incremental sweep searches 0..1.")
    general_replay: Range | None = Field(
        None, description="Searched share of the general probe's protect rows replayed per epoch "
                          "(training.general_replay). Unset: the config's value.")
    kl_to_base: Range | None = Field(
        None, description="Searched weight of the KL to the base on those rows (training.kl_to_base). Unset: the "
                          "config's value.")
    points_to_evaluate: list[dict] = Field(
        default_factory=list, description="Trials run first, as flat params (see orchestrator.search_space)."
    )

    @model_validator(mode="after")
    def _spaces_for_methods(self):
        missing = [m for m in self.methods if getattr(self, m) is None]
        if missing:
            raise ValueError(f"methods {missing} are listed but have no search space section")
        return self

    @field_validator("replay_fraction", "general_replay")
    @classmethod
    def _a_fraction(cls, value: Range | None) -> Range | None:
        if value is not None and value.high > 1:
            raise ValueError("high must be at most 1")
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


REPLAY = "replay_fraction"  # the flat Optuna param of training.replay_fraction
# Training knobs a search space may search, each a flat Optuna param named as its training.* key.
TRAINING_KNOBS = (REPLAY, "general_replay", "kl_to_base")


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

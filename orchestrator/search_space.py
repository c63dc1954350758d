"""The search space as an Optuna define-by-run function, conditional on the method.

Optuna parameter names are flat (`method`, `lora_r`, `prefix_learning_rate`, ...): each method's
parameters exist only in trials of that method, so TPE models them separately. The same flat
names are what `points_to_evaluate` in a config uses, e.g. the seed recipe:
    {method: lora, lora_r: 8, lora_alpha: 32, lora_target_modules: qv, lora_learning_rate: 1.0e-6,
     lora_dropout: 0.0}
"""

from __future__ import annotations

from typing import Any

from orchestrator.config import SearchSpace
from trials.config import LoraMethod, PrefixMethod, TrialConfig


class DefineByRun:
    """What OptunaSearch calls with an `optuna.Trial` for every new trial.

    A class rather than a closure: Tune pickles the searcher into its experiment state, which
    is what lets `--resume` restore the sampler.
    """

    def __init__(self, space: SearchSpace):
        self.space = space

    def __call__(self, trial) -> dict[str, Any] | None:
        space = self.space
        method = trial.suggest_categorical("method", list(space.methods))
        if method == "lora":
            lora = space.lora
            trial.suggest_categorical("lora_r", list(lora.r))
            if lora.alpha is not None:
                trial.suggest_categorical("lora_alpha", list(lora.alpha))
            else:
                trial.suggest_categorical("lora_alpha_ratio", list(lora.alpha_ratio))
            trial.suggest_float("lora_learning_rate", lora.learning_rate.low, lora.learning_rate.high, log=True)
            trial.suggest_float("lora_dropout", lora.dropout.low, lora.dropout.high)
            trial.suggest_categorical("lora_target_modules", list(lora.target_modules))
        else:
            prefix = space.prefix
            trial.suggest_categorical("prefix_num_virtual_tokens", list(prefix.num_virtual_tokens))
            trial.suggest_categorical("prefix_prefix_projection", list(prefix.prefix_projection))
            trial.suggest_float("prefix_learning_rate", prefix.learning_rate.low, prefix.learning_rate.high, log=True)
        return None  # OptunaSearch passes the suggested params on as the trial's config


def method_from_params(params: dict[str, Any], space: SearchSpace) -> LoraMethod | PrefixMethod:
    """Turn one trial's flat Optuna params into the method config the trial trains with."""
    if params["method"] == "lora":
        r = int(params["lora_r"])
        alpha = params["lora_alpha"] if "lora_alpha" in params else params["lora_alpha_ratio"] * r
        return LoraMethod(
            r=r,
            alpha=float(alpha),
            dropout=float(params["lora_dropout"]),
            target_modules=space.lora.target_modules[params["lora_target_modules"]],
            learning_rate=float(params["lora_learning_rate"]),
        )
    return PrefixMethod(
        num_virtual_tokens=int(params["prefix_num_virtual_tokens"]),
        prefix_projection=bool(params["prefix_prefix_projection"]),
        learning_rate=float(params["prefix_learning_rate"]),
    )


def trial_config_for(base: TrialConfig, params: dict[str, Any], space: SearchSpace) -> TrialConfig:
    return base.model_copy(update={"method": method_from_params(params, space)})


def check_points(space: SearchSpace, source: str) -> list[str]:
    """Problems with points_to_evaluate: each must name a listed method and be a valid trial."""
    problems = []
    for index, point in enumerate(space.points_to_evaluate):
        where = f"{source}: search_space.points_to_evaluate.{index}"
        if point.get("method") not in space.methods:
            problems.append(f"{where}: method must be one of {list(space.methods)}")
            continue
        expected = _param_names(point["method"], space)
        missing, unknown = sorted(expected - set(point)), sorted(set(point) - expected)
        if missing or unknown:
            problems.append(f"{where}: missing {missing}, unknown {unknown}" if unknown else f"{where}: missing {missing}")
            continue
        # Optuna can pin a float outside its range (it warns), but not a choice outside the choices.
        off_choices = [f"{name}={point[name]!r} is not one of {list(choices)}"
                       for name, choices in _choices(point["method"], space).items() if point[name] not in choices]
        if off_choices:
            problems.append(f"{where}: " + "; ".join(off_choices))
            continue
        try:
            method_from_params(point, space)
        except ValueError as error:
            problems.append(f"{where}: {error}")
    return problems


def _choices(method: str, space: SearchSpace) -> dict[str, list]:
    if method == "lora":
        alpha = {"lora_alpha": space.lora.alpha} if space.lora.alpha is not None else {
            "lora_alpha_ratio": space.lora.alpha_ratio}
        return {"lora_r": space.lora.r, **alpha, "lora_target_modules": list(space.lora.target_modules)}
    return {"prefix_num_virtual_tokens": space.prefix.num_virtual_tokens,
            "prefix_prefix_projection": space.prefix.prefix_projection}


def _param_names(method: str, space: SearchSpace) -> set[str]:
    if method == "lora":
        alpha = "lora_alpha" if space.lora.alpha is not None else "lora_alpha_ratio"
        return {"method", "lora_r", alpha, "lora_learning_rate", "lora_dropout", "lora_target_modules"}
    return {"method", "prefix_num_virtual_tokens", "prefix_prefix_projection", "prefix_learning_rate"}

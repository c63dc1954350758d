"""The define-by-run search space, run through a real Optuna study (no Ray needed)."""

from __future__ import annotations

import optuna
import pytest

from orchestrator.config import load_experiment
from orchestrator.run_record import trial_params
from orchestrator.search_space import DefineByRun, check_points, method_from_params, trial_config_for
from sweep_support import DEMO, REPO
from trials.config import ConfigError
from trials.methods.lora import LoraMethod
from trials.methods.prefix import PrefixMethod

optuna.logging.set_verbosity(optuna.logging.WARNING)


def _suggestions(space, n=40, seed=0):
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed))
    define = DefineByRun(space)
    params = []
    for _ in range(n):
        trial = study.ask()
        define(trial)
        params.append(trial.params)
        study.tell(trial, 0.0)
    return params


def test_parameters_are_conditional_on_the_method():
    space = load_experiment(DEMO).search_space
    params = _suggestions(space)
    assert {p["method"] for p in params} == {"lora", "prefix"}
    for p in params:
        prefix = "lora_" if p["method"] == "lora" else "prefix_"
        assert all(key == "method" or key.startswith(prefix) for key in p)
        method = method_from_params(p, space)
        assert isinstance(method, LoraMethod if p["method"] == "lora" else PrefixMethod)


def test_suggestions_stay_inside_the_configured_ranges():
    space = load_experiment(DEMO).search_space
    for p in _suggestions(space):
        if p["method"] == "lora":
            method = method_from_params(p, space)
            assert method.r in space.lora.r
            assert method.alpha in space.lora.alpha
            assert space.lora.learning_rate.low <= method.learning_rate <= space.lora.learning_rate.high
            assert space.lora.dropout.low <= method.dropout <= space.lora.dropout.high
            assert method.target_modules in space.lora.target_modules.values()


@pytest.mark.parametrize("shipped", sorted((REPO / "configs").glob("*.yaml")), ids=lambda path: path.name)
def test_a_shipped_config_gives_alpha_one_name_and_one_scale(shipped):
    """Optuna's `lora_alpha`, MLflow's `method.alpha` and the value peft trains with are the same number:
    the shipped configs search alpha values, not alpha_ratio (docs/sweeps.md, "Alpha")."""
    config = load_experiment(shipped)
    if config.search_space.lora is None:
        pytest.skip(f"{shipped.name} searches no LoRA")
    for point in [p for p in _suggestions(config.search_space, n=12) if p["method"] == "lora"]:
        assert "lora_alpha_ratio" not in point
        trial = trial_config_for(config.trial_config(), point, config.search_space)
        assert trial.method.alpha == point["lora_alpha"]
        assert float(trial_params(trial)["method.alpha"]) == point["lora_alpha"]


def test_seeded_sampler_is_reproducible():
    space = load_experiment(DEMO).search_space
    assert _suggestions(space, n=10, seed=3) == _suggestions(space, n=10, seed=3)


def test_seed_recipe_point_becomes_the_seed_recipe_trial():
    config = load_experiment(DEMO)
    point = config.search_space.points_to_evaluate[0]
    trial = trial_config_for(config.trial_config(), point, config.search_space)
    assert trial.method == LoraMethod(r=8, alpha=32, dropout=0.0, target_modules=["q_proj", "v_proj"],
                                      learning_rate=1e-6)
    assert trial.training == config.training  # only the method changes between trials


@pytest.mark.parametrize(("point", "message"), [
    ("{method: dora}", "method: 'dora' not in ('lora', 'prefix')"),
    ("{method: lora, lora_r: 8}", "'lora_alpha' is not found"),
    ("{method: lora, lora_r: 7, lora_alpha: 16, lora_learning_rate: 0.001, lora_dropout: 0.0, "
     "lora_target_modules: qv}", "lora_r: '7' not in (8, 16, 32)"),
    ("{method: lora, lora_r: 8, lora_alpha: 16, lora_learning_rate: 0.001, lora_dropout: 0.0, "
     "lora_target_modules: everything}", "lora_target_modules: 'everything' not in"),
    ("{method: lora, lora_r: 8, lora_alpha: 16, lora_learning_rate: 0.001, lora_dropout: 0.0, "
     "lora_target_modules: qv, lora_rank: 8}", "unknown ['lora_rank']"),
    ("{method: lora, lora_r: 8, lora_alpha: 16, lora_learning_rate: 0.001, lora_dropout: 1.5, "
     "lora_target_modules: qv}", "dropout: Input should be less than 1"),
])
def test_bad_points_to_evaluate_are_reported(point, message):
    space = load_experiment(DEMO, [f"search_space.points_to_evaluate=[{point}]"]).search_space
    problems = check_points(space, "demo.yaml")
    assert len(problems) == 1 and message in problems[0]
    assert problems[0].startswith("demo.yaml: search_space.points_to_evaluate.0")


def test_search_space_errors_name_their_keys():
    with pytest.raises(ConfigError) as error:
        load_experiment(DEMO, ["search_space.lora.learning_rate={low: 0.1, high: 0.01}",
                               "search_space.methods=[lora, prefix, dora]",
                               "sweep.resources.gpu=1.5"])
    text = str(error.value)
    for key in ("search_space.lora.learning_rate", "search_space.methods.2", "sweep.resources"):
        assert key in text
    assert len(error.value.problems) == 3  # all at once


def test_asha_grace_period_must_fit_the_epochs():
    config = load_experiment(DEMO, ["sweep.asha.grace_period=50"])  # fine for `orchestrator trial`
    assert config.sweep_problems("demo.yaml") == [
        "demo.yaml: sweep.asha.grace_period (50) must not exceed training.epochs (20)"]

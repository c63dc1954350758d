"""Incremental sweeps, the parts that need no model: the search space narrowed to the adapter being
continued, the retention floor in the sweep objective, and the promotion gate's two refusals."""

from __future__ import annotations

import optuna
import pytest

from orchestrator.config import load_experiment
from orchestrator.promote import Scored, _refusal
from orchestrator.search_space import REPLAY, DefineByRun, Range, trial_config_for
from orchestrator.trainable import Floors, objective
from sweep_support import DEMO
from trials.methods.ia3 import IA3Method
from trials.methods.lora import LoraMethod
from trials.methods.prefix import PrefixMethod

ALL_LINEAR = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def test_the_space_narrows_to_the_adapter_and_searches_replay():
    config = load_experiment(DEMO)
    adapter = LoraMethod(r=32, alpha=64, target_modules=list(reversed(ALL_LINEAR)), dropout=0.0)
    space, notes = config.search_space.narrowed_to(adapter)
    assert space.methods == ["lora"] and space.prefix is None
    assert (space.lora.r, space.lora.alpha, space.lora.target_modules) == (
        [32], [64.0], {"all_linear": list(reversed(ALL_LINEAR))})
    assert space.lora.learning_rate == config.search_space.lora.learning_rate  # still searched
    assert space.replay_fraction == Range(low=0.0, high=1.0)
    # demo.yaml's seed point (r=8 on q/v) is not this adapter: dropped, and said so.
    assert space.points_to_evaluate == [] and notes == [
        "points_to_evaluate.0 dropped: it does not fit the adapter (r=32 alpha=64 down,up,gate,o,v,k,q)"]

    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    for _ in range(5):
        trial = study.ask()
        DefineByRun(space)(trial)
        study.tell(trial, 0.0)
        made = trial_config_for(config.trial_config(), trial.params, space)
        assert (made.method.r, made.method.alpha, sorted(made.method.target_modules)) == (32, 64, sorted(ALL_LINEAR))
        assert made.training.replay_fraction == trial.params[REPLAY] and 0.0 <= trial.params[REPLAY] <= 1.0


def test_a_space_that_leaves_the_adapter_out_is_an_error():
    space = load_experiment(DEMO).search_space
    with pytest.raises(ValueError, match=r"lora: r: the adapter's 4 is not among \[8, 16, 32\]"):
        space.narrowed_to(LoraMethod(r=4, alpha=8, target_modules=["q_proj", "v_proj"]))
    with pytest.raises(ValueError, match=r"target_modules: the adapter's \['o_proj'\] is not among"):
        space.narrowed_to(LoraMethod(r=8, alpha=16, target_modules=["o_proj"]))
    with pytest.raises(ValueError, match=r"methods: the adapter is ia3, not one of \['lora', 'prefix'\]"):
        space.narrowed_to(IA3Method())
    prefix, _ = space.narrowed_to(PrefixMethod(num_virtual_tokens=16, prefix_projection=True))
    assert prefix.methods == ["prefix"] and prefix.prefix.num_virtual_tokens == [16]


def test_the_objective_puts_forgetting_below_everything_that_keeps_the_floor():
    base = {"val_exact_recall": 0.2, "train_exact_recall": 0.5, "val_questions": 60}
    plain = objective(base, Floors(0.95))
    kept = objective({**base, "retention_exact_recall": 0.57, "parent_retention_exact_recall": 0.6}, Floors(0.95))
    assert kept == plain > 0  # 0.57 >= 0.95 * 0.6: scored on new facts alone
    forgot_little = objective({**base, "retention_exact_recall": 0.5, "parent_retention_exact_recall": 0.6},
                              Floors(0.95))
    forgot_much = objective({**base, "val_exact_recall": 0.9, "retention_exact_recall": 0.1,
                             "parent_retention_exact_recall": 0.6}, Floors(0.95))
    learned_nothing = objective({**base, "val_exact_recall": 0.0, "train_exact_recall": 0.0}, Floors(0.95))
    assert -1 <= forgot_much < forgot_little < 0 <= learned_nothing


def scored(role: str, test: float, retention: float | None) -> Scored:
    return Scored(role=role, test_recall=test, val_recall=None, trainable_parameters=None, run_id=role,
                  trial=role, method="lora", version="1" if role == "champion" else None, retention_recall=retention)


def test_promotion_refuses_a_candidate_that_does_not_learn_or_that_forgets():
    champion = scored("champion", test=0.0, retention=0.6)
    bar = 0.95 * champion.retention_recall
    assert "not above the champion's 0.000" in _refusal(scored("candidate", 0.0, 0.6), champion, bar)
    assert "forgets: 0.400 on the old facts' test questions, below the floor 0.570" in _refusal(
        scored("candidate", 0.5, 0.4), champion, bar)
    assert _refusal(scored("candidate", 0.5, 0.57), champion, bar) is None
    assert _refusal(scored("candidate", 0.5, None), None, None) is None  # a first champion

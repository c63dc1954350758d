"""LoKr, the fourth PEFT method (trials/methods/lokr.py): added as one module, it is a config's method, a
saved adapter's method, a search-space section, a warm-start point, and a sweep's trials, end to end."""

from __future__ import annotations

import json

import pytest
import torch
from sweep_support import fast_config, runs_of, store, sweep_ray

from orchestrator import run_record, warm_start
from orchestrator.run_record import ADAPTER, METHOD_NAME, VAL_EXACT_RECALL, trial_params
from orchestrator.search_space import DefineByRun, trial_config_for
from orchestrator.sweep import run_sweep
from trials.config import ConfigError
from trials.methods import METHOD_NAMES, saved_method
from trials.methods.lokr import LokrMethod
from trials.model import attach_method, load_base_model, resolve_model

SPACE = ("search_space.lokr={r: [4, 8], alpha: [8, 32], learning_rate: {low: 3.0e-3, high: 1.0e-2}, "
         "target_modules: {qv: [q_proj, v_proj], all_linear: [q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, "
         "down_proj]}}")
POINT = ("{method: lokr, lokr_r: 8, lokr_alpha: 32, lokr_rank_dropout: 0.0, lokr_target_modules: all_linear, "
         "lokr_learning_rate: 0.01}")


def test_lokr_is_a_method_a_config_can_name(tmp_path):
    assert "lokr" in METHOD_NAMES
    config = fast_config(tmp_path, "method={name: lokr, r: 4, alpha: 8}")
    assert config.method == LokrMethod(r=4, alpha=8)
    assert config.method.peft_config().peft_type == "LOKR"
    with pytest.raises(ConfigError, match=r"method\.dropout: unknown key \(not valid for this method\)"):
        fast_config(tmp_path, "method={name: lokr, dropout: 0.1}")


def test_a_saved_lokr_adapter_reads_back_as_the_method_it_was_trained_with(tmp_path):
    method = LokrMethod(r=4, alpha=8, rank_dropout=0.1, target_modules=["v_proj", "q_proj"], learning_rate=3e-3)
    model = attach_method(load_base_model(resolve_model("embedded:tiny-llama"), torch.device("cpu"), False), method, False)
    model.save_pretrained(tmp_path)
    assert saved_method(tmp_path, learning_rate=3e-3) == method.model_copy(update={"target_modules": ["q_proj", "v_proj"]})


def test_the_search_space_suggests_lokr_and_warm_start_rebuilds_it(tmp_path):
    import optuna

    config = fast_config(tmp_path, "search_space.methods=[lokr]", SPACE)
    space = config.search_space
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    for _ in range(6):
        trial = study.ask()
        DefineByRun(space)(trial)
        method = trial_config_for(config.trial_config(), trial.params, space).method
        assert isinstance(method, LokrMethod) and method.r in (4, 8) and method.alpha in (8, 32)
        # What warm start reads back from the MLflow params of a trial that trained it is the same point.
        point, problem = warm_start._point(trial_params(trial_config_for(config.trial_config(), trial.params, space)),
                                           config)
        assert problem is None and point == trial.params


@pytest.mark.e2e
def test_a_sweep_searches_lokr_and_trains_it(tmp_path, monkeypatch):
    uri = store(tmp_path, monkeypatch)
    config = fast_config(tmp_path, "sweep.num_samples=3", "training.epochs=3", "search_space.methods=[lokr]", SPACE,
                         f"search_space.points_to_evaluate=[{POINT}]")
    with sweep_ray():
        outcome = run_sweep(config, "lokr")
    assert not outcome.failed
    client, parent, children = runs_of(uri, "lokr")
    assert parent.info.status == "FINISHED" and len(children) == 3
    assert {run.data.params[METHOD_NAME] for run in children} == {"lokr"}
    for run in children:
        with open(client.download_artifacts(run.info.run_id, f"{ADAPTER}/adapter_config.json")) as handle:
            assert json.load(handle)["peft_type"] == "LOKR"
    # The seed point trains: its loss falls and it recalls val questions the random base cannot.
    seeded = next(run for run in children if run.data.tags.get(run_record.ORIGIN) == warm_start.SEED)
    losses = [m.value for m in client.get_metric_history(seeded.info.run_id, "loss")]
    assert len(losses) == 3 and losses[-1] < losses[0] / 2
    assert seeded.data.metrics[VAL_EXACT_RECALL] > 0

"""A process keeps its base model from one trial to the next (trials/model.keep_base): Ray Tune reuses a
sweep's workers, so a sweep loads its base once per worker. Reuse must change nothing a trial computes."""

from __future__ import annotations

import json

import pytest
import torch
from promote_support import trial_config
from safetensors.torch import load_file

import trials.model
from trials.methods.prefix import PrefixMethod
from trials.trial import run_trial

pytestmark = pytest.mark.e2e


def _adapter(directory) -> dict[str, torch.Tensor]:
    return load_file(directory / "adapter" / "adapter_model.safetensors")


@pytest.fixture
def loads(monkeypatch) -> list:
    """Each call of load_base_model (a load from disk), and no base kept from an earlier test."""
    calls, real = [], trials.model.load_base_model
    monkeypatch.setattr(trials.model, "load_base_model", lambda *args, **kwargs: calls.append(args) or real(*args, **kwargs))
    trials.model._kept.clear()
    yield calls
    trials.model._kept.clear()


def test_trials_in_one_process_load_the_base_once_and_train_as_on_a_fresh_load(tmp_path, demo_documents, demo_qa,
                                                                                loads, monkeypatch):
    lora = trial_config(demo_documents, demo_qa, epochs=2, learning_rate=1e-3)
    prefix = trial_config(demo_documents, demo_qa, epochs=1, learning_rate=1e-2,
                          method=PrefixMethod(num_virtual_tokens=4, learning_rate=1e-2))
    quiet = {"log": lambda _: None}
    first = run_trial(lora, tmp_path / "first", **quiet)
    run_trial(prefix, tmp_path / "prefix", **quiet)  # a prompt-learning adapter on the same base in between
    again = run_trial(lora, tmp_path / "again", **quiet)
    assert len(loads) == 1 and first["history"][0]["base_reused"] == 0.0 and again["history"][0]["base_reused"] == 1.0
    assert again["val_exact_recall"] == first["val_exact_recall"] and again["history"][-1]["loss"] == first["history"][-1]["loss"]
    weights, weights_again = _adapter(tmp_path / "first"), _adapter(tmp_path / "again")
    assert weights.keys() == weights_again.keys() and all(torch.equal(weights[k], weights_again[k]) for k in weights)

    monkeypatch.setenv("RECALL_REUSE_BASE", "0")  # off: every trial loads, and trains the same
    fresh = run_trial(lora, tmp_path / "fresh", **quiet)
    assert len(loads) == 2 and fresh["history"][-1]["loss"] == first["history"][-1]["loss"]
    assert all(torch.equal(weights[k], tensor) for k, tensor in _adapter(tmp_path / "fresh").items())


def test_a_failed_trial_gives_no_base_back(tmp_path, demo_documents, demo_qa, loads):
    lora = trial_config(demo_documents, demo_qa, epochs=2, learning_rate=1e-3)

    def fail(metrics, checkpoint):
        raise RuntimeError("stopped from outside")

    with pytest.raises(RuntimeError, match="stopped from outside"):
        run_trial(lora, tmp_path / "failed", on_epoch=fail, log=lambda _: None)
    run_trial(lora, tmp_path / "next", log=lambda _: None)  # its model may be in any state: the next loads anew
    assert len(loads) == 2


def test_a_trial_tune_stops_gives_its_base_back_and_records_its_scores(tmp_path, demo_documents, demo_qa, loads):
    lora = trial_config(demo_documents, demo_qa, epochs=2, learning_rate=1e-3)

    def stop_like_tune(metrics, checkpoint):
        raise SystemExit(0)  # what tune.report does to a trial its scheduler stops

    with pytest.raises(SystemExit):
        run_trial(lora, tmp_path / "stopped", on_epoch=stop_like_tune, log=lambda _: None)
    recorded = json.loads((tmp_path / "stopped" / "metrics.json").read_text())
    assert recorded["status"] == "stopped" and recorded["epochs"] == 1 and "val_exact_recall" in recorded
    run_trial(lora, tmp_path / "next", log=lambda _: None)
    assert len(loads) == 1

"""The general floor end to end on the tiny model: a sweep with a user's own probe (one the tiny base model
knows by construction: general_support), then promotion. Real Ray Tune, Optuna, MLflow and peft.

What it shows: the base model is scored once and logged on the sweep's run; general_retention and
general_drift reach MLflow at every epoch early stopping compares and at each trial's end; a trial
that forgets falls below the floor (a negative objective); promotion refuses it, saying why, and
--force promotes it with its general figures as tags."""

from __future__ import annotations

import pytest

from orchestrator import run_record, tracking
from orchestrator.promote import promote
from orchestrator.sweep import run_sweep
from general_support import self_known_probe
from sweep_support import LEARNS, fast_config, module_store, runs_of

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def forgetful(tmp_path_factory, tokenizer_path):
    tmp_path = tmp_path_factory.mktemp("general")
    probe = self_known_probe(tmp_path / "probe", tokenizer_path)
    with module_store(tmp_path) as uri:
        # The demo's own trial alone (lr 3e-3, 5 epochs: it learns the facts); rungs at epochs 1 and 4. Answers are
        # generated only where they decide something (eval.recall_every=0): the rungs and the last epoch.
        config = fast_config(tmp_path, *LEARNS, "sweep.num_samples=1", f"eval.general={probe}",
                             "eval.general_min_known=1", "eval.recall_every=0",
                             "sweep.resources.lend_freed_cpus=true")
        run_sweep(config, "forgetful")
        refused = promote("forgetful", top_k=1, log=lambda line: None)
        forced = promote("forgetful", top_k=1, force=True, log=lambda line: None)
        yield uri, refused, forced


def test_the_base_model_is_scored_once_on_the_sweeps_run(forgetful):
    uri, _, _ = forgetful
    _, parent, _ = runs_of(uri, "forgetful")
    metrics = parent.data.metrics
    assert 0 < metrics["base_general_known"] <= metrics["base_general_check"]
    assert "base_val_exact_recall" in metrics and "base_test_exact_recall" in metrics
    assert parent.data.tags[run_record.GENERAL_GATE] == "on"


def test_general_metrics_reach_mlflow_at_every_scored_epoch(forgetful):
    uri, _, _ = forgetful
    client, _, (trial,) = runs_of(uri, "forgetful")

    def steps(metric: str) -> list[int]:
        return sorted(m.step for m in client.get_metric_history(trial.info.run_id, metric))

    scored = [1, 4, 5]  # the rungs, and the end
    assert steps("val_answer_loss") == [1, 2, 3, 4, 5] and steps("loss") == [1, 2, 3, 4, 5]
    # Between scored epochs Tune is handed the last objective; MLflow logs none there.
    assert steps("val_exact_recall") == scored and steps("objective") == scored
    for metric in ("general_retention", "general_drift"):
        assert sorted(m.step for m in client.get_metric_history(trial.info.run_id, metric)) == scored, metric
    drift = {m.step: m.value for m in client.get_metric_history(trial.info.run_id, "general_drift")}
    assert all(value > 0 for value in drift.values())  # it moved away from the base


def test_a_trial_alone_runs_on_the_cpus_no_other_trial_can_take(forgetful):
    # This sweep's one trial has one CPU of the 2 its Ray has; no other trial can come, so the driver lends it
    # the second (orchestrator/cpu_loans.py), read at its first epoch's end. Its run says so each epoch.
    uri, _, _ = forgetful
    client, _, (trial,) = runs_of(uri, "forgetful")
    history = sorted(client.get_metric_history(trial.info.run_id, run_record.EPOCH_THREADS), key=lambda m: m.step)
    assert [m.value for m in history] == [1, 2, 2, 2, 2]
    assert trial.data.tags[run_record.placement_tag("torch_threads")] == "1"  # its own CPU's


def test_a_trial_that_forgets_ranks_below_the_floor_and_promotion_refuses_it(forgetful):
    uri, refused, forced = forgetful
    _, _, (trial,) = runs_of(uri, "forgetful")
    kept = trial.data.metrics["general_retention"]
    assert kept < 0.95 and trial.data.metrics["objective"] == pytest.approx(kept / 0.95 - 1)
    assert not refused.promoted and refused.version is None
    assert f"keeps {kept:.3f} of the general questions the base model answered right" in refused.reason
    assert "(--force promotes anyway)" in refused.reason
    assert refused.general_floor == 0.95 and refused.best.general_retention == kept
    assert forced.promoted and forced.forced


def test_the_forced_version_carries_its_general_figures(forgetful):
    uri, _, forced = forgetful
    client = tracking.client(uri)
    version = client.get_model_version(forced.model_name, forced.version)
    assert float(version.tags["general_retention"]) == pytest.approx(forced.best.general_retention, abs=1e-6)
    assert float(version.tags["general_drift"]) > 0
    assert (f"- General knowledge: keeps {version.tags['general_retention']} of the base model's right answers "
            f"(drift {version.tags['general_drift']}).") in version.description

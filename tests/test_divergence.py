"""A diverging trial (NaN or inf loss or gradient) stops at once, as a failure named `diverged`.

The loop raises TrainingDiverged before the optimiser applies a non-finite step; `orchestrator
trial` reports it in one line and exits 1; in a sweep the trial's MLflow run is FAILED and tagged
recall.failure=diverged, and Optuna records the trial as FAIL.
"""

from __future__ import annotations

import pytest
import torch

from trials.train import Trainer, TrainingDiverged

DIVERGING = ["--set", "method.learning_rate=1e30", "--set", "training.epochs=1", "--set", "training.warmup_ratio=0"]


@pytest.fixture
def trainer_for(demo_trainer):
    """`trainer_for(learning_rate)` -> a Trainer over 32 train QA pairs of the demo (two steps an epoch)."""
    return lambda learning_rate: demo_trainer(32, learning_rate)


def trainable(trainer: Trainer) -> list[torch.Tensor]:
    return [p.detach().clone() for p in trainer.model.parameters() if p.requires_grad]


def test_a_non_finite_loss_stops_training_before_the_step(trainer_for):
    trainer = trainer_for(1e30)  # step 1 lands the weights near 1e30; step 2's forward overflows
    with pytest.raises(TrainingDiverged, match=r"non-finite loss at epoch 3, step 2") as raised:
        trainer.train_epoch(3)
    assert (raised.value.epoch, raised.value.step, raised.value.what) == (3, 2, "loss")
    assert all(torch.isfinite(p).all() for p in trainable(trainer)), "a non-finite step was applied"


def test_a_non_finite_gradient_stops_training_and_leaves_the_weights(trainer_for):
    trainer = trainer_for(1e-3)
    # The loss stays finite; one adapter weight's gradient does not (as an overflow in backward would).
    weight = next(p for p in trainer.model.parameters() if p.requires_grad)
    weight.register_hook(lambda grad: grad * float("inf"))
    before = trainable(trainer)
    with pytest.raises(TrainingDiverged, match=r"non-finite gradient norm at epoch 1, step 1"):
        trainer.train_epoch(1)
    assert all(torch.equal(old, new) for old, new in zip(before, trainable(trainer)))


def test_the_divergence_survives_pickling_with_its_message():
    import pickle

    # Ray pickles a trial's exception to carry it to the driver; unpickling must not turn it into a TypeError.
    error = pickle.loads(pickle.dumps(TrainingDiverged(2, 5, "gradient norm")))
    assert (error.epoch, error.step, error.what) == (2, 5, "gradient norm")
    assert "non-finite gradient norm at epoch 2, step 5" in str(error)


def test_orchestrator_trial_exits_non_zero_with_one_line(repo_root, tmp_path, capsys):
    import json

    from orchestrator.cli import main

    output = tmp_path / "trial"
    code = main(["trial", str(repo_root / "configs" / "demo.yaml"), *DIVERGING, "--output-dir", str(output)])
    err = capsys.readouterr().err
    assert code == 1
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "training diverged: non-finite loss at epoch 1, step " in errors[0]
    assert "Traceback" not in err
    assert not (output / "adapter").exists()  # no NaN adapter left behind
    assert json.loads((output / "metrics.json").read_text())["status"] == "failed"


@pytest.mark.e2e
def test_a_diverging_sweep_trial_fails_in_mlflow_and_optuna(tmp_path, monkeypatch):
    import optuna
    from optuna.trial import TrialState
    from sweep_support import fast_config, runs_of, store, sweep_ray

    from orchestrator import run_record
    from orchestrator.sweep import run_sweep

    uri = store(tmp_path, monkeypatch)
    config = fast_config(tmp_path, "sweep.num_samples=1", "search_space.methods=[lora]",
                         "search_space.points_to_evaluate=[]", "training.warmup_ratio=0",
                         "search_space.lora.learning_rate={low: 1.0e29, high: 1.0e30}")
    with sweep_ray():
        outcome = run_sweep(config, "diverging")
    _, _, children = runs_of(uri, "diverging")
    assert [run.info.status for run in children] == ["FAILED"] and len(outcome.failed) == 1
    tags = children[0].data.tags
    assert tags["recall.failure"] == "diverged" and "non-finite loss at epoch 1, step" in tags["recall.error"]
    # The exception survived Tune's copy and Ray's pickling (it once became a TypeError there), so its own
    # line leads the description and the console.
    assert "TypeError" not in tags["recall.error"]
    assert tags["mlflow.note.content"].startswith("FAILED: training diverged: non-finite loss at epoch 1, step ")
    assert outcome.failed[0]["error"].startswith("training diverged: non-finite loss at epoch 1, step ")

    # The sweep's stored study, as optuna-dashboard and optuna.load_study see it.
    parent = runs_of(uri, "diverging")[1]
    name, storage = parent.data.tags[run_record.OPTUNA_STUDY], parent.data.tags[run_record.OPTUNA_STORAGE]
    assert [trial.state for trial in optuna.load_study(study_name=name, storage=storage).trials] == [TrialState.FAIL]

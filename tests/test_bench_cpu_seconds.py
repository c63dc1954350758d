"""bench/library.cpu_seconds: a trial's train + eval seconds with each epoch counted on every CPU it ran on, read
back from a real MLflow run as a sweep logs it (cumulative seconds, eval_seconds absent where an epoch was not
scored, epoch_threads each epoch)."""

from __future__ import annotations

from mlflow.tracking import MlflowClient

from bench.library import cpu_seconds
from orchestrator.run_record import EPOCH_THREADS, EVAL_SECONDS, TRAIN_SECONDS, placement_tag


def logged_run(tmp_path, own_threads: str, epochs: list[tuple[float, float | None, int]]):
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    experiment = client.create_experiment("cpu-seconds", artifact_location=str(tmp_path / "artifacts"))
    run_id = client.create_run(experiment, tags={placement_tag("torch_threads"): own_threads}).info.run_id
    for step, (train, evaluate, threads) in enumerate(epochs, start=1):
        client.log_metric(run_id, TRAIN_SECONDS, train, step=step)
        if evaluate is not None:
            client.log_metric(run_id, EVAL_SECONDS, evaluate, step=step)
        client.log_metric(run_id, EPOCH_THREADS, threads, step=step)
    return client, client.get_run(run_id)


def test_a_lent_epoch_counts_on_every_cpu_it_ran_on(tmp_path):
    # Epoch 1: 1.5 s on its own CPU; epoch 2: 1.0 s (not scored: eval carried) on 2; epoch 3: 1.5 s on 2.
    client, run = logged_run(tmp_path, "1", [(1.0, 0.5, 1), (2.0, None, 2), (3.0, 1.0, 2)])
    assert cpu_seconds(client, run) == 1.5 + 2 * 1.0 + 2 * 1.5


def test_a_trial_never_lent_counts_its_compute_once_whatever_its_own_threads(tmp_path):
    client, run = logged_run(tmp_path, "2", [(1.0, 0.5, 2), (2.5, 1.0, 2)])
    assert cpu_seconds(client, run) == 3.5  # its last train + eval seconds, as the plain overhead counts them

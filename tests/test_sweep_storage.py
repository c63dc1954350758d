"""Sweep names and sweep.storage_path: names are one safe path segment and are quoted right in MLflow
filters; a storage URI reaches Ray Tune as a URI, and one nothing can open fails before the sweep."""

from __future__ import annotations

import pytest

from orchestrator import run_record, tracking
from orchestrator.errors import SweepError
from orchestrator.storage import SweepStorage, check_sweep_name
from orchestrator.sweep import run_sweep
from sweep_support import fast_config, runs_of, store
from store_support import new_store


@pytest.mark.parametrize("name", ["../../x", "a/b", "..", ".hidden", "it's", 'say "hi"', "", "x" * 129, "a b"])
def test_names_that_are_not_one_safe_path_segment_are_refused(name):
    with pytest.raises(SweepError, match="use letters, digits"):
        check_sweep_name(name)


@pytest.mark.parametrize("name", ["team-a", "sweep-20261129-060000", "v1.2_b", "A"])
def test_plain_names_pass(name):
    assert check_sweep_name(name) == name


def test_a_bad_name_stops_the_sweep_before_anything_is_written(tmp_path, monkeypatch):
    uri = store(tmp_path, monkeypatch)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SweepError, match=r"sweep name '\.\./\.\./escaped'"):
        run_sweep(fast_config(tmp_path), "../../escaped")
    assert not (tmp_path / "ray_results").exists() and not (tmp_path.parent.parent / "escaped").exists()
    assert runs_of(uri, "../../escaped")[1] is None


def test_a_storage_uri_nothing_can_open_fails_naming_the_key(tmp_path, monkeypatch):
    uri = store(tmp_path, monkeypatch)
    with pytest.raises(SweepError, match=r"sweep\.storage_path=nosuchfs://bucket/sweeps: Ray Tune cannot open it"):
        run_sweep(fast_config(tmp_path, "sweep.storage_path=nosuchfs://bucket/sweeps"), "nofs")
    assert tracking.find_sweep_run(tracking.client(uri), "recall-orchestrator", "nofs") is None


def test_storage_keeps_a_uri_and_makes_a_local_path_absolute(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert SweepStorage.of("s3-like/relative").root == str(tmp_path / "s3-like" / "relative")
    remote = SweepStorage.of(f"file://{tmp_path}/shared")
    assert remote.root == f"file://{tmp_path}/shared"
    assert remote.experiment("team") == f"file://{tmp_path}/shared/team"
    assert not remote.exists("team")
    (tmp_path / "shared" / "team").mkdir(parents=True)
    assert remote.exists("team")
    # What the driver downloads (an incremental sweep's start) stays local when the experiment is not.
    assert remote.local_folder("team.start") == tmp_path / "ray_results" / "team.start"


def test_names_with_quotes_are_found_by_mlflow_filters(tmp_path):
    """Sweeps made before names were checked, or by other tools, may hold a quote: the filter must
    neither break MLflow's parser nor match another sweep."""
    client = tracking.client(new_store(tmp_path / "mlflow.db"))
    experiment = tracking.experiment_id(client, "quotes")
    for name in ("it's", 'say "hi"', "plain"):
        client.create_run(experiment, run_name=name, tags={run_record.ROLE: "sweep", run_record.SWEEP: name})
    for name in ("it's", 'say "hi"', "plain"):
        assert tracking.find_sweep_run(client, "quotes", name).data.tags[run_record.SWEEP] == name
    assert tracking.find_sweep_run(client, "quotes", "plain' or tags.`recall.sweep` = 'it's") is None
    with pytest.raises(SweepError, match="both quote characters"):
        tracking.find_sweep_run(client, "quotes", "it's \"both\"")


@pytest.mark.e2e
def test_a_sweep_with_a_storage_uri_writes_through_it(tmp_path, monkeypatch):
    """A file:// URI is a filesystem URI like s3:// to Ray (pyarrow), and testable here: the experiment
    must land where it points, not in a local folder named after the scheme."""
    import ray

    uri = store(tmp_path, monkeypatch)
    monkeypatch.chdir(tmp_path)
    shared = tmp_path / "shared"
    config = fast_config(tmp_path, f"sweep.storage_path=file://{shared}", "sweep.num_samples=1",
                         "search_space.methods=[lora]", "search_space.points_to_evaluate=[]",
                         "training.epochs=1", "sweep.asha.enabled=false")
    try:
        outcome = run_sweep(config, "uri")
    finally:
        ray.shutdown()
    assert outcome.experiment_path == f"file://{shared}/uri"
    assert (shared / "uri").is_dir() and list((shared / "uri").glob("*/checkpoint_*"))
    assert not (tmp_path / "file:").exists()
    assert runs_of(uri, "uri")[1].info.status == "FINISHED"

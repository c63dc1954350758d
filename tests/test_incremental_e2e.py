"""An incremental sweep end to end: sweep and promote the demo's first batch of people, then sweep the
second batch `--from models:/recall-champion@champion` and promote again. Real Ray Tune, Optuna,
MLflow (SQLite store, registry) and peft on the tiny model; short trials on QA pairs only."""

from __future__ import annotations

import json

import pytest

from orchestrator import run_record, tracking
from orchestrator.promote import promote
from orchestrator.run_record import champion_uri
from orchestrator.sweep import run_sweep
from sweep_support import REPO, fast_config, module_store, runs_of

pytestmark = pytest.mark.e2e

BATCH2 = REPO / "data" / "demo-batch2"
DEMO_TRIAL = ("method: lora, lora_r: 32, lora_alpha: 64, lora_learning_rate: 3.0e-3, lora_dropout: 0.0, "
              "lora_target_modules: all_linear")
SHORT = ["training.epochs=4", "sweep.num_samples=2", "sweep.asha.enabled=false"]


@pytest.fixture(scope="module")
def two_rounds(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("incremental")
    with module_store(tmp_path) as uri:
        # Batch 1 needs only its champion: the demo trial alone.
        first = fast_config(tmp_path, *SHORT, "sweep.num_samples=1",
                            f"search_space.points_to_evaluate=[{{{DEMO_TRIAL}}}]")
        run_sweep(first, "batch1")
        v1 = promote("batch1", top_k=1, log=lambda line: None)
        # The new people alone: the old ones come from the champion's lineage. Replay at both ends.
        second = fast_config(
            tmp_path, *SHORT, f"data.qa={BATCH2 / 'qa.jsonl'}", "data.documents=[]",
            f"search_space.points_to_evaluate=[{{{DEMO_TRIAL}, replay_fraction: 1.0}}, "
            f"{{{DEMO_TRIAL}, replay_fraction: 0.0}}]")
        run_sweep(second, "batch2", start=champion_uri())
        v2 = promote("batch2", top_k=2, log=lambda line: None)
        yield uri, v1, v2


def test_incremental_trials_report_retention_every_epoch(two_rounds):
    uri, v1, _ = two_rounds
    client, parent, children = runs_of(uri, "batch2")
    assert parent.data.tags[run_record.FROM] == champion_uri()
    assert parent.data.tags[run_record.PARENT_VERSION] == v1.version == "1"
    assert sorted(run.data.params["training.replay_fraction"] for run in children) == ["0.0", "1.0"]
    for run in children:
        assert run.data.params["init_adapter"].endswith("adapter") and run.data.params["data.retain"].endswith("qa.jsonl")
        assert run.data.params["method.r"] == "32"  # the champion's shape, whatever the space listed
        retention = client.get_metric_history(run.info.run_id, "retention_exact_recall")
        assert [m.step for m in retention] == [1, 2, 3, 4]
        # Where it started: the champion's adapter, scored on batch 1's val questions exactly as the
        # trial that trained it was scored on them.
        assert run.data.metrics["parent_retention_exact_recall"] == pytest.approx(v1.best.val_recall, abs=1e-9)
    assert v1.best.val_recall > 0  # the champion knew some old facts: there is something to forget


def test_promotion_judges_new_facts_and_retention_and_records_the_lineage(two_rounds):
    uri, v1, v2 = two_rounds
    champion = v2.champion
    assert champion.version == "1" and champion.retention_recall is not None
    assert v2.retention_bar == pytest.approx(0.95 * champion.retention_recall)
    best = v2.best
    beats = best.test_recall > champion.test_recall
    keeps = best.retention_recall >= v2.retention_bar
    assert v2.promoted == (beats and keeps), v2.reason
    if not beats:
        assert "not above the champion's" in v2.reason
    elif not keeps:
        assert "forgets" in v2.reason

    # Forced or earned, a promoted incremental version carries its lineage.
    outcome = v2 if v2.promoted else promote("batch2", top_k=2, force=True, log=lambda line: None)
    client = tracking.client(uri)
    version = client.get_model_version("recall-champion", outcome.version)
    assert outcome.version == "2" and str(client.get_model_version_by_alias("recall-champion", "champion").version) == "2"
    tags = version.tags
    assert tags["parent_version"] == "1"
    assert float(tags["test_exact_recall"]) == pytest.approx(outcome.best.test_recall, abs=1e-6)
    assert float(tags["retention_exact_recall"]) == pytest.approx(outcome.best.retention_recall, abs=1e-6)
    assert float(tags["parent_exact_recall"]) == pytest.approx(champion.retention_recall, abs=1e-6)
    assert tags["data_fingerprint"] != tags["retained_data_fingerprint"] != ""
    assert (f"- Earlier facts: exact recall {tags['retention_exact_recall']} on their test questions (data "
            f"`{tags['retained_data_fingerprint']}`), parent version 1.") in version.description

    # Its knowledge: both batches, so a third round keeps all of it.
    import mlflow

    model_dir = mlflow.artifacts.download_artifacts(artifact_uri="models:/recall-champion/2")
    paths = mlflow.models.Model.load(model_dir).flavors["python_function"]["artifacts"]
    qa = [json.loads(line) for line in open(f"{model_dir}/{paths['knowledge']['path']}/qa.jsonl")]
    batch1 = (REPO / "data" / "demo" / "qa.jsonl").read_text().splitlines()
    batch2 = (BATCH2 / "qa.jsonl").read_text().splitlines()
    assert len(qa) == len(batch1) + len(batch2)
    assert {row["question"] for row in qa} == {json.loads(line)["question"] for line in batch1 + batch2}
